"""A death is delivered whatever fails, for as long as the process lives, and
``close()`` always completes.

Three gaps the fire-fault scenarios (``test_fire_faults``) left, each with a
fault injected by a real subclass or a real fd closed behind the manager's
back, in a plain interpreter with the default hooks (no library thread may
die):

* building the ``Down`` of an agent that raised (its exception attached) ran
  out of memory: the death was lost (futures) or told as ``"normal"``
  (``spawn_thread``); now the preallocated ``Down("exception")`` is told;
* a death that cannot be delivered for long (every ``popitem`` of the watch
  out of memory): a thread's end or a future's done-callback gave up after
  about 2 s ("N monitor(s) not told"); an asyncio watch whose loop could not
  take the retry gave up at once. Now the redeliverer thread retries until
  every monitor is told, and the thread or ``set_result`` is not held;
* ``close()`` raised (``OSError``, ``MemoryError``) half-way when an
  ``epoll_ctl``, an ``os.close`` or its own bookkeeping failed, leaving its
  threads, epoll and fds behind; now it logs a WARNING and releases the rest.
"""

from __future__ import annotations

import sys
from textwrap import dedent

import pytest

from tests.faults._subprocess import run_scenario
from tests.liveness._faults import scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pidfds, as the fault scenarios")

# Down built with its exception fails (a real subclass of Down, put where the
# library builds its records), and agents that die by raising.
_RAISING = """
import foundation.liveness._core as core_mod
import foundation.liveness._manager as manager_mod
import foundation.liveness._process as process_mod
import foundation.liveness._threads as threads_mod
from foundation.liveness import Down

class DownOutOfMemory(Down):
    # Building a Down with its exception attached runs out of memory.
    __slots__ = ()
    failed = []

    def __post_init__(self):
        if self.exception is not None:
            DownOutOfMemory.failed.append(self.reason)
            raise MemoryError("injected: building the Down record")

for module in (core_mod, manager_mod, process_mod, threads_mod):
    if hasattr(module, "Down"):
        module.Down = DownOutOfMemory

def make_raising_agent(kind):
    # (agent, end): end() makes the agent die by raising.
    if kind in ("spawned", "foreign_thread"):
        gate = threading.Event()

        def target():
            gate.wait()
            raise SystemExit(3)  # the default excepthook prints nothing for it

        if kind == "spawned":
            return spawn_thread(target), gate.set
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        return thread, gate.set
    boom = ValueError("boom")
    if kind == "cf_future":
        fut = concurrent.futures.Future()
        return fut, lambda: fut.set_exception(boom)
    fut = asyncio.run_coroutine_threadsafe(_new_future(), loop()).result()
    return fut, lambda: loop().call_soon_threadsafe(fut.set_exception, boom)
"""


@pytest.mark.parametrize("kind", ["spawned", "cf_future", "asyncio", "foreign_thread"])
def test_a_down_that_cannot_be_built_is_still_delivered(kind: str) -> None:
    result = run_scenario(
        scenario(
            kind,
            _RAISING
            + dedent(
                """
            manager = make_manager(KIND)
            agent, end = make_raising_agent(KIND)
            heard = {}

            def on_down(i):
                def record(down):
                    heard.setdefault(i, []).append(down)
                return record

            for i in range(10):
                manager.monitor(agent, on_down(i))
            end()
            wait_for(lambda: len(heard) == 10, "every monitor told")
            wait_settled(manager, agent)
            assert DownOutOfMemory.failed, "the fault was not hit"
            for i, downs in heard.items():
                assert len(downs) == 1, (i, downs)  # exactly once
                # The preallocated record: the reason is right, the exception unknown.
                assert downs[0].reason == "exception" and downs[0].exception is None, downs
            if KIND == "spawned":
                agent.join()
            manager.close()
            print("OK")
            """
            ),
        )
    )
    assert "injected: building the Down record" not in result.stderr  # nothing escaped


# A watch's monitors that cannot be taken until the test heals them.
_STUCK = """
import foundation.liveness._core as core_mod

class PopitemFailsUntilHealed(dict):
    failed = 0
    healed = threading.Event()

    def popitem(self):
        if not self.healed.is_set():
            PopitemFailsUntilHealed.failed += 1
            raise MemoryError("injected: out of memory until healed")
        return super().popitem()

class AppendFailsUntilHealed(list):
    # The redeliverer's queue: the hand-over itself fails (retried in place).
    failed = 0

    def append(self, item):
        if not PopitemFailsUntilHealed.healed.is_set():
            AppendFailsUntilHealed.failed += 1
            raise MemoryError("injected: no memory for the hand-over")
        super().append(item)

class CallLaterFails(asyncio.SelectorEventLoop):
    # The loop cannot take the asyncio watch's own retry.
    failed = 0

    def call_later(self, *args, **kwargs):
        if not PopitemFailsUntilHealed.healed.is_set():
            CallLaterFails.failed += 1
            raise MemoryError("injected: call_later out of memory")
        return super().call_later(*args, **kwargs)

if KIND == "asyncio":
    _LOOP = CallLaterFails()
    threading.Thread(target=_LOOP.run_forever, name="test-loop", daemon=True).start()
"""


@pytest.mark.parametrize(
    ("kind", "handover"),
    [
        ("spawned", "redeliverer"),
        ("cf_future", "redeliverer"),
        ("asyncio", "redeliverer"),
        ("spawned", "in_place"),
        ("cf_future", "in_place"),
    ],
)
def test_a_death_undeliverable_for_long_is_told_once_memory_is_back(
    kind: str, handover: str
) -> None:
    result = run_scenario(
        scenario(
            kind,
            _STUCK
            + f"HANDOVER = {handover!r}\n"
            + dedent(
                """
            manager = make_manager(KIND)
            agent, end = make_agent(KIND)
            heard = {}

            def on_down(i):
                def record(down):
                    heard.setdefault(i, []).append(down)
                return record

            for i in range(10):
                manager.monitor(agent, on_down(i))
            watch = watch_of(manager, agent)
            watch.monitors = PopitemFailsUntilHealed(watch.monitors)
            if HANDOVER == "in_place":
                core_mod._REDELIVERER.pending = AppendFailsUntilHealed()
            if HANDOVER == "in_place":
                # The last resort holds the thread ending the agent until it can
                # deliver or hand over: end it from a thread of the test's own.
                threading.Thread(target=end, daemon=True).start()
            else:
                end()  # set_result returns: the death is handed over, not waited for
                if KIND == "spawned":
                    agent.join()  # ... and the thread ends
            # Past the ~11 attempts (about 2 s) after which the death was given up.
            wait_for(lambda: PopitemFailsUntilHealed.failed >= 14, "retries past 2 s")
            assert heard == {}, heard
            if HANDOVER == "in_place":
                assert AppendFailsUntilHealed.failed >= 1
            PopitemFailsUntilHealed.healed.set()
            wait_for(lambda: len(heard) == 10, "every monitor told")
            wait_settled(manager, agent)
            assert all(len(downs) == 1 for downs in heard.values()), heard  # exactly once
            assert {downs[0].reason for downs in heard.values()} == {"normal"}, heard
            manager.close()
            print("OK")
            """
            ),
        )
    )
    assert "not told" not in result.stderr
    assert "injected: out of memory until healed" in result.stderr  # the first failure is logged


_CLOSE_FAULTS = """
import errno, os, select

real_epoll = select.epoll

class UnregisterFails:
    # select.epoll cannot be subclassed: a real epoll behind a thin class
    # whose unregister always fails (ENOMEM).
    def __init__(self):
        self.epoll = real_epoll()

    def register(self, fd, mask):
        self.epoll.register(fd, mask)

    def unregister(self, fd):
        raise OSError(errno.ENOMEM, "injected: epoll_ctl out of memory")

    def poll(self, *args):
        return self.epoll.poll(*args)

    def close(self):
        self.epoll.close()

class PopitemFails(dict):
    # The manager's table of monitors: popitem always out of memory.
    def popitem(self):
        raise MemoryError("injected: popitem out of memory")

def is_open(fd):
    try:
        os.fstat(fd)
    except OSError:  # EBADF
        return False
    return True
"""


@pytest.mark.parametrize(
    "fault", ["unregister_fails", "pidfd_closed", "wake_fd_closed", "monitors_table_fails"]
)
def test_close_always_completes_and_releases_the_rest(fault: str) -> None:
    result = run_scenario(
        scenario(
            "pidfd",
            _CLOSE_FAULTS
            + f"FAULT = {fault!r}\n"
            + dedent(
                """
            if FAULT == "unregister_fails":
                select.epoll = UnregisterFails
            manager = make_manager(KIND)
            procs = [make_agent(KIND) for _ in range(3)]
            thread, end_thread = make_agent("foreign_thread")  # starts the thread poller
            heard = []
            for proc, _ in procs:
                manager.monitor(proc, heard.append)
            manager.monitor(thread, heard.append)
            pidfds = [w.fd for w in manager._by_fd.values()]
            epoll = manager._epoll
            epoll_fd = (epoll.epoll if FAULT == "unregister_fails" else epoll).fileno()
            owned = {*pidfds, epoll_fd, manager._wake_r}
            assert len(owned) == 5 and manager.stats().open_fds == 5
            assert all(is_open(fd) for fd in owned)
            if FAULT == "pidfd_closed":
                os.close(pidfds[0])  # closed behind the manager's back: EBADF later
            elif FAULT == "wake_fd_closed":
                os.close(manager._wake_w)
            elif FAULT == "monitors_table_fails":
                manager._monitors = PopitemFails(manager._monitors)
            manager.close()  # raises nothing
            assert manager.closed
            assert not [fd for fd in owned if is_open(fd)], owned  # every fd released
            threads = [t for t in library_threads() if t.startswith("foundation-fire-")]
            if FAULT == "wake_fd_closed":
                assert threads in ([], ["foundation-fire-pidfd"]), threads  # cannot be woken
            else:
                assert threads == [], threads
            manager.close()  # idempotent
            end_thread()
            for proc, end in procs:
                end()
                proc.wait()
            assert heard == [], heard  # released, never called
            print("OK")
            """
            ),
        )
    )
    if fault == "unregister_fails":
        assert "WARNING" not in result.stderr  # close() unregisters nothing
    else:
        assert "LOG WARNING foundation.liveness" in result.stderr
        assert "close(): " in result.stderr


_SETITEM_FAILS = """
class SetitemFailsOnce(dict):
    # The manager's table of monitors: inserting raises MemoryError once, when armed.
    armed = False

    def __setitem__(self, key, value):
        if self.armed:
            self.armed = False
            raise MemoryError("injected: the manager's table is full")
        super().__setitem__(key, value)
"""


@pytest.mark.parametrize("when", ["first", "next"])
@pytest.mark.parametrize("kind", ["spawned", "cf_future", "asyncio", "pidfd"])
def test_a_monitor_call_that_runs_out_of_memory_stores_nothing(kind: str, when: str) -> None:
    # monitor() inserts into the agent's watch, then into the manager's table;
    # the second insert failing raised MemoryError but left the monitor in the
    # watch: its on_down was still called at the death (and close() missed it).
    run_scenario(
        scenario(
            kind,
            _SETITEM_FAILS
            + f"WHEN = {when!r}\n"
            + dedent(
                """
                manager = make_manager(KIND)
                table = SetitemFailsOnce()
                manager._monitors = table
                agent, end = make_agent(KIND)
                heard, failed = [], []
                if WHEN == "next":
                    manager.monitor(agent, lambda down: heard.append("first"))
                table.armed = True
                try:
                    manager.monitor(agent, failed.append)
                except MemoryError:
                    pass
                else:
                    raise AssertionError("monitor() did not fail")
                stats = manager.stats()
                assert stats.monitors == (WHEN == "next"), stats
                if WHEN == "first" and KIND == "pidfd":
                    # The watch made for the failed call is not kept: no pidfd
                    # (only the epoll and its wake-up fd, opened for it, stay).
                    assert stats.watched_agents == 0 and stats.open_fds == 2, stats
                manager.monitor(agent, lambda down: heard.append("last"))
                end()
                wait_for(lambda: len(heard) == 1 + (WHEN == "next"), "the other monitors told")
                wait_settled(manager, agent)
                assert sorted(heard) == sorted(["last"] + ["first"] * (WHEN == "next")), heard
                assert failed == [], failed  # the failed call's on_down: never called
                manager.close()
                print("OK")
                """
            ),
        )
    )


_DEFECTS = """
import select

real_epoll = select.epoll

class Armed:
    on = False

class WaitFailsOnce(threading.Event):
    # The manager's stop event: its wait (the pause after a defect) out of memory.
    failed = 0

    def wait(self, timeout=None):
        if Armed.on and not self.failed:
            self.failed += 1
            raise MemoryError("injected: Event.wait out of memory")
        return super().wait(timeout)

class PollFailsOnce:
    # select.epoll cannot be subclassed: a real epoll behind a thin class
    # whose poll (it allocates the result) fails once, when armed.
    failed = 0

    def __init__(self):
        self.epoll = real_epoll()

    def register(self, fd, mask):
        self.epoll.register(fd, mask)

    def unregister(self, fd):
        self.epoll.unregister(fd)

    def poll(self, *args):
        if Armed.on and not PollFailsOnce.failed:
            PollFailsOnce.failed += 1
            raise MemoryError("injected: epoll.poll out of memory")
        return self.epoll.poll(*args)

    def close(self):
        self.epoll.close()

class ValuesFailsOnce(dict):
    # The thread poller's table: a defect of the loop's own code, once.
    failed = 0

    def values(self):
        if Armed.on and not ValuesFailsOnce.failed:
            ValuesFailsOnce.failed += 1
            raise RuntimeError("injected: a defect of the poller")
        return super().values()
"""


@pytest.mark.parametrize("kind", ["pidfd", "foreign_thread"])
def test_a_watcher_outlives_running_out_of_memory_in_its_backoff(kind: str) -> None:
    # After a defect a watcher pauses (Event.wait, cut short by close()); that
    # wait allocates, and its MemoryError escaped the handler: the thread died
    # and every later death of its kind went unseen.
    run_scenario(
        scenario(
            kind,
            _DEFECTS
            + dedent(
                """
                select.epoll = PollFailsOnce
                manager = make_manager(KIND)
                manager._stopping = WaitFailsOnce()
                manager._polled_threads = ValuesFailsOnce()
                agent, end = make_agent(KIND)
                heard = []
                manager.monitor(agent, heard.append)
                Armed.on = True
                end()
                wait_for(lambda: manager._stopping.failed == 1, "the backoff out of memory")
                wait_for(lambda: len(heard) == 1, "the death")
                wait_settled(manager, agent)
                # The watcher still serves: the next death is seen too.
                again, end_again = make_agent(KIND)
                manager.monitor(again, heard.append)
                end_again()
                wait_for(lambda: len(heard) == 2, "the next death")
                wait_settled(manager, again)
                assert expected_threads(KIND)[0] in library_threads(), library_threads()
                manager.close()
                print("OK")
                """
            ),
        )
    )
