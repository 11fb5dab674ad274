"""Chaos rows (issue 9): what a Redis fault costs a running application.

Every figure is measured here, against real redis-server processes on free
loopback ports (``foundation._demo._redis_server``), each scenario on a fresh
server:

- **supervised**: a ``Supervisor`` with a ``RedisRegistry`` restarts a child
  that crashes every 0.25 s, three healthy children serve, and four tasks
  ``register_async``/``unregister_async`` flat out, while redis-server is
  frozen (SIGSTOP, 3 s), made read-only (``REPLICAOF``, 2 s), then killed and
  restarted empty. A 1 ms asyncio ticker measures the loop's lateness; the
  healthy children count their own ends.
- **flags**: two ``FeatureFlags`` over ``RedisFlagStore`` (each with a node
  cache) hold N runtime changes; redis-server is killed and restarted empty; a
  sampler thread counts every flag whose ``enabled()`` ever differed on either
  node.
- **registrations**: two ``RedisRegistry`` nodes hold 100 live agents each;
  three kill + restart-empty cycles; after each, the agents each node sees of
  the other (with their current metadata: ten are updated right after the
  restart, while the nodes re-assert).
- **frozen node**: a node in a subprocess (``python -m benchmarks.bench_chaos
  node ...``) is SIGSTOPped until an observer node has reaped its lease, then
  thawed; its own listeners must hear no ``"replaced"`` for keys it never lost.
- **recovery**: from the moment Redis is back (thawed, writable, restarted) to
  every node connected, not stale, and every live agent visible on every node.

A scenario that raises (a missing API, a library defect) gives FAIL rows whose
detail names the error; the other scenarios still run.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._harness import Row
from foundation._demo._chaos import stall_samples
from foundation._demo._redis_server import RedisServerProcess
from foundation.errors import BackendUnavailable, FoundationError
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.liveness import spawn_thread
from foundation.registry import RedisRegistry, RegistryEvent
from foundation.supervision import ChildContext, ChildSpec, Supervisor

SECTION = "chaos"
REPO = Path(__file__).resolve().parents[1]
STALL_TARGET_MS = 10.0
RECOVERY_BOUND = 15.0  # seconds; a node not recovered by then counts as not recovered
FREEZE_S = 3.0
HOLD_S = 2.0
HEALTHY = 3
WRITERS = 4
FLAG_COUNT = 40
AGENTS_PER_NODE = 100
RESTART_CYCLES = 3
FROZEN_NODE_AGENTS = 100
FROZEN_NODE_CYCLES = 4
FROZEN_NODE_TTL = 1.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _error_text(exc: BaseException) -> str:
    return f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def _healthy(registry: RedisRegistry) -> bool:
    """Connected and not stale, as the node itself reports it."""
    status = registry.status()
    return bool(status.connected) and not bool(status.stale)


def _poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(interval)  # sleep-ok: polling a condition with a deadline
    return True


# ---------------------------------------------------------------- supervised


@dataclass
class _Supervised:
    stall_frozen_ms: list[float] = field(default_factory=list)
    stall_other_ms: list[float] = field(default_factory=list)
    ticks: int = 0
    raw_p99_ms: float = math.nan
    healthy_ms: list[float] = field(default_factory=list)
    stopped: int = 0
    shutting_down: bool = False
    supervisor_state: str = "?"
    crasher_runs: int = 0
    writes: collections.Counter[str] = field(default_factory=collections.Counter)
    recoveries: dict[str, float] = field(default_factory=dict)


async def _healthy_child(ctx: ChildContext, out: _Supervised) -> None:
    ctx.ready()
    try:
        await asyncio.Event().wait()  # serve until cancelled
    finally:
        if not out.shutting_down:
            out.stopped += 1  # a healthy child ended before the scenario did


async def _crashing_child(ctx: ChildContext, out: _Supervised) -> None:
    out.crasher_runs += 1
    ctx.ready()
    await asyncio.sleep(0.25)
    raise RuntimeError("bench: simulated crash")


async def _ticker(samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """Sleep 1 ms at a time and record (start, lateness in ms)."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        samples.append((t0, (time.perf_counter() - t0 - 0.001) * 1000))


async def _writer(registry: Any, n: int, out: _Supervised, stop: asyncio.Event) -> None:
    register = getattr(registry, "register_async", None)
    unregister = getattr(registry, "unregister_async", None)
    if register is None or unregister is None:
        out.writes["no register_async/unregister_async"] += 1
        return
    key = ("bench-writer", n)
    me = asyncio.current_task()
    while not stop.is_set():
        try:
            await register(key, me, {"n": n}, replace=True)
            await unregister(key)
            out.writes["ok"] += 1
        except BackendUnavailable:
            out.writes["BackendUnavailable"] += 1
        except Exception as exc:  # anything else is a defect: counted, shown in the detail
            out.writes[type(exc).__name__] += 1
        await asyncio.sleep(0.005)


def _all_visible(observer: RedisRegistry, keys: list[str], node: str) -> bool:
    for key in keys:
        entry = observer.lookup(key)
        if entry is None or entry.node != node:
            return False
    return True


async def _recovered_after(
    back: float, registry: RedisRegistry, observer: RedisRegistry, keys: list[str]
) -> float:
    """Seconds from ``back`` until both nodes are healthy and ``keys`` are visible."""

    def done() -> bool:
        return (
            _healthy(registry)
            and _healthy(observer)
            and _all_visible(observer, keys, registry.node)
            and _all_visible(registry, keys, registry.node)
        )

    # Polled from a worker thread: the scenario's own checks never stall the loop.
    ok = await asyncio.to_thread(_poll, done, RECOVERY_BOUND)
    return time.perf_counter() - back if ok else math.nan


async def _supervised_scenario(server: RedisServerProcess, out: _Supervised) -> None:
    url = server.url
    registry = await asyncio.to_thread(
        RedisRegistry, url, namespace="chaos-sup", node="bench-supervised"
    )
    observer = await asyncio.to_thread(
        RedisRegistry, url, namespace="chaos-sup", node="bench-observer"
    )
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    specs = [ChildSpec(f"healthy-{i}", _healthy_child, args=(out,)) for i in range(HEALTHY)]
    specs.append(ChildSpec("crasher", _crashing_child, args=(out,)))
    keys = [f"healthy-{i}" for i in range(HEALTHY)]
    sup = Supervisor(
        specs, registry=registry, max_restarts=100, max_seconds=10.0, name="bench-chaos"
    )
    try:
        await sup.start()
        tasks = [asyncio.create_task(_ticker(samples, stop))]
        tasks += [asyncio.create_task(_writer(registry, n, out, stop)) for n in range(WRITERS)]
        warm_from = time.perf_counter()
        await asyncio.sleep(1.5)  # warm: crashes, restarts and writes on a healthy Redis

        frozen_at = time.perf_counter()
        server.freeze()  # a signal: returns at once
        await asyncio.sleep(FREEZE_S)
        server.thaw()
        thawed_at = time.perf_counter()
        out.recoveries["frozen (SIGSTOP 3 s)"] = await _recovered_after(
            thawed_at, registry, observer, keys
        )

        await asyncio.to_thread(server.make_read_only)
        await asyncio.sleep(HOLD_S)
        await asyncio.to_thread(server.make_writable)
        out.recoveries["read-only (REPLICAOF 2 s)"] = await _recovered_after(
            time.perf_counter(), registry, observer, keys
        )

        await asyncio.to_thread(server.kill)
        await asyncio.sleep(HOLD_S)
        await asyncio.to_thread(server.start)
        out.recoveries["killed, restarted empty"] = await _recovered_after(
            time.perf_counter(), registry, observer, keys
        )
        out.shutting_down = True
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        frozen = [late for t0, late in samples if frozen_at <= t0 <= thawed_at]
        out.ticks, out.raw_p99_ms = len(frozen), _percentile(frozen, 0.99)
        # The same loop with Redis healthy: the machine's own noise, for comparison.
        out.healthy_ms = stall_samples(
            [late for t0, late in samples if warm_from + 0.5 <= t0 < frozen_at]
        )
        out.stall_frozen_ms = stall_samples(
            [late for t0, late in samples if frozen_at <= t0 <= thawed_at]
        )
        out.stall_other_ms = stall_samples([late for t0, late in samples if t0 > thawed_at])
    finally:
        out.shutting_down = True
        out.supervisor_state = sup.state
        with contextlib.suppress(FoundationError):
            await sup.stop()
        await asyncio.to_thread(observer.close)
        await asyncio.to_thread(registry.close)


def _supervised_rows(recoveries: list[float]) -> list[Row]:
    out = _Supervised()
    error = ""
    try:
        with RedisServerProcess() as server:
            asyncio.run(_supervised_scenario(server, out))
    except Exception as exc:  # reported as FAIL rows, the other scenarios still run
        error = _error_text(exc)
    recoveries.extend(out.recoveries.values())
    p99 = _percentile(out.stall_frozen_ms, 0.99)
    writes = ", ".join(f"{k} {v}" for k, v in sorted(out.writes.items())) or "none"
    stall_detail = (
        f"{out.ticks} ticks while frozen {FREEZE_S:g} s (p99 corrected for coordinated "
        f"omission; uncorrected {out.raw_p99_ms:.1f} ms); "
        f"max {max(out.stall_frozen_ms, default=math.nan):.1f} ms; "
        f"same loop, Redis healthy: p99 {_percentile(out.healthy_ms, 0.99):.1f} ms; "
        f"through read-only and restart-empty p99 {_percentile(out.stall_other_ms, 0.99):.1f} ms; "
        f"async writes: {writes}"
    )
    stopped_detail = (
        f"{HEALTHY} healthy children through freeze, read-only, restart-empty; "
        f"crashing sibling ran {out.crasher_runs} times; supervisor {out.supervisor_state}"
    )
    no_async = any(k.startswith("no ") for k in out.writes)
    other_errors = sum(v for k, v in out.writes.items() if k not in ("ok", "BackendUnavailable"))
    return [
        Row(
            SECTION,
            "event-loop stall while redis-server is frozen, p99",
            "1 ms asyncio ticker",
            p99,
            " ms",
            f"<= {STALL_TARGET_MS:g} ms",
            not error and not no_async and other_errors == 0 and p99 <= STALL_TARGET_MS,
            " ".join(x for x in (error, stall_detail) if x),
        ),
        Row(
            SECTION,
            "healthy children stopped by a registry outage",
            "Supervisor + RedisRegistry",
            float(out.stopped),
            "",
            "0",
            not error and out.stopped == 0 and out.supervisor_state != "failed",
            " ".join(x for x in (error, stopped_detail) if x),
        ),
    ]


# ---------------------------------------------------------------- flags


def _flags_row(recoveries: list[float]) -> Row:
    declared = [Flag(f"f{i:02d}", default=(i % 3 == 0)) for i in range(FLAG_COUNT)]
    expected = {f.name: not f.default for f in declared}
    reverted: set[str] = set()
    detail = ""
    error = ""
    try:
        with (
            RedisServerProcess() as server,
            tempfile.TemporaryDirectory(prefix="bench-chaos-flags-") as tmp,
        ):
            url, ns = server.url, "chaos-flags"
            stores = [
                RedisFlagStore(url, namespace=ns, cache_path=Path(tmp) / f"node-{n}.sqlite3")
                for n in "ab"
            ]
            nodes = [FeatureFlags(declared, store=s) for s in stores]
            try:
                a, b = nodes
                for i, flag in enumerate(declared):
                    a.set(flag.name, not flag.default, by="bench", reason="rollout")
                    if i % 4 == 1:
                        a.allow(flag.name, f"user-{i}", by="bench")
                if not _poll(lambda: all(b.enabled(n) == v for n, v in expected.items()), 10):
                    raise RuntimeError("node B never saw node A's flag changes")
                history_before = len(a.history())
                stop = threading.Event()

                def sample() -> None:
                    while not stop.is_set():
                        for node in nodes:
                            for name, want in expected.items():
                                with contextlib.suppress(FoundationError):
                                    if node.enabled(name) != want:
                                        reverted.add(name)
                        time.sleep(0.001)  # sleep-ok: sampling period of the measurement

                sampler = threading.Thread(target=sample, name="bench-flag-sampler")
                sampler.start()
                try:
                    server.kill()
                    time.sleep(1.0)  # sleep-ok: the outage being measured lasts 1 s
                    server.start()
                    back = time.perf_counter()

                    def restored() -> bool:
                        # A node started now, with no cache, reads Redis only.
                        with RedisFlagStore(url, namespace=ns, cache_path=None) as fresh:
                            view = FeatureFlags(declared, store=fresh)
                            try:
                                return all(view.enabled(n) == v for n, v in expected.items())
                            finally:
                                view.close()

                    ok = _poll(restored, RECOVERY_BOUND, interval=0.05)
                    took = time.perf_counter() - back
                    recoveries.append(took if ok else math.nan)
                    # Keep sampling a little after recovery: a late revert counts too.
                    time.sleep(0.5)  # sleep-ok: the tail of the measured window
                finally:
                    stop.set()
                    sampler.join()
                history_after = len(a.history())
                detail = (
                    f"{FLAG_COUNT} flags, 2 nodes with node caches; Redis "
                    f"{'restored' if ok else 'NOT restored'} after {took:.2f} s; "
                    f"history {history_after}/{history_before} entries"
                )
            finally:
                for node in nodes:
                    node.close()
                for store in stores:
                    store.close()
    except Exception as exc:
        error = _error_text(exc)
    return Row(
        SECTION,
        "flags reverted after Redis restarts empty",
        f"{FLAG_COUNT} runtime changes, enabled() sampled on 2 nodes",
        float(len(reverted)) if not error else math.nan,
        "",
        "0",
        not error and not reverted,
        error or detail,
    )


# ---------------------------------------------------------------- registrations


def _registrations_row(recoveries: list[float]) -> Row:
    expected = restored = 0
    update_refused: collections.Counter[str] = collections.Counter()
    error = ""
    stop = threading.Event()
    try:
        with RedisServerProcess() as server:
            url, ns = server.url, "chaos-reg"
            nodes: list[RedisRegistry] = []
            try:
                for n in "ab":
                    nodes.append(RedisRegistry(url, namespace=ns, node=f"bench-{n}", lease_ttl=2.0))
                current: dict[tuple[str, int], dict[str, int]] = {}
                for node in nodes:
                    for i in range(AGENTS_PER_NODE):
                        meta = {"i": i, "cycle": -1}
                        node.register((node.node, i), spawn_thread(stop.wait), meta)
                        current[(node.node, i)] = meta

                def visible_everywhere() -> int:
                    seen = 0
                    for key, meta in current.items():
                        for node in nodes:
                            entry = node.lookup(key)
                            if entry is not None and dict(entry.metadata) == meta:
                                seen += 1
                    return seen

                if not _poll(lambda: visible_everywhere() == 2 * len(current), 10):
                    raise RuntimeError("the nodes never saw each other's registrations")
                a = nodes[0]
                for cycle in range(RESTART_CYCLES):
                    server.kill()
                    time.sleep(1.0)  # sleep-ok: the outage being measured lasts 1 s
                    server.start()
                    back = time.perf_counter()
                    # Writes while the nodes re-assert: each must land (retried only
                    # while Redis says BackendUnavailable), never NotRegistered.
                    for i in range(10):
                        meta = {"i": i, "cycle": cycle}
                        deadline = time.monotonic() + RECOVERY_BOUND
                        while True:
                            try:
                                a.update_metadata((a.node, i), meta)
                                current[(a.node, i)] = meta
                                break
                            except BackendUnavailable:
                                if time.monotonic() > deadline:
                                    update_refused["BackendUnavailable (timed out)"] += 1
                                    break
                                time.sleep(0.01)  # sleep-ok: retry period of a refused write
                            except FoundationError as exc:
                                update_refused[type(exc).__name__] += 1
                                break
                    ok = _poll(
                        lambda: (
                            all(_healthy(n) for n in nodes)
                            and visible_everywhere() == 2 * len(current)
                        ),
                        RECOVERY_BOUND,
                    )
                    recoveries.append(time.perf_counter() - back if ok else math.nan)
                    expected += 2 * len(current)
                    restored += visible_everywhere()
            finally:
                for node in nodes:
                    node.close()
    except Exception as exc:
        error = _error_text(exc)
    finally:
        stop.set()
    pct = 100.0 * restored / expected if expected else math.nan
    refused = ", ".join(f"{k} {v}" for k, v in sorted(update_refused.items()))
    detail = (
        f"{2 * AGENTS_PER_NODE} live agents on 2 nodes, {RESTART_CYCLES} restarts; "
        f"{restored}/{expected} seen on every node with current metadata "
        f"within {RECOVERY_BOUND:g} s; update_metadata during re-assert refused: "
        f"{refused or 'never'}"
    )
    return Row(
        SECTION,
        "live registrations restored after Redis restarts empty",
        "every node's view",
        pct,
        " %",
        "100 %",
        not error and expected > 0 and restored == expected and not update_refused,
        " ".join(x for x in (error, detail) if x),
    )


# ---------------------------------------------------------------- frozen node


class _NodeProcess:
    """``python -m benchmarks.bench_chaos node ...``: a registry node to SIGSTOP."""

    def __init__(self, url: str, namespace: str) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'src'}"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_chaos", "node", url, namespace,
             str(FROZEN_NODE_TTL), str(FROZEN_NODE_AGENTS)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="bench-node-reader", daemon=True)
        self._reader.start()
        self.node = str(self.ask(None, timeout=30)["ready"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)  # EOF: the process ended

    def ask(self, command: str | None, timeout: float = 15) -> dict[str, Any]:
        """Send ``command`` (if any) and return the node's next JSON line."""
        assert self.proc.stdin is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            raise RuntimeError(f"the node process did not answer {command!r} ({self.proc.poll()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def close(self) -> None:
        import signal as signals

        if self.proc.poll() is None:
            self.proc.send_signal(signals.SIGCONT)
            with contextlib.suppress(RuntimeError, OSError, ValueError):
                self.ask("exit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._reader.join(timeout=5)  # ends at EOF of stdout: the process is gone
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _node_main(url: str, namespace: str, ttl: float, count: int) -> int:
    """The subprocess body: register ``count`` agents, count "replaced" events."""
    registry = RedisRegistry(url, namespace=namespace, lease_ttl=ttl, node="bench-frozen-node")
    replaced = [0]

    def on_event(event: RegistryEvent) -> None:
        if event.kind == "unregistered" and event.reason == "replaced":
            replaced[0] += 1

    registry.subscribe(on_event)
    stop = threading.Event()
    for i in range(count):
        registry.register(("frozen", i), spawn_thread(stop.wait), {"i": i})
    print(json.dumps({"ready": registry.node}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            conflicts = len(registry.conflicts()) if hasattr(registry, "conflicts") else -1
            print(json.dumps({"replaced": replaced[0], "conflicts": conflicts}), flush=True)
        elif command == "exit":
            break
    registry.close()
    stop.set()
    print(json.dumps({"bye": True}), flush=True)
    return 0


def _frozen_node_row() -> Row:
    import signal as signals

    replaced = -1
    conflicts = -1
    cycles_done = 0
    restore_s: list[float] = []
    error = ""
    try:
        with RedisServerProcess() as server:
            ns = "chaos-frozen"
            observer = RedisRegistry(
                server.url, namespace=ns, node="bench-observer", lease_ttl=FROZEN_NODE_TTL
            )
            node = None
            try:
                node = _NodeProcess(server.url, ns)

                def held() -> int:
                    return sum(1 for e in observer.list_all() if e.node == node.node)  # type: ignore[union-attr]

                if not _poll(lambda: held() == FROZEN_NODE_AGENTS, 10):
                    raise RuntimeError("the observer never saw the node's registrations")
                for _ in range(FROZEN_NODE_CYCLES):
                    node.signal(signals.SIGSTOP)
                    # Frozen past its lease: the observer's heartbeat reaps its entries.
                    reaped = _poll(lambda: held() == 0, 10 * FROZEN_NODE_TTL)
                    node.signal(signals.SIGCONT)
                    if not reaped:
                        raise RuntimeError("the observer never reaped the frozen node's lease")
                    thawed = time.perf_counter()
                    if not _poll(lambda: held() == FROZEN_NODE_AGENTS, RECOVERY_BOUND):
                        raise RuntimeError(
                            f"the thawed node re-asserted {held()}/{FROZEN_NODE_AGENTS} keys"
                        )
                    restore_s.append(time.perf_counter() - thawed)
                    cycles_done += 1
                time.sleep(0.5)  # sleep-ok: window for late "replaced" events to land
                answer = node.ask("count")
                replaced, conflicts = int(answer["replaced"]), int(answer["conflicts"])
            finally:
                if node is not None:
                    node.close()
                observer.close()
    except Exception as exc:
        error = _error_text(exc)
    detail = (
        f"{FROZEN_NODE_AGENTS} keys, lease {FROZEN_NODE_TTL:g} s, {cycles_done} freeze cycles; "
        f"conflicts {conflicts}; re-asserted after thaw in "
        f"p50 {_percentile(restore_s, 0.5):.2f} s, max {max(restore_s, default=math.nan):.2f} s"
    )
    return Row(
        SECTION,
        'false "replaced" events after a node is frozen past its lease',
        "node in a subprocess, SIGSTOP/SIGCONT",
        float(replaced) if replaced >= 0 else math.nan,
        "",
        "0",
        not error and replaced == 0,
        " ".join(x for x in (error, detail) if x),
    )


# ---------------------------------------------------------------- recovery


def _recovery_rows(samples: list[float]) -> list[Row]:
    got = [s for s in samples if not math.isnan(s)]
    missed = len(samples) - len(got)
    detail = (
        f"{len(got)} recoveries (freeze, read-only, restart-empty x{RESTART_CYCLES + 2}); "
        f"{missed} not recovered within {RECOVERY_BOUND:g} s"
    )
    return [
        Row(
            SECTION,
            f"Redis back -> full recovery, {label}",
            "every node connected, every live agent visible",
            _percentile(got, q) * 1000,
            " ms",
            "report",
            None if missed == 0 else False,
            detail,
        )
        for label, q in (("p50", 0.5), ("p99", 0.99))
    ]


def run() -> list[Row]:
    recoveries: list[float] = []
    rows = _supervised_rows(recoveries)
    rows.append(_flags_row(recoveries))
    rows.append(_registrations_row(recoveries))
    rows.append(_frozen_node_row())
    rows += _recovery_rows(recoveries)
    return rows


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """The node subprocess logs faults at WARNING: keep stdout for the protocol."""
    import logging

    logging.basicConfig(stream=sys.stderr, level=logging.ERROR)
    yield


if __name__ == "__main__":
    if sys.argv[1:2] == ["node"]:
        with _quiet_logs():
            _url, _ns, _ttl, _count = sys.argv[2:6]
            raise SystemExit(_node_main(_url, _ns, float(_ttl), int(_count)))
    for row in run():
        print(row)
