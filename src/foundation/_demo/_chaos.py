"""Demo ``--chaos``: two nodes keep serving while redis-server is frozen, demoted, killed.

The demo starts its own redis-server (``_redis_server``) on a free loopback port
and two nodes on it, each a ``RedisRegistry`` + ``RedisFlagStore`` (with a
node cache) + ``FeatureFlags`` and a ``Supervisor`` on an event loop of its own
thread. Each node's supervised workers serve "requests" (a flag read, a lookup
of a worker on the other node, a session registered and dropped with the async
face) while a flaky sibling crashes twice a second. Then, in turn, redis-server
is frozen (SIGSTOP), made a read-only replica (``REPLICAOF``), and killed and
restarted empty; mid-outage an operator pulls the kill switch on node A.

Measured all along: each loop's lateness (a 1 ms ticker), every healthy worker
that ended, every flag answer on both nodes against what it must be, and, per
fault, the time from Redis back to full recovery (both nodes connected and
current, every worker registered and visible on both nodes, the flags as set).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from foundation._demo._console import Console
from foundation._demo._interrupts import ctrl_c_deferred, finishing
from foundation._demo._logs import library_logs, show_library_logs
from foundation._demo._redis_server import RedisServerError, RedisServerProcess
from foundation._demo._scoreboard import Scoreboard
from foundation._demo._timing import percentile, wait_until
from foundation.errors import BackendUnavailable, FoundationError
from foundation.flags import FeatureFlags, Flag
from foundation.supervision import ChildContext, ChildSpec, Supervisor

__all__ = ["ChaosUnavailable", "run_chaos", "stall_samples"]

KILL_SWITCH = "new_checkout"
FLAGS = (
    Flag(KILL_SWITCH, description="the feature under rollout; pulled mid-outage"),
    Flag("search_v2"),
    Flag("dark_mode", default=True),
    Flag("recommendations"),
    Flag("beta_banner"),
)
ACTORS = (None, *(f"user-{i}" for i in range(10)))
RECOVERY_BOUND = 20.0  # seconds; a fault not recovered from by then fails its invariant
STALL_BOUND_MS = 1000.0  # the invariant: no loop stall this long (a Redis wait is 2 s)
STALL_AIM_MS = 10.0  # the p99 aimed at, reported beside the measure but not checked


def stall_samples(lateness_ms: list[float], interval_ms: float = 1.0) -> list[float]:
    """A ticker's lateness samples, corrected for coordinated omission.

    A loop blocked for 2 s yields ONE late tick, so a plain percentile would
    hide it behind thousands of punctual ones. As HdrHistogram's
    ``recordValueWithExpectedInterval`` does, each late sample also stands for
    the ticks it swallowed: ``L - interval``, ``L - 2 * interval``, ... down to 0.

    Example:
        >>> stall_samples([0.2, 3.5])
        [0.2, 3.5, 2.5, 1.5, 0.5]
    """
    out: list[float] = []
    for late in lateness_ms:
        out.append(late)
        missed = late - interval_ms
        while missed > 0:
            out.append(missed)
            missed -= interval_ms
    return out


class ChaosUnavailable(RuntimeError):
    """The chaos mode cannot run here (redis-server or the redis extra is missing)."""


class _Node:
    """One node: registry, flags and a supervisor on an event loop in its own thread."""

    def __init__(self, name: str, url: str, cache: Path, workers: int) -> None:
        from foundation.flags import RedisFlagStore
        from foundation.registry import RedisRegistry

        self.name = name
        self.registry = RedisRegistry(url, namespace="demo-chaos", node=name, indexed=("role",))
        try:
            # Each node keeps its own copy of the flags (a SQLite file beside it).
            self.store = RedisFlagStore(url, namespace="demo-chaos", cache_path=cache)
        except BaseException:
            self.registry.close()
            raise
        self.flags = FeatureFlags(FLAGS, store=self.store)
        self.worker_keys = [f"{name}/worker-{i}" for i in range(workers)]
        self.peer_keys: list[str] = []
        self.lateness: list[tuple[float, float]] = []  # (when, ms late) of the 1 ms ticker
        self.stopped = 0  # healthy worker runs that ended before the demo did
        self.requests: collections.Counter[str] = collections.Counter()
        self.raw_errors: collections.Counter[str] = collections.Counter()
        self.flaky_runs = 0
        self.supervisor_state = "new"
        self.error: BaseException | None = None
        self._shutting_down = False
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"demo-chaos-{name}", daemon=True)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self._thread.start()
        self._started.wait(30)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        self._shutting_down = True
        if self._loop is not None and self._stop is not None:
            # The loop may have ended on its own already (an error): nothing to wake.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self.flags.close()
        self.store.close()
        self.registry.close()

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        specs = [
            ChildSpec(
                f"worker-{i}",
                self._worker,
                args=(i,),
                register_as=key,
                metadata={"role": "worker", "node": self.name},
            )
            for i, key in enumerate(self.worker_keys)
        ]
        specs.append(ChildSpec("flaky", self._flaky, register_as=f"{self.name}/flaky"))
        sup = Supervisor(
            specs,
            registry=self.registry,
            max_restarts=50,
            max_seconds=10.0,
            name=f"{self.name}-supervisor",
        )
        try:
            await sup.start()
            ticker = asyncio.create_task(self._ticker())
            self.supervisor_state = sup.state
            self._started.set()
            await self._stop.wait()
            self._shutting_down = True
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        except Exception as exc:  # reported by start(), or as a failed invariant
            self.error = exc
        finally:
            self._shutting_down = True
            self.supervisor_state = sup.state
            self._started.set()
            with contextlib.suppress(FoundationError):
                await sup.stop()

    # ---------------------------------------------------------------- the loop's work
    async def _ticker(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lateness.append((t0, (time.perf_counter() - t0 - 0.001) * 1000))

    async def _worker(self, ctx: ChildContext, n: int) -> None:
        """Serve a request every 20 ms; a Redis fault may fail a request, never the worker."""
        ctx.ready()
        me = asyncio.current_task()
        session = f"{self.name}/session-{n}"
        try:
            i = 0
            while True:
                i += 1
                self.flags.enabled(KILL_SWITCH, actor=f"user-{i % 100}")
                if self.peer_keys:
                    self.registry.lookup(self.peer_keys[i % len(self.peer_keys)])
                try:
                    await self.registry.register_async(
                        session, me, {"role": "session"}, replace=True
                    )
                    await self.registry.unregister_async(session)
                    self.requests["ok"] += 1
                except BackendUnavailable:
                    self.requests["failed: BackendUnavailable"] += 1
                except FoundationError as exc:
                    self.requests[f"failed: {type(exc).__name__}"] += 1
                except Exception as exc:  # a raw third-party error escaped a public call
                    self.raw_errors[type(exc).__name__] += 1
                await asyncio.sleep(0.02)
        finally:
            if not self._shutting_down:
                self.stopped += 1

    async def _flaky(self, ctx: ChildContext) -> None:
        self.flaky_runs += 1
        ctx.ready()
        await asyncio.sleep(0.5)
        raise RuntimeError("flaky worker: simulated crash")

    # ---------------------------------------------------------------- views
    def healthy(self) -> bool:
        status = self.registry.status()
        return bool(status.connected) and not bool(status.stale)

    def sees(self, key: str, owner: str) -> bool:
        entry = self.registry.lookup(key)
        return entry is not None and entry.node == owner

    def stall_ms(self, since: float, until: float) -> list[float]:
        """The ticker's lateness between two instants (see ``stall_samples``)."""
        return stall_samples([late for t0, late in list(self.lateness) if since <= t0 <= until])


class _FlagWatch:
    """Samples every flag answer on every node; records each one that went wrong."""

    def __init__(self, nodes: list[_Node], expected: dict[tuple[str, str | None], bool]) -> None:
        self._nodes = nodes
        self._expected = expected
        self.reverted: set[tuple[str, str]] = set()  # (node, flag)
        self.pulled_at: float | None = None
        self.kill_seen_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-chaos-flag-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for node in self._nodes:
                with contextlib.suppress(FoundationError):
                    self._check(node)
            self._stop.wait(0.002)

    def _check(self, node: _Node) -> None:
        """Note each flag this node sees reverted, and when it first sees the kill switch off."""
        for (flag, actor), want in self._expected.items():
            if node.flags.enabled(flag, actor=actor) != want:
                self.reverted.add((node.name, flag))
        on = node.flags.enabled(KILL_SWITCH)
        if on and node.name in self.kill_seen_at:
            self.reverted.add((node.name, KILL_SWITCH))  # the kill switch undone
        elif not on and node.name not in self.kill_seen_at:
            if self.pulled_at is None:  # off before anyone pulled it
                self.reverted.add((node.name, KILL_SWITCH))
            else:
                self.kill_seen_at[node.name] = time.perf_counter()


@contextlib.contextmanager
def _thread_deaths() -> Iterator[list[str]]:
    """Count the library threads that die of an exception (then report them as usual)."""
    died: list[str] = []
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name.startswith("foundation"):
            died.append(args.thread.name)
        previous(args)

    threading.excepthook = hook
    try:
        yield died
    finally:
        threading.excepthook = previous


def _set_up_flags(flags: FeatureFlags) -> None:
    flags.enable(KILL_SWITCH, by="demo", reason="rollout")
    flags.enable("search_v2", by="demo")
    flags.disable("dark_mode", by="demo")
    flags.set_percentage("recommendations", 30, by="demo")
    flags.enable("beta_banner", by="demo")
    flags.deny("beta_banner", "user-3", by="demo")


def run_chaos(console: Console, score: Scoreboard, *, fault_seconds: float, workers: int) -> None:
    """Run the chaos scenario; raises ChaosUnavailable if redis-server or redis-py is missing."""
    if shutil.which("redis-server") is None:
        raise ChaosUnavailable(
            "--chaos needs the redis-server binary, which is not installed "
            "(Debian/Ubuntu: apt-get install redis-server, or `make redis-server`)"
        )
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise ChaosUnavailable(
            "--chaos needs the redis extra: pip install 'foundation[redis]'"
        ) from exc

    console.heading("Chaos: two nodes on Redis through a frozen, a read-only and an empty Redis")
    server, cache_dir = _start_server()
    try:
        with _thread_deaths() as died, library_logs() as logs:
            nodes: list[_Node] = []
            try:
                for name in ("node-a", "node-b"):
                    nodes.append(_Node(name, server.url, cache_dir / f"{name}.sqlite3", workers))
                    nodes[-1].start()
                _run_faults(console, score, server, nodes, fault_seconds)
            except Exception as exc:  # a library defect: shown, and a failed invariant
                traceback.print_exc()
                score.check(
                    "the chaos scenario ran to the end", False, f"{type(exc).__name__}: {exc}"
                )
            finally:
                # A signal may land mid-fault: thaw a frozen Redis first, or each
                # close below would wait out its op timeouts (20 s in all). A
                # signal during this stop waits for its end (a second Ctrl-C cuts it).
                with finishing(cut_by_a_second_ctrl_c=True):
                    if server.frozen:
                        server.thaw()
                    for node in nodes:
                        node.stop()
    finally:  # also on a signal, or one during this: no redis-server, no directory left
        with finishing():
            server.stop()
            shutil.rmtree(cache_dir, ignore_errors=True)
    show_library_logs(console, logs)
    score.check("no library thread died", not died, ", ".join(died))


def _start_server() -> tuple[RedisServerProcess, Path]:
    """A started redis-server and the nodes' cache directory; ChaosUnavailable if
    it does not start. A signal meanwhile waits for the start's end, then stops
    the server and removes both directories before it goes on."""
    made: list[Any] = []
    try:
        with ctrl_c_deferred():  # a signal inside Popen would lose the process
            made.append(RedisServerProcess())  # makes its directory
            made[0].start()
            made.append(Path(tempfile.mkdtemp(prefix="foundation-demo-chaos-")))
    except BaseException as exc:
        if made:
            made[0].stop()  # its process, if started, and its directory
        if len(made) > 1:
            shutil.rmtree(made[1], ignore_errors=True)
        if isinstance(exc, RedisServerError):
            raise ChaosUnavailable(f"could not start redis-server: {exc}") from exc
        raise
    return made[0], made[1]


def _run_faults(
    console: Console,
    score: Scoreboard,
    server: RedisServerProcess,
    nodes: list[_Node],
    hold: float,
) -> None:
    a, b = nodes
    a.peer_keys, b.peer_keys = b.worker_keys, a.worker_keys
    workers = [(key, node.name) for node in nodes for key in node.worker_keys]

    def lost() -> list[str]:
        return [key for key, owner in workers if not all(n.sees(key, owner) for n in nodes)]

    expected = _check_startup(console, score, nodes, len(workers), lost)
    watch = _FlagWatch(nodes, expected)
    watch.start()
    rows: list[list[object]] = []
    recovery: dict[str, float | None] = {}
    pull: dict[str, Any] = {}
    worst_p99 = worst_max = 0.0
    faults: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
        ("frozen (SIGSTOP)", server.freeze, server.thaw),
        ("read-only (REPLICAOF)", server.make_read_only, server.make_writable),
        ("killed, restarted empty", server.kill, server.start),
    ]
    try:
        for fault in faults:
            pull, p99, worst = _run_fault(
                console,
                score,
                nodes=nodes,
                watch=watch,
                lost=lost,
                fault=fault,
                hold=hold,
                pull=pull,
                rows=rows,
                recovery=recovery,
            )
            worst_p99, worst_max = max(worst_p99, p99), max(worst_max, worst)
    finally:
        watch.stop()

    _report_faults(
        console,
        score,
        nodes=nodes,
        watch=watch,
        lost=lost,
        rows=rows,
        recovery=recovery,
        pull=pull,
        worst_p99=worst_p99,
        worst_max=worst_max,
    )


def _run_fault(
    console: Console,
    score: Scoreboard,
    *,
    nodes: list[_Node],
    watch: _FlagWatch,
    lost: Callable[[], list[str]],
    fault: tuple[str, Callable[[], None], Callable[[], None]],
    hold: float,
    pull: dict[str, Any],
    rows: list[list[object]],
    recovery: dict[str, float | None],
) -> tuple[dict[str, Any], float, float]:
    """Inject one fault, heal it, wait for recovery; add its row; return (pull, p99, max stall)."""
    name, inject, heal = fault
    ok_before = sum(n.requests["ok"] for n in nodes)
    failed_before = sum(sum(n.requests.values()) for n in nodes) - ok_before
    stopped_before = sum(n.stopped for n in nodes)
    reverted_before = len(watch.reverted)
    console.say(f"[bold]fault:[/bold] redis-server {name} for {hold:g} s ...")
    started = time.perf_counter()
    pull, back = _hold_fault(name, inject, heal, hold=hold, node=nodes[0], watch=watch, pull=pull)
    recovered = wait_until(
        _recovered(nodes, lost, watch, kill_switch=bool(pull)),
        timeout=RECOVERY_BOUND,
        interval=0.002,
    )
    done = time.perf_counter()
    recovery[name] = (done - back) if recovered else None
    stalls = _stalls(nodes, started, done)
    p99, worst = percentile(stalls, 99), max(stalls, default=0.0)
    ok = sum(n.requests["ok"] for n in nodes) - ok_before
    failed = sum(sum(n.requests.values()) for n in nodes) - ok_before - ok - failed_before
    rows.append(
        [
            name,
            f"{p99:.1f} ms",
            f"{worst:.1f} ms",
            f"{ok}/{failed}",
            sum(n.stopped for n in nodes) - stopped_before,
            len(lost()),
            len(watch.reverted) - reverted_before,
            f"{(done - back) * 1000:.0f} ms" if recovered else f"> {RECOVERY_BOUND:g} s",
        ]
    )
    score.check(
        f"recovered from redis-server {name}",
        recovered,
        f"{len(lost())} workers not visible everywhere",
    )
    return pull, p99, worst


def _hold_fault(
    name: str,
    inject: Callable[[], None],
    heal: Callable[[], None],
    *,
    hold: float,
    node: _Node,
    watch: _FlagWatch,
    pull: dict[str, Any],
) -> tuple[dict[str, Any], float]:
    """Inject, hold (pulling the kill switch midway if Redis is killed), heal; (pull, back)."""
    inject()
    if name.startswith("killed"):
        _wait(hold / 2)
        pull = _pull_kill_switch(node, watch)
        _wait(hold / 2)
    else:
        _wait(hold)
    heal()
    back = time.perf_counter()
    if pull:
        pull["back"] = back
    return pull, back


def _stalls(nodes: list[_Node], started: float, done: float) -> list[float]:
    """Every node's ticker lateness between two instants."""
    return [s for n in nodes for s in n.stall_ms(started, done)]


def _check_startup(
    console: Console,
    score: Scoreboard,
    nodes: list[_Node],
    n_workers: int,
    lost: Callable[[], list[str]],
) -> dict[tuple[str, str | None], bool]:
    """Wait for both nodes to be up and in sync; return the expected flag answers."""
    a, b = nodes
    up = wait_until(lambda: not lost(), timeout=10)
    score.check("every worker registered and visible on both nodes", up, f"{len(lost())} missing")
    _set_up_flags(a.flags)
    expected = {
        (flag.name, actor): a.flags.enabled(flag.name, actor=actor)
        for flag in FLAGS
        if flag.name != KILL_SWITCH
        for actor in ACTORS
    }
    synced = wait_until(
        lambda: (
            b.flags.enabled(KILL_SWITCH)
            and all(b.flags.enabled(f, actor=x) == v for (f, x), v in expected.items())
        ),
        10,
    )
    score.check("node B sees node A's flag changes", synced, "")
    console.say(
        f"two nodes up: {n_workers} supervised workers serving, a flaky sibling crashing "
        f"twice a second on each, {len(FLAGS)} flags set at runtime"
    )
    return expected


def _report_faults(
    console: Console,
    score: Scoreboard,
    *,
    nodes: list[_Node],
    watch: _FlagWatch,
    lost: Callable[[], list[str]],
    rows: list[list[object]],
    recovery: dict[str, float | None],
    pull: dict[str, Any],
    worst_p99: float,
    worst_max: float,
) -> None:
    """Print the fault table and record every figure and invariant."""
    a, b = nodes
    console.table(
        "Faults, both nodes (stall: lateness of a 1 ms asyncio ticker; requests ok/failed; "
        "workers stopped; registrations lost; flags reverted; Redis back -> recovered)",
        [
            "redis-server",
            "stall p99",
            "stall max",
            "requests",
            "stopped",
            "lost",
            "reverted",
            "recovery",
        ],
        rows,
    )
    stopped = sum(n.stopped for n in nodes)
    raw = _raw_errors(nodes)
    lost_now = lost()
    seen_b = watch.kill_seen_at.get(b.name)
    # Checked: the worst stall (a loop that waited on Redis stalls a whole op
    # timeout, 2 s). The p99 is shown against the 10 ms aim, unchecked: on a
    # loaded machine the scheduler alone can exceed it.
    score.figure(
        f"loop stall max during faults (invariant < {STALL_BOUND_MS:g} ms)", f"{worst_max:.1f} ms"
    )
    score.figure(
        f"loop stall p99 during faults (aim <= {STALL_AIM_MS:g} ms, not an invariant)",
        f"{worst_p99:.1f} ms",
    )
    score.figure("healthy workers stopped by Redis faults", str(stopped))
    score.figure("registrations lost", str(len(lost_now)))
    score.figure("flags reverted", str(len(watch.reverted)))
    _figure_recoveries(score, recovery)
    score.figure(
        "kill switch pulled mid-outage, seen by node A",
        "at once" if pull.get("local") else "no",
    )
    back_at = pull.get("back")
    score.figure("kill switch seen by node B", _seen_after(seen_b, back_at))
    score.check(
        "no healthy worker stopped by a Redis fault",
        stopped == 0,
        f"{stopped} stopped; supervisors {a.supervisor_state}/{b.supervisor_state}",
    )
    score.check("no registration lost", not lost_now, ", ".join(lost_now[:5]))
    score.check(
        "no flag reverted",
        not watch.reverted,
        ", ".join(f"{n}:{f}" for n, f in sorted(watch.reverted)),
    )
    score.check(
        "the kill switch takes effect at once during the outage",
        bool(pull.get("local")),
        str(pull.get("error") or ""),
    )
    score.check(
        "the kill switch is seen by both nodes",
        len(watch.kill_seen_at) == 2,
        ", ".join(sorted(watch.kill_seen_at)) or "neither",
    )
    score.check(
        "no raw third-party exception escaped",
        not raw,
        ", ".join(f"{k} x{v}" for k, v in raw.items()),
    )
    # A Redis call made on the loop would stall it for a whole op timeout (2 s).
    score.check(
        f"no event loop waited on Redis (stall max < {STALL_BOUND_MS:g} ms)",
        worst_max < STALL_BOUND_MS,
        f"max {worst_max:.0f} ms, p99 {worst_p99:.1f} ms",
    )
    for node in nodes:
        if node.error is not None:
            score.check(f"{node.name} ran to the end", False, repr(node.error))


def _raw_errors(nodes: list[_Node]) -> collections.Counter[str]:
    """The raw third-party exceptions that escaped a public call, counted over all nodes."""
    raw = collections.Counter[str]()
    for node in nodes:
        raw.update(node.raw_errors)
    return raw


def _figure_recoveries(score: Scoreboard, recovery: dict[str, float | None]) -> None:
    """Record how long recovery took after each fault ("never" if it did not)."""
    for name, seconds in recovery.items():
        took = f"{seconds * 1000:.0f} ms" if seconds is not None else "never"
        score.figure(f"recovery after redis-server {name}", took)


def _seen_after(seen_b: float | None, back_at: float | None) -> str:
    """When node B saw the kill switch, relative to Redis coming back."""
    return (
        f"{(seen_b - back_at) * 1000:.0f} ms after Redis returned"
        if seen_b is not None and back_at is not None and seen_b >= back_at
        else ("yes" if seen_b is not None else "no")
    )


def _recovered(
    nodes: list[_Node], lost: Callable[[], list[str]], watch: _FlagWatch, *, kill_switch: bool
) -> Callable[[], bool]:
    """Full recovery: every node connected and current, every worker visible on
    every node, and (once pulled) the kill switch seen by every node."""

    def done() -> bool:
        return (
            all(n.healthy() for n in nodes)
            and not lost()
            and (not kill_switch or all(n.name in watch.kill_seen_at for n in nodes))
        )

    return done


def _pull_kill_switch(node: _Node, watch: _FlagWatch) -> dict[str, Any]:
    """The operator's ``disable`` during the outage: local at once, committed later."""
    watch.pulled_at = time.perf_counter()
    result: dict[str, Any] = {"local": False, "error": None, "back": None}
    started = time.perf_counter()
    try:
        node.flags.disable(KILL_SWITCH, by="operator", reason="incident: checkout errors")
    except FoundationError as exc:
        result["error"] = f"{type(exc).__name__} after {time.perf_counter() - started:.1f} s"
    result["local"] = result["error"] is None and not node.flags.enabled(KILL_SWITCH)
    return result


def _wait(seconds: float) -> None:
    time.sleep(seconds)  # sleep-ok: the length of the fault being shown
