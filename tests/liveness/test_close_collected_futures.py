"""``MonitorManager.close()`` while the collector frees monitored asyncio futures.

A collected future's weakref callback drops its watch without the manager's
lock, on any thread, this one included: close() once met a watch gone between
listing them and reaching it, and logged a ``KeyError`` traceback at WARNING
("removing its asyncio done-callbacks failed") for a shutdown that was fine.
Run in a plain interpreter (the default hooks), as production runs.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

SCENARIO = """
import asyncio, gc
from foundation.liveness import MonitorManager

class CollectingLoop(asyncio.SelectorEventLoop):
    # While the manager closes: a full collection at each removal it queues,
    # as a collection triggered by its allocations would run.
    collecting = False

    def call_soon_threadsafe(self, *args, **kwargs):
        if self.collecting:
            gc.collect()
        return super().call_soon_threadsafe(*args, **kwargs)

loop = CollectingLoop()
manager = MonitorManager(name="closing")

def monitor_a_future_in_a_cycle():
    future = loop.create_future()
    box = [future]
    future.add_done_callback(lambda _f, box=box: None)  # only the collector frees it
    manager.monitor(future, lambda down: None)

gc.disable()  # the futures stay until close() collects them
try:
    for _ in range(300):
        monitor_a_future_in_a_cycle()
    print("watches", len(manager._aio))
    loop.collecting = True
    manager.close()
finally:
    gc.enable()
print("watches", len(manager._aio))
loop.close()
print("OK")
"""


def test_close_while_the_collector_frees_monitored_futures_logs_nothing() -> None:
    result = run_scenario(SCENARIO)
    assert result.lines("watches") == ["watches 300", "watches 0"]
    assert "liveness" not in result.stderr, result.stderr  # no WARNING of a failed step
    assert "Traceback" not in result.stderr, result.stderr
