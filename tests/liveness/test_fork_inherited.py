"""A manager inherited by a forked child never affects the parent.

The child shares the parent's epoll instance, wake-up eventfd and pidfds (the
same open files). Before, a child's ``close()`` stopped the parent's pidfd
selector for good (it wrote the shared wake-up fd), a child's ``demonitor()``
unregistered the parent's pidfd from the shared epoll, and a child's
``monitor()`` silently watched nothing (or registered its pidfd in the
parent's epoll, spinning the parent's selector). Now the child's manager is
closed, says why, and its ``close()``/``demonitor()`` touch only its own copies.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from foundation import MemoryRegistry, errors
from foundation.liveness import MonitorManager, spawn_thread
from tests.liveness._support import Recorder, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


_SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]  # sleep-ok: an agent to watch


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(_SLEEPER)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _in_child(action: Callable[[], int]) -> int:
    """Run ``action`` in a forked child; its return value is the child's exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            code = action()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _parent_still_sees(manager: MonitorManager, proc: subprocess.Popen[bytes]) -> None:
    rec = Recorder()
    manager.monitor(proc, rec)
    proc.kill()
    assert rec.wait().reason == "killed"


def test_child_close_does_not_stop_the_parents_selector(
    manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    first = Recorder()
    manager.monitor(sleeper, first)  # the parent's pidfd selector runs

    def child() -> int:
        manager.close()
        return 0 if manager.closed else 1

    assert _in_child(child) == 0
    assert not manager.closed
    sleeper.kill()
    assert first.wait().reason == "killed"
    other = subprocess.Popen(_SLEEPER)
    try:
        _parent_still_sees(manager, other)
    finally:
        other.kill()
        other.wait()


def test_child_demonitor_does_not_unregister_the_parents_pidfd(
    manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    rec = Recorder()
    mon = manager.monitor(sleeper, rec)  # the last monitor: demonitor detaches the pidfd

    def child() -> int:
        return 0 if mon.demonitor() else 1

    assert _in_child(child) == 0
    assert mon.active
    sleeper.kill()
    assert rec.wait().reason == "killed"


def test_child_registry_unregister_and_close_leave_the_parent_intact(
    sleeper: subprocess.Popen[bytes],
) -> None:
    reg = MemoryRegistry()
    try:
        reg.register("A", sleeper)

        def child() -> int:
            reg.unregister("A")
            reg.close()
            return 0

        assert _in_child(child) == 0
        assert reg.lookup("A") is not None
        sleeper.kill()
        assert wait_until(lambda: reg.lookup("A") is None)
    finally:
        reg.close()


def test_inherited_manager_refuses_every_agent_in_the_child(
    manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    manager.monitor(sleeper, Recorder())
    thread = spawn_thread(lambda: None)
    manager.monitor(thread, Recorder())  # a shared watch: the hot path in the child

    def child() -> int:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        try:
            for agent in (proc, thread):
                try:
                    manager.monitor(agent, print)
                except errors.Closed as exc:
                    if "fork()" not in str(exc):
                        return 2
                else:
                    return 1
        finally:
            proc.wait()
        return 0

    assert _in_child(child) == 0
    _parent_still_sees(manager, sleeper)


def test_registry_in_the_child_says_it_was_inherited(
    sleeper: subprocess.Popen[bytes],
) -> None:
    reg = MemoryRegistry()
    try:
        reg.register("parent", sleeper)

        def child() -> int:
            proc = subprocess.Popen([sys.executable, "-c", "pass"])
            try:
                reg.register("child", proc)
            except errors.Closed as exc:
                return 0 if "inherited across fork()" in str(exc) else 2
            finally:
                proc.wait()
            return 1

        assert _in_child(child) == 0
        sleeper.kill()
        assert wait_until(lambda: reg.lookup("parent") is None)
    finally:
        reg.close()


def _registered_fds(epoll: select.epoll | None) -> set[int] | None:
    """The fds registered in ``epoll``; None if it was closed meanwhile (the
    selector replaced it while this read it)."""
    try:
        with open(f"/proc/self/fdinfo/{epoll.fileno()}") as f:  # type: ignore[union-attr]
            return {int(line.split()[1]) for line in f if line.startswith("tfd:")}
    except (AttributeError, ValueError, OSError):
        return None


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open")
def test_a_registration_not_its_own_does_not_spin_the_selector(
    manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    """An fd in the epoll that no watch has (put there by other code: what a
    forked child did before) was reported on every poll: 100% CPU for good."""
    rec = Recorder()
    manager.monitor(sleeper, rec)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    stray = os.pidfd_open(dead.pid)
    keep = os.dup(stray)  # keeps the open file, so its registration, alive
    try:
        # Simulates foreign code (an old child) registering in this epoll.
        epoll = manager._epoll
        assert epoll is not None
        ours = _registered_fds(epoll)
        epoll.register(stray, select.EPOLLIN)
        os.close(stray)  # the number now names nothing here: it cannot be unregistered
        dead.wait()  # readable from now on: reported on every poll
        assert wait_until(lambda: _registered_fds(manager._epoll) == ours)
    finally:
        os.close(keep)
    sleeper.kill()
    assert rec.wait().reason == "killed"
