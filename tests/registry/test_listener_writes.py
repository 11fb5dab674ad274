"""A listener that writes to the registry it listens to (in the delivering thread).

Its write's events follow once the event being delivered has reached every
listener: one event at a time, in write order, never one delivered inside
another (docs/contract.md, "Events"). Checked on ``MemoryRegistry`` and on
``MigratingRegistry`` with the flag on and off, both of which deliver through
one helper (``registry._listeners.DeliveryQueue``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

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
from foundation.registry import Registry

FLAG = "use_ets_agent_registry"


def _memory() -> tuple[Registry, Callable[[], None]]:
    registry = MemoryRegistry()
    return registry, registry.close


def _migrating(flag_on: bool) -> Callable[[], tuple[Registry, Callable[[], None]]]:
    def make() -> tuple[Registry, Callable[[], None]]:
        flags = FeatureFlags([Flag(FLAG)])
        flags.set(FLAG, flag_on)
        registry = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)

        def close() -> None:
            registry.close()
            flags.close()

        return registry, close

    return make


@pytest.fixture(
    params=[_memory, _migrating(True), _migrating(False)],
    ids=["memory", "migrating-flag-on", "migrating-flag-off"],
)
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    made, close = request.param()
    try:
        yield made
    finally:
        close()


@pytest.fixture
def agent() -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = spawn_thread(stop.wait, name="listener-writes-agent")
    yield thread
    stop.set()


def test_a_listeners_write_is_delivered_after_the_event_reached_every_listener(
    registry: Registry, agent: threading.Thread
) -> None:
    seen: list[tuple[str, str, object]] = []

    def first(event: RegistryEvent) -> None:
        seen.append(("first", event.kind, event.entry.key))
        if event.kind == "registered" and event.entry.key == "a":
            registry.register("b", agent)  # its events follow once "a" reached `second`
            seen.append(("first", "wrote", "b"))

    def second(event: RegistryEvent) -> None:
        seen.append(("second", event.kind, event.entry.key))

    registry.subscribe(first)
    registry.subscribe(second)
    registry.register("a", agent)
    assert seen == [
        ("first", "registered", "a"),
        ("first", "wrote", "b"),
        ("second", "registered", "a"),
        ("first", "registered", "b"),
        ("second", "registered", "b"),
    ]
