"""MigratingRegistry events when the target delivers one thread's events in another.

``MemoryRegistry`` delivers events in write order from one queue: whichever
thread is already delivering delivers the events other threads queue
meanwhile. The facade used to decide which events to keep by the *delivering*
thread's call, so two races broke "its events are the events" (docs/contract.md):

1. A death of a target agent, while the target is authoritative (flag on),
   was dropped when the thread that happened to deliver it was applying a
   queued flag-off mirror (whose own events are dropped): the listener never
   learnt of the death.
2. The other way round: a queued mirror's own event, delivered by the thread
   reporting a death, was forwarded as an authoritative event: the listener
   got a second ``registered`` for one registration.

Both are forced deterministically: a listener of the target itself holds the
delivering thread inside the target's dispatch until the other event is queued.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from foundation import (
    FeatureFlags,
    Flag,
    MemoryRegistry,
    MigratingRegistry,
    RegistryEvent,
    ThreadLocalRegistry,
    spawn_thread,
)
from tests.contract.agents import wait_until

FLAG = "use_ets_agent_registry"
WAIT = 10.0


@pytest.fixture
def setup() -> Iterator[tuple[MigratingRegistry, MemoryRegistry, FeatureFlags]]:
    flags = FeatureFlags([Flag(FLAG)])
    flags.enable(FLAG)
    target = MemoryRegistry()
    registry = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    try:
        yield registry, target, flags
    finally:
        registry.close()
        flags.close()


def _seen(events: list[RegistryEvent]) -> list[tuple[str, str | None, object]]:
    return [(e.kind, e.reason, e.entry.key) for e in events]


def test_a_target_death_delivered_by_a_mirroring_thread_reaches_the_listeners(
    setup: tuple[MigratingRegistry, MemoryRegistry, FeatureFlags], stop: threading.Event
) -> None:
    registry, target, flags = setup
    doomed: concurrent.futures.Future[None] = concurrent.futures.Future()
    registry.register("d", doomed)  # flag on: held by the target
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    flags.disable(FLAG)

    inside, go, written = threading.Event(), threading.Event(), threading.Event()

    def gate(event: RegistryEvent) -> None:
        # Holds the mirroring thread inside the target's dispatch of its own mirror.
        if event.kind == "registered" and event.entry.key == "m":
            inside.set()
            go.wait(WAIT)

    target.subscribe(gate)
    writer = threading.Thread(
        target=lambda: (registry.register("m", spawn_thread(stop.wait)), written.set()),
        name="mirroring-writer",
    )
    writer.start()  # flag off: legacy write, then its target mirror (events dropped)
    try:
        assert inside.wait(WAIT)
        flags.enable(FLAG)  # the target is authoritative from here on
        dying = threading.Thread(target=doomed.set_result, args=(None,), name="death")
        dying.start()  # its death is queued behind the mirroring thread's delivery
        assert wait_until(lambda: target.lookup("d") is None, WAIT)
        target.stats()  # the death's event is queued (made under the write lock)
    finally:
        go.set()
    dying.join(WAIT)
    assert written.wait(WAIT)
    writer.join(WAIT)
    # (Delivered by a courier: the mirroring thread's turn ended with its own.)
    assert wait_until(lambda: ("unregistered", "down", "d") in _seen(events), WAIT)
    assert _seen(events).count(("registered", None, "m")) == 1


def test_a_mirror_event_delivered_by_another_thread_is_not_forwarded(
    setup: tuple[MigratingRegistry, MemoryRegistry, FeatureFlags], stop: threading.Event
) -> None:
    registry, target, flags = setup
    doomed: concurrent.futures.Future[None] = concurrent.futures.Future()
    registry.register("d", doomed)  # flag on: held by the target
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    flags.disable(FLAG)

    inside, go, written = threading.Event(), threading.Event(), threading.Event()

    def gate(event: RegistryEvent) -> None:
        # Holds the thread reporting the death inside the target's dispatch.
        if event.kind == "unregistered" and event.entry.key == "d":
            inside.set()
            go.wait(WAIT)

    target.subscribe(gate)
    dying = threading.Thread(target=doomed.set_result, args=(None,), name="death")
    dying.start()
    writer = threading.Thread(
        target=lambda: (registry.register("m", spawn_thread(stop.wait)), written.set()),
        name="mirroring-writer",
    )
    try:
        assert inside.wait(WAIT)
        writer.start()  # flag off: legacy write; its target mirror's event queues behind
        assert wait_until(lambda: target.lookup("m") is not None, WAIT)
        target.stats()  # the mirror's event is queued (made under the write lock)
        flags.enable(FLAG)  # authoritative target while that event is delivered
    finally:
        go.set()
    dying.join(WAIT)
    assert written.wait(WAIT)
    writer.join(WAIT)
    # One registration, one event (the legacy side's: it answered the write).
    assert _seen(events).count(("registered", None, "m")) == 1, _seen(events)
