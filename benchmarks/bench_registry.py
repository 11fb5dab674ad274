"""MemoryRegistry benchmarks (docs/contract.md "Performance targets"), side by side in one run.

python -m benchmarks registry
python -m benchmarks.bench_registry          # this module alone (prints the table)
python -m benchmarks.bench_registry pairs    # only the per-kind register and memory rows

Rows:
- lookup hit at 100k entries vs ``dict.get`` on a dict of the same size (<= 2.5x),
  with str keys, StrEnum and IntEnum members as the key, and ("agent", n) tuples;
- lookup at 1M vs 1k entries (<= 1.5x): the same 1k hot keys in both, so the
  row measures table size, not working-set size (an info row gives uniform
  random keys over 1M, where cache misses dominate — dict.get alike); the 1M
  entries share ONE long-lived ``spawn_thread`` agent (one monitor each);
- find_by_attribute with a StrEnum member as the value vs the same with the
  plain str (<= 1.5x, and no scan: ``stats().scans`` must not move);
- register+unregister (concurrent Future, 2-key metadata, 1 index) with a
  StrEnum member as the key, and with StrEnum/IntEnum metadata values, vs the
  same with plain values (<= 1.5x) and absolute (<= 3 us);
- register+unregister with a monitor vs dict insert+pop, per agent kind
  (asyncio Task, asyncio Future, concurrent.futures.Future, spawn_thread
  thread), bare and with realistic metadata (2 keys, 1 indexed): <= 25x and
  <= 3 us per pair each; all measured on a running event loop (the asyncio
  kinds' own); an OS process (pidfd open+close per pair) for its cost;
- cleanup cost per dead entry (<= 5 us): N entries registered on one
  ``concurrent.futures.Future``; completing it runs every entry's down handler
  on the completing thread; the time from ``set_result`` until ``count() == 0``
  divided by N (the handler path: lock, remove, unindex);
- tracemalloc bytes per entry (<= 1024), per agent kind: 100k distinct agents
  (1k distinct threads), 2-key metadata, 1 indexed attribute; the metadata
  copy, the monitor, the watch, the index and the materialised ``Entry`` are
  all counted (keys, agents and the caller's metadata dicts exist before
  measuring).

Note: the table holds each registration's ``Entry`` itself (built by
``register``), so register+unregister pays for it and ``lookup`` is one
``dict.get``. OS-process death latency is in ``bench_liveness``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import functools
import gc
import random
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any, TypeVar

from benchmarks._harness import Row, compare
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry

SECTION = "registry"


def _lookup_rows(agent: Any) -> list[Row]:
    """lookup hits at 100k entries vs dict.get, for str, StrEnum, IntEnum and tuple keys."""
    n = 100_000
    picked = random.Random(1).sample(range(n), 20_000)
    str_keys = enum.StrEnum("AgentKey", {f"K{i}": f"agent-{i}" for i in picked})  # type: ignore[misc]
    int_keys = enum.IntEnum("AgentNo", {f"K{i}": i for i in picked})  # type: ignore[misc]
    rows: list[Row] = []
    for label, keys, probes in (
        ("str key", [f"agent-{i}" for i in range(n)], [f"agent-{i}" for i in picked]),
        ("StrEnum member as the key", [f"agent-{i}" for i in range(n)], list(str_keys)),
        ("IntEnum member as the key", list(range(n)), list(int_keys)),
        ("(str, int) tuple key", [("agent", i) for i in range(n)], [("agent", i) for i in picked]),
    ):
        with MemoryRegistry() as registry:
            for k in keys:
                registry.register(k, agent)
            plain = {k: registry.lookup(k) for k in keys}  # same size, same Entry objects
            lookup, get = registry.lookup, plain.get
            assert all(lookup(p) is get(p) is not None for p in probes[:100])

            def subject(m: int) -> None:
                for k in probes[:m]:  # noqa: B023 - used within this iteration
                    lookup(k)  # noqa: B023

            def baseline(m: int) -> None:
                for k in probes[:m]:  # noqa: B023
                    get(k)  # noqa: B023

            ratio, s, b = compare(subject, baseline, len(probes))
        rows.append(Row(SECTION, f"lookup hit, 100k entries, {label}", "dict.get, same size",
                        ratio, "x", "<= 2.5x", ratio <= 2.5,
                        f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns"))  # fmt: skip
    return rows


def _scale_rows(agent: Any) -> list[Row]:
    """Table size, not working-set size: the same 1k hot keys looked up in a 1M-entry
    and a 1k-entry registry (the target row); plus, for information, uniform random
    keys over all 1M entries (then cache misses dominate, and dict.get shows the same)."""
    big_n, small_n, m = 1_000_000, 1_000, 20_000
    t0 = time.perf_counter()
    big_keys = [f"agent-{i}" for i in range(big_n)]
    big = MemoryRegistry()
    small = MemoryRegistry()
    try:
        register = big.register
        for k in big_keys:
            register(k, agent)
        build = time.perf_counter() - t0
        rng = random.Random(2)
        hot = rng.sample(big_keys, small_n)
        for k in hot:
            small.register(k, agent)
        hot_sample = [hot[rng.randrange(small_n)] for _ in range(m)]
        wide_sample = [big_keys[rng.randrange(big_n)] for _ in range(m)]
        for k in hot_sample + wide_sample:  # warm the caches alike for both registries
            big.lookup(k)
        big_lookup, small_lookup = big.lookup, small.lookup

        def big_hot(count: int) -> None:
            for k in hot_sample[:count]:
                big_lookup(k)

        def small_hot(count: int) -> None:
            for k in hot_sample[:count]:
                small_lookup(k)

        def big_wide(count: int) -> None:
            for k in wide_sample[:count]:
                big_lookup(k)

        ratio, s, b = compare(big_hot, small_hot, m)
        wide, ws, _ = compare(big_wide, small_hot, m, rounds=3)
        plain_big = dict.fromkeys(big_keys)
        plain_small = dict.fromkeys(hot)

        def dict_wide(count: int) -> None:
            get = plain_big.get
            for k in wide_sample[:count]:
                get(k)

        def dict_hot(count: int) -> None:
            get = plain_small.get
            for k in hot_sample[:count]:
                get(k)

        def dict_big_hot(count: int) -> None:
            get = plain_big.get
            for k in hot_sample[:count]:
                get(k)

        dict_ratio, _, _ = compare(dict_wide, dict_hot, m, rounds=3)
        dict_hot_ratio, _, _ = compare(dict_big_hot, dict_hot, m, rounds=3)
    finally:
        big.close()
        small.close()
    return [
        Row(SECTION, "lookup at 1M entries (same 1k hot keys)", "lookup at 1k entries", ratio,
            "x", "<= 1.5x", ratio <= 1.5,
            f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns; dict.get: {dict_hot_ratio:.2f}x; "
            f"1M built in {build:.1f} s"),
        Row(SECTION, "lookup at 1M entries (uniform random keys)", "lookup at 1k entries", wide,
            "x", "info", None,
            f"{ws * 1e9:.0f} ns; dict.get shows {dict_ratio:.2f}x for the same access pattern"),
    ]  # fmt: skip


class _Kinds:
    """One live agent of each kind, and a running event loop to use them on.

    The asyncio kinds are registered from a coroutine on their own loop (the
    realistic case: ``_get_running_loop() is loop``); every other kind is
    measured on the same loop thread too, so all rows share one setting.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = spawn_thread(self.stop.wait, name="bench-registry-kind")
        self.cf: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.future: asyncio.Future[None] = self.loop.create_future()
        self.task = self.loop.create_task(self._idle())
        self.proc = subprocess.Popen(["sleep", "600"])

    async def _idle(self) -> None:
        await asyncio.Event().wait()

    def agents(self) -> list[tuple[str, Any]]:
        return [
            ("asyncio Task", self.task),
            ("asyncio Future", self.future),
            ("concurrent Future", self.cf),
            ("spawn_thread thread", self.thread),
        ]

    def on_loop(self, fn: Callable[[], _T]) -> _T:
        async def call() -> _T:
            return fn()

        return self.loop.run_until_complete(call())

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.task.cancel()
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))
        self.future.cancel()
        self.loop.close()
        self.cf.cancel()
        self.proc.kill()
        self.proc.wait()


_T = TypeVar("_T")
_METADATA = {"role": "io", "n": 1}  # realistic: 2 keys, 1 of them indexed


def _pair_rows(kind: str, agent: Any, n: int, *, target: bool = True) -> list[Row]:
    """register+unregister on ``agent`` vs dict insert+pop, bare and with metadata."""
    keys = [f"k{i}" for i in range(n)]
    plain: dict[str, Any] = {}

    def baseline(m: int) -> None:
        for k in keys[:m]:
            plain[k] = agent
            plain.pop(k)

    rows: list[Row] = []
    for label, indexed, metadata in (
        ("bare", (), None),
        ("2-key metadata, 1 index", ("role",), _METADATA),
    ):
        with MemoryRegistry(indexed=indexed) as registry:
            register, unregister = registry.register, registry.unregister

            def subject(m: int) -> None:
                for k in keys[:m]:
                    register(k, agent, metadata)  # noqa: B023 - used within this iteration
                    unregister(k)  # noqa: B023

            ratio, s, b = compare(subject, baseline, n)
        what = f"register+unregister with monitor, {kind}, {label}"
        detail = f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns per pair"
        if not target:
            rows.append(Row(SECTION, what, "dict insert+pop", ratio, "x", "info", None, detail))
            continue
        rows += [
            Row(SECTION, what, "dict insert+pop", ratio, "x", "<= 25x", ratio <= 25, detail),
            Row(SECTION, what, "absolute", s * 1e6, " us", "<= 3 us", s * 1e6 <= 3, detail),
        ]  # fmt: skip
    return rows


def _register_rows(kinds: _Kinds) -> list[Row]:
    rows: list[Row] = []
    for kind, agent in kinds.agents():
        rows += kinds.on_loop(functools.partial(_pair_rows, kind, agent, 10_000))
    # An OS process: the first monitor opens a pidfd and the last closes it, so
    # each pair pays two syscalls and an epoll change. Reported for its cost.
    rows += _pair_rows("OS process (pidfd)", kinds.proc, 1_000, target=False)
    return rows


class _Zone(enum.StrEnum):
    IO = "io"


class _Level(enum.IntEnum):
    ONE = 1


def _enum_pair_rows(agent: Any) -> list[Row]:
    """register+unregister with enum members (as the key; as metadata values) vs plain ones."""
    n = 10_000
    members = enum.StrEnum("PairKey", {f"K{i}": f"k{i}" for i in range(n)})  # type: ignore[misc]
    plain_keys = [f"k{i}" for i in range(n)]
    plain_md = {"role": "io", "n": 1}
    rows: list[Row] = []
    for label, keys, metadata in (
        ("StrEnum member as the key", list(members), plain_md),
        ("StrEnum/IntEnum metadata values", plain_keys, {"role": _Zone.IO, "n": _Level.ONE}),
    ):
        with MemoryRegistry(indexed=("role",)) as registry:
            register, unregister = registry.register, registry.unregister

            def subject(m: int) -> None:
                for k in keys[:m]:  # noqa: B023 - used within this iteration
                    register(k, agent, metadata)  # noqa: B023
                    unregister(k)  # noqa: B023

            def baseline(m: int) -> None:
                for k in plain_keys[:m]:
                    register(k, agent, plain_md)  # noqa: B023
                    unregister(k)  # noqa: B023

            subject(10)  # the members' types are learnt once, as in a running program
            ratio, s, b = compare(subject, baseline, n)
        what = f"register+unregister with monitor, concurrent Future, {label}, 1 index"
        detail = f"{s * 1e9:.0f} ns vs {b * 1e9:.0f} ns per pair"
        rows += [
            Row(SECTION, what, "the same with plain str/int", ratio, "x", "<= 1.5x",
                ratio <= 1.5, detail),
            Row(SECTION, what, "absolute", s * 1e6, " us", "<= 3 us", s * 1e6 <= 3, detail),
        ]  # fmt: skip
    return rows


def _find_row(agent: Any) -> Row:
    n = 100_000
    with MemoryRegistry(indexed=("role",)) as registry:
        for i in range(n):
            registry.register(i, agent, {"role": f"r{i % (n // 10)}", "n": i})
        entries = registry.list_all()
        value = "r1234"

        def subject(m: int) -> None:
            for _ in range(m):
                registry.find_by_attribute("role", value)

        def baseline(m: int) -> None:
            for _ in range(m):
                [e for e in entries if e.metadata.get("role") == value]

        assert len(registry.find_by_attribute("role", value)) == 10
        ratio, s, b = compare(baseline, subject, 5, rounds=3, repeat=2)  # speed-up
    return Row(SECTION, "find_by_attribute, indexed, 100k entries, 10 matches",
               "full scan over the entries", ratio, "x faster", ">= 100x", ratio >= 100,
               f"{b * 1e6:.1f} us vs {s * 1e3:.1f} ms")  # fmt: skip


class _Role(enum.StrEnum):
    R1234 = "r1234"


def _enum_probe_row(agent: Any) -> Row:
    """An enum member as the probe must be served by the index like the plain value."""
    n = 100_000
    with MemoryRegistry(indexed=("role",)) as registry:
        for i in range(n):
            registry.register(i, agent, {"role": f"r{i % (n // 10)}", "n": i})
        find = registry.find_by_attribute
        member, value = _Role.R1234, "r1234"
        assert len(find("role", member)) == len(find("role", value)) == 10
        scans = registry.stats().scans

        def subject(m: int) -> None:
            for _ in range(m):
                find("role", member)

        def baseline(m: int) -> None:
            for _ in range(m):
                find("role", value)

        ratio, s, b = compare(subject, baseline, 2_000)
        scanned = registry.stats().scans - scans
    return Row(SECTION, "find_by_attribute, indexed, StrEnum member as the value",
               "the same with the plain str", ratio, "x", "<= 1.5x",
               ratio <= 1.5 and scanned == 0,
               f"{s * 1e6:.1f} us vs {b * 1e6:.1f} us; scans: {scanned}")  # fmt: skip


def _cleanup_row() -> Row:
    n = 50_000
    best = float("inf")
    for _ in range(3):
        with MemoryRegistry(indexed=("role",)) as registry:
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            for i in range(n):
                registry.register(i, fut, {"role": f"r{i % 100}"})
            gc.collect()
            t0 = time.perf_counter()
            fut.set_result(None)  # every down handler runs here, on this thread
            while registry.count():
                pass  # not reached when handlers ran synchronously; bounded by them
            best = min(best, (time.perf_counter() - t0) / n)
            assert registry.stats().index_sizes == {"role": 0}
    return Row(SECTION, "cleanup of dead entries (down handler path)", "per entry", best * 1e6,
               " us", "<= 5 us", best * 1e6 <= 5, f"{n} entries on one future")  # fmt: skip


def _memory_per_entry(agents: list[Any], on_loop: Callable[[Callable[[], float]], float]) -> float:
    """tracemalloc growth per entry: one entry per agent, 2-key metadata, 1 index."""
    n = len(agents)
    keys = [f"agent-{i}" for i in range(n)]
    metadata = [{"role": f"r{i % 1000}", "n": i} for i in range(n)]
    registry = MemoryRegistry(indexed=("role",))

    def measure() -> float:
        registry.register("warm-up", agents[0])  # the manager's own one-off state
        registry.unregister("warm-up")
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        register = registry.register
        for k, a, md in zip(keys, agents, metadata, strict=True):
            register(k, a, md)
        registry.list_all()  # materialise every Entry: counted too
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return (after - before) / n

    try:
        return on_loop(measure)
    finally:
        registry.close()


def _memory_rows(kinds: _Kinds) -> list[Row]:
    """Bytes per entry for 100k distinct agents of each kind (1k distinct threads).

    Keys, agents and the caller's metadata dicts exist before measuring; the
    metadata copy, the monitor, the watch (for kinds whose watch is made on
    first monitor), the index and the materialised ``Entry`` are all counted.
    """
    n = 100_000
    loop = kinds.loop
    rows: list[Row] = []

    def row(kind: str, per_entry: float, detail: str) -> None:
        rows.append(
            Row(SECTION, f"memory per entry, {kind} (2-key metadata, 1 index)",
                "tracemalloc growth / entries", per_entry, " B", "<= 1024 B",
                per_entry <= 1024, detail)
        )  # fmt: skip

    futures = [loop.create_future() for _ in range(n)]
    row("asyncio Future", _memory_per_entry(futures, kinds.on_loop), "100k futures")
    for f in futures:
        f.cancel()
    del futures

    async def idle() -> None:
        await asyncio.Event().wait()

    tasks = [loop.create_task(idle()) for _ in range(n)]
    row("asyncio Task", _memory_per_entry(tasks, kinds.on_loop), "100k tasks")
    for t in tasks:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    del tasks

    cfs: list[concurrent.futures.Future[None]] = [concurrent.futures.Future() for _ in range(n)]
    row("concurrent Future", _memory_per_entry(cfs, kinds.on_loop), "100k futures")
    del cfs

    stop = threading.Event()
    threads = [spawn_thread(stop.wait) for _ in range(1_000)]
    try:
        per = _memory_per_entry(threads, kinds.on_loop)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    row("spawn_thread thread", per, "1k threads (100k threads do not fit this machine)")
    return rows


def run_pairs() -> list[Row]:
    """Only the per-agent-kind rows: register+unregister and memory per entry."""
    kinds = _Kinds()
    try:
        return _register_rows(kinds) + _memory_rows(kinds)
    finally:
        kinds.close()


def run() -> list[Row]:
    stop = threading.Event()
    agent = spawn_thread(stop.wait, name="bench-registry-agent")
    try:
        rows = _lookup_rows(agent)
        rows.extend(_scale_rows(agent))
        rows.append(_find_row(agent))
        rows.append(_enum_probe_row(agent))
    finally:
        stop.set()
        agent.join()
    kinds = _Kinds()
    try:
        rows.extend(_register_rows(kinds))
        rows.extend(kinds.on_loop(functools.partial(_enum_pair_rows, kinds.cf)))
        rows.extend(_memory_rows(kinds))
    finally:
        kinds.close()
    rows.append(_cleanup_row())
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks.__main__ import _format

    print(_format(run_pairs() if sys.argv[1:] == ["pairs"] else run()))
