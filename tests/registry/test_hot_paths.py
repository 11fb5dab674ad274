"""The register/unregister hot path of ``MemoryRegistry``, for every agent kind.

The record is its own monitor once the agent's watch exists (the first
monitor of a future creates it), asyncio and concurrent futures are watched
by the watch object itself (no bound method per future), and the attribute
index follows every write. These tests check that the lean paths keep the
contract: a death removes exactly its registration, nothing leaks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import subprocess
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from foundation.liveness import MonitorManager, spawn_thread
from foundation.registry import MemoryRegistry, RegistryEvent

KINDS = ["asyncio task", "asyncio future", "concurrent future", "spawn_thread"]


class _Agents:
    """Live agents of each kind, on one running loop; ``kill`` ends one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.stop = threading.Event()
        self.made: list[Any] = []
        self.stops: dict[int, threading.Event] = {}

    def new(self, kind: str) -> Any:
        agent: Any
        if kind == "asyncio task":
            agent = self.loop.create_task(asyncio.Event().wait())
        elif kind == "asyncio future":
            agent = self.loop.create_future()
        elif kind == "concurrent future":
            agent = concurrent.futures.Future()
        else:
            stop = threading.Event()
            agent = spawn_thread(stop.wait)
            self.stops[id(agent)] = stop
        self.made.append(agent)
        return agent

    async def kill(self, agent: Any) -> None:
        if isinstance(agent, asyncio.Task):
            agent.cancel()
            await asyncio.gather(agent, return_exceptions=True)
        elif isinstance(agent, asyncio.Future | concurrent.futures.Future):
            agent.set_result(None)
        else:
            self.stops[id(agent)].set()
            agent.join()
        await asyncio.sleep(0)  # let the loop run the done-callbacks
        await asyncio.sleep(0)

    def close(self) -> None:
        for stop in self.stops.values():
            stop.set()
        for agent in self.made:
            if isinstance(agent, asyncio.Future | concurrent.futures.Future):
                agent.cancel()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def _run(loop: asyncio.AbstractEventLoop, coro: Any) -> Any:
    return loop.run_until_complete(coro)


@pytest.mark.parametrize("kind", KINDS)
def test_a_death_removes_every_registration_of_the_agent_first_and_later_monitors(
    loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    async def scenario() -> None:
        agents = _Agents(loop)
        try:
            with MemoryRegistry(indexed=("role",)) as registry:
                events: list[RegistryEvent] = []
                registry.subscribe(events.append)
                agent, other = agents.new(kind), agents.new(kind)
                # "a" is the agent's first monitor here (a new watch for futures);
                # "b" and "c" take the hot path where the record is the monitor.
                registry.register("a", agent, {"role": "io"})
                registry.register("b", agent, {"role": ("io", "db")})
                registry.register("c", agent)
                registry.register("x", other, {"role": "io"})
                assert registry.manager.active_count() == 4
                await agents.kill(agent)
                assert [e.key for e in registry.list_all()] == ["x"]
                assert registry.manager.active_count() == 1
                downs = {
                    e.entry.key for e in events if e.kind == "unregistered" and e.reason == "down"
                }
                assert downs == {"a", "b", "c"}
                assert registry.stats().index_sizes == {"role": 1}
                assert [e.key for e in registry.find_by_attribute("role", "io")] == ["x"]
        finally:
            agents.close()

    _run(loop, scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_unregister_then_reregister_a_death_removes_only_the_live_registration(
    loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    async def scenario() -> None:
        agents = _Agents(loop)
        try:
            with MemoryRegistry() as registry:
                agent, survivor = agents.new(kind), agents.new(kind)
                for _ in range(50):
                    registry.register("k", agent, {"n": 1})
                    assert registry.unregister("k") is True
                registry.register("k", survivor)
                assert registry.manager.active_count() == 1
                await agents.kill(agent)  # its released monitors must not fire
                entry = registry.lookup("k")
                assert entry is not None
                assert entry.agent is survivor
        finally:
            agents.close()

    _run(loop, scenario())


@pytest.mark.parametrize("kind", KINDS)
def test_register_unregister_cycles_leave_no_monitor_or_watch_behind(
    loop: asyncio.AbstractEventLoop, kind: str
) -> None:
    async def scenario() -> None:
        agents = _Agents(loop)
        try:
            with MonitorManager(name="hot-cycles") as manager:
                registry = MemoryRegistry(indexed=("role",), manager=manager)
                agent = agents.new(kind)
                for i in range(500):
                    registry.register(i % 3, agent, {"role": f"r{i % 4}", "n": i})
                    registry.update_metadata(i % 3, {"role": ("a", f"r{i % 2}")})
                    assert registry.unregister(i % 3) is True
                stats = registry.stats()
                assert (stats.entries, stats.monitors) == (0, 0)
                assert stats.index_sizes == {"role": 0}
                assert stats.index_values == {"role": 0}
                assert manager.active_count() == 0
                registry.close()
        finally:
            agents.close()

    _run(loop, scenario())


def test_an_asyncio_watch_goes_when_its_future_is_collected(
    loop: asyncio.AbstractEventLoop,
) -> None:
    async def scenario() -> None:
        with MonitorManager(name="hot-collect") as manager:
            registry = MemoryRegistry(manager=manager)
            fut = loop.create_future()
            registry.register("f", fut)
            assert manager.stats().watched_agents == 1
            registry.unregister("f")
            ref = weakref.ref(fut)
            # The watch is the future's done-callback, so the future holds it; the
            # manager holds the future only weakly: dropping it drops the entry.
            del fut
            gc.collect()
            assert ref() is None
            assert manager.stats().watched_agents == 0
            registry.close()

    _run(loop, scenario())


def test_an_asyncio_future_registered_from_another_thread_is_watched(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """The first monitor off the loop's thread attaches through call_soon_threadsafe."""
    with MemoryRegistry() as registry:
        fut = loop.create_future()
        done = threading.Event()
        worker = threading.Thread(target=lambda: (registry.register("f", fut), done.set()))
        worker.start()
        worker.join()
        assert done.is_set()

        async def finish() -> None:
            await asyncio.sleep(0)  # runs the queued attach
            fut.set_result(None)
            await asyncio.sleep(0)

        _run(loop, finish())
        assert registry.lookup("f") is None
        assert registry.manager.active_count() == 0


def test_a_concurrent_future_completed_on_another_thread_is_removed() -> None:
    with MemoryRegistry(indexed=("role",)) as registry:
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        registry.register("first", fut, {"role": "io"})  # creates the watch
        registry.register("second", fut, {"role": "io"})  # the record is the monitor
        worker = threading.Thread(target=fut.set_exception, args=(ValueError("boom"),))
        worker.start()
        worker.join()
        assert registry.count() == 0
        assert registry.find_by_attribute("role", "io") == []
        assert registry.manager.active_count() == 0


@pytest.mark.parametrize("kind", ["foreign thread", "OS process"])
def test_unregister_detaches_a_managed_watch_with_its_last_monitor(kind: str) -> None:
    """unregister releases the monitor itself (Monitor.demonitor inlined): the
    last one of a manager-owned watch detaches it (thread unpolled, pidfd closed)."""
    stop = threading.Event()
    agent: Any
    if kind == "foreign thread":
        agent = threading.Thread(target=stop.wait, daemon=True)
        agent.start()
    else:
        agent = subprocess.Popen(["sleep", "60"])
    try:
        with MonitorManager(name="hot-managed") as manager:
            registry = MemoryRegistry(manager=manager)
            for i in range(3):
                registry.register(i, agent)
            stats = manager.stats()
            assert stats.watched_agents == 1
            for i in range(3):
                assert registry.unregister(i) is True
                assert manager.active_count() == 2 - i
                assert manager.stats().watched_agents == (1 if i < 2 else 0)
            if kind == "OS process" and manager.uses_pidfd:
                assert manager.stats().open_fds == stats.open_fds - 1  # its pidfd closed
            registry.close()
    finally:
        stop.set()
        if isinstance(agent, subprocess.Popen):
            agent.kill()
            agent.wait()
        else:
            agent.join()
