"""The suite's leftover-process cleanup (``tests/_processes.py``) kills nothing else.

A cleanup that kills a stale pid can hit an innocent process that got the pid
since (another test's redis-server or Sentinel): these check that it refuses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.liveness import OSProcess
from tests._processes import kill_if_same, kill_session, pid_in
from tests.liveness._support import wait_until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/proc and pidfds")

SLEEPER = [sys.executable, "-c", "import threading; threading.Event().wait()"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(SLEEPER)
    yield proc
    proc.kill()
    proc.wait(10)


def test_a_pidfile_names_its_writer_and_the_cleanup_kills_it(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "p.pid"
    pidfile.write_text(str(sleeper.pid))
    kill_if_same(pid_in(pidfile))
    assert sleeper.wait(10) == -9


def test_a_pid_held_by_a_process_younger_than_its_pidfile_is_not_killed(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    # As if the pid had been reused: the file was written (an hour) before the
    # process now holding the pid started.
    pidfile = tmp_path / "p.pid"
    pidfile.write_text(str(sleeper.pid))
    an_hour_ago = pidfile.stat().st_mtime - 3600
    os.utime(pidfile, (an_hour_ago, an_hour_ago))
    assert pid_in(pidfile) is None
    kill_if_same(pid_in(pidfile))
    assert sleeper.poll() is None


def test_a_session_cleanup_kills_its_leftovers_only(sleeper: subprocess.Popen[bytes]) -> None:
    # A command (its session's leader) that leaves a background job behind and ends.
    script = '"$0" -c "import threading; threading.Event().wait()" >/dev/null & echo $!'
    command = subprocess.Popen(
        ["sh", "-c", script, sys.executable],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    out, _ = command.communicate(timeout=30)
    leftover = OSProcess(int(out))
    try:
        assert leftover.is_alive()
        kill_session(command.pid)  # (the session outlives its leader: its id is not reused)
        assert wait_until(lambda: not leftover.is_alive())
        assert sleeper.poll() is None  # not of that session: spared
    finally:
        kill_if_same(leftover)
