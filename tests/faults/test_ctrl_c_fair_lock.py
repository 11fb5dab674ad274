"""A Ctrl-C landing anywhere in a contended ``FairRLock`` acquire gives back
what it took: the lock, and the queued waiter's turn.

``FeatureFlags`` holds a ``FairRLock`` around each write. A waiter queued
behind a holder, cut by a Ctrl-C as its gate or the lock was handed to it (or
at any check of the Python code in between), left the lock held, or the head
of the queue dead: every later write, and ``close()``, then waited for ever.
Here the main thread waits behind a holder with another waiter queued behind
it, and is interrupted at its 1st, 2nd, ... check point (``call``/``c_return``
in ``_fair_lock.py``) until a run completes; after each, the waiter behind it
gets the lock and the lock is free. In a subprocess with default hooks.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import faulthandler
from foundation.flags._fair_lock import FairRLock
from tests._ctrl_c import interrupt_at_check_points, lock_free

faulthandler.dump_traceback_later(60, exit=True)  # a hang fails with its stacks
lock = FairRLock()
behind = []

def contended(n):
    # A holder keeps the lock until we are queued, another waiter queues
    # behind us; then we take it (or are cut on the way).
    holding, done = threading.Event(), threading.Event()
    def holder():
        with lock:
            holding.set()
            wait_for(lambda: lock._waiters or done.is_set(), "us queued")
    def after_us():
        wait_for(lambda: len(lock._waiters) >= 1 or done.is_set(), "us queued")
        with lock:
            behind.append(n)
    threads = [threading.Thread(target=holder), threading.Thread(target=after_us)]
    threads[0].start()
    holding.wait()
    threads[1].start()
    try:
        with lock:
            pass
    finally:
        done.set()
        for t in threads:
            t.join()

def check(n):
    assert lock_free(lock), f"lock left held: interrupted at point {n}"
    assert behind[-1:] == [n], f"the waiter behind us never got it: point {n}"
    assert not lock._waiters, f"a queued gate left behind: point {n}"

interrupted = interrupt_at_check_points(contended, ["flags/_fair_lock.py"], after_each=check)
print("INTERRUPTED", interrupted > 3)
print("OK")
"""


def test_a_ctrl_c_in_a_contended_acquire_gives_back_the_lock_and_the_turn() -> None:
    result = run_scenario(_SCENARIO)
    assert result.lines("INTERRUPTED") == ["INTERRUPTED True"]
