"""OS processes: identity, liveness and exit status, without reaping.

Everything here is non-blocking and never reaps a child: exit status is read
with ``waitid(..., WEXITED | WNOHANG | WNOWAIT)``, so ``Popen.wait()`` and
``Process.join()`` keep working for their owners. Zombies count as dead.
"""

from __future__ import annotations

import contextlib
import os
import select
import time
from typing import TYPE_CHECKING, Any, TypeAlias, cast

from foundation.errors import BackendUnavailable
from foundation.liveness._core import NOPROC, NORMAL, Down
from foundation.liveness._types import agent_types

if TYPE_CHECKING:
    # Not imported at run time: agent_types() finds Popen in sys.modules (a Popen
    # can only exist once subprocess is imported; see _types).
    import multiprocessing.process
    import subprocess

__all__ = [
    "OSProcess",
    "ProcessAgent",
    "down_from_pidfd",
    "down_from_status",
    "exit_down",
    "open_pidfd",
    "waitid_pidfd",
]


_HAS_WAITID = hasattr(os, "waitid")
_WAIT_FLAGS = (os.WEXITED | os.WNOHANG | os.WNOWAIT) if _HAS_WAITID else 0


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc/<pid>/stat, None if gone.

    Raises ``BackendUnavailable`` (keeping the errno) when /proc cannot be read
    for another reason: no fd left (EMFILE, ENFILE), no memory.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:  # not an answer about the process: never "dead"
        raise BackendUnavailable(exc.errno, f"cannot read /proc/{pid}/stat: {exc}") from exc
    # The command name (field 2) may contain spaces and parentheses: split
    # after the LAST ')'. Then field 3 is the state, field 22 the start time.
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode("ascii"), int(fields[19])


_PROC_OK = os.path.isdir("/proc/self") and _read_stat(os.getpid()) is not None


class OSProcess:
    """Any OS process, by pid; pid reuse is detected to within one clock tick.

    The constructor records the process's identity (its start time, from
    ``/proc/<pid>/stat``, in clock ticks: 10 ms at the usual 100 Hz), so a
    process that died and whose pid was reused by another one is seen as
    dead, unless the new process started within the same tick (then the two
    cannot be told apart and the new one passes for the old). A monitor is
    exact once its pidfd is open (it pins the process; the identity is
    checked right after opening it). Where ``/proc`` is missing (non-Linux),
    only ``kill(pid, 0)`` is available and pid reuse cannot be detected.

    A pid with no process behind it is accepted and gives a dead handle
    (``is_alive()`` is False, monitoring it reports ``"noproc"``): a process may
    die at any moment anyway, so callers check liveness, not construction.
    Zombies (exited, not yet reaped) count as dead.

    Raises:
        TypeError: ``pid`` is not an int.
        ValueError: ``pid`` is not positive.
        BackendUnavailable: ``/proc/<pid>/stat`` cannot be read (no fd left:
            EMFILE); ``is_alive()`` raises it too rather than guess.

    Example:
        >>> import os
        >>> me = OSProcess(os.getpid())
        >>> me.is_alive(), me == OSProcess(os.getpid())
        (True, True)
    """

    __slots__ = ("_start", "pid")

    def __init__(self, pid: int) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        if pid <= 0:
            raise ValueError(f"pid must be positive, got {pid}")
        self.pid: int = pid
        # Identity: start time in clock ticks since boot; -1 = no such process
        # at construction; None = /proc unavailable (no reuse detection).
        self._start: int | None
        if _PROC_OK:
            stat = _read_stat(pid)
            self._start = -1 if stat is None or stat[0] in "ZX" else stat[1]
        else:
            self._start = None if _kill0(pid) else -1

    @property
    def start_time(self) -> int | None:
        """Start time in clock ticks since boot (the identity), or None if unknown."""
        return self._start if self._start is None or self._start >= 0 else None

    def is_alive(self) -> bool:
        """True while the very process seen at construction runs (not a zombie)."""
        return self._is_same(zombie=False)

    def same_identity(self) -> bool:
        """True if ``pid`` still names the process seen at construction (zombie or not)."""
        return self._is_same(zombie=True)

    def _is_same(self, *, zombie: bool) -> bool:
        """True if ``pid`` still names the process seen at construction; a
        zombie (or dead) one counts only if ``zombie``."""
        start = self._start
        if start == -1:
            return False
        if start is None:
            return _kill0(self.pid)
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] == start and (zombie or stat[0] not in "ZX")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OSProcess):
            return NotImplemented
        return self.pid == other.pid and self._start == other._start

    def __hash__(self) -> int:
        return hash((self.pid, self._start))

    def __repr__(self) -> str:
        return f"OSProcess(pid={self.pid})"


ProcessAgent: TypeAlias = "subprocess.Popen[Any] | multiprocessing.process.BaseProcess | OSProcess"


def _kill0(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- status


def _down_from_siginfo(result: Any) -> Down:
    code = result.si_code
    if code == os.CLD_EXITED:
        status = int(result.si_status)
        return NORMAL if status == 0 else Down("exit", exit_code=status)
    if code in (os.CLD_KILLED, os.CLD_DUMPED):
        return Down("killed", signal=int(result.si_status))
    return Down("exit")


def _down_from_returncode(rc: int) -> Down:
    """Popen/multiprocessing convention: negative = killed by that signal."""
    if rc == 0:
        return NORMAL
    if rc < 0:
        return Down("killed", signal=-rc)
    return Down("exit", exit_code=rc)


def _waitid_pid(pid: int) -> Any:
    """Non-reaping status of child ``pid``: None while running.

    Raises ChildProcessError if ``pid`` is not (or no longer) our child.
    """
    if not _HAS_WAITID:
        raise ChildProcessError(pid)
    return os.waitid(os.P_PID, pid, _WAIT_FLAGS)


def _popen_of(proc: multiprocessing.process.BaseProcess) -> Any:
    return getattr(proc, "_popen", None)


def exit_down(agent: ProcessAgent) -> Down | None:
    """The agent's Down if it has exited (zombie included), None while it runs.

    Non-blocking and non-reaping where the platform allows it.
    """
    if isinstance(agent, OSProcess):
        return _os_process_exit_down(agent)
    if isinstance(agent, agent_types().popen):
        return _popen_exit_down(agent)
    # multiprocessing.Process (any start method), the only kind left
    return _mp_process_exit_down(cast("multiprocessing.process.BaseProcess", agent))


def _os_process_exit_down(agent: OSProcess) -> Down | None:
    """``exit_down`` for an OSProcess."""
    if agent.is_alive():
        return None
    if _PROC_OK and agent.same_identity():
        # A zombie: if it is our child we can read its status.
        with contextlib.suppress(ChildProcessError, OSError):
            result = _waitid_pid(agent.pid)
            if result is not None:
                return _down_from_siginfo(result)
    return Down("exit") if agent._start != -1 else NOPROC


def _popen_exit_down(agent: subprocess.Popen[Any]) -> Down | None:
    """``exit_down`` for a subprocess.Popen."""
    if agent.returncode is not None:
        return _down_from_returncode(agent.returncode)
    try:
        result = _waitid_pid(agent.pid)
    except ChildProcessError:
        # Reaped behind Popen's back, or SIGCHLD ignored: ask Popen itself.
        rc = agent.poll()
        return None if rc is None else _down_from_returncode(rc)
    return None if result is None else _down_from_siginfo(result)


def _mp_process_exit_down(agent: multiprocessing.process.BaseProcess) -> Down | None:
    """``exit_down`` for a multiprocessing.Process (any start method)."""
    popen = _popen_of(agent)
    if popen is None:
        return NOPROC  # never started: it cannot die later
    if popen.returncode is not None:
        return _down_from_returncode(popen.returncode)
    try:
        result = _waitid_pid(popen.pid)
    except ChildProcessError:
        # forkserver children are not ours: multiprocessing reads the status.
        rc = agent.exitcode
        return None if rc is None else _down_from_returncode(rc)
    return None if result is None else _down_from_siginfo(result)


def open_pidfd(agent: ProcessAgent) -> int | None:
    """A pidfd on the agent's process, or None if that process is already gone.

    Raises OSError(ENOSYS) where the kernel lacks pidfd_open, and any other
    OSError (EMFILE, ...) unchanged.
    """
    pid = agent.pid
    if pid is None or not _pid_still_ours(agent):
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Race: the process may have been reaped and its pid reused between the
    # check above and pidfd_open. Re-check identity now that the fd pins it.
    try:
        ours = _pid_still_ours(agent)
    except BaseException:  # /proc unreadable now (the pidfd took the last fd): no leak
        os.close(fd)
        raise
    if not ours:
        os.close(fd)
        return None
    return fd


def _pid_still_ours(agent: ProcessAgent) -> bool:
    """True while ``agent.pid`` names the agent's process (running or zombie)."""
    if isinstance(agent, OSProcess):
        return agent.same_identity()
    if isinstance(agent, agent_types().popen):
        return agent.returncode is None
    popen = _popen_of(cast("multiprocessing.process.BaseProcess", agent))  # the kind left
    return popen is not None and popen.returncode is None


def pidfd_readable(fd: int) -> bool:
    """True if the pidfd reports its process as exited (zero-timeout poll)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def down_from_pidfd(agent: ProcessAgent, fd: int) -> Down:
    """Exit status of the (exited) process behind ``fd``, without reaping it.

    For a process that is not our child the status cannot be read: the result
    is ``Down("exit", exit_code=None)`` unless the owning object knows it.
    """
    return down_from_status(agent, waitid_pidfd(fd))


def down_from_status(agent: ProcessAgent, result: Any) -> Down:
    """``down_from_pidfd`` once ``waitid_pidfd`` answered ``result`` (no fd needed:
    the manager reads the status under its lock, then waits for the owner outside)."""
    if result is not None:
        return _down_from_siginfo(result)
    code = _owner_exit_code(agent)
    if code is not None:
        return _down_from_returncode(code)
    return Down("exit")


def waitid_pidfd(fd: int) -> Any:
    """Non-reaping status of the process behind ``fd``; None if it cannot be read."""
    if not (_HAS_WAITID and hasattr(os, "P_PIDFD")):
        return None
    try:
        return os.waitid(os.P_PIDFD, fd, _WAIT_FLAGS)
    except OSError:  # ECHILD: not our child (or reaped); EINVAL: old kernel
        return None


def _owner_exit_code(agent: ProcessAgent) -> int | None:
    """The exit code the agent's owning object stored, waiting briefly for it; None if none."""
    types = agent_types()
    if isinstance(agent, types.popen):
        import subprocess  # imported already: agent is a Popen

        # Reaped by Popen.wait() in another thread: it stores the code right
        # after reaping, so wait briefly for it (bounded; rare).
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.wait(timeout=0.05)
        return agent.returncode
    if isinstance(agent, types.mp_process):
        # Race: another thread (a join(), is_alive()) reaped it and is about to
        # store the code; our own poll then gets ECHILD and answers None at once,
        # so join() cannot wait for it. Poll the stored code briefly (bounded).
        deadline = time.monotonic() + 0.5
        while (code := agent.exitcode) is None and time.monotonic() < deadline:
            time.sleep(0.001)  # sleep-ok: waiting, bounded, for another thread's store
        return code
    return None
