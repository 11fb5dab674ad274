"""The cost of the OpenTelemetry bridge on the hottest path, ``flags.enabled(name)``.

- With ``foundation.otel.install()`` on the API's default provider (no SDK
  configured) against the same check with no bridge: target <= 1.1x.
- With that bridge installed, ``enabled(name)`` against ``dict.get``: the
  flags target, <= 2x.
- With an SDK provider and a reader (evaluations are counted per flag):
  informational, against no bridge and against ``dict.get``.

The bridge is process-wide, so rows that compare "bridge" with "no bridge"
alternate installing and uninstalling it between timed runs (never inside
one), keeping the interleaving of ``benchmarks._harness.compare``.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import median

from benchmarks._harness import Row, compare, per_op
from foundation.flags import FeatureFlags, Flag
from foundation.otel import OTelBridge, install

SECTION = "otel"
NAME = "flag_42"
N = 20_000


def _flags() -> tuple[FeatureFlags, dict[str, bool]]:
    flags = FeatureFlags([Flag(f"flag_{i}", default=i % 2 == 0) for i in range(100)])
    return flags, {name: flags.enabled(name) for name in flags.names}


def _loop(flags: FeatureFlags) -> Callable[[int], None]:
    def subject(n: int) -> None:
        for _ in range(n):
            flags.enabled(NAME)

    return subject


def _with_and_without(
    flags: FeatureFlags, bridge: Callable[[], OTelBridge], rounds: int = 25
) -> tuple[float, float, float]:
    """Median ratio (bridge / none) over rounds, each timing both states back to back."""
    fn = _loop(flags)
    ratios: list[float] = []
    on: list[float] = []
    off: list[float] = []
    for i in range(rounds):
        for with_bridge in (i % 2 == 0, i % 2 == 1):
            if with_bridge:
                handle = bridge()
                try:
                    on.append(per_op(fn, N, repeat=5))
                finally:
                    handle.uninstall()
            else:
                off.append(per_op(fn, N, repeat=5))
        ratios.append(on[-1] / off[-1])
    return median(ratios), median(on), median(off)


def run() -> list[Row]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    flags, plain = _flags()
    rows: list[Row] = []
    try:
        ratio, s, b = _with_and_without(flags, install)
        rows.append(
            Row(SECTION, "enabled(name), bridge, no SDK", "enabled(name), no bridge",
                ratio, "x", "<= 1.1x", ratio <= 1.1, f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns")
        )  # fmt: skip

        bridge = install()
        try:

            def baseline(n: int) -> None:
                for _ in range(n):
                    plain.get(NAME)

            ratio, s, b = compare(_loop(flags), baseline, N, rounds=25, repeat=5)
        finally:
            bridge.uninstall()
        rows.append(
            Row(SECTION, "enabled(name), bridge, no SDK", "dict.get",
                ratio, "x", "<= 2x", ratio <= 2.0, f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns")
        )  # fmt: skip

        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        try:
            ratio, s, b = _with_and_without(flags, lambda: install(provider))
            rows.append(
                Row(SECTION, "enabled(name), bridge + SDK (counted)", "enabled(name), no bridge",
                    ratio, "x", "info", None, f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns")
            )  # fmt: skip
            bridge = install(provider)
            try:
                ratio, s, b = compare(_loop(flags), baseline, N, rounds=15, repeat=5)
            finally:
                bridge.uninstall()
            rows.append(
                Row(SECTION, "enabled(name), bridge + SDK (counted)", "dict.get",
                    ratio, "x", "info", None, f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns")
            )  # fmt: skip
        finally:
            provider.shutdown()
    finally:
        flags.close()
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
