"""OSProcess: validation, identity (pid-reuse safety), zombies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from foundation.liveness import MonitorManager, OSProcess, is_alive
from tests.liveness._support import Recorder, wait_until


def test_pid_must_be_a_positive_int() -> None:
    with pytest.raises(TypeError):
        OSProcess("12")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        OSProcess(True)
    with pytest.raises(ValueError, match="positive"):
        OSProcess(0)


def test_a_pid_with_no_process_gives_a_dead_handle(manager: MonitorManager) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names nothing (until reused)
    agent = OSProcess(proc.pid)
    assert not agent.is_alive()
    assert agent.start_time is None
    rec = Recorder()
    manager.monitor(agent, rec)
    assert rec.downs[0].reason == "noproc"


def test_identity_is_the_start_time(sleeper: subprocess.Popen[bytes]) -> None:
    agent = OSProcess(sleeper.pid)
    assert agent == OSProcess(sleeper.pid)
    assert hash(agent) == hash(OSProcess(sleeper.pid))
    assert agent != OSProcess(os.getpid())
    assert isinstance(agent.start_time, int)
    assert repr(agent) == f"OSProcess(pid={sleeper.pid})"


def test_a_reused_pid_is_seen_as_dead(
    manager: MonitorManager, sleeper: subprocess.Popen[bytes]
) -> None:
    """Identity mismatch => dead: simulate the pid now naming a younger process."""
    agent = OSProcess(sleeper.pid)
    assert agent.start_time is not None
    agent._start = agent.start_time - 1  # as if the pid now named a younger process
    assert not agent.is_alive()
    assert not agent.same_identity()
    assert not is_alive(agent)
    rec = Recorder()
    manager.monitor(agent, rec)  # pidfd would name the other process: refused
    assert rec.downs[0].reason == "noproc"
    assert manager.stats().open_fds == 0 or manager.stats().watched_agents == 0


def test_a_zombie_counts_as_dead(sleeper: subprocess.Popen[bytes]) -> None:
    agent = OSProcess(sleeper.pid)
    sleeper.kill()  # not reaped yet: a zombie
    assert wait_until(lambda: not agent.is_alive())
    assert agent.same_identity()  # the zombie still holds the pid
    assert not is_alive(sleeper)
    assert sleeper.returncode is None  # is_alive did not reap it
    assert sleeper.wait(10) == -9


def test_own_process_is_alive() -> None:
    assert OSProcess(os.getpid()).is_alive()
