"""A death reaches every monitor exactly once, whatever fails while it is delivered.

When a watched agent dies its watch leaves the manager's tables and fires
every monitor. Before the fix, a ``MemoryError`` in the middle of that (the
manager's own bookkeeping, or taking the next monitor out of the watch) lost
the popped monitor and every monitor after it: the watch was already out of
every table, so nobody retried, and a registry kept the dead agent's entries
for ever. ``RLIMIT_AS`` cannot aim a ``MemoryError`` at one line, so each
scenario injects it with a real subclass: the manager's table of monitors
(a ``dict`` whose ``pop`` fails once), or a watch's monitors (a ``dict``
whose ``popitem`` fails once, half-way). Every agent kind's firing path is
covered: a ``spawn_thread`` thread's end, a ``concurrent.futures`` and an
asyncio done-callback, the foreign-thread poller, the pidfd selector and the
process poller. Each runs in a plain interpreter with the default hooks (see
``tests/faults``): no library thread may die.
"""

from __future__ import annotations

import sys

import pytest

from tests.faults._subprocess import run_scenario
from tests.liveness._faults import KINDS
from tests.liveness._faults import scenario as _scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pidfds, as the fault scenarios")


@pytest.mark.parametrize("kind", KINDS)
def test_an_on_down_raising_memory_error_does_not_cost_the_other_monitors(kind: str) -> None:
    result = run_scenario(
        _scenario(
            kind,
            """
            manager = make_manager(KIND)
            agent, end = make_agent(KIND)
            heard = []
            failing = []

            def fails_once(down):
                failing.append(down)
                raise MemoryError("injected: an on_down out of memory")

            for i in range(10):
                manager.monitor(agent, lambda down, i=i: heard.append(i))
                if i == 4:
                    manager.monitor(agent, fails_once)
            end()
            wait_for(lambda: len(heard) == 10, "every other monitor told")
            wait_settled(manager, agent)
            assert sorted(heard) == list(range(10)), heard
            assert len(failing) == 1, failing
            for name in expected_threads(KIND):
                assert name in library_threads(), library_threads()
            manager.close()
            print("OK")
            """,
        )
    )
    assert "MemoryError: injected: an on_down out of memory" in result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_a_bookkeeping_failure_while_firing_loses_no_monitor(kind: str) -> None:
    # The manager's table of monitors fails once as the death is delivered: the
    # monitor being taken is still told, and so is every monitor after it.
    result = run_scenario(
        _scenario(
            kind,
            """
            manager = make_manager(KIND)
            table = PopFailsOnce()
            manager._monitors = table
            agent, end = make_agent(KIND)
            heard = []
            for i in range(10):
                manager.monitor(agent, lambda down, i=i: heard.append(i))
            table.armed = True
            end()
            wait_for(lambda: len(heard) == 10, "every monitor told")
            wait_settled(manager, agent)  # the failed bookkeeping was retried
            assert table.failed == 1
            assert sorted(heard) == list(range(10)), heard
            for name in expected_threads(KIND):
                assert name in library_threads(), library_threads()
            # The manager still serves: another agent's death is seen.
            again, end_again = make_agent(KIND)
            late = []
            manager.monitor(again, late.append)
            end_again()
            wait_for(lambda: len(late) == 1, "the next death")
            wait_settled(manager, again)
            manager.close()
            print("OK")
            """,
        )
    )
    assert "MemoryError: injected: the manager's bookkeeping" in result.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_a_memory_error_taking_the_next_monitor_is_retried(kind: str) -> None:
    # Half the monitors are taken and told, then taking the next one fails:
    # the rest are told by a retry (the watch is kept, or retried in place), once.
    run_scenario(
        _scenario(
            kind,
            """
            manager = make_manager(KIND)
            agent, end = make_agent(KIND)
            heard = []
            for i in range(10):
                manager.monitor(agent, lambda down, i=i: heard.append(i))
            watch = watch_of(manager, agent)
            failing = PopitemFailsOnce(watch.monitors)
            failing.fail_after = 5
            watch.monitors = failing
            end()
            wait_for(lambda: len(heard) == 10, "every monitor told")
            wait_settled(manager, agent)
            assert failing.failed == 1
            assert sorted(heard) == list(range(10)), heard
            for name in expected_threads(KIND):
                assert name in library_threads(), library_threads()
            manager.close()
            print("OK")
            """,
        )
    )


@pytest.mark.parametrize("fault", ["bookkeeping", "popitem"])
def test_a_memory_registry_with_100_entries_on_one_agent_loses_none(fault: str) -> None:
    run_scenario(
        _scenario(
            "spawned",
            f"""
            FAULT = {fault!r}
            manager = make_manager(KIND)
            table = PopFailsOnce()
            manager._monitors = table
            registry = MemoryRegistry(manager=manager)
            agent, end = make_agent(KIND)
            keeper, end_keeper = make_agent(KIND)  # an unrelated live entry, kept
            registry.register("keeper", keeper)
            for i in range(100):
                registry.register(("worker", i), agent)
            assert registry.count() == 101
            if FAULT == "bookkeeping":
                table.armed = True
            else:
                watch = watch_of(manager, agent)
                failing = PopitemFailsOnce(watch.monitors)
                failing.fail_after = 37
                watch.monitors = failing
            end()
            agent.join()
            wait_for(lambda: registry.count() == 1, "every dead entry removed")
            assert [e.key for e in registry.list_all()] == ["keeper"]
            assert manager.active_count() == 1
            end_keeper()
            wait_for(lambda: registry.count() == 0, "the keeper removed")
            registry.close()
            manager.close()
            print("OK")
            """,
        )
    )


def test_a_death_between_the_two_inserts_of_monitor_leaves_no_stale_entry() -> None:
    # Race: monitor() inserts into the watch, then into the manager's table; a
    # death delivered between the two took the monitor before it was in the
    # table, and the table kept it for ever (active_count() stayed at 1). The
    # death is made to land exactly there by the table's own __setitem__.
    run_scenario(
        _scenario(
            "cf_future",
            """
            class DeathBetweenInserts(dict):
                future = None

                def __setitem__(self, key, value):
                    fut, self.future = self.future, None
                    if fut is not None:
                        fut.set_result(None)  # fires on this thread, right here
                    super().__setitem__(key, value)

            manager = make_manager(KIND)
            table = DeathBetweenInserts()
            manager._monitors = table
            fut, _ = make_agent(KIND)
            first = []
            manager.monitor(fut, first.append)  # creates the future's watch
            heard = []
            table.future = fut
            mon = manager.monitor(fut, heard.append)  # the hot path: the race
            assert len(heard) == 1 and len(first) == 1, (heard, first)
            assert not mon.active
            assert manager.active_count() == 0, dict(table)
            manager.close()
            print("OK")
            """,
        )
    )


def test_a_failed_epoll_unregister_at_demonitor_is_retried_by_the_selector() -> None:
    # The last demonitor() of a process detaches its pidfd; epoll_ctl failing
    # there (ENOMEM) escaped demonitor() as an OSError, after the watch had left
    # _by_fd: its fd stayed in the epoll, unknown to the manager. Now the
    # watch stays findable by its fd, and the selector detaches it (closing
    # the fd) once the process ends; demonitor() raises nothing.
    result = run_scenario(
        _scenario(
            "pidfd",
            """
            import errno, select

            real_epoll = select.epoll

            class UnregisterFailsOnce:
                # select.epoll cannot be subclassed: a real epoll behind a thin
                # class whose unregister fails once, when armed.
                armed = False
                failed = 0

                def __init__(self):
                    self.epoll = real_epoll()

                def register(self, fd, mask):
                    self.epoll.register(fd, mask)

                def unregister(self, fd):
                    if self.armed and not self.failed:
                        self.failed += 1
                        raise OSError(errno.ENOMEM, "injected: epoll_ctl out of memory")
                    self.epoll.unregister(fd)

                def poll(self, *args):
                    return self.epoll.poll(*args)

                def close(self):
                    self.epoll.close()

            select.epoll = UnregisterFailsOnce  # the manager creates its epoll from here
            manager = make_manager(KIND)
            agent, end = make_agent(KIND)
            heard = []
            mon = manager.monitor(agent, heard.append)
            epoll = manager._epoll
            assert isinstance(epoll, UnregisterFailsOnce)
            fds = manager.stats().open_fds  # epoll, wake-up fd, this pidfd
            epoll.armed = True
            assert mon.demonitor() is True
            assert epoll.failed == 1
            assert manager.active_count() == 0
            end()
            wait_for(lambda: manager.stats().open_fds == fds - 1, "the pidfd closed")
            agent.wait()
            assert heard == [], heard  # demonitored: never called
            # The selector still serves.
            again, end_again = make_agent(KIND)
            manager.monitor(again, heard.append)
            end_again()
            wait_for(lambda: len(heard) == 1, "the next death")
            wait_settled(manager, again)
            assert "foundation-fire-pidfd" in library_threads()
            manager.close()
            print("OK")
            """,
        )
    )
    assert "injected: epoll_ctl out of memory" in result.stderr
