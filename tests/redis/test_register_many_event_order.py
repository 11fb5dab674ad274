"""RedisRegistry.register_many over a key whose local agent died unnoticed: the
events MemoryRegistry gives (the reference), in input order.

The contract suite checks the batches every backend shares
(``tests/contract/test_registry_contract.py``, ``test_register_many_events_...``);
here the old agent is an asyncio future of a loop that does not run: done, so
dead, while the done callback that would report its death waits for the loop.
The batch meets it dead, still registered, and tells its end at its own place
in the batch, ``"down"`` without ``replace`` and ``"replaced"`` with it, as
``register`` calls would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from foundation.liveness import is_alive
from foundation.registry import MemoryRegistry, Registry, RegistryEvent
from tests.contract.agents import wait_until
from tests.redis.conftest import MakeRegistry


@pytest.fixture
def idle_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop that never runs: its futures' done callbacks never run."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _batch_events(
    registry: Registry, agents: Callable[[], Any], loop: asyncio.AbstractEventLoop, replace: bool
) -> list[Any]:
    """Register ``z`` (its agent then dies unnoticed), then the batch p, z, q."""
    old = loop.create_future()
    registry.register("z", old)
    old.set_result(None)  # dead; its monitor hears it only once the loop runs
    assert not is_alive(old)
    assert registry.lookup("z") is not None
    names = {id(old): "Z0"}
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    batch = [("p", agents()), ("z", agents()), ("q", agents())]
    names.update({id(a): k.upper() for k, a in batch})
    assert registry.register_many(batch, replace=replace) == [None, None, None]
    wait_until(lambda: len(events) >= 4)
    return [(e.kind, e.reason, e.entry.key, names[id(e.entry.agent)], e.down) for e in events]


@pytest.mark.parametrize("replace", [False, True], ids=["plain", "replace"])
def test_a_dead_agents_key_in_a_batch_is_told_at_its_place_as_memory_tells_it(
    make_registry: MakeRegistry,
    agents: Callable[[], Any],
    idle_loop: asyncio.AbstractEventLoop,
    replace: bool,
) -> None:
    with MemoryRegistry() as memory:
        reference = _batch_events(memory, agents, idle_loop, replace)
    heard = _batch_events(make_registry(), agents, idle_loop, replace)
    expected = [
        ("registered", None, "p", "P", None),
        ("unregistered", "down", "z", "Z0", None),  # dead: "down", replace or not
        ("registered", None, "z", "Z", None),
        ("registered", None, "q", "Q", None),
    ]
    assert reference == expected
    assert heard == expected
