"""An asyncio death retried by the redeliverer keeps one attempt queued on a
stopped loop, however long the loop stays stopped.

A watch whose ``fire`` ran out of memory is handed to the
``foundation-liveness-redeliver`` thread, which queues its retry on the
future's loop. Before the fix it queued another callback every round (about
twice a second) for as long as the loop was stopped but not closed (a program
that ran ``loop.run_until_complete(...)`` and keeps the loop for later): the
loop's queue grew without bound. Now one attempt is queued; it delivers when
the loop runs again, or, once the loop is closed (the attempt dropped unrun),
the redeliverer tells the monitors on its own thread.

The ``MemoryError`` is injected by real subclasses (``RLIMIT_AS`` cannot aim
at one ``popitem``): the watch's monitors cannot be taken until the test heals
them, and the loop's ``call_later`` fails (the retry path before the fix, so
that the scenario reaches the redeliverer with or without it). Each scenario
runs in a plain interpreter with the default hooks: no library thread may die.
"""

from __future__ import annotations

import sys
from textwrap import dedent

import pytest

from tests.faults._subprocess import run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="as the fault scenarios")

_SETUP = """
import asyncio
import foundation.liveness._core as core_mod
import foundation.liveness._manager as manager_mod
from foundation.liveness import MonitorManager

healed = threading.Event()

class PopitemFailsUntilHealed(dict):
    failed = 0

    def popitem(self):
        if not healed.is_set():
            PopitemFailsUntilHealed.failed += 1
            raise MemoryError("injected: out of memory until healed")
        return super().popitem()

class CallLaterFails(asyncio.SelectorEventLoop):
    def call_later(self, *args, **kwargs):
        if not healed.is_set():
            raise MemoryError("injected: call_later out of memory")
        return super().call_later(*args, **kwargs)

# The redeliverer's rounds, counted for this watch; a short pause between
# them so that many rounds pass quickly (the default caps it at 0.5 s).
core_mod._REDELIVER_MAX_PAUSE = 0.005
attempts = [0]
real_redeliver = manager_mod._AsyncioWatch.redeliver

def counting_redeliver(self):
    attempts[0] += 1
    return real_redeliver(self)

manager_mod._AsyncioWatch.redeliver = counting_redeliver

manager = MonitorManager(name="stopped")
loop = CallLaterFails()
fut = loop.create_future()
heard = {}

def on_down(i):
    def record(down):
        heard.setdefault(i, []).append((down.reason, threading.current_thread().name))
    return record

for i in range(10):
    manager.monitor(fut, on_down(i))  # no loop running: the attach is queued
watch = manager._aio[id(fut)]
watch.monitors = PopitemFailsUntilHealed(watch.monitors)

async def complete():
    fut.set_result(None)
    for _ in range(3):
        await asyncio.sleep(0)  # sleep-ok: loop turns so the done-callback runs

loop.run_until_complete(complete())  # then the loop is stopped, not closed
assert PopitemFailsUntilHealed.failed >= 1, "the fault was not hit"

def queued_for_watch():
    return sum(1 for h in loop._ready if getattr(h._callback, "__self__", None) is watch)

start = attempts[0]
# Many redeliverer rounds while the loop stays stopped.
wait_for(lambda: attempts[0] - start >= 200, "200 redeliverer rounds")
print("READY", len(loop._ready), "FOR_WATCH", queued_for_watch(),
      "PENDING", len(core_mod._REDELIVERER.pending))
assert queued_for_watch() <= 1, queued_for_watch()
assert len(loop._ready) <= 1, len(loop._ready)
assert len(core_mod._REDELIVERER.pending) <= 1, core_mod._REDELIVERER.pending
assert heard == {}, heard
assert manager.active_count() == 10
healed.set()
"""


def test_a_stopped_loop_holds_one_attempt_which_delivers_when_it_runs_again() -> None:
    run_scenario(
        _SETUP
        + dedent(
            """
            loop.run_until_complete(asyncio.sleep(0))  # the loop runs again
            wait_for(lambda: len(heard) == 10, "every monitor told")
            assert all(len(calls) == 1 for calls in heard.values()), heard  # exactly once
            assert {calls[0] for calls in heard.values()} == {("normal", "MainThread")}, heard
            wait_for(lambda: manager.active_count() == 0, "no monitor counted")
            wait_for(lambda: not core_mod._REDELIVERER.pending, "the redeliverer done with it")
            assert "foundation-liveness-redeliver" in library_threads()
            loop.close()
            manager.close()
            print("OK")
            """
        )
    )


def test_a_loop_closed_while_stopped_has_the_redeliverer_tell_the_monitors() -> None:
    run_scenario(
        _SETUP
        + dedent(
            """
            loop.close()  # drops the queued attempt unrun
            wait_for(lambda: len(heard) == 10, "every monitor told")
            assert all(len(calls) == 1 for calls in heard.values()), heard  # exactly once
            threads = {calls[0] for calls in heard.values()}
            assert threads == {("normal", "foundation-liveness-redeliver")}, heard
            wait_for(lambda: manager.active_count() == 0, "no monitor counted")
            wait_for(lambda: not core_mod._REDELIVERER.pending, "the redeliverer done with it")
            assert "foundation-liveness-redeliver" in library_threads()
            manager.close()
            print("OK")
            """
        )
    )
