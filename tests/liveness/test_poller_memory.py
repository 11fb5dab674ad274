"""The foreign-thread poller survives a ``MemoryError`` at any point of a round.

Before the fix the poll round's first step, the snapshot copy of the watched
table (``list(table.values())``), ran outside the loop's ``try``: a
``MemoryError`` there ended the ``foundation-<name>-threads`` thread, and no
foreign thread's death was seen again. A real ``RLIMIT_AS`` cannot aim a
``MemoryError`` at that one line reliably, so the scenario injects it there:
the manager's table of polled threads is a real ``dict`` subclass whose
``values()`` (what the copy reads) raises ``MemoryError`` for its first rounds.
Run in a plain interpreter with the default hooks (see ``tests/faults``).
"""

from __future__ import annotations

import sys

import pytest

from tests.faults._subprocess import run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="as the fault scenarios")


def test_a_memory_error_at_the_snapshot_copy_is_logged_once_and_polling_goes_on() -> None:
    result = run_scenario(
        """
        from foundation.liveness import MonitorManager

        class ShortOfMemory(dict):
            # The poller's table: its snapshot copy fails for the first rounds.
            def __init__(self, failing):
                super().__init__()
                self.failing = failing
                self.failed = 0

            def values(self):
                if self.failed < self.failing:
                    self.failed += 1
                    raise MemoryError("no memory for the snapshot copy")
                return super().values()

        manager = MonitorManager(name="mem", thread_poll_interval=0.01)
        table = ShortOfMemory(failing=5)
        manager._polled_threads = table  # before the poller starts: it polls this table
        gate = threading.Event()
        foreign = threading.Thread(target=gate.wait, daemon=True)
        foreign.start()
        seen = []
        manager.monitor(foreign, seen.append)
        wait_for(lambda: table.failed == 5, "five rounds out of memory")
        gate.set()
        foreign.join()
        wait_for(lambda: len(seen) == 1, "the death seen once memory is back")
        assert seen[0].reason == "normal", seen
        assert "foundation-mem-threads" in library_threads()
        # And again: a second run of failing rounds is logged once more.
        table.failing = 8
        other = threading.Event()
        second = threading.Thread(target=other.wait, daemon=True)
        second.start()
        manager.monitor(second, seen.append)
        wait_for(lambda: table.failed == 8, "three more rounds out of memory")
        other.set()
        wait_for(lambda: len(seen) == 2, "the second death")
        assert "foundation-mem-threads" in library_threads()
        manager.close()
        print("OK")
        """
    )
    # Logged once per run of failing rounds, not once per round.
    assert result.stderr.count("out of memory; retrying each interval") == 2, result.stderr
    assert result.stderr.count("MemoryError: no memory for the snapshot copy") == 2, result.stderr


def test_a_memory_error_in_the_pause_between_rounds_does_not_end_the_poller() -> None:
    # Condition.wait allocates a lock: out of memory, the wait between two rounds
    # raises before waiting (it was outside the loop's try too). Injected the same
    # way: the poller's condition is a real Condition subclass failing its timed waits.
    run_scenario(
        """
        from foundation.liveness import MonitorManager

        class ShortOfMemory(threading.Condition):
            failing = 4

            def wait(self, timeout=None):
                if timeout is not None and self.failing > 0:
                    self.failing -= 1
                    raise MemoryError("no memory for the pause")
                return super().wait(timeout)

        manager = MonitorManager(name="mem", thread_poll_interval=0.01)
        cond = ShortOfMemory(manager._lock)
        manager._threads_cond = cond  # before the poller starts: it waits on this one
        gate = threading.Event()
        foreign = threading.Thread(target=gate.wait, daemon=True)
        foreign.start()
        seen = []
        manager.monitor(foreign, seen.append)
        wait_for(lambda: cond.failing == 0, "four pauses out of memory")
        gate.set()
        wait_for(lambda: len(seen) == 1, "the death seen after them")
        assert "foundation-mem-threads" in library_threads()
        manager.close()
        print("OK")
        """
    )
