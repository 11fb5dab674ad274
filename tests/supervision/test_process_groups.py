"""A ``multiprocessing`` child is stopped and swept as a group, as an argv child is.

Both kinds of OS-process child lead a process group of their own (argv:
``process_group=0``; multiprocessing: ``setpgid(0, 0)`` first thing in the
child). Before the fix only the argv child's group was signalled and swept:
a multiprocessing child's grandchild (here one ignoring SIGTERM) outlived
its stop, and the grandchild of one that ended by itself ran on, reparented,
one more leaked process at every restart. Each scenario is a plain
interpreter with the default hooks (``tests/faults/_subprocess.py``); the
grandchild is waited for with a deadline.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tests._processes import kill_if_same, pid_in
from tests.faults._subprocess import run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux process groups")

_PROCS = """
import os, signal, sys
from pathlib import Path
from foundation.supervision import ChildSpec, Supervisor
from tests.supervision import _group_targets

def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"   # a zombie (reparented, not reaped yet) is gone too

def read_pid(path):
    wait_for(lambda: path.exists(), f"pid in {path}")
    return int(path.read_text())
"""


def _run(script: str, pidfile: Path) -> None:
    try:
        run_scenario(_PROCS + textwrap.dedent(script), timeout=60)
    finally:  # a leaked grandchild must not outlive the test either (nor its pid's next owner)
        kill_if_same(pid_in(pidfile))


@pytest.mark.parametrize("timeout", [2.0, 0.0])  # SIGTERM then SIGKILL; brutal_kill
def test_stopping_a_multiprocessing_child_stops_its_grandchild(
    tmp_path: Path, timeout: float
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    _run(
        f"""
        pidfile = Path({str(pidfile)!r})
        spec = ChildSpec("mp", _group_targets.parent_until_stopped, args=(str(pidfile),),
                         kind="process", shutdown_timeout={timeout!r})
        handle = Supervisor([spec], name="app").run_in_thread()
        grandchild = read_pid(pidfile)
        assert alive(grandchild)
        child = handle.which_child("mp").handle
        assert os.getpgid(grandchild) == child.pid  # in the child's own group
        handle.stop()
        wait_for(lambda: not alive(grandchild), "the grandchild to be stopped too")
        print("OK")
        """,
        pidfile,
    )


def test_a_multiprocessing_child_that_ends_leaves_no_grandchild(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    _run(
        f"""
        pidfile = Path({str(pidfile)!r})
        spec = ChildSpec("mp", _group_targets.parent_that_exits, args=(str(pidfile),),
                         kind="process", restart="transient")
        handle = Supervisor([spec], name="app").run_in_thread()
        grandchild = read_pid(pidfile)
        wait_for(lambda: handle.which_child("mp").status == "stopped", "the child's exit")
        wait_for(lambda: not alive(grandchild), "its grandchild to be swept")
        handle.stop()
        print("OK")
        """,
        pidfile,
    )


def test_a_forked_grandchild_holding_the_exit_pipe_does_not_hang_the_stop(
    tmp_path: Path,
) -> None:
    # A forked grandchild inherits the write end of the pipe multiprocessing
    # watches (the sentinel): the child's exit is seen only once the grandchild
    # is gone too. Before: SIGTERM, then SIGKILL went to the child alone, the
    # grandchild (ignoring SIGTERM) kept the pipe open and stop() never returned.
    pidfile = tmp_path / "grandchild.pid"
    _run(
        f"""
        pidfile = Path({str(pidfile)!r})
        spec = ChildSpec("mp", _group_targets.parent_that_forks, args=(str(pidfile),),
                         kind="process", shutdown_timeout=0.5)
        handle = Supervisor([spec], name="app").run_in_thread()
        grandchild = read_pid(pidfile)
        assert alive(grandchild)
        done = threading.Event()
        stopper = threading.Thread(target=lambda: (handle.stop(), done.set()), daemon=True)
        stopper.start()
        wait_for(done.is_set, "stop() to return")
        # Race: stop() returns once the pipe closed, which the grandchild does
        # while it exits: it may not be a zombie yet.
        wait_for(lambda: not alive(grandchild), "the grandchild to be killed")
        print("OK")
        """,
        pidfile,
    )


def test_a_multiprocessing_child_that_forks_then_dies_is_seen_dead(tmp_path: Path) -> None:
    # Its forked grandchild holds the pipe multiprocessing watches (the
    # sentinel) open: the child's death was not seen (no crash report, no
    # restart, which_children() said running) until the grandchild ended.
    pidfile = tmp_path / "grandchild.pid"
    _run(
        f"""
        pidfile = Path({str(pidfile)!r})
        spec = ChildSpec("mp", _group_targets.parent_that_forks_and_exits,
                         args=(str(pidfile),), kind="process", restart="temporary")
        handle = Supervisor([spec], name="app").run_in_thread()
        grandchild = read_pid(pidfile)
        # (a temporary child that ended is deleted, as in OTP)
        wait_for(lambda: handle.which_children() == [], "the child's exit seen")
        wait_for(lambda: not alive(grandchild), "its grandchild to be swept")
        handle.stop()
        print("OK")
        """,
        pidfile,
    )
