"""Demo part 2: a staged rollout that switches the registry under live traffic."""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from foundation._demo._console import Console
from foundation._demo._interrupts import ctrl_c_deferred, finishing
from foundation._demo._released import release_and_join
from foundation._demo._scoreboard import Scoreboard
from foundation._demo._timing import wait_until
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry, MigratingRegistry, ThreadLocalRegistry

__all__ = ["run_rollout"]

FLAG = "use_ets_agent_registry"


@dataclass
class _Worker:
    """One traffic thread and the model of what it has registered."""

    index: int
    model: dict[str, threading.Event] = field(default_factory=dict)
    agents: dict[str, threading.Thread] = field(default_factory=dict)
    operations: int = 0
    lost_on: int = 0
    lost_off: int = 0
    ghosts_on: int = 0
    ghosts_off: int = 0
    errors: list[str] = field(default_factory=list)


def _declared() -> list[Flag]:
    return [
        Flag(FLAG, description="Serve the registry from the shared table"),
        Flag("enable_migration_monitoring", description="Watch health during the migration"),
    ]


def run_rollout(console: Console, score: Scoreboard, *, seconds: float, workers: int) -> None:
    """Advance, roll back and re-advance the registry migration while threads keep working."""
    console.heading("2. Staged rollout: the registry switches backends under live traffic")
    tmp: str | None = None
    try:
        with ctrl_c_deferred():  # a signal inside mkdtemp would lose the directory
            tmp = tempfile.mkdtemp(prefix="foundation-demo-")
        _rollout_in(console, score, Path(tmp), seconds=seconds, workers=workers)
    finally:
        with finishing():  # a signal during the removal waits for its end
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _rollout_in(
    console: Console, score: Scoreboard, tmp: Path, *, seconds: float, workers: int
) -> None:
    """The rollout on a flag store in ``tmp``, then the store reopened (a restart)."""
    closes: list[Callable[[], None]] = []
    try:
        flags = _open_flags(tmp, closes)
        with ctrl_c_deferred():
            registry = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags, flag=FLAG)
            closes.append(registry.close)
        migration = Migration(flags, MigrationPlan.default(), readiness=[registry.readiness])
        _drive(console, score, flags, registry, migration, seconds=seconds, workers=workers)
    finally:
        _close_all(closes)

    # Persistence: a restarted flag service sees the rollout exactly as it was left.
    closes = []
    try:
        flags = _open_flags(tmp, closes)
        restored = Migration(flags, MigrationPlan.default()).status().stage
        score.check("migration stage survives a restart", restored == 1, f"stage {restored}")
        score.check("flag survives a restart", flags.enabled(FLAG), "")
    finally:
        _close_all(closes)


def _open_flags(tmp: Path, closes: list[Callable[[], None]]) -> FeatureFlags:
    """The flag service on ``tmp``'s store, each close listed in ``closes`` as it opens."""
    # Race: a signal between opening the store and the caller's try left the
    # store's thread running and, once tmp was removed, "Exception ignored in:
    # SQLiteFlagStore(...)" on stderr: a signal meanwhile is raised once listed.
    with ctrl_c_deferred():
        store = SQLiteFlagStore(tmp / "flags.sqlite3")
        closes.append(store.close)
        flags = FeatureFlags(_declared(), store=store)
        closes.append(flags.close)
    return flags


def _close_all(closes: list[Callable[[], None]]) -> None:
    """Close what was opened, last opened first: to the end, whatever signal lands."""
    with finishing():
        for close in reversed(closes):
            close()


def _drive(
    console: Console,
    score: Scoreboard,
    flags: FeatureFlags,
    registry: MigratingRegistry,
    migration: Migration,
    *,
    seconds: float,
    workers: int,
) -> None:
    stop = threading.Event()
    crew = [_Worker(i) for i in range(workers)]
    # Verification runs inside each traffic thread (the legacy store is
    # per-thread): all threads and the main thread meet at this barrier between
    # flag positions.
    barrier = threading.Barrier(workers + 1, timeout=30)
    threads = [
        # Daemons only as a last resort: every path below joins them first.
        threading.Thread(
            target=_traffic,
            args=(registry, w, stop, barrier),
            name=f"demo-traffic-{w.index}",
            daemon=True,
        )
        for w in crew
    ]
    try:
        for thread in threads:
            thread.start()
        timeline = _flip_under_traffic(flags, migration, crew, stop, barrier, step=seconds / 4)
    except BaseException:
        # Ctrl-C or an error mid-rollout: stop the traffic and break the barrier, so
        # that no thread keeps registering, or waits at the barrier, after this part.
        stop.set()
        barrier.abort()
        raise
    finally:
        with finishing():  # a signal meanwhile waits: no traffic thread outlives the part
            for thread in threads:
                if thread.is_alive():
                    thread.join(10)
            # Each traffic thread released its agents as it ended (why: _released).
            release_and_join([], [t for w in crew for t in w.agents.values()])
    console.table("Rollout phases under traffic", ["phase", FLAG, "live registrations"], timeline)
    _score_traffic(console, score, registry, crew, seconds)
    _show_flag_history(console, flags)


def _flip_under_traffic(
    flags: FeatureFlags,
    migration: Migration,
    crew: list[_Worker],
    stop: threading.Event,
    barrier: threading.Barrier,
    *,
    step: float,
) -> list[list[str]]:
    """Advance, roll back and re-advance, then verify with the flag on and off; the timeline."""
    timeline: list[list[str]] = []

    def phase(label: str) -> None:
        threading.Event().wait(step)  # let traffic run for a while in this phase
        live = sum(len(w.model) for w in crew)
        timeline.append([label, "on" if flags.enabled(FLAG) else "off", str(live)])

    phase("legacy store (stage 0)")
    migration.advance(by="demo", reason="stage 1: shared-table registry")
    phase("stage 1: shared table")
    migration.emergency_rollback("demo: simulated incident", by="oncall")
    phase("emergency rollback")
    migration.advance(by="demo", reason="incident resolved")
    phase("stage 1 again")
    stop.set()
    barrier.wait()  # traffic stopped; threads check their keys with the flag on
    barrier.wait()
    flags.disable(FLAG, by="demo", reason="verify the legacy side too")
    barrier.wait()  # threads check with the flag off
    barrier.wait()
    flags.enable(FLAG, by="demo", reason="back to the shared table")
    barrier.wait()  # threads release their agents and end
    return timeline


def _score_traffic(
    console: Console,
    score: Scoreboard,
    registry: MigratingRegistry,
    crew: list[_Worker],
    seconds: float,
) -> None:
    """Record the traffic's throughput, errors, lost and resurrected registrations."""
    ops = sum(w.operations for w in crew)
    score.figure("migrating-registry operations per second", f"{ops / seconds:,.0f}")
    errors = [e for w in crew for e in w.errors]
    score.check("no operation failed during flips", not errors, "; ".join(errors[:3]))

    lost_on = sum(w.lost_on for w in crew)
    lost_off = sum(w.lost_off for w in crew)
    lost = lost_on + lost_off
    score.figure("lost registrations across flips", str(lost))
    score.check("lost registrations: 0", lost == 0, f"on={lost_on} off={lost_off}")
    console.say(f"lost registrations: [bold]{lost}[/bold] (counted with the flag on and off)")
    ghosts = sum(w.ghosts_on + w.ghosts_off for w in crew)
    score.figure("resurrected or dead registrations returned", str(ghosts))
    score.check("nothing unregistered or dead comes back", ghosts == 0, f"{ghosts}")
    score.check("no divergences remain", not registry.divergences(), "")


def _show_flag_history(console: Console, flags: FeatureFlags) -> None:
    """Print every persisted flag change, oldest first."""
    history = [
        [time.strftime("%H:%M:%S", time.localtime(_timestamp(c.at))),
         c.flag, _describe(c.old), _describe(c.new), c.by or "", c.reason or ""]
        for c in flags.history()
    ]  # fmt: skip
    console.table("Flag history (persisted)", ["at", "flag", "old", "new", "by", "reason"], history)


def _operate(registry: MigratingRegistry, worker: _Worker, key: str, roll: float) -> None:
    """One random operation on ``key``: register, unregister, kill, update or look up."""
    if key not in worker.model and roll < 0.5:
        release = threading.Event()
        agent = spawn_thread(release.wait)
        try:
            registry.register(key, agent, {"worker": worker.index})
        except BaseException:
            release.set()  # not registered: its agent ends now, never one thread left per failure
            raise
        worker.model[key] = release
        worker.agents[key] = agent
    elif key in worker.model and roll < 0.7:
        registry.unregister(key)
        worker.model.pop(key).set()
    elif key in worker.model and roll < 0.8:
        worker.model.pop(key).set()  # the agent dies; the registry must notice
        worker.agents[key].join()  # dead for sure before the key is reused
    elif key in worker.model:
        registry.update_metadata(key, {"worker": worker.index, "seen": roll})
    else:
        registry.lookup(key)


def _traffic(
    registry: MigratingRegistry, worker: _Worker, stop: threading.Event, barrier: threading.Barrier
) -> None:
    """Random operations until ``stop``, then the checks between the main thread's flips."""
    try:
        _random_operations(registry, worker, stop)
        _verify(registry, worker, barrier)
    except threading.BrokenBarrierError:
        pass  # the main thread was interrupted (Ctrl-C) or failed: end quietly
    finally:
        for release in worker.model.values():
            release.set()  # its agents end with it, whatever happened


def _random_operations(registry: MigratingRegistry, worker: _Worker, stop: threading.Event) -> None:
    rng = random.Random(worker.index)
    while not stop.is_set():
        key = f"w{worker.index}-{rng.randrange(40)}"
        roll = rng.random()
        try:
            _operate(registry, worker, key, roll)
        except Exception as exc:  # recorded and reported as a failed invariant
            worker.errors.append(f"{type(exc).__name__}: {exc}")
        worker.operations += 1


def _verify(registry: MigratingRegistry, worker: _Worker, barrier: threading.Barrier) -> None:
    """Count lost and resurrected keys with the flag on, then off (between barriers)."""
    everything = [f"w{worker.index}-{n}" for n in range(40)]

    def ghosts() -> int:
        return sum(1 for k in everything if k not in worker.model and registry.lookup(k))

    barrier.wait()
    worker.lost_on = sum(1 for key in worker.model if registry.lookup(key) is None)
    wait_until(lambda: ghosts() == 0, timeout=5)  # deaths are seen asynchronously
    worker.ghosts_on = ghosts()
    barrier.wait()
    barrier.wait()
    worker.lost_off = sum(1 for key in worker.model if registry.lookup(key) is None)
    worker.ghosts_off = ghosts()
    barrier.wait()
    barrier.wait()


def _describe(state: object) -> str:
    if state is None:
        return "-"
    switch = getattr(state, "switch", None)
    percentage = getattr(state, "percentage", None)
    text = "on" if switch else "off"
    if percentage is not None:
        text += f" {percentage:g}%"
    return text


def _timestamp(at: object) -> float:
    """``FlagChange.at`` as epoch seconds (a float, or a datetime)."""
    timestamp = getattr(at, "timestamp", None)
    return float(timestamp()) if callable(timestamp) else float(at)  # type: ignore[arg-type]
