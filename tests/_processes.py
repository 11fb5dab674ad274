"""Killing a leftover process by pid without hitting another one that got the pid since.

Pids are reused: with ``pid_max`` 32768 and a busy suite they wrap around
within one CI run, so a pid remembered (or read from a pidfile) may name
another test's redis-server or Sentinel by the time a cleanup kills it. A
process is therefore known by its identity, pid + start time
(``foundation.liveness.OSProcess``), taken when the pid is learnt, and is
killed only while that very process still holds the pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from foundation.liveness import OSProcess

__all__ = ["kill_if_same", "kill_session", "pid_in"]

# A pid is reused only once the pid counter has wrapped around (minutes): a
# process started later than this after its pidfile was written is not the one
# the file names. Covers the coarse clocks (a file's mtime, the start's 10 ms ticks).
_MARGIN = 1.0


def pid_in(pidfile: Path) -> OSProcess | None:
    """The process ``pidfile`` names, identity taken now, or None.

    None where the file is missing or half written, the process is gone, or
    the pid now belongs to a process started after the file was written (the
    pid was reused since: the writer wrote the pid of a process already running).
    """
    try:
        written = pidfile.stat().st_mtime
        process = OSProcess(int(pidfile.read_text()))
    except (FileNotFoundError, ValueError):
        return None
    started = process.start_time  # clock ticks since boot; None: gone, or no /proc
    if started is None:
        return None
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    if booted + started / os.sysconf("SC_CLK_TCK") > written + _MARGIN:
        return None
    return process


def kill_if_same(process: OSProcess | None, signum: int = signal.SIGKILL) -> None:
    """Send ``signum`` to ``process`` if it still holds its pid; else do nothing."""
    if process is None:
        return
    _signal_if(process.pid, lambda _: process.same_identity(), signum)


def kill_session(session: int) -> None:
    """SIGKILL every live process of ``session`` (what a command left behind)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            _signal_if(int(entry.name), lambda pid: _in_session(pid, session), signal.SIGKILL)


def _in_session(pid: int, session: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process of ``session``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # ended meanwhile
    # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0] != "Z" and int(fields[3]) == session


def _signal_if(pid: int, still: Callable[[int], bool], signum: int) -> None:
    """Send ``signum`` to ``pid`` if ``still(pid)`` holds once the process is pinned."""
    # Race: the pid may be reused between the check and the signal. A pidfd
    # pins the process it was opened for: the check runs after opening it,
    # so a pass means the pinned process is the one checked, and the signal
    # can reach no newcomer.
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # ended and reaped already
    try:
        if still(pid):
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                signal.pidfd_send_signal(fd, signum)
    finally:
        os.close(fd)
