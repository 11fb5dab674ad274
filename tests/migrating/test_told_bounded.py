"""MigratingRegistry over a per-thread legacy: what the listeners were told
stays bounded when threads register a key once and end.

``MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry())``, a listener
subscribed: the facade notes each registration its listeners were told of
until they are told its end (``_told``). A thread's legacy copy of a key the
target already holds (another thread's) is a divergence: the target never
takes it, and the per-thread store monitors nothing and tells nothing when
its thread ends. Its end can be told by no one, so the note (and its agent,
dead or alive) was kept for ever: a service whose threads each register a
key once and end leaked one per thread. Now a write sweeps the notes of
ended threads the target may not hold (``_drop_ended_told``).

Real threads, real stores, real agents (``concurrent.futures.Future``: dead
once done); the flag flips on and off along the way.
"""

from __future__ import annotations

import concurrent.futures as cf
import gc
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.registry import RegistryEvent
from foundation.registry._migrating_events import _SWEEP_AT_LEAST
from tests.migrating.support import FLAG, FLAGS, Worker, wait_until

THREADS = 2_000
FLIP_EVERY = 500
BOUND = 2 * _SWEEP_AT_LEAST  # what a sweep leaves, doubled, at most (no live copy here)


def _in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` in a new thread, which has ended on return (its errors re-raised)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised in the caller
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _flip(reg: MigratingRegistry, flags: FeatureFlags) -> None:
    """The flag on, then off (each seen by a read)."""
    flags.enable(FLAG)
    reg.lookup("shared")
    flags.disable(FLAG)
    reg.lookup("shared")


def test_threads_registering_a_divergent_key_once_leave_no_agent_behind() -> None:
    flags = FeatureFlags(FLAGS)
    reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
    told: Counter[tuple[str, str | None]] = Counter()  # counts only: keeps no agent
    reg.subscribe(lambda e: told.update([(e.kind, e.reason)]))
    holder: cf.Future[None] = cf.Future()  # the target's copy of "shared": the others diverge
    refs: list[weakref.ref[cf.Future[None]]] = []
    peak = 0
    try:
        reg.register("shared", holder, {})
        for i in range(THREADS):
            if i and i % FLIP_EVERY == 0:
                _flip(reg, flags)

            def once(i: int = i) -> None:
                agent: cf.Future[None] = cf.Future()
                refs.append(weakref.ref(agent))
                reg.register("shared", agent, {"i": i})  # its own copy, this thread's
                agent.set_result(None)  # dies; the thread ends without retaking the key

            _in_thread(once)
            peak = max(peak, len(reg._told))
            assert len(reg._told) <= BOUND + 1, (i, len(reg._told))  # (+1: the holder's)
        gc.collect()
        kept = sum(1 for ref in refs if ref() is not None)
        assert kept <= BOUND, f"{kept} of {THREADS} dead agents are still referenced"
        assert peak >= _SWEEP_AT_LEAST, "no sweep was ever due: the test proves nothing"
        # Each registration told once; no death told (no backend reported one).
        assert told == Counter({("registered", None): THREADS + 1})
        assert reg.lookup("shared") is not None  # the holder's, alive, still registered
    finally:
        holder.set_result(None)
        reg.close()


def test_an_ended_thread_s_copy_the_target_holds_is_still_told_dead_once() -> None:
    """The sweep keeps what the target holds: an ended thread's copy the target
    took (its own key) has its death told once, at the flip on (the flag off
    at its death: the per-thread store answers, and tells none itself)."""
    flags, reg, events = _migrating(MemoryRegistry())
    holder: cf.Future[None] = cf.Future()
    mirrored: cf.Future[None] = cf.Future()
    try:
        reg.register("shared", holder, {})
        _in_thread(lambda: reg.register("own", mirrored, {}))  # the target takes it
        for _ in range(2 * BOUND):  # several sweeps, after the thread above ended
            _in_thread(lambda: reg.register("shared", cf.Future(), {}))
        assert ("own", mirrored) in reg._told
        mirrored.set_result(None)  # the target's monitor reports it: withheld
        flags.enable(FLAG)
        reg.lookup("own")  # the flip seen: the withheld death is told

        def ends() -> list[tuple[object, str | None]]:
            return [
                (e.entry.key, e.reason)
                for e in list(events)
                if e.kind == "unregistered" and e.entry.agent is mirrored
            ]

        assert wait_until(lambda: bool(ends())), "the death was never told"
        _flip(reg, flags)  # nothing left to tell it again
        flags.enable(FLAG)
        reg.register("end", cf.Future(), {})  # delivered after every event before it
        assert ends() == [("own", "down")]
    finally:
        holder.set_result(None)
        reg.close()


def _sweep_once(reg: MigratingRegistry) -> None:
    """Threads register a divergent copy of "shared" and end, until a write swept
    (``_told_in`` shrank): each write looks first, so the last one swept."""
    for _ in range(4 * BOUND):
        before = len(reg._told_in)
        _in_thread(lambda: reg.register("shared", cf.Future(), {}))
        if len(reg._told_in) < before:
            return
    raise AssertionError("no sweep ran")


def _migrating(
    target: MemoryRegistry,
) -> tuple[FeatureFlags, MigratingRegistry, list[RegistryEvent]]:
    """The flags (off), a registry migrating to ``target``, every event it tells."""
    flags = FeatureFlags(FLAGS)
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    events: list[RegistryEvent] = []
    reg.subscribe(events.append)
    return flags, reg, events


def _sweeps_due(reg: MigratingRegistry) -> None:
    """Ended threads register "shared" until sweeps are due (checked)."""
    peak = 0
    for _ in range(2 * BOUND):
        _in_thread(lambda: reg.register("shared", cf.Future(), {}))
        peak = max(peak, len(reg._told_in))
    assert peak >= _SWEEP_AT_LEAST, "no sweep was due: the test proves nothing"


def _told_once_at_the_flip(
    reg: MigratingRegistry, flags: FeatureFlags, events: list[RegistryEvent], agent: object
) -> None:
    """The flag on, seen by a read: the withheld death of ``agent`` ("own") is
    told, once."""
    flags.enable(FLAG)
    reg.lookup("own")  # the flip seen: a withheld death is told
    assert wait_until(lambda: bool(_ends_of(events, agent))), "the death was never told"
    reg.register("end", cf.Future(), {})  # delivered after every event before it
    assert _ends_of(events, agent) == [("own", "down")]


def _ends_of(events: list[RegistryEvent], agent: object) -> list[tuple[object, str | None]]:
    return [
        (e.entry.key, e.reason)
        for e in list(events)
        if e.kind == "unregistered" and e.entry.agent is agent
    ]


def test_a_copy_another_live_thread_holds_too_is_not_forgotten_with_the_ended_one() -> None:
    """One agent under one key in two threads' stores is one registration: the
    second thread ending must not forget it while the first still holds its
    copy, whose death its retake tells (was: swept, then never told)."""
    _, reg, events = _migrating(MemoryRegistry())
    holder: cf.Future[None] = cf.Future()
    agent: cf.Future[None] = cf.Future()
    worker = Worker("told-bounded-holder")
    try:
        reg.register("shared", holder, {})  # the target's copy: the others diverge
        worker.run(lambda: reg.register("shared", agent, {}))  # a live thread's copy
        _in_thread(lambda: reg.register("shared", agent, {}))  # the same, in a thread that ends
        _sweep_once(reg)
        agent.set_result(None)
        worker.run(lambda: reg.register("shared", cf.Future(), {}))  # its store tells the death
        reg.register("end", cf.Future(), {})  # delivered after every event before it
        assert _ends_of(events, agent) == [("shared", "down")]
    finally:
        worker.stop()
        holder.set_result(None)
        reg.close()


def test_a_target_death_delivered_late_is_told_though_a_sweep_ran_meanwhile() -> None:
    """An ended thread's copy the target took dies; the target's report waits
    behind a slow listener of the target while a flag-on register takes the key
    (its record gone) and a sweep runs: the late report is still told, once."""
    target = MemoryRegistry()
    flags, reg, events = _migrating(target)
    holder: cf.Future[None] = cf.Future()
    agent: cf.Future[None] = cf.Future()
    stalled, release = threading.Event(), threading.Event()

    def slow(event: RegistryEvent) -> None:  # the target's own listener
        if event.entry.key == "stall" and event.kind == "registered":
            stalled.set()
            release.wait(30)

    target.subscribe(slow)
    staller = threading.Thread(target=lambda: target.register("stall", holder, {}))
    try:
        reg.register("shared", holder, {})
        _in_thread(lambda: reg.register("own", agent, {}))  # the target takes it; the thread ends
        staller.start()
        assert stalled.wait(10)  # the target's deliveries wait behind it now
        agent.set_result(None)  # the target's report of the death is queued behind
        flags.enable(FLAG)
        reg.register("own", cf.Future(), {})  # flag on: the key is free in the target
        flags.disable(FLAG)
        _sweeps_due(reg)  # none may forget the death in flight
        release.set()
        staller.join(10)
        _told_once_at_the_flip(reg, flags, events, agent)
    finally:
        release.set()
        holder.set_result(None)
        reg.close()


class _SlowTarget(MemoryRegistry):
    """A real ``MemoryRegistry`` whose register of key "slow" waits for ``go``."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.go = threading.Event(), threading.Event()

    def register(
        self, key: Any, agent: Any, metadata: Any = None, *, replace: bool = False
    ) -> None:
        if key == "slow":
            self.entered.set()
            self.go.wait(30)
        super().register(key, agent, metadata, replace=replace)


def test_an_ended_thread_s_copy_whose_mirror_is_still_queued_is_kept() -> None:
    """A thread's copy whose target mirror waits in the queue (another thread's
    mirror in flight ahead of it) when the thread ends: the target takes it
    later, so a sweep meanwhile must keep it; its death is told once."""
    target = _SlowTarget()
    flags, reg, events = _migrating(target)
    holder: cf.Future[None] = cf.Future()
    agent: cf.Future[None] = cf.Future()
    pumper = threading.Thread(target=lambda: reg.register("slow", holder, {}))
    try:
        reg.register("shared", holder, {})
        pumper.start()  # its own mirror, in flight, waits: it holds the queue
        assert target.entered.wait(10)
        _in_thread(lambda: reg.register("own", agent, {}))  # queued behind; the thread ends
        _sweeps_due(reg)  # with the mirror of "own" still queued
        target.go.set()
        pumper.join(10)
        assert wait_until(lambda: target.lookup("own") is not None)  # the target took it
        agent.set_result(None)
        _told_once_at_the_flip(reg, flags, events, agent)
    finally:
        target.go.set()
        holder.set_result(None)
        reg.close()
