"""``unregister(key)`` racing the death of the key's own local agent.

The agent ends on its own thread (an asyncio future completed on its loop
thread, or a ``spawn_thread`` thread returning) while the test's thread
unregisters it. Whichever comes first, every node hears ONE removal of the
key, with one reason, and that reason agrees with ``unregister``'s return
value: ``True`` -> ``"unregistered"`` (the call removed it), ``False`` ->
``"down"`` (the death removed it first). Redis decides which came first (the
change record it wrote says why); the writer's node must not say otherwise.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import pytest

from foundation.liveness import spawn_thread
from foundation.registry import RegistryEvent
from tests.redis.conftest import MakeRegistry
from tests.redis.support import wait_until

N = 600
MARKER = "marker"


class Heard:
    """The ``unregistered`` events' reasons of one node, by key."""

    def __init__(self) -> None:
        self.reasons: dict[Hashable, list[str | None]] = collections.defaultdict(list)
        self.marker = threading.Event()

    def __call__(self, event: RegistryEvent) -> None:
        if event.kind != "unregistered":
            return
        if event.entry.key == MARKER:
            self.marker.set()
            return
        self.reasons[event.entry.key].append(event.reason)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop")
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def _futures(loop: asyncio.AbstractEventLoop) -> list[tuple[Any, Callable[[], None]]]:
    """N asyncio futures (the agents) and, for each, what completes it on its loop."""

    async def make() -> list[asyncio.Future[int]]:
        return [loop.create_future() for _ in range(N)]

    futs = asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)

    def ender(f: asyncio.Future[int]) -> Callable[[], None]:
        return lambda: loop.call_soon_threadsafe(f.set_result, 1)

    return [(f, ender(f)) for f in futs]


def _threads() -> list[tuple[Any, Callable[[], None]]]:
    """N thread agents and, for each, what makes it return."""
    made = []
    for _ in range(N):
        ev = threading.Event()
        made.append((spawn_thread(ev.wait), ev.set))
    return made


def _wait_until_every_removal_is_heard(a: Any, here: Heard, there: Heard) -> None:
    """Register and unregister a marker on ``a``: every event of the removals
    before it precedes the marker's on both nodes (each node delivers in its
    mirror order, the other applies ``a``'s records in stream order)."""
    marker_stop = threading.Event()
    a.register(MARKER, spawn_thread(marker_stop.wait))
    assert a.unregister(MARKER)
    marker_stop.set()
    assert here.marker.wait(30)
    assert there.marker.wait(30)


@pytest.mark.parametrize("kind", ["asyncio-future", "thread"])
def test_unregister_racing_the_agents_death_is_one_removal_with_one_reason_everywhere(
    make_registry: MakeRegistry, loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    a, b = make_registry(), make_registry()
    here, there = Heard(), Heard()
    a.subscribe(here)
    b.subscribe(there)
    agents = _futures(loop) if kind == "asyncio-future" else _threads()
    for i, (agent, _) in enumerate(agents):
        a.register(i, agent)
    assert b.wait_for_version(a.status().written, timeout=30)
    returned: dict[int, bool] = {}
    for i, (_, end) in enumerate(agents):
        end()  # the agent ends on its own thread ...
        returned[i] = a.unregister(i)  # ... while this one unregisters it
    _wait_until_every_removal_is_heard(a, here, there)
    assert wait_until(lambda: a.count() == 0 and b.count() == 0, timeout=30)

    wrong_here = [i for i in range(N) if len(here.reasons[i]) != 1]
    disagrees = [
        i for i in range(N) if here.reasons[i] != (["unregistered"] if returned[i] else ["down"])
    ]
    other_node = [i for i in range(N) if there.reasons[i] != here.reasons[i]]
    example = [
        (i, returned[i], here.reasons[i], there.reasons[i])
        for i in (disagrees or other_node or wrong_here)[:3]
    ]
    assert (len(wrong_here), len(disagrees), len(other_node)) == (0, 0, 0), (
        f"of {N} keys: {len(wrong_here)} without exactly one local event, "
        f"{len(disagrees)} whose local reason disagrees with unregister's return value, "
        f"{len(other_node)} heard with another reason on the other node; "
        f"(key, returned, local, other node): {example}; "
        f"unregister True for {sum(returned.values())}"
    )


def test_a_key_registered_again_right_after_the_race_keeps_its_new_registration(
    make_registry: MakeRegistry, loop: asyncio.AbstractEventLoop, agents: Callable[[], Any]
) -> None:
    """The same race, then the key registered again at once with a live agent:
    a late death report of the old agent, or its delete, never removes the new
    registration, and each node hears the old one go once, with one reason."""
    a, b = make_registry(), make_registry()
    here, there = Heard(), Heard()
    a.subscribe(here)
    b.subscribe(there)
    old = _futures(loop)
    for i, (agent, _) in enumerate(old):
        a.register(i, agent)
    returned: dict[int, bool] = {}
    new = [agents() for _ in range(N)]
    for i, (_, end) in enumerate(old):
        end()
        returned[i] = a.unregister(i)
        a.register(i, new[i])
    assert b.wait_for_version(a.status().written, timeout=30)
    _wait_until_every_removal_is_heard(a, here, there)

    lost_here = [i for i in range(N) if (e := a.lookup(i)) is None or e.agent is not new[i]]
    lost_there = [i for i in range(N) if (e := b.lookup(i)) is None or e.node != a.node]
    wrong = [
        i
        for i in range(N)
        if here.reasons[i] != (["unregistered"] if returned[i] else ["down"])
        or there.reasons[i] != here.reasons[i]
    ]
    example = [(i, returned[i], here.reasons[i], there.reasons[i]) for i in wrong[:3]]
    assert (len(lost_here), len(lost_there), len(wrong)) == (0, 0, 0), (
        f"of {N} keys: {len(lost_here)} lost their new registration here, "
        f"{len(lost_there)} on the other node, {len(wrong)} heard wrongly (key, "
        f"returned, local, other node): {example}"
    )
