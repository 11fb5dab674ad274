"""An asyncio future whose event loop is closed while it is watched is told.

Before, the manager released such a future only once it was garbage
collected, but a registry's entry holds it: the entry stayed for ever
(``is_alive()`` said False and ThreadLocalRegistry dropped it). Now the
threads poller checks each distinct loop's ``is_closed()`` every round.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from foundation import MemoryRegistry
from foundation.liveness import MonitorManager
from tests.liveness._support import Recorder, manager_threads, wait_until


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def test_pending_future_of_a_closed_loop_is_told_cancelled(
    manager: MonitorManager, loop: asyncio.AbstractEventLoop
) -> None:
    fut = loop.create_future()  # held here: never collected
    rec = Recorder()
    mon = manager.monitor(fut, rec)
    loop.close()
    assert rec.wait().reason == "cancelled"
    assert rec.count == 1
    assert not mon.active
    assert manager.active_count() == 0
    late = Recorder()  # a later monitor of it: told at once
    manager.monitor(fut, late)
    assert late.count == 1


def test_pending_task_on_a_loop_thread_monitored_from_another_thread(
    manager: MonitorManager,
) -> None:
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever)
    runner.start()

    async def make() -> asyncio.Task[None]:
        return asyncio.ensure_future(asyncio.sleep(100))  # sleep-ok: a future that stays pending

    try:
        task = asyncio.run_coroutine_threadsafe(make(), loop).result()
        recs = [Recorder(), Recorder()]
        for rec in recs:
            manager.monitor(task, rec)  # the attach is queued on the loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
    assert [rec.wait().reason for rec in recs] == ["cancelled", "cancelled"]
    assert [rec.count for rec in recs] == [1, 1]
    assert manager.active_count() == 0


def test_future_done_just_before_the_close_is_told_its_own_down(
    manager: MonitorManager, loop: asyncio.AbstractEventLoop
) -> None:
    """Race: the loop closes while a future completes: its done-callbacks were
    queued (call_soon), then dropped unrun by the close."""
    fut = loop.create_future()
    rec = Recorder()
    manager.monitor(fut, rec)
    loop.run_until_complete(asyncio.sleep(0))  # our done-callback is on now
    fut.set_result(1)  # queues the callback
    loop.close()  # drops it unrun
    assert rec.wait().reason == "normal"
    assert rec.count == 1


def test_registry_drops_the_entry_of_a_closed_loops_task(
    loop: asyncio.AbstractEventLoop,
) -> None:
    reg = MemoryRegistry()
    try:
        fut = loop.create_future()
        reg.register("fut", fut)
        loop.close()
        assert wait_until(lambda: reg.lookup("fut") is None)
        assert reg.count() == 0
    finally:
        reg.close()


def test_open_loops_are_not_held_once_no_watch_is_left(manager: MonitorManager) -> None:
    loop = asyncio.new_event_loop()
    try:
        fut = loop.create_future()
        mon = manager.monitor(fut, Recorder())
        assert manager_threads(manager.name) == [f"foundation-{manager.name}-threads"]
        mon.demonitor()
        del fut
        assert wait_until(lambda: not manager._aio and not manager._aio_loops)
    finally:
        loop.close()
