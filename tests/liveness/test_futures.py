"""concurrent.futures.Future and asyncio tasks/futures."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from typing import Any

import pytest

from foundation.liveness import MonitorManager, is_alive
from tests.liveness._support import Recorder

# --------------------------------------------------------------------------- concurrent.futures


def test_cf_future_result_is_normal_and_fires_on_the_completing_thread(
    manager: MonitorManager,
) -> None:
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pool") as pool:
        release = threading.Event()
        fut = pool.submit(release.wait)
        rec = Recorder()
        mon = manager.monitor(fut, rec)
        assert is_alive(fut)
        assert mon.active
        release.set()
        assert rec.wait().reason == "normal"
        assert rec.threads[0].startswith("pool")
    assert not is_alive(fut)


def test_cf_future_exception_and_cancel(manager: MonitorManager) -> None:
    failed: concurrent.futures.Future[None] = concurrent.futures.Future()
    cancelled: concurrent.futures.Future[None] = concurrent.futures.Future()
    rec_failed, rec_cancelled = Recorder(), Recorder()
    manager.monitor(failed, rec_failed)
    manager.monitor(cancelled, rec_cancelled)
    error = ValueError("bad")
    failed.set_exception(error)
    assert cancelled.cancel()
    assert rec_failed.downs[0].reason == "exception"
    assert rec_failed.downs[0].exception is error
    assert rec_cancelled.downs[0].reason == "cancelled"


def test_cf_future_already_done_is_noproc(manager: MonitorManager) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    fut.set_result(1)
    rec = Recorder()
    mon = manager.monitor(fut, rec)
    assert rec.downs[0].reason == "noproc"
    assert not mon.active


def test_cf_future_monitored_after_it_fired_gets_the_recorded_down(
    manager: MonitorManager,
) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    manager.monitor(fut, Recorder())
    fut.set_exception(KeyError("k"))
    late = Recorder()
    manager.monitor(fut, late)
    assert late.downs[0].reason == "exception"


def test_cf_future_gets_one_done_callback_however_many_monitor_cycles(
    manager: MonitorManager,
) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    rec = Recorder()
    for _ in range(1000):
        manager.monitor(fut, rec).demonitor()
    assert len(fut._done_callbacks) == 1  # type: ignore[attr-defined]
    assert manager.active_count() == 0
    keep = manager.monitor(fut, rec)
    fut.set_result(0)
    assert rec.count == 1
    assert not keep.active


def test_cf_future_demonitored_is_never_called(manager: MonitorManager) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    rec = Recorder()
    mon = manager.monitor(fut, rec)
    assert mon.demonitor()
    fut.set_result(1)
    assert rec.count == 0


def test_one_cf_future_watched_by_two_managers_fires_both(manager: MonitorManager) -> None:
    fut: concurrent.futures.Future[int] = concurrent.futures.Future()
    with MonitorManager(name="second") as other:
        rec_a, rec_b = Recorder(), Recorder()
        manager.monitor(fut, rec_a)
        other.monitor(fut, rec_b)
        fut.set_result(1)
        assert (rec_a.count, rec_b.count) == (1, 1)
        assert (manager.active_count(), other.active_count()) == (0, 0)


# --------------------------------------------------------------------------- asyncio


def test_asyncio_task_outcomes_fire_on_the_loop_thread(manager: MonitorManager) -> None:
    async def main() -> list[tuple[str, bool]]:
        gate = asyncio.Event()

        async def ok() -> None:
            await gate.wait()

        async def fail() -> None:
            await gate.wait()
            raise ValueError("task failed")

        recs = [Recorder() for _ in range(3)]
        tasks = [asyncio.create_task(ok()), asyncio.create_task(fail()),
                 asyncio.create_task(gate.wait())]  # fmt: skip
        for task, rec in zip(tasks, recs, strict=True):
            manager.monitor(task, rec)
        await asyncio.sleep(0)  # sleep-ok: one loop turn so the tasks start
        tasks[2].cancel()
        gate.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # sleep-ok: one loop turn so done-callbacks run
        me = threading.current_thread().name
        return [(rec.downs[0].reason, rec.threads[0] == me) for rec in recs]

    assert asyncio.run(main()) == [("normal", True), ("exception", True), ("cancelled", True)]
    assert manager.active_count() == 0


def test_asyncio_exception_is_carried(manager: MonitorManager) -> None:
    async def main() -> BaseException | None:
        fut = asyncio.get_running_loop().create_future()
        rec = Recorder()
        manager.monitor(fut, rec)
        fut.set_exception(KeyError("x"))
        await asyncio.sleep(0)  # sleep-ok: one loop turn so done-callbacks run
        fut.exception()
        return rec.downs[0].exception

    assert isinstance(asyncio.run(main()), KeyError)


def test_asyncio_future_already_done_is_noproc(manager: MonitorManager) -> None:
    async def main() -> str:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        rec = Recorder()
        manager.monitor(fut, rec)
        return rec.downs[0].reason

    assert asyncio.run(main()) == "noproc"


def test_asyncio_task_monitored_from_another_thread(manager: MonitorManager) -> None:
    """monitor() off the loop thread attaches through call_soon_threadsafe."""
    rec, dropped = Recorder(), Recorder()

    async def main() -> None:
        gate = asyncio.Event()
        task = asyncio.create_task(gate.wait())
        loop = asyncio.get_running_loop()

        def from_thread() -> None:
            manager.monitor(task, dropped).demonitor()
            manager.monitor(task, rec)
            loop.call_soon_threadsafe(gate.set)

        worker = threading.Thread(target=from_thread)
        worker.start()
        await task
        await loop.run_in_executor(None, worker.join)

    asyncio.run(main())
    assert rec.wait().reason == "normal"
    assert rec.threads == [threading.current_thread().name]
    assert dropped.count == 0


def test_asyncio_long_lived_task_does_not_accumulate_callbacks(manager: MonitorManager) -> None:
    async def main() -> tuple[int, int]:
        fut = asyncio.get_running_loop().create_future()
        for _ in range(1000):
            manager.monitor(fut, Recorder()).demonitor()
        callbacks = len(fut._callbacks or ())
        fut.set_result(None)
        return callbacks, manager.active_count()

    assert asyncio.run(main()) == (1, 0)


def test_asyncio_future_of_a_closed_loop_is_dead(manager: MonitorManager) -> None:
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    loop.close()
    assert not is_alive(fut)
    rec = Recorder()
    manager.monitor(fut, rec)
    assert rec.downs[0].reason == "noproc"


def test_asyncio_watch_is_dropped_when_the_future_is_collected(manager: MonitorManager) -> None:
    loop = asyncio.new_event_loop()
    try:
        fut: Any = loop.create_future()
        mon = manager.monitor(fut, Recorder())  # attach queued: loop not running
        mon.demonitor()
        assert manager.stats().watched_agents == 1
        loop.run_until_complete(asyncio.sleep(0))  # runs the queued attach
        del fut, mon
        gc.collect()
        assert manager.stats().watched_agents == 0
    finally:
        loop.close()


def test_close_removes_the_done_callback_from_a_live_task() -> None:
    async def main() -> tuple[int, int]:
        fut = asyncio.get_running_loop().create_future()
        mgr = MonitorManager(name="aio-close")
        rec = Recorder()
        mgr.monitor(fut, rec)
        before = len(fut._callbacks or ())
        mgr.close()
        after = len(fut._callbacks or ())
        fut.set_result(None)
        await asyncio.sleep(0)  # sleep-ok: one loop turn so done-callbacks run
        assert rec.count == 0
        return before, after

    assert asyncio.run(main()) == (1, 0)


@pytest.mark.parametrize("kind", ["task", "future"])
def test_asyncio_demonitor_before_done_is_never_called(manager: MonitorManager, kind: str) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        agent: asyncio.Future[Any] = (
            asyncio.create_task(gate.wait()) if kind == "task" else loop.create_future()
        )
        rec, kept = Recorder(), Recorder()
        manager.monitor(agent, rec).demonitor()
        manager.monitor(agent, kept)
        if kind == "task":
            gate.set()
            await agent
        else:
            agent.set_result(None)
        await asyncio.sleep(0)  # sleep-ok: one loop turn so done-callbacks run
        assert kept.count == 1
        return rec.count

    assert asyncio.run(main()) == 0
