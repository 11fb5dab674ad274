"""A ``MemoryError`` on an asyncio watch's done-callback or collection path
leaves no monitor counted (``active_count()``) for ever, and loses no death.

Five paths, each broken before the fix:

* the done-callback's ``fire`` ran out of memory and retried the rest with a
  ``call_later`` on the loop; ``asyncio.run`` closed the loop first, dropping
  the retry: those monitors were never told and stayed counted. Now the
  redeliverer retries them, on its own thread once the loop is closed;
* a pending future was collected and releasing its monitors ran out of memory
  inside the weakref callback: the rest stayed counted for ever (the watch was
  already out of the manager's tables). Now the next ``active_count()`` sweeps
  them;
* the done-callback's ``fire`` could not drop a monitor it took from the
  manager's table, nor could its retry (out of memory twice): that monitor,
  told, stayed counted for ever. Now the next ``active_count()`` sweeps it;
* a future that had fired was collected while its retry was pending: the
  collection released the monitors left without telling them. Now they are
  told;
* the attach queued by a ``monitor()`` from another thread ran out of memory:
  the watch said attached with no callback on, so the death was never seen.
  Now the attach is retried.

``RLIMIT_AS`` cannot aim a ``MemoryError`` at one ``popitem`` or one
``add_done_callback``, so each is raised by a real subclass (a watch's monitors,
the manager's table, a future). Each runs in a plain interpreter with the default hooks: no library
thread may die.
"""

from __future__ import annotations

import sys
from textwrap import dedent

import pytest

from tests.faults._subprocess import run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="as the fault scenarios")

_SETUP = """
import asyncio, gc
from foundation.liveness import MonitorManager

class PopitemFailsOnce(dict):
    # A watch's monitors: taking the 4th one raises MemoryError, once.
    failed = 0
    calls = 0

    def popitem(self):
        PopitemFailsOnce.calls += 1
        if not PopitemFailsOnce.failed and PopitemFailsOnce.calls > 3:
            PopitemFailsOnce.failed += 1
            raise MemoryError("injected: taking the next monitor")
        return super().popitem()

manager = MonitorManager(name="acct")
heard = {}

def on_down(i):
    def record(down):
        heard.setdefault(i, []).append((down.reason, threading.current_thread().name))
    return record

def told_once():
    return all(len(calls) == 1 for calls in heard.values())
"""


def test_a_retry_pending_when_asyncio_run_closes_the_loop_is_still_told() -> None:
    run_scenario(
        _SETUP
        + dedent(
            """
            async def main():
                fut = asyncio.get_running_loop().create_future()
                for i in range(10):
                    manager.monitor(fut, on_down(i))
                watch = manager._aio[id(fut)]
                watch.monitors = PopitemFailsOnce(watch.monitors)
                fut.set_result(None)  # its done-callback runs as asyncio.run ends
                return fut  # kept alive: only the loop's closing is in play

            fut = asyncio.run(main())
            assert PopitemFailsOnce.failed == 1, "the fault was not hit"
            wait_for(lambda: manager.active_count() == 0, "no monitor counted")
            wait_for(lambda: len(heard) == 10, "every monitor told")
            assert told_once(), heard
            assert {calls[0][0] for calls in heard.values()} == {"normal"}, heard
            assert "foundation-liveness-redeliver" in library_threads()
            manager.close()
            print("OK")
            """
        )
    )


def test_a_collected_pending_future_whose_release_fails_is_not_counted() -> None:
    result = run_scenario(
        _SETUP
        + dedent(
            """
            loop = asyncio.new_event_loop()

            def watch_a_future():
                fut = loop.create_future()
                monitors = [manager.monitor(fut, on_down(i)) for i in range(10)]
                watch = manager._aio[id(fut)]
                watch.monitors = PopitemFailsOnce(watch.monitors)
                return monitors  # the future itself is freed on return

            monitors = watch_a_future()
            gc.collect()
            assert PopitemFailsOnce.failed == 1, "the fault was not hit"
            assert manager.stats().watched_agents == 0
            wait_for(lambda: manager.active_count() == 0, "no monitor counted")
            assert not any(mon.active for mon in monitors)
            assert heard == {}, heard  # released, never called: it never completed
            loop.close()
            manager.close()
            print("OK")
            """
        )
    )
    assert "Exception ignored in" not in result.stderr  # nothing escaped the weakref callback
    assert "releasing a collected future's monitors" in result.stderr  # logged


def test_a_fired_future_collected_while_its_retry_is_pending_is_told() -> None:
    run_scenario(
        _SETUP
        + dedent(
            """
            async def main():
                fut = asyncio.get_running_loop().create_future()
                key = id(fut)
                for i in range(10):
                    manager.monitor(fut, on_down(i))
                watch = manager._aio[key]
                watch.monitors = PopitemFailsOnce(watch.monitors)
                fut.set_result(None)
                await asyncio.sleep(0)  # sleep-ok: one loop turn so the done-callback runs
                assert PopitemFailsOnce.failed == 1, "the fault was not hit"
                assert len(heard) == 3, heard  # the rest are being retried
                del fut
                gc.collect()
                assert key not in manager._aio, "the future was not collected"
                deadline = time.monotonic() + 20
                while len(heard) < 10 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)  # sleep-ok: polling with a deadline

            asyncio.run(main())
            assert len(heard) == 10, heard
            assert told_once(), heard
            assert {calls[0] for calls in heard.values()} == {("normal", "MainThread")}, heard
            wait_for(lambda: manager.active_count() == 0, "no monitor counted")
            manager.close()
            print("OK")
            """
        )
    )


def test_a_fired_monitor_whose_bookkeeping_fails_twice_is_not_counted() -> None:
    result = run_scenario(
        _SETUP
        + dedent(
            """
            class TableFailsOnce(dict):
                # The manager's table of monitors: once armed, one pop (the
                # firing's) and one iteration (its retry's list()) fail.
                armed = False
                pop_failed = 0
                iter_failed = 0

                def pop(self, *args):
                    if self.armed and not TableFailsOnce.pop_failed:
                        TableFailsOnce.pop_failed += 1
                        raise MemoryError("injected: the manager's bookkeeping")
                    return super().pop(*args)

                def __iter__(self):
                    if self.armed and not TableFailsOnce.iter_failed:
                        TableFailsOnce.iter_failed += 1
                        raise MemoryError("injected: the bookkeeping's retry")
                    return super().__iter__()

            manager._monitors = table = TableFailsOnce()

            async def main():
                fut = asyncio.get_running_loop().create_future()
                for i in range(10):
                    manager.monitor(fut, on_down(i))
                table.armed = True
                fut.set_result(None)
                await asyncio.sleep(0)  # sleep-ok: one loop turn so the done-callback runs
                return fut

            fut = asyncio.run(main())
            assert (TableFailsOnce.pop_failed, TableFailsOnce.iter_failed) == (1, 1)
            assert len(heard) == 10 and told_once(), heard  # every monitor told
            wait_for(lambda: manager.active_count() == 0, "no monitor counted")
            manager.close()
            print("OK")
            """
        )
    )
    assert "injected: the bookkeeping's retry" in result.stderr  # logged


def test_a_queued_attach_that_runs_out_of_memory_is_retried() -> None:
    run_scenario(
        _SETUP
        + dedent(
            """
            class AddCallbackFailsOnce(asyncio.Future):
                failed = 0

                def add_done_callback(self, fn, *, context=None):
                    if not AddCallbackFailsOnce.failed:
                        AddCallbackFailsOnce.failed += 1
                        raise MemoryError("injected: the future's callback list")
                    super().add_done_callback(fn, context=context)

            loop = asyncio.new_event_loop()
            runner = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
            runner.start()
            fut = AddCallbackFailsOnce(loop=loop)
            for i in range(10):
                manager.monitor(fut, on_down(i))  # from another thread: the attach is queued
            wait_for(lambda: AddCallbackFailsOnce.failed == 1, "the fault hit")
            loop.call_soon_threadsafe(fut.set_result, None)
            wait_for(lambda: len(heard) == 10, "every monitor told")
            assert told_once(), heard
            assert {calls[0] for calls in heard.values()} == {("normal", "test-loop")}, heard
            assert manager.active_count() == 0
            loop.call_soon_threadsafe(loop.stop)
            runner.join()
            loop.close()
            manager.close()
            print("OK")
            """
        )
    )
