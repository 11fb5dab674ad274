"""RedisFlagStore: flag propagation node A -> node B, and enabled() staying a local read.

Starts its own redis-server on a free port (tests.redis_support). Node B runs in
a separate OS process (tests.redis_flags._node) and stamps, with the system-wide
monotonic clock, the moment its ``FeatureFlags`` listener fires -- after its
local cache was rebuilt, so ``enabled()`` there already answers the new value.
A same-process B (a second store with its own connection and listener thread)
is measured too.
"""

from __future__ import annotations

import threading
import time

from tests.redis_flags._support import Node
from tests.redis_support import RedisServer

from benchmarks._harness import Row, compare
from foundation.flags import FeatureFlags, Flag, FlagChange, MemoryFlagStore, RedisFlagStore

SECTION = "redis flags"
SAMPLES = 300
TARGET_MS = 10.0  # docs/contract.md: a write on node A visible on node B, p99 on loopback
FLAGS = (Flag("beta"), Flag("gamma"), Flag("kill_switch", default=True))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cross_process(url: str) -> list[float]:
    node = Node(url, "bench-xproc")
    try:
        node.expect("ready")
        with RedisFlagStore(url, namespace="bench-xproc") as store:
            a = FeatureFlags(FLAGS, store=store)
            latencies = []
            for i in range(SAMPLES):
                on = i % 2 == 0
                t0 = time.monotonic_ns()
                if on:
                    a.enable("beta")
                else:
                    a.disable("beta")
                line = node.expect(f"change beta {on}")
                latencies.append((int(line.split()[-1]) - t0) / 1e6)
            a.close()
    finally:
        node.close()
    return latencies


def _same_process(url: str) -> list[float]:
    seen = threading.Event()
    stamp = [0]

    def on_change(change: FlagChange) -> None:
        stamp[0] = time.monotonic_ns()
        seen.set()

    with (
        RedisFlagStore(url, namespace="bench-local") as store_a,
        RedisFlagStore(url, namespace="bench-local") as store_b,
    ):
        a, b = FeatureFlags(FLAGS, store=store_a), FeatureFlags(FLAGS, store=store_b)
        b.subscribe(on_change)
        latencies = []
        for i in range(SAMPLES):
            seen.clear()
            t0 = time.monotonic_ns()
            a.set("beta", i % 2 == 0)
            if not seen.wait(10):
                raise RuntimeError("node B never saw the change")
            latencies.append((stamp[0] - t0) / 1e6)
        a.close()
        b.close()
    return latencies


def _latency_rows(what: str, latencies: list[float]) -> list[Row]:
    p50, p99 = _percentile(latencies, 0.50), _percentile(latencies, 0.99)
    detail = f"{len(latencies)} changes; max {max(latencies):.2f} ms"
    return [
        Row(SECTION, f"propagation p50, {what}", "-", p50, " ms", "info", None, detail),
        Row(
            SECTION,
            f"propagation p99, {what}",
            "-",
            p99,
            " ms",
            f"info (aim <= {TARGET_MS:g} ms)",
            None,
            detail + ("; within the aim" if p99 <= TARGET_MS else "; ABOVE the aim"),
        ),
    ]


def _read_rows(url: str) -> list[Row]:
    table = {"beta": True, "gamma": False}
    get = table.get
    with (
        RedisFlagStore(url, namespace="bench-reads") as redis_store,
        MemoryFlagStore() as memory_store,
    ):
        on_redis = FeatureFlags(FLAGS, store=redis_store)
        on_memory = FeatureFlags(FLAGS, store=memory_store)
        on_redis.enable("beta")
        on_memory.enable("beta")
        redis_enabled, memory_enabled = on_redis.enabled, on_memory.enabled

        def redis_reads(n: int) -> None:
            for _ in range(n):
                redis_enabled("beta")

        def memory_reads(n: int) -> None:
            for _ in range(n):
                memory_enabled("beta")

        def dict_reads(n: int) -> None:
            for _ in range(n):
                get("beta")

        n = 200_000
        vs_dict, r_s, d_s = compare(redis_reads, dict_reads, n)
        vs_memory, r2_s, m_s = compare(redis_reads, memory_reads, n)
        on_redis.close()
        on_memory.close()
    return [
        Row(
            SECTION,
            "enabled(name), Redis store",
            "dict.get",
            vs_dict,
            "x",
            "<= 2x",
            vs_dict <= 2.0,
            f"{r_s * 1e9:.0f} ns vs {d_s * 1e9:.0f} ns",
        ),
        Row(
            SECTION,
            "enabled(name), Redis store",
            "enabled(name), memory store",
            vs_memory,
            "x",
            "info (~1x: reads are local)",
            None,
            f"{r2_s * 1e9:.0f} ns vs {m_s * 1e9:.0f} ns",
        ),
    ]


TRIM_LIMIT = 1000


def _trim_rows(url: str) -> list[Row]:
    """Commit cost with ``history_limit=1000`` (at the limit, so a trim of 100 entries
    lands every 100 commits of the measurement) against ``history_limit=None``,
    each with a node copy file, interleaved in one run."""
    import tempfile
    from pathlib import Path

    from benchmarks._trim_cost import trim_cost_row

    with tempfile.TemporaryDirectory() as tmp:
        trimmed = RedisFlagStore(
            url, namespace="bench-trim", cache_path=Path(tmp) / "trim.sqlite3",
            history_limit=TRIM_LIMIT,
        )  # fmt: skip
        unbounded = RedisFlagStore(
            url, namespace="bench-untrimmed", cache_path=Path(tmp) / "all.sqlite3",
            history_limit=None,
        )  # fmt: skip
        with trimmed, unbounded:
            row = trim_cost_row(
                SECTION, FLAGS, trimmed, unbounded, limit=TRIM_LIMIT, n=200, entries="entries"
            )
    return [row]


def run() -> list[Row]:
    with RedisServer() as server:
        rows = _latency_rows("B in another process", _cross_process(server.url))
        rows += _latency_rows("B in the same process", _same_process(server.url))
        rows += _read_rows(server.url)
        rows += _trim_rows(server.url)
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
