"""A key whose agent died unnoticed is taken again: the facade tells what the
answering backend alone tells.

The dead agent is an asyncio ``Future`` completed on a loop that never runs:
its done callbacks never run, so no monitor notices the death, and the store
finds it dead only when the key is taken again (``register`` or
``register_many``): a bare store tells ``unregistered("down")`` then
``registered`` (with ``replace=True`` too: the holder is dead). A
``MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry())`` with the flag
off told only ``registered`` when its listener came after the dead
registration, or when that registration was made with the flag on (20/20):
the legacy store's own report was taken for one it never makes. With a real
``spawn_thread`` agent whose death the target's monitor reports first, the
listener after the registration, the facade (flag off at the retake) told only
``registered`` too (4/4): the target's report was dropped, not withheld.

Real stores, real agents, no sleep: a last registration marks the end of the
events, which are delivered in order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.registry import Registry, RegistryEvent
from tests.migrating.support import FLAG, FLAGS, Agents, wait_until

Seen = list[tuple[str, object, str | None]]

# (flag at the dead registration, flag when its key is taken again)
FLAG_STEPS = {
    "off": (False, False),
    "on": (True, True),
    "on-off": (True, False),
    "off-on": (False, True),
}
PAIRS = {
    "thread_local-memory": (ThreadLocalRegistry, MemoryRegistry),
    "memory-memory": (MemoryRegistry, MemoryRegistry),
}


@pytest.fixture
def idle_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()  # never run: its futures' deaths go unnoticed
    yield loop
    loop.close()


def _scenario(
    reg: Registry,
    loop: asyncio.AbstractEventLoop,
    agents: Agents,
    many: bool,
    replace: bool,
    listen_first: bool,
    flip: Callable[[], None] = lambda: None,
) -> Seen:
    """Register ``z`` to an agent that dies unnoticed, take ``z`` again: the events."""
    events: list[RegistryEvent] = []
    if listen_first:
        reg.subscribe(events.append)
    dead: asyncio.Future[None] = loop.create_future()
    reg.register("z", dead)
    dead.set_result(None)  # dead; its done callbacks (the monitor's) never run
    flip()
    if not listen_first:
        reg.subscribe(events.append)
    if many:
        reg.register_many([("p", agents.new()), ("z", agents.new())], replace=replace)
    else:
        reg.register("z", agents.new(), replace=replace)
    reg.register("end", agents.new())  # the last event: all before it are delivered
    assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    return [(e.kind, e.entry.key, e.reason) for e in events]


@pytest.mark.parametrize("listen_first", [False, True], ids=["listener-after", "listener-first"])
@pytest.mark.parametrize("replace", [False, True], ids=["plain", "replace"])
@pytest.mark.parametrize("many", [False, True], ids=["register", "register_many"])
@pytest.mark.parametrize("steps", list(FLAG_STEPS))
@pytest.mark.parametrize("pair", list(PAIRS))
def test_dead_key_retaken_tells_what_the_answering_store_alone_tells(
    pair: str,
    steps: str,
    many: bool,
    replace: bool,
    listen_first: bool,
    idle_loop: asyncio.AbstractEventLoop,
    agents: Agents,
) -> None:
    legacy_cls, target_cls = PAIRS[pair]
    at_register, at_retake = FLAG_STEPS[steps]
    alone = (target_cls if at_retake else legacy_cls)()  # the store answering the retake
    try:
        want = _scenario(alone, idle_loop, agents, many, replace, listen_first)
    finally:
        alone.close()
    flags = FeatureFlags(FLAGS)
    flags.set(FLAG, at_register)
    reg = MigratingRegistry(legacy_cls(), target_cls(), flags)

    def flip() -> None:
        flags.set(FLAG, at_retake)

    try:
        got = _scenario(reg, idle_loop, agents, many, replace, listen_first, flip)
    finally:
        reg.close()
        flags.close()
    assert got == want
    old_end = ("unregistered", "z", "down")  # dead: "down", replace or not (docs/contract.md)
    assert got.count(old_end) == 1  # the bare stores agree: told once


def test_dead_key_retaken_in_another_thread_is_its_own(
    idle_loop: asyncio.AbstractEventLoop, agents: Agents
) -> None:
    """Flag off, per-thread legacy: another thread's taking of the key tells no
    death of this thread's dead copy (a bare ``ThreadLocalRegistry`` neither)."""
    flags = FeatureFlags(FLAGS)
    reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
    events: list[RegistryEvent] = []
    try:
        dead: asyncio.Future[None] = idle_loop.create_future()
        reg.register("z", dead)
        dead.set_result(None)
        reg.subscribe(events.append)
        other = threading.Thread(target=lambda: reg.register("z", agents.new()))
        other.start()
        other.join(10)
        reg.register("end", agents.new())
        assert wait_until(lambda: any(e.entry.key == "end" for e in events))
        seen = [(e.kind, e.entry.key, e.reason) for e in events]
        assert seen == [("registered", "z", None), ("registered", "end", None)]
    finally:
        reg.close()
        flags.close()


def _noticed_scenario(
    reg: Registry,
    agents: Agents,
    replace: bool,
    flip: Callable[[], None] = lambda: None,
    target: MemoryRegistry | None = None,
) -> Seen:
    """Register ``z`` to a ``spawn_thread`` agent, then listen; the agent ends and
    (``target``: the facade's target) the target's monitor reports it first;
    the thread takes ``z`` again: the events."""
    events: list[RegistryEvent] = []
    reported = threading.Event()  # the target's report has reached the facade

    def on_target(event: RegistryEvent) -> None:
        # Subscribed after the facade: called once the facade's listener returned.
        if event.entry.key == "z" and event.reason == "down":
            reported.set()

    if target is not None:
        target.subscribe(on_target)
    old = agents.new()
    reg.register("z", old)
    flip()
    reg.subscribe(events.append)
    agents.kill(old)
    if target is not None:
        assert reported.wait(10)  # noticed (and reported) before the retake
    reg.register("z", agents.new(), replace=replace)
    reg.register("end", agents.new())  # the last event: all before it are delivered
    assert wait_until(lambda: any(e.entry.key == "end" for e in events))
    return [(e.kind, e.entry.key, e.reason) for e in events]


@pytest.mark.parametrize("replace", [False, True], ids=["plain", "replace"])
@pytest.mark.parametrize("at_register", [False, True], ids=["off", "on-off"])
def test_dead_key_retaken_after_the_target_noticed_the_death(
    at_register: bool, replace: bool, agents: Agents
) -> None:
    """Flag off at the retake, per-thread legacy, listener after the registration:
    the target's monitor reports the death first; the legacy store's own report
    at the retake tells it, as the bare store does (was dropped: only
    ``registered`` was told)."""
    alone = ThreadLocalRegistry()
    try:
        want = _noticed_scenario(alone, agents, replace)
    finally:
        alone.close()
    flags = FeatureFlags(FLAGS)
    flags.set(FLAG, at_register)
    target = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)

    def flip() -> None:
        flags.set(FLAG, False)

    try:
        got = _noticed_scenario(reg, agents, replace, flip, target)
    finally:
        reg.close()
        flags.close()
    assert got == want
    assert got.count(("unregistered", "z", "down")) == 1  # dead: "down", replace or not
