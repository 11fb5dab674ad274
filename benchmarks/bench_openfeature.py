"""Flag evaluations through the OpenFeature SDK client, measured side by side.

- A boolean flag through a real OpenFeature client backed by
  ``FoundationProvider`` against the same client backed by the SDK's
  ``InMemoryProvider`` serving the same static flag: target faster.
- The providers alone (``resolve_boolean_details`` called directly, no
  client): informational, to show what the provider adds to the SDK's cost.
- The same ``FoundationProvider`` evaluation against ``FeatureFlags.enabled``
  called directly: the SDK's overhead (informational).
- A string flag split 50/50 across two variants, evaluated with an actor
  (``targeting_key``), against ``InMemoryProvider`` with a context evaluator
  computing the same split (``split_variant``, the documented hash) on every
  call: informational. Foundation remembers each actor's hashes (a bounded
  cache), so after the first pass its side is warm.

Both sides of a row get the same pre-built evaluation contexts and must give
the same answers, checked before timing. Each side has its own SDK domain,
so the two clients differ only in their provider.
"""

from __future__ import annotations

from typing import Any

from benchmarks._harness import Row, compare
from foundation.flags import FeatureFlags, Flag
from foundation.flags._hashing import split_variant

SECTION = "openfeature"
ACTORS = [f"user-{i}" for i in range(2_000)]
VARIANTS = {"red": "#f00", "blue": "#00f"}
SPLIT = {"red": 50.0, "blue": 50.0}
N = 2_000


def _clients(flags: FeatureFlags) -> tuple[Any, Any]:
    from openfeature import api
    from openfeature.flag_evaluation import FlagResolutionDetails, Reason
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    from foundation.openfeature import FoundationProvider

    def split(flag: Any, context: Any) -> Any:
        variant = split_variant("color", SPLIT.items(), context.targeting_key)
        return FlagResolutionDetails(
            value=flag.variants[variant], reason=Reason.SPLIT, variant=variant
        )

    memory = InMemoryProvider(
        {
            "beta": InMemoryFlag("on", {"on": True, "off": False}),
            "color": InMemoryFlag("red", dict(VARIANTS), context_evaluator=split),
        }
    )
    api.set_provider_and_wait(FoundationProvider(flags), domain="bench-foundation")
    api.set_provider_and_wait(memory, domain="bench-in-memory")
    return api.get_client(domain="bench-foundation"), api.get_client(domain="bench-in-memory")


def _boolean_rows(flags: FeatureFlags, ours: Any, theirs: Any) -> list[Row]:
    want = (True, "on", "STATIC")
    for client in (ours, theirs):
        d = client.get_boolean_details("beta", False)
        assert (d.value, d.variant, d.reason) == want, d

    def foundation(n: int) -> None:
        for _ in range(n):
            ours.get_boolean_value("beta", False)

    def in_memory(n: int) -> None:
        for _ in range(n):
            theirs.get_boolean_value("beta", False)

    def direct(n: int) -> None:
        for _ in range(n):
            flags.enabled("beta")

    ratio, s, b = compare(foundation, in_memory, N, rounds=15, repeat=3)
    rows = [
        Row(SECTION, "client boolean, FoundationProvider", "client boolean, InMemoryProvider",
            1 / ratio, "x faster", "faster", ratio < 1.0,
            f"{s * 1e6:.2f} us vs {b * 1e6:.2f} us")
    ]  # fmt: skip
    provider, memory = ours.provider, theirs.provider

    def provider_only(n: int) -> None:
        for _ in range(n):
            provider.resolve_boolean_details("beta", False, None)

    def memory_only(n: int) -> None:
        for _ in range(n):
            memory.resolve_boolean_details("beta", False, None)

    ratio, s, b = compare(provider_only, memory_only, 20_000, rounds=9, repeat=3)
    rows.append(
        Row(SECTION, "FoundationProvider.resolve_boolean_details", "InMemoryProvider's",
            1 / ratio, "x faster", "info (provider alone)", None,
            f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns")
    )  # fmt: skip
    ratio, s, b = compare(foundation, direct, N, rounds=9, repeat=3)
    rows.append(
        Row(SECTION, "client boolean, FoundationProvider", "flags.enabled(name)",
            ratio, "x", "info (SDK overhead)", None,
            f"{s * 1e6:.2f} us vs {b * 1e9:.0f} ns")
    )  # fmt: skip
    return rows


def _string_row(flags: FeatureFlags, ours: Any, theirs: Any) -> Row:
    from openfeature.evaluation_context import EvaluationContext

    contexts = [EvaluationContext(targeting_key=a) for a in ACTORS]
    a = [ours.get_string_details("color", "x", c) for c in contexts]
    b = [theirs.get_string_details("color", "x", c) for c in contexts]
    assert [(d.value, d.variant, d.reason) for d in a] == [
        (d.value, d.variant, d.reason) for d in b
    ], "the two providers split actors differently: not the same work"
    assert {d.variant for d in a} == {"red", "blue"}

    def foundation(n: int) -> None:
        for context in contexts[:n]:
            ours.get_string_value("color", "x", context)

    def in_memory(n: int) -> None:
        for context in contexts[:n]:
            theirs.get_string_value("color", "x", context)

    ratio, s, b = compare(foundation, in_memory, N, rounds=7, repeat=3)
    return Row(
        SECTION, "client string, actor, 50/50 split", "client string, InMemoryProvider",
        1 / ratio, "x faster", "info", None,
        f"{s * 1e6:.2f} us vs {b * 1e6:.2f} us (hash cache warm)",
    )  # fmt: skip


def run() -> list[Row]:
    from openfeature import api

    flags = FeatureFlags([Flag("beta"), Flag("color", variants=VARIANTS, default="red")])
    try:
        flags.enable("beta")
        flags.set_split("color", SPLIT)
        ours, theirs = _clients(flags)
        return [*_boolean_rows(flags, ours, theirs), _string_row(flags, ours, theirs)]
    finally:
        api.clear_providers()
        flags.close()


if __name__ == "__main__":
    for row in run():
        print(row)
