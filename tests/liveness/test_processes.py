"""OS processes: subprocess.Popen, multiprocessing.Process, OSProcess; pidfd and polling."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from foundation.liveness import Down, MonitorManager, OSProcess, _process, is_alive
from tests._processes import kill_if_same
from tests.liveness._support import Recorder, fd_count, manager_threads, wait_until

EXIT = [sys.executable, "-c", "import sys; sys.exit(int(sys.argv[1]))"]


def _sleep_forever() -> None:
    time.sleep(30)  # sleep-ok: the body of a child process that the test kills


def _exit_with(code: int) -> None:
    sys.exit(code)


@pytest.fixture(params=["pidfd", "polling"])
def any_manager(
    request: pytest.FixtureRequest, manager: MonitorManager, polling_manager: MonitorManager
) -> MonitorManager:
    """Every process test runs on pidfd and on the polling fallback."""
    return manager if request.param == "pidfd" else polling_manager


def test_polling_manager_really_polls(
    polling_manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    polling_manager.monitor(sleeper, Recorder())
    assert not polling_manager.uses_pidfd
    assert manager_threads(polling_manager.name) == [f"foundation-{polling_manager.name}-procpoll"]
    assert polling_manager.stats().open_fds == 0


@pytest.mark.parametrize(("sig", "expected"), [(signal.SIGKILL, 9), (signal.SIGTERM, 15)])
def test_popen_killed_by_signal_is_killed_with_that_signal(
    any_manager: MonitorManager, sleeper: subprocess.Popen[bytes], sig: int, expected: int
) -> None:
    rec = Recorder()
    any_manager.monitor(sleeper, rec)
    assert is_alive(sleeper)
    sleeper.send_signal(sig)
    assert rec.wait() == Down("killed", signal=expected)
    # Not reaped by the monitor: the owner still gets the status.
    assert sleeper.wait(10) == -expected


@pytest.mark.parametrize(("code", "reason"), [(0, "normal"), (3, "exit")])
def test_popen_exit_code(any_manager: MonitorManager, code: int, reason: str) -> None:
    proc = subprocess.Popen([*EXIT, str(code)])
    rec = Recorder()
    any_manager.monitor(proc, rec)
    down = rec.wait()
    assert down.reason == reason
    assert down.exit_code == (code or None)
    assert proc.wait(10) == code


def test_process_death_fires_on_the_watcher_thread(
    any_manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    rec = Recorder()
    any_manager.monitor(sleeper, rec)
    sleeper.kill()
    rec.wait()
    role = "pidfd" if any_manager.uses_pidfd else "procpoll"
    assert rec.threads == [f"foundation-{any_manager.name}-{role}"]


def test_multiprocessing_process_exit_codes_and_kill(any_manager: MonitorManager) -> None:
    ctx = multiprocessing.get_context("fork")
    normal = ctx.Process(target=_exit_with, args=(0,))
    failing = ctx.Process(target=_exit_with, args=(5,))
    killed = ctx.Process(target=_sleep_forever)
    recs = {p: Recorder() for p in (normal, failing, killed)}
    for proc, rec in recs.items():
        proc.start()
        any_manager.monitor(proc, rec)
    assert killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    assert recs[normal].wait().reason in ("normal", "noproc")  # may end before monitor()
    assert recs[failing].wait() in (Down("exit", exit_code=5), Down("noproc"))
    assert recs[killed].wait() == Down("killed", signal=9)
    for proc in recs:
        proc.join(10)
    assert (normal.exitcode, failing.exitcode, killed.exitcode) == (0, 5, -9)


def test_a_process_child_reaped_before_its_owner_stores_the_code_waits_for_it(
    any_manager: MonitorManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """multiprocessing reaps a fork child in ``Popen.poll()`` (its cleanup at the
    next ``start()``, ``is_alive()``, ``join()``) and stores the code a few
    bytecodes later: a look in between meets ECHILD and no code, and must give
    the owner its time (it told a clean exit as ``Down("exit")``, code unknown,
    on the polling fallback: CI, once). Here the kernel reaps the child (SIGCHLD
    ignored) and the code is stored once the manager was seen waiting for it."""
    monkeypatch.setattr(_process, "_REAP_STORE_WAIT", 60.0)  # the owner is this test: no hurry
    proc = multiprocessing.get_context("fork").Process(target=_sleep_forever)
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        proc.start()
        assert proc.pid is not None
        rec = Recorder()
        any_manager.monitor(proc, rec)
        os.kill(proc.pid, signal.SIGKILL)
        record = proc.__dict__[_process._RECORD]
        assert wait_until(lambda: record.deadline is not None or rec.count > 0)
        assert rec.downs == []  # seen dead, code unread: not told yet
        proc._popen.returncode = -signal.SIGKILL  # what Popen.poll() stores
        assert rec.wait() == Down("killed", signal=9)
    finally:
        signal.signal(signal.SIGCHLD, previous)
        if proc._popen is not None and proc._popen.returncode is None:
            # Reaped by the kernel: keep multiprocessing's cleanup at the next
            # start() off this pid (another test's child may take it).
            proc._popen.returncode = -signal.SIGKILL


def test_multiprocessing_process_not_ours_to_wait_uses_its_exitcode(
    any_manager: MonitorManager,
) -> None:
    """forkserver children are the server's: the status comes from multiprocessing,
    read once from its pipe when the owner leaves it unread (on the polling
    fallback too: it told ``Down("exit")``, code unknown, at once)."""
    ctx = multiprocessing.get_context("forkserver")
    proc = ctx.Process(target=_sleep_forever)
    proc.start()
    try:
        rec = Recorder()
        any_manager.monitor(proc, rec)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        assert rec.wait() == Down("killed", signal=9)
        proc.join(10)
        assert proc.exitcode == -9  # the owner reads the same code (not 255: EOF)
    finally:
        proc.kill()
        proc.join(10)


def test_multiprocessing_process_never_started_is_noproc(manager: MonitorManager) -> None:
    proc = multiprocessing.get_context("fork").Process(target=_sleep_forever)
    assert not is_alive(proc)
    rec = Recorder()
    manager.monitor(proc, rec)
    assert rec.downs[0].reason == "noproc"


def test_osprocess_of_a_child_gets_its_exit_status(
    any_manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    agent = OSProcess(sleeper.pid)
    rec = Recorder()
    any_manager.monitor(agent, rec)
    assert agent.is_alive()
    sleeper.kill()
    assert rec.wait() == Down("killed", signal=9)
    assert not agent.is_alive()  # a zombie counts as dead
    assert sleeper.wait(10) == -9


def test_osprocess_of_a_foreign_process_exits_with_unknown_status(
    any_manager: MonitorManager,
) -> None:
    # sh starts sleep in the background and exits: the sleep is not our child.
    sh = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    pid = int(sh.stdout)
    agent = OSProcess(pid)  # its identity, taken while the sleep surely runs (30 s)
    try:
        rec = Recorder()
        any_manager.monitor(agent, rec)
        os.kill(pid, signal.SIGKILL)
        assert rec.wait() == Down("exit", exit_code=None)
        assert not agent.is_alive()
    finally:  # the sleep, if still there (not whatever holds its pid by now)
        kill_if_same(agent)


def test_already_exited_processes_are_noproc(any_manager: MonitorManager) -> None:
    reaped = subprocess.Popen([*EXIT, "0"])
    reaped.wait()
    zombie = subprocess.Popen([*EXIT, "0"])
    try:
        assert wait_until(lambda: not OSProcess(zombie.pid).is_alive())
        for agent in (reaped, zombie, OSProcess(reaped.pid)):
            assert not is_alive(agent)
            rec = Recorder()
            mon = any_manager.monitor(agent, rec)
            assert rec.downs[0].reason == "noproc"
            assert not mon.active
    finally:
        zombie.wait()


def test_demonitored_process_monitor_is_never_called(
    any_manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    dropped, kept = Recorder(), Recorder()
    mon = any_manager.monitor(sleeper, dropped)
    any_manager.monitor(sleeper, kept)
    assert mon.demonitor()
    assert not mon.demonitor()
    sleeper.kill()
    kept.wait()
    assert dropped.count == 0


def test_pidfd_is_held_only_while_monitored(
    manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    manager.monitor(sleeper, Recorder()).demonitor()  # warm up: epoll + wake fd
    base_fds, base_stats = fd_count(), manager.stats()
    mons = [manager.monitor(sleeper, Recorder()) for _ in range(3)]
    assert fd_count() == base_fds + 1  # one pidfd per process, however many monitors
    assert manager.stats().open_fds == base_stats.open_fds + 1
    for mon in mons:
        mon.demonitor()
    assert fd_count() == base_fds
    for _ in range(1000):
        manager.monitor(sleeper, Recorder()).demonitor()
    assert fd_count() == base_fds
    assert manager.active_count() == 0
    assert manager.stats() == base_stats


def test_many_processes_killed_at_once_are_all_reported(any_manager: MonitorManager) -> None:
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(20)]
    try:
        recs = [Recorder() for _ in procs]
        for proc, rec in zip(procs, recs, strict=True):
            any_manager.monitor(proc, rec)
        for proc in procs:
            proc.kill()
        assert [rec.wait().reason for rec in recs] == ["killed"] * 20
        assert any_manager.active_count() == 0
        assert any_manager.stats().watched_agents == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_on_down_runs_without_manager_locks(manager: MonitorManager) -> None:
    """A callback may call back into the manager (it would deadlock if a lock were held)."""
    first = subprocess.Popen(["sleep", "30"])
    second = subprocess.Popen(["sleep", "30"])
    nested = Recorder()
    done = threading.Event()
    seen: list[object] = []

    def on_down(down: Down) -> None:
        seen.append(manager.stats().monitors)
        manager.monitor(second, nested)
        done.set()

    try:
        manager.monitor(first, on_down)
        first.kill()
        assert done.wait(10)
        second.kill()
        assert nested.wait().reason == "killed"
        assert seen == [0]
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()


def test_a_kernel_without_pidfd_open_falls_back_to_polling(
    monkeypatch: pytest.MonkeyPatch, sleeper: subprocess.Popen[bytes]
) -> None:
    """pidfd_open failing with ENOSYS (old kernels) switches the manager to polling."""

    def no_pidfd(_pid: int) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    with MonitorManager(name="nosys", process_poll_interval=0.002) as mgr:
        before = mgr.uses_pidfd
        rec = Recorder()
        mgr.monitor(sleeper, rec)
        assert (before, mgr.uses_pidfd) == (True, False)
        assert manager_threads("nosys") == ["foundation-nosys-procpoll"]
        sleeper.kill()
        assert rec.wait() == Down("killed", signal=9)


def test_monitor_demonitor_racing_process_deaths_leaks_no_fd_and_loses_no_death(
    manager: MonitorManager,
) -> None:
    """pidfds opened and closed while others die: fd numbers get reused under the selector."""
    manager.monitor(OSProcess(os.getpid()), Recorder()).demonitor()  # warm up the selector
    base_fds = fd_count()
    procs = [subprocess.Popen(["sleep", "30"]) for _ in range(16)]
    try:
        keepers = [Recorder() for _ in procs]
        for proc, rec in zip(procs, keepers, strict=True):
            manager.monitor(proc, rec)
        stop = threading.Event()
        churned: list[int] = []

        def churn(mine: list[subprocess.Popen[bytes]]) -> None:
            n = 0
            while not stop.is_set():
                for proc in mine:
                    mon = manager.monitor(proc, Recorder())
                    mon.demonitor()
                    n += 1
            churned.append(n)

        workers = [threading.Thread(target=churn, args=(procs[i::2],)) for i in range(2)]
        for w in workers:
            w.start()
        for proc in procs:
            proc.kill()
        assert [rec.wait().reason for rec in keepers] == ["killed"] * len(procs)
        stop.set()
        for w in workers:
            w.join()
        assert len(churned) == 2
        assert all(rec.count == 1 for rec in keepers)
        assert manager.active_count() == 0
        assert fd_count() == base_fds
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
