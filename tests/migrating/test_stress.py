"""Stress: writers, dying agents and a flag flipped every few milliseconds, all at once.

Four worker threads register, unregister, update and look up keys of their
own while a killer thread ends agents at random and a flipper thread moves
the migration forward and back (``advance``, ``rollback_to(0)``,
``emergency_rollback``) every few milliseconds. Each worker checks every
answer against its own model as it goes. At the end, in each worker thread,
the model equals what lookup returns with the flag off and with it on; there
are no duplicates, no dead agents, and the shared table holds exactly one
monitor per entry.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from foundation import MemoryRegistry, Migration, MigrationPlan, Registry, liveness, spawn_thread
from foundation.errors import AlreadyRegistered, MigrationError, NotAlive, NotRegistered
from foundation.liveness import is_alive
from tests.migrating.support import FLAG, Agents, legacy_backend, make, wait_until

WORKERS = 4
KEYS_PER_WORKER = 6
# The traffic lasts until each worker made MIN_OPS calls while the flag moved
# MIN_FLIPS times and MIN_KILLS agents were killed: as much on any machine.
MIN_OPS = 2000
MIN_FLIPS = 200
MIN_KILLS = 100
DEADLINE = 60.0  # seconds: no such progress by then is a failure
Model = dict[str, tuple[Any, dict[str, int]]]


class Run:
    def __init__(self, legacy: Callable[[], Registry]) -> None:
        self.agents = Agents()
        self.target = MemoryRegistry(indexed=("v",))
        self.reg, self.flags = make(False, legacy=legacy(), target=self.target)
        self.migration = Migration(
            self.flags, MigrationPlan.default(), readiness=[self.reg.readiness]
        )
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.killable: list[Any] = []
        self.killable_lock = threading.Lock()
        self.models: dict[int, Model] = {}
        self.barrier = threading.Barrier(WORKERS + 1, timeout=60)
        self.flips = 0
        self.kills = 0
        self.ops = 0
        self.deadline = time.monotonic() + DEADLINE

    def traffic_done(self, ops: int) -> bool:
        """A worker that made ``ops`` calls is done (see MIN_OPS); past the
        deadline, a failure."""
        if ops >= MIN_OPS and self.flips >= MIN_FLIPS and self.kills >= MIN_KILLS:
            return True
        if time.monotonic() > self.deadline:
            self.fail(
                f"no progress in {DEADLINE} s: {ops} calls, {self.flips} flips, {self.kills} kills"
            )
            return True
        return False

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def new_agent(self) -> Any:
        agent = self.agents.new()
        with self.killable_lock:
            self.killable.append(agent)
        return agent


def lingering(agent: Any) -> bool:
    """``agent`` is dead but may not be known dead by every backend yet.

    A ``spawn_thread`` agent counts as dead (``is_alive``) the instant its
    target returns, and only then fires its monitors, on its own thread,
    before that thread ends (docs/contract.md, Liveness): until they have
    run, the target (``MemoryRegistry``) still holds its entry — "not yet
    *known* dead", so ``lookup`` may return it, ``update_metadata`` update it
    and ``unregister`` remove it (True) — while the unmonitored legacy store
    already treats it as gone (``NotRegistered``, ``False``). With the flag
    flipped in between, the facade gives both answers. Once the agent's
    thread has ended (``Thread.is_alive()`` False: every kill here joins it)
    its monitors have run and no backend holds it: nothing is allowed then.
    """
    return not is_alive(agent) and threading.Thread.is_alive(agent)


def check_lookup(
    run: Run, model: Model, key: str, final: bool = False, ghosts: dict[str, Any] | None = None
) -> None:
    expected = model.get(key)
    ghost = None if ghosts is None else ghosts.get(key)
    dead_before = expected is not None and not is_alive(expected[0])
    # Evaluated before the call: a dead agent whose monitors have not all run yet.
    candidates = [ghost, None if expected is None else expected[0]]
    may_linger = [a for a in candidates if a is not None and lingering(a)]
    entry = run.reg.lookup(key)
    if expected is None:
        if entry is not None and not any(entry.agent is a for a in may_linger):
            run.fail(f"{key}: unexpected {entry} (flag {run.reg.flag_on}, final check {final})")
        return
    agent, meta = expected
    if entry is None:
        if is_alive(agent):
            run.fail(f"{key}: lost a live registration (flag {run.reg.flag_on})")
        return
    if dead_before and not any(agent is a for a in may_linger):
        run.fail(f"{key}: returned an agent already known dead")
    elif entry.agent is not agent or dict(entry.metadata) != meta:
        run.fail(f"{key}: {entry} instead of {expected}")


def worker(run: Run, index: int) -> None:
    rng = random.Random(index)
    keys = [f"w{index}-k{j}" for j in range(KEYS_PER_WORKER)]
    model: Model = {}
    # Keys the model dropped on NotRegistered for a dead agent, with that agent:
    # the target may still hold it while it is lingering() (see there).
    ghosts: dict[str, Any] = {}
    run.models[threading.get_ident()] = model
    ops = 0
    try:
        while not run.traffic_done(ops) and not run.failures:
            key = rng.choice(keys)
            op = rng.random()
            run.ops += 1
            ops += 1
            current = model.get(key)
            ghost = ghosts.get(key)
            ghost_lingers = ghost is not None and lingering(ghost)  # before the call
            if op < 0.35:
                agent, meta, replace = run.new_agent(), {"v": rng.randrange(4)}, rng.random() < 0.3
                try:
                    run.reg.register(key, agent, meta, replace=replace)
                    if current is not None and not replace and is_alive(current[0]):
                        run.fail(f"{key}: register over a live entry succeeded")
                    model[key] = (agent, meta)
                    ghosts.pop(key, None)  # a dead holder not yet cleaned up is simply taken
                except AlreadyRegistered as exc:
                    if current is None or exc.entry.agent is not current[0]:
                        run.fail(f"{key}: AlreadyRegistered by {exc.entry}, model {current}")
                except NotAlive:
                    # The killer may end a new agent before it is registered:
                    # refused, nothing stored (the model is unchanged).
                    if is_alive(agent):
                        run.fail(f"{key}: NotAlive for a live agent")
            elif op < 0.55:
                alive_before = current is not None and is_alive(current[0])
                removed = run.reg.unregister(key)
                if current is None and removed and not ghost_lingers:
                    run.fail(f"{key}: unregistered a key the model does not hold")
                if alive_before and current is not None and is_alive(current[0]) and not removed:
                    run.fail(f"{key}: unregister of a live entry returned False")
                if removed:
                    ghosts.pop(key, None)  # whatever the key held is gone
                elif current is not None and not is_alive(current[0]):
                    ghosts[key] = current[0]  # False for a dead agent: as NotRegistered below
                model.pop(key, None)
            elif op < 0.7:
                meta = {"v": rng.randrange(4)}
                try:
                    run.reg.update_metadata(key, meta)
                    if current is None:
                        if not ghost_lingers:
                            run.fail(f"{key}: updated a key the model does not hold")
                    else:
                        model[key] = (current[0], meta)
                except NotRegistered:
                    if current is not None and is_alive(current[0]):
                        run.fail(f"{key}: NotRegistered for a live entry")
                    if current is not None:
                        ghosts[key] = current[0]  # dead: maybe not yet known dead by the target
                    model.pop(key, None)
            elif op < 0.75 and current is not None:
                run.agents.kill(current[0])  # this worker's own agent dies
                model.pop(key)
            else:
                check_lookup(run, model, key, ghosts=ghosts)
    except Exception as exc:
        run.fail(f"worker {index}: {exc!r}")
    # Final checks, in this thread (its legacy store is private to it).
    try:
        for phase in ("off", "on"):
            run.barrier.wait()  # the main thread has set the flag for this phase
            live = {k: v for k, v in model.items() if is_alive(v[0])}
            for key in keys:
                check_lookup(run, live, key, True)
            mine = [e for e in run.reg.list_all() if e.key in keys]
            if sorted(e.key for e in mine) != sorted(live):
                run.fail(f"flag {phase}: list_all {[e.key for e in mine]} != model {sorted(live)}")
            if any(not is_alive(e.agent) for e in mine):
                run.fail(f"flag {phase}: list_all returned a dead agent")
            run.barrier.wait()
    except threading.BrokenBarrierError:
        run.fail(f"worker {index}: barrier broken")


def killer(run: Run) -> None:
    rng = random.Random(99)
    while not run.stop.wait(0.003):  # sleep-ok: pacing the kills, not synchronisation
        with run.killable_lock:
            alive = [a for a in run.killable if is_alive(a)]
            run.killable = alive
        if alive:
            run.agents.kill(rng.choice(alive))
            run.kills += 1


def flipper(run: Run) -> None:
    rng = random.Random(7)
    stage = 0
    while not run.stop.wait(0.003):  # sleep-ok: pacing the flips, not synchronisation
        try:
            if stage == 0:
                run.migration.advance(by="stress")
                stage = 1
            elif rng.random() < 0.5:
                run.migration.rollback_to(0, by="stress")
                stage = 0
            else:
                run.migration.emergency_rollback("stress", by="stress")
                stage = 0
            run.flips += 1
        except MigrationError as exc:
            run.fail(f"flipper: {exc}")
            return


# The default legacy side (private per thread), and a shared one (MemoryRegistry):
# with a shared legacy side, flag-on writes only decide their legacy mirrors
# under the facade lock and a pass applies them outside it (rule 7 of
# foundation.registry._migrating).
@pytest.mark.parametrize("legacy", [legacy_backend, MemoryRegistry], ids=["private", "shared"])
def test_concurrent_writes_deaths_and_flips_lose_nothing(legacy: Callable[[], Registry]) -> None:
    run = Run(legacy)
    threads = [threading.Thread(target=worker, args=(run, i)) for i in range(WORKERS)]
    helpers = [
        threading.Thread(target=killer, args=(run,)),
        threading.Thread(target=flipper, args=(run,)),
    ]
    try:
        for t in threads + helpers:
            t.start()
        # Wait for every worker to finish its traffic (they then block on the barrier).
        while run.barrier.n_waiting < WORKERS and any(t.is_alive() for t in threads):
            if run.failures:
                break
            threading.Event().wait(0.01)  # sleep-ok: polling with a deadline (the barrier's)
        run.stop.set()
        for t in helpers:
            t.join(10)
        for on in (False, True):
            run.flags.set(FLAG, on)
            run.barrier.wait()  # workers check with this flag value...
            run.barrier.wait()  # ...and are done
        for t in threads:
            t.join(10)
        assert run.failures == []
        # The flag really moved under the traffic, and agents died during it.
        assert run.flips >= MIN_FLIPS, run.flips
        assert run.kills >= MIN_KILLS, run.kills
        # Globally, with the flag on: no duplicates, no dead agents, one monitor per entry.
        entries = run.reg.list_all()
        keys = [e.key for e in entries]
        assert len(keys) == len(set(keys))
        assert all(is_alive(e.agent) for e in entries)
        expected = {k for model in run.models.values() for k, v in model.items() if is_alive(v[0])}
        assert set(keys) == expected
        stats = run.target.stats()
        assert stats.entries == stats.monitors == len(expected)
        assert run.reg.divergences() == []
    finally:
        run.stop.set()
        try:
            run.barrier.abort()
        finally:
            for t in threads + helpers:
                t.join(10)
            run.reg.close()
            run.flags.close()
            run.agents.close()


def test_a_death_the_target_has_not_been_told_yet_is_answered_by_each_side(
    agents: Agents,
) -> None:
    """The window ``lingering()`` allows, held open: the agent is dead
    (``is_alive`` False) but its monitors have not all run, so the legacy side
    says ``NotRegistered`` while the target still holds the entry and
    ``unregister`` removes it (True). Once its thread has ended the target
    holds nothing: that is where the stress model stops allowing it."""
    target = MemoryRegistry()
    reg, flags = make(False, target=target)
    end, release = threading.Event(), threading.Event()
    agent = spawn_thread(end.wait, name="migrating-test-agent")
    # Monitors run in the order taken: this one, taken before the target's, holds it back.
    liveness.monitor(agent, lambda _down: release.wait(30))
    try:
        reg.register("k", agent, {"v": 1})
        end.set()  # the agent ends; its thread then blocks in our monitor
        assert wait_until(lambda: not is_alive(agent))
        assert lingering(agent)
        with pytest.raises(NotRegistered):
            reg.update_metadata("k", {"v": 2})  # flag off: the legacy store knows
        flags.set(FLAG, True)
        assert reg.lookup("k") is not None  # the target: not yet *known* dead
        assert reg.unregister("k") is True
        reg.register("k", agent2 := agents.new(), {"v": 3})
        release.set()
        agent.join(10)
        assert not lingering(agent)
        agents.kill(agent2)  # joined: its monitors have run, the target holds nothing
        assert reg.lookup("k") is None
        assert reg.unregister("k") is False
        flags.set(FLAG, False)
        assert reg.lookup("k") is None
        assert reg.unregister("k") is False
        assert reg.divergences() == []
    finally:
        end.set()
        release.set()
        agent.join(10)
        reg.close()
        flags.close()
