"""Several threads each hold their own legacy copy of one key: every death is
told once, and none for a live agent.

``MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry())``: three worker
threads register the same key ``k``, each with its own agent, in their
private legacy stores; the shared target holds one of them at a time (the
others are divergences). With the flag off, the target's report of a death
is withheld for the legacy store's own report (the thread's retake of the
key) or until the flag turns on. It was kept per key: a second withheld
death of ``k`` (the key freed in the target by the first death, then taken
by another thread's mirror) replaced the first, whose death was then never
told, neither at the flip on nor at its thread's retake.

The orders are forced, not left to luck: each step runs in its own thread
and returns before the next starts; a death the target holds is awaited
until the target's report has reached the facade; a last registration marks
the end of the events, which are delivered in order. The rule checked (see
docs/contract.md, ``MigratingRegistry``): each registration (key and agent)
has its death told at most once, never while its agent lives; a death the
target reported is told once the flag is on; each thread's retake of the key
with the flag off tells its own dead copy's death, if not told yet.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.errors import AlreadyRegistered
from foundation.registry import RegistryEvent
from tests.migrating.support import FLAG, FLAGS, Agents, Worker, wait_until

N = 3
KEY = "k"

# How the threads take the key, for a death order ``p`` (a permutation):
# "together": all register (0, 1, 2; the first is the target's), then die in order p;
# "relay":    each registers once the one before it died (each the target's at its death);
# "overlap":  p0, p1 register; p0 dies; p2 registers (the target's); p1, p2 die;
# "survivor": as "overlap", p2 lives on (no death may be told for it).
STYLES = ("together", "relay", "overlap", "survivor")
# The flag at each death, in order (the registrations: off, but for "relay").
FLAG_AT_DEATHS = {
    "off": (False, False, False),
    "off-on-off": (False, True, False),
    "on-off": (True, False, False),
}
# The end: the flag on then off and every thread retakes the key ("on-retake"),
# every thread retakes it with the flag off ("retake"), or the flag on ("on").
ENDS = ("on-retake", "retake", "on")


def _steps(style: str, order: tuple[int, ...]) -> list[tuple[str, int]]:
    """The registrations ("r") and deaths ("k") of ``style`` for death order ``order``."""
    p0, p1, p2 = order
    if style == "together":
        return [("r", 0), ("r", 1), ("r", 2)] + [("k", i) for i in order]
    if style == "relay":
        return [(step, i) for i in order for step in ("r", "k")]
    steps = [("r", p0), ("r", p1), ("k", p0), ("r", p2), ("k", p1)]
    return steps if style == "survivor" else [*steps, ("k", p2)]


class _Case:
    """One forced order over real stores, real worker threads and real agents."""

    def __init__(self, agents: Agents) -> None:
        self.agents = agents
        self.flags = FeatureFlags(FLAGS)
        self.target = MemoryRegistry()
        self.reg = MigratingRegistry(ThreadLocalRegistry(), self.target, self.flags)
        self.workers = [Worker(f"copy-{i}") for i in range(N)]
        self.events: list[RegistryEvent] = []
        self.reported: set[int] = set()  # ids of the agents the target reported dead
        self.report = threading.Condition()
        self.held: dict[int, Any] = {}  # worker -> its agent
        self.dead: list[Any] = []

    def start(self) -> None:
        self.reg.subscribe(self.events.append)
        # Subscribed after the facade: called once the facade's listener returned.
        self.target.subscribe(self._on_target)

    def _on_target(self, event: RegistryEvent) -> None:
        if event.reason == "down":
            with self.report:
                self.reported.add(id(event.entry.agent))
                self.report.notify_all()

    def register(self, i: int) -> None:
        agent = self.held[i] = self.agents.new()
        self.workers[i].run(lambda: self.reg.register(KEY, agent))
        self.reg.divergences()  # its target mirror applied (or refused) before the next step

    def kill(self, i: int) -> None:
        agent = self.held.pop(i)
        entry = self.target.lookup(KEY)
        by_target = entry is not None and entry.agent is agent
        self.agents.kill(agent)
        self.dead.append(agent)
        if by_target:  # its report reached the facade (withheld, or told) before the next step
            with self.report:
                assert self.report.wait_for(lambda: id(agent) in self.reported, 10)

    def retake_all(self) -> None:
        """Each thread whose copy is dead takes the key again (its store tells that death)."""
        for i, worker in enumerate(self.workers):
            if i in self.held:
                continue  # a live copy (a survivor): kept
            agent = self.held[i] = self.agents.new()
            worker.run(lambda agent=agent: self.reg.register(KEY, agent))  # type: ignore[misc]

    def finish(self) -> list[RegistryEvent]:
        """The events told, once the last one (a marker's registration) is in."""
        self.reg.register("end", self.agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in self.events))
        return list(self.events)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.reg.close()
        self.flags.close()


def _run(agents: Agents, style: str, order: tuple[int, ...], at_deaths: str, end: str) -> _Case:
    case = _Case(agents)
    try:
        case.start()
        flag_at = iter(FLAG_AT_DEATHS[at_deaths])
        for step, i in _steps(style, order):
            if step == "r":
                if style != "relay":
                    case.flags.set(FLAG, False)  # a second live copy: refused by the target
                case.register(i)
            else:
                case.flags.set(FLAG, next(flag_at))
                case.kill(i)
        if end in ("on-retake", "on"):
            case.flags.set(FLAG, True)
        if end != "on":
            case.flags.set(FLAG, False)
            case.retake_all()
        case.events = case.finish()
    finally:
        case.close()
    return case


def _ends_told(events: list[RegistryEvent]) -> list[int]:
    """The agents (ids) whose registration of ``k`` was told ended, one per telling."""
    return [id(e.entry.agent) for e in events if e.entry.key == KEY and e.kind == "unregistered"]


def _cases() -> Iterator[Any]:
    for style, order, at_deaths, end in itertools.product(
        STYLES, itertools.permutations(range(N)), FLAG_AT_DEATHS, ENDS
    ):
        name = f"{style}-{''.join(map(str, order))}-{at_deaths}-{end}"
        yield pytest.param(style, order, at_deaths, end, id=name)


@pytest.mark.parametrize(("style", "order", "at_deaths", "end"), list(_cases()))
def test_each_copy_death_is_told_once_and_none_for_a_live_agent(
    style: str, order: tuple[int, ...], at_deaths: str, end: str, agents: Agents
) -> None:
    case = _run(agents, style, order, at_deaths, end)
    told = _ends_told(case.events)
    dead = {id(a) for a in case.dead}
    assert len(told) == len(set(told)), "a death told twice"
    assert set(told) <= dead, "an end told for a live agent"
    # The target's reports are told once the flag is on (at the latest at the
    # end: every end turns it on, or has each thread retake with it off).
    assert case.reported <= set(told), "a death the target reported never told"
    if end != "on":
        # Each thread's retake, the flag off, tells its own dead copy's death.
        assert set(told) == dead, "a dead copy's death untold at its thread's retake"
    # Each end after its registration.
    seen = [(e.kind, id(e.entry.agent)) for e in case.events if e.entry.key == KEY]
    for agent in told:
        assert seen.index(("registered", agent)) < seen.index(("unregistered", agent))


# ---------------------------------------------------------------- under traffic

ROUNDS = 6
TURNS = 25


def _traffic(
    reg: MigratingRegistry, agents: Agents, died: list[Any], go: threading.Barrier
) -> None:
    """One thread's turns on ``k``: register its own agent (the target or its
    store may refuse: a live copy elsewhere, the flag on), end it."""
    go.wait(10)
    for _ in range(TURNS):
        agent = agents.new()
        with contextlib.suppress(AlreadyRegistered):  # the flag on: another's agent holds k
            reg.register(KEY, agent)  # over its own dead copy, if any (flag off: its death)
        agents.kill(agent)
        died.append(agent)


def _round(agents: Agents) -> tuple[list[int], set[int], set[int]]:
    """Three threads' traffic on one key while another flips the flag; then the
    flag on: the ends told, and the ids of the agents dead and reported dead by
    the target."""
    flags = FeatureFlags(FLAGS)
    target = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    events: list[RegistryEvent] = []
    reported: set[int] = set()
    reg.subscribe(events.append)
    target.subscribe(lambda e: reported.add(id(e.entry.agent)) if e.reason == "down" else None)
    died: list[Any] = []
    go = threading.Barrier(N + 1)
    threads = [threading.Thread(target=_traffic, args=(reg, agents, died, go)) for _ in range(N)]
    try:
        for t in threads:
            t.start()
        go.wait(10)
        on = False
        while any(t.is_alive() for t in threads):
            on = not on
            flags.set(FLAG, on)
        for t in threads:
            t.join(10)
        # Every report in: each dead agent's monitors have run (joined), the
        # target's listener after the facade's.
        flags.set(FLAG, True)
        reg.register("end", agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    finally:
        reg.close()
        flags.close()
    return _ends_told(events), {id(a) for a in died}, reported


def test_copies_of_one_key_under_flips_tell_each_reported_death_once(agents: Agents) -> None:
    """Real threads race on one key while the flag flips: every death the target
    reported is told once the flag is on, none twice, none for a live agent."""
    untold = twice = heard = 0
    for _ in range(ROUNDS):
        told, dead, reported = _round(agents)
        twice += len(told) - len(set(told))
        assert set(told) <= dead
        untold += len(reported - set(told))
        heard += len(reported)
    assert (untold, twice) == (0, 0), f"of {heard} reported deaths: {untold} untold, {twice} twice"


def test_one_agent_in_several_threads_copies_is_one_registration(agents: Agents) -> None:
    """The same agent under one key in every thread's store: one registration,
    its death told once (by the first thread's retake, the flag off)."""
    case = _Case(agents)
    try:
        case.start()
        shared = agents.new()
        for worker in case.workers:
            worker.run(lambda: case.reg.register(KEY, shared))
        case.reg.divergences()  # the mirrors applied
        case.held = dict.fromkeys(range(N), shared)
        for i in range(N - 1):
            case.held.pop(i)
        case.kill(N - 1)
        case.retake_all()
        events = case.finish()
    finally:
        case.close()
    assert _ends_told(events) == [id(shared)]


# ------------------------------------------------ a catch-up before the withhold


def test_copy_caught_up_while_its_death_is_reported_is_told_at_its_retake(
    agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's report of a death is held (a hook in ``_forward``) while
    another thread writes (which applies the target's deaths to the records)
    and the owning thread catches up: the dead copy stays for that thread's
    store, whose retake of the key, the flag off, tells the death once.

    Was: the death was queued for the records (``_dead``) before it was
    withheld; in that window the catch-up dropped the dead copy silently, and
    the retake told nothing (the death only at the next flip on)."""
    flags = FeatureFlags(FLAGS)
    reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
    owner, other = Worker("copy-owner"), Worker("copy-other")
    events: list[RegistryEvent] = []
    in_window, release, forwarded = threading.Event(), threading.Event(), threading.Event()
    forward = reg._forward
    dead = agents.new()

    def hooked(side: Any, event: RegistryEvent) -> None:
        if side == "target" and event.reason == "down" and event.entry.agent is dead:
            in_window.set()
            assert release.wait(10)
            forward(side, event)
            forwarded.set()
            return
        forward(side, event)

    try:
        flags.set(FLAG, False)
        reg.subscribe(events.append)
        owner.run(lambda: reg.register(KEY, dead))
        reg.divergences()  # its target mirror applied
        monkeypatch.setattr(reg, "_forward", hooked)
        killer = threading.Thread(target=agents.kill, args=(dead,))
        killer.start()
        assert in_window.wait(10)
        other.run(lambda: reg.register("other", agents.new()))  # applies the deaths queued
        owner.run(lambda: reg.register("mine", agents.new()))  # its catch-up
        release.set()
        assert forwarded.wait(10)  # the report is in: withheld (the flag off)
        killer.join(10)
        owner.run(lambda: reg.register(KEY, agents.new()))  # over its dead copy
        reg.register("end", agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    finally:
        release.set()
        owner.stop()
        other.stop()
        reg.close()
        flags.close()
    assert _ends_told(events) == [id(dead)]
