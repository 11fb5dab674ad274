"""Exit statuses that the library cannot read itself, with real processes.

A forkserver child is not our child; a child reaped by other code (SIGCHLD
ignored, a SIGCHLD handler or a thread calling ``waitpid(-1)``) has no status
left to read. The library must then never take the status from under its
owner (a forkserver Process's status pipe has room for one reader), never
guess a status it does not know, and never stall its one selector thread.
Scenarios that change SIGCHLD's disposition (process-wide) run in a fresh
interpreter (``run_scenario``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from typing import Any

import pytest

from foundation.liveness import Down, MonitorManager
from tests.faults._subprocess import run_scenario
from tests.liveness._support import Recorder

TIMEOUT = 30.0


def _exit_on_event(event: Any, code: int) -> None:
    """A child that exits with ``code`` once ``event`` (a multiprocessing Event) is set."""
    event.wait()
    os._exit(code)


def _start_many(
    method: str, n: int, code: int
) -> tuple[list[multiprocessing.process.BaseProcess], Any]:
    """``n`` children that exit with ``code`` once the returned Event is set."""
    ctx = multiprocessing.get_context(method)
    event = ctx.Event()
    procs = []
    for _ in range(n):
        proc = ctx.Process(target=_exit_on_event, args=(event, code))
        proc.start()
        procs.append(proc)
    return procs, event


def test_forkserver_owner_exitcode_is_never_corrupted(manager: MonitorManager) -> None:
    """The owner's join() in threads raced the selector's read of the forkserver's
    status pipe: the loser got EOF and multiprocessing stored 255 as the OWNER's
    exitcode (42/90). The library now only reads what the owner stored."""
    procs, event = _start_many("forkserver", 30, 3)
    recs = [Recorder() for _ in procs]
    for proc, rec in zip(procs, recs, strict=True):
        manager.monitor(proc, rec)
    event.set()
    joins = [threading.Thread(target=p.join) for p in procs]
    for t in joins:
        t.start()
    for t in joins:
        t.join(TIMEOUT)
    assert [p.exitcode for p in procs] == [3] * len(procs)
    downs = [rec.wait(TIMEOUT) for rec in recs]
    # The owner joined: its code is read (None only if it stored it later
    # than the owner's deadline, a loaded machine).
    assert {(d.reason, d.exit_code) for d in downs} <= {("exit", 3), ("exit", None)}


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_joined_and_closed_process_reports_its_code(
    manager: MonitorManager, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The owner join()s then close()s: Down("exit", 3), no ERROR (before:
    Down("exit", None) and "ValueError('process object is closed')" logged).
    The library holds the Process's inner popen, whose code close() keeps."""
    procs, event = _start_many(method, 12, 3)
    recs = [Recorder() for _ in procs]
    for proc, rec in zip(procs, recs, strict=True):
        manager.monitor(proc, rec)

    def join_close(proc: multiprocessing.process.BaseProcess) -> None:
        proc.join()
        proc.close()

    with caplog.at_level(logging.WARNING, logger="foundation"):
        threads = [threading.Thread(target=join_close, args=(p,)) for p in procs]
        for t in threads:
            t.start()
        event.set()
        for t in threads:
            t.join(TIMEOUT)
        downs = [rec.wait(TIMEOUT) for rec in recs]
    assert downs == [Down("exit", exit_code=3)] * len(procs)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_forkserver_death_without_owner_poll_gets_the_real_code(manager: MonitorManager) -> None:
    """An owner that does not poll: once the owner's deadline passed, the
    library reads the status pipe itself (the owner is not reading it), so the
    death has its real code, and the owner's later join() gets it too."""
    ctx = multiprocessing.get_context("forkserver")
    event = ctx.Event()
    proc = ctx.Process(target=_exit_on_event, args=(event, 3))
    proc.start()
    rec = Recorder()
    manager.monitor(proc, rec)
    event.set()
    assert rec.wait(TIMEOUT) == Down("exit", exit_code=3)
    proc.join(TIMEOUT)
    assert proc.exitcode == 3


def test_selector_not_stalled_by_an_unreadable_status() -> None:
    """SIGCHLD ignored: a multiprocessing child's status is gone. Its Down used to
    be decided ON the selector thread (a 0.5 s wait per death, deaths told one
    after another: 40 took 20 s); now it waits on the poller, so an unrelated
    Popen's death is told while the first is still pending (the owner's
    deadline is made long here: no timing involved)."""
    run_scenario(
        """
        import multiprocessing, os, signal, subprocess
        import foundation.liveness._process as _process
        from foundation.liveness import MonitorManager
        from tests.liveness.test_process_status_races import _exit_on_event

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        _process._REAP_STORE_WAIT = 60.0  # the mp death stays pending
        ctx = multiprocessing.get_context("fork")
        with MonitorManager(name="s") as mgr:
            for i in range(5):
                downs = {}
                event = ctx.Event()
                proc = ctx.Process(target=_exit_on_event, args=(event, 3))
                proc.start()
                other = subprocess.Popen(["sleep", "30"])
                mgr.monitor(proc, lambda d: downs.setdefault("mp", d))
                mgr.monitor(other, lambda d: downs.setdefault("popen", d))
                event.set()  # the mp child exits; the kernel reaps it
                wait_for(lambda: not os.path.exists(f"/proc/{proc.pid}"), "the mp child gone")
                other.kill()
                wait_for(lambda: "popen" in downs, "the Popen's death")
                assert "mp" not in downs, downs  # told first: the mp one still waits
                print("told", downs["popen"].reason, downs["popen"].signal)
        print("OK")
        """
    )


def test_sigign_reasons_are_unknown_not_guessed() -> None:
    """SIGCHLD ignored: the kernel reaps every child, no status is left.
    Popen stores a guessed 0 (subprocess's ECHILD fallback): the library told
    Down("normal") for a SIGKILL or exit 3 (40/40). Now Down("exit") with no
    code, for a Popen and a multiprocessing child alike."""
    result = run_scenario(
        """
        import multiprocessing, signal, subprocess
        from foundation.liveness import Down, MonitorManager
        from tests.liveness.test_process_status_races import _exit_on_event

        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        ctx = multiprocessing.get_context("fork")
        go = ctx.Event()
        with MonitorManager(name="s") as mgr:
            downs, popens = [], []
            for i in range(10):
                # Each child ends once told, after its monitor() call (sh: at EOF).
                p = subprocess.Popen(["sh", "-c", "read _; kill -9 $$"], stdin=subprocess.PIPE)
                q = subprocess.Popen(["sh", "-c", "read _; exit 3"], stdin=subprocess.PIPE)
                m = ctx.Process(target=_exit_on_event, args=(go, 3))
                m.start()
                for agent in (p, q, m):
                    mgr.monitor(agent, downs.append)
                popens += [p, q]
            assert downs == [], downs
            go.set()
            for p in popens:
                p.stdin.close()
            wait_for(lambda: len(downs) == 30, "every death")
            print("DOWNS", sorted({(d.reason, d.exit_code, d.signal) for d in downs}, key=str))
            assert downs == [Down("exit")] * 30, downs
        print("OK")
        """
    )
    assert result.lines("DOWNS")


def test_popen_reaped_by_another_thread_is_never_normal() -> None:
    """A thread reaps every child (waitpid(-1)): the library took Popen.wait()'s
    answer, a 0 Popen guesses after ECHILD: Down("normal") for a SIGKILL
    (297/300). Popen's lock (free) proves it did not reap: Down("exit")."""
    run_scenario(
        """
        import os, subprocess, threading
        from foundation.liveness import Down, MonitorManager

        stop = threading.Event()
        def reaper():
            while not stop.is_set():
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    time.sleep(0.001)  # sleep-ok: no child yet
        with MonitorManager(name="s") as mgr:
            downs = []
            procs = []
            for i in range(40):
                p = subprocess.Popen(["sh", "-c", "sleep 0.05; kill -9 $$"])
                procs.append(p)
                mgr.monitor(p, downs.append)
            threading.Thread(target=reaper, daemon=True).start()
            wait_for(lambda: len(downs) == 40, "every death")
            stop.set()
            # Read before the reaper (killed) or by the library (our waitid won).
            assert all(d in (Down("exit"), Down("killed", signal=9)) for d in downs), downs
        print("OK")
        """
    )


def test_popen_owner_wait_race_keeps_the_real_code() -> None:
    """The owner's own wait() racing the selector: its real code is kept (the
    library reads it from returncode once Popen's lock is released)."""
    run_scenario(
        """
        import subprocess, threading
        from foundation.liveness import Down, MonitorManager

        with MonitorManager(name="s") as mgr:
            downs = []
            for i in range(40):
                p = subprocess.Popen(["sh", "-c", "sleep 0.05; exit 3"])
                mgr.monitor(p, downs.append)
                threading.Thread(target=p.wait).start()
            wait_for(lambda: len(downs) == 40, "every death")
            assert downs == [Down("exit", exit_code=3)] * 40, downs
        print("OK")
        """
    )
