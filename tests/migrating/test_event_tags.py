"""The facade recognises its backend calls' events by the tag each call gives them.

A ``MemoryRegistry`` side may deliver a call's events late, by another thread
(a writer that finds another thread delivering leaves its events to it). The
facade's tag travels with each event, so a mirror call's events are dropped
whenever they arrive: even when the facade subscribed to that side, or the
flag flipped, after the call was made. A tag never outlives its call in the
thread (a listener interrupted by ``KeyboardInterrupt`` included), and writes
made by listeners are never taken for the call that ran them.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from foundation import MemoryRegistry, RegistryEvent
from tests.faults._subprocess import run_scenario
from tests.migrating.support import FLAG, make, wait_until

WAIT = 10.0


def _future() -> Future[None]:
    return Future()


def test_a_mirror_event_delivered_after_subscribe_and_a_flip_is_dropped() -> None:
    legacy, target = MemoryRegistry(), MemoryRegistry()
    reg, flags = make(True, legacy=legacy, target=target)  # target authoritative
    holding, release = threading.Event(), threading.Event()

    def blocker(event: RegistryEvent) -> None:
        # A listener of the legacy store itself: its delivery of "hold" holds
        # on, so the facade's mirror event queued meanwhile is delivered late.
        if event.entry.key == "hold":
            holding.set()
            release.wait(WAIT)

    undo = legacy.subscribe(blocker)
    agents = [_future() for _ in range(3)]
    holder = threading.Thread(target=lambda: legacy.register("hold", agents[0]))
    seen: list[tuple[str, Any]] = []
    try:
        holder.start()
        assert holding.wait(WAIT)
        reg.register("k", agents[1])  # mirrored to the legacy store: its event waits there
        # Subscribed after the write (the facade starts listening to the
        # legacy store now), then the legacy side becomes authoritative.
        reg.subscribe(lambda e: seen.append((e.kind, e.entry.key)))
        flags.set(FLAG, False)
        release.set()
        holder.join(WAIT)
        assert not holder.is_alive()
        # The legacy store delivered the mirror event (after "hold") to the
        # facade; a later kept event comes after it in the facade's queue.
        reg.register("sentinel", agents[2])
        assert wait_until(lambda: ("registered", "sentinel") in seen, WAIT)
        assert ("registered", "k") not in seen, seen
    finally:
        release.set()
        undo()
        for agent in agents:
            agent.set_result(None)
        reg.close()
        flags.close()


def test_a_listener_interrupted_mid_call_leaves_no_tag_on_the_thread() -> None:
    # A fault scenario: a plain interpreter with its default hooks.
    result = run_scenario(
        """
        from concurrent.futures import Future
        from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry
        from foundation.registry import ThreadLocalRegistry

        FLAG = "use_ets_agent_registry"
        flags = FeatureFlags([Flag(FLAG)])
        flags.enable(FLAG)  # target authoritative: its calls keep their events
        target = MemoryRegistry()
        reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
        seen = []
        reg.subscribe(lambda e: seen.append((e.kind, e.entry.key)))

        def interrupting(event):
            if event.entry.key == "k":
                raise KeyboardInterrupt

        undo = target.subscribe(interrupting)
        agents = [Future() for _ in range(3)]
        try:
            reg.register("k", agents[0])
        except KeyboardInterrupt:
            print("INTERRUPTED")
        undo()
        flags.disable(FLAG)  # the target is a mirror now: its own events are dropped
        # A direct write to the target by this thread is no call of the facade:
        # with no tag left on the thread, it is not forwarded (not authoritative).
        target.register("direct", agents[1])
        reg.register("sentinel", agents[2])  # kept: after "direct" in the facade's queue
        wait_for(lambda: ("registered", "sentinel") in seen, "the sentinel")
        print("SEEN", seen)
        for agent in agents:
            agent.set_result(None)
        reg.close()
        flags.close()
        print("OK")
        """
    )
    assert result.lines("INTERRUPTED"), result.stdout
    assert result.lines("SEEN") == ["SEEN [('registered', 'k'), ('registered', 'sentinel')]"], (
        result.stdout
    )


def test_a_write_by_a_backend_listener_during_a_mirror_call_is_not_the_call_s() -> None:
    legacy, target = MemoryRegistry(), MemoryRegistry()
    reg, flags = make(True, legacy=legacy, target=target)  # legacy: the mirror
    seen: list[tuple[str, Any]] = []
    reg.subscribe(lambda e: seen.append((e.kind, e.entry.key)))
    agents = [_future() for _ in range(3)]

    def echo(event: RegistryEvent) -> None:
        # Run by the mirror call's thread while it delivers the mirror's event.
        if event.kind == "registered" and event.entry.key == "k":
            legacy.register("echo", agents[1])

    undo = legacy.subscribe(echo)
    try:
        reg.register("k", agents[0])
        flags.set(FLAG, False)  # legacy authoritative from here
        reg.register("sentinel", agents[2])
        assert wait_until(lambda: ("registered", "sentinel") in seen, WAIT)
        # "echo" is a direct write to the legacy store, delivered while the
        # target was authoritative: not forwarded; the mirror's "k" neither.
        assert seen == [("registered", "k"), ("registered", "sentinel")], seen
    finally:
        undo()
        for agent in agents:
            agent.set_result(None)
        reg.close()
        flags.close()
