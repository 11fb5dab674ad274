"""OS-process children die with their parent, even when the parent is SIGKILLed.

The parent is a real program (``sys.executable``) running a supervisor with an
argv child and a multiprocessing child that write their pids to files; the
test SIGKILLs the parent and polls, with a deadline, until both pids are gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from foundation.liveness import OSProcess
from foundation.supervision import ChildSpec, Supervisor
from tests._processes import kill_if_same, pid_in
from tests.supervision._support import run, until, wait_until
from tests.supervision.test_runner import ROOT, _start_time

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux's")

PARENT = """
import asyncio, os, sys, threading
from foundation.supervision import ChildSpec, Supervisor
from foundation.supervision._runner import run

DIR, MODE = sys.argv[1], sys.argv[2]

def record_pid(id):
    with open(os.path.join(DIR, id + ".pid"), "w") as f:
        f.write(str(os.getpid()))

def mp_child(ctx):
    record_pid("mp")
    ctx.ready()
    threading.Event().wait()

ARGV = '''
import os, signal, sys
from foundation.supervision import notify_ready
with open(os.path.join(sys.argv[1], "argv.pid"), "w") as f:
    f.write(str(os.getpid()))
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # only SIGKILL ends it
notify_ready()
while True:
    signal.pause()
'''

def tree():
    return Supervisor([
        ChildSpec("argv", [sys.executable, "-c", ARGV, DIR], readiness="explicit",
                  ready_timeout=60),
        ChildSpec("mp", mp_child, kind="process", ready_timeout=60),
    ], name="parent")

if __name__ == "__main__":
    if MODE == "runner":
        run(tree, on_started=lambda sup: print("ready", flush=True))
    else:
        with tree().run_in_thread():
            print("ready", flush=True)
            threading.Event().wait()
"""


@pytest.mark.parametrize("mode", ["runner", "run_in_thread"])
def test_process_children_die_when_their_parent_is_sigkilled(tmp_path: Path, mode: str) -> None:
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    children: list[OSProcess] = []  # pid + start time: "gone" holds even if a pid is reused
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().strip()
        assert line == "ready", parent.communicate(timeout=30)
        for id in ("argv", "mp"):
            child = pid_in(tmp_path / f"{id}.pid")
            assert child is not None, f"{id} child not running"
            children.append(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert parent.returncode == -signal.SIGKILL
        for child in children:
            wait_until(lambda child=child: not child.is_alive(), timeout=30)  # type: ignore[misc]
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        parent.communicate()
        for child in children:  # never leave an orphan behind, even on failure
            kill_if_same(child)


def test_a_child_whose_parent_died_before_it_armed_the_signal_kills_itself() -> None:
    # The race: the parent dies between fork and prctl, so the kernel never
    # sends the signal. The child sees a parent pid that is not the expected one.
    script = textwrap.dedent(
        """
        import os
        from foundation.supervision._runs import die_with_parent
        die_with_parent(os.getppid() + 1)   # "expected parent" that is not ours
        print("survived", flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -signal.SIGKILL
    assert "survived" not in result.stdout


def test_a_child_of_a_live_parent_arms_the_signal_and_runs_on() -> None:
    script = textwrap.dedent(
        """
        import ctypes, os, signal
        from foundation.supervision._runs import die_with_parent
        die_with_parent(os.getppid())
        libc = ctypes.CDLL(None, use_errno=True)
        sig = ctypes.c_int()
        libc.prctl(2, ctypes.byref(sig), 0, 0, 0)   # PR_GET_PDEATHSIG
        print("armed", sig.value, flush=True)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["armed", str(int(signal.SIGKILL))]


@run
async def test_argv_children_get_a_process_group_of_their_own_unless_told_otherwise() -> None:
    specs = [
        ChildSpec("own", ["sleep", "60"], shutdown_timeout=5),
        ChildSpec("shared", ["sleep", "60"], kwargs={"process_group": None}, shutdown_timeout=5),
    ]
    async with Supervisor(specs) as sup:
        own, shared = (c.handle for c in sup.which_children())
        await until(lambda: _start_time(own.pid) is not None)
        assert os.getpgid(own.pid) == own.pid
        assert os.getpgid(shared.pid) == os.getpgrp()
