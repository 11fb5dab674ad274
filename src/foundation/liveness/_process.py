"""OS processes: identity, liveness and exit status, without reaping.

Everything here is non-blocking and never reaps a child: exit status is read
with ``waitid(..., WEXITED | WNOHANG | WNOWAIT)``, so ``Popen.wait()`` and
``Process.join()`` keep working for their owners. Zombies count as dead.

Nothing here ever calls a ``Popen``'s ``poll()``/``wait()`` or a
``multiprocessing.Process``'s ``exitcode``/``is_alive()``: those reap, or
(forkserver) read the status from the sentinel pipe, which only one reader
may do (two readers race: the loser gets EOF and multiprocessing stores 255
as the OWNER's ``exitcode``). When the status cannot be read here (a
forkserver child is not our child; a child reaped by other code: a SIGCHLD
handler, ``waitpid(-1)``, SIGCHLD ignored), only what the owner's object
stored (``returncode``) is used, and the death is told as ``Down("exit")``
with ``exit_code=None`` if the owner stores nothing in time; a forkserver
child's status the owner left unread that long is read here then, once (see
``owner_down``): one library thread at a time, so the managers watching the
same process (a registry's and the user's own ``monitor()``, both sides of a
``MigratingRegistry``) never race each other for the pipe (before, one of
them could get EOF: 255 in its ``Down`` and in the owner's ``exitcode``).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, TypeAlias

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
    "owner_down",
    "polled_down",
    "waitid_pidfd",
]


_HAS_WAITID = hasattr(os, "waitid")
_WAIT_FLAGS = (os.WEXITED | os.WNOHANG | os.WNOWAIT) if _HAS_WAITID else 0


def _read_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) from /proc/<pid>/stat, None if gone.

    Raises as ``_read_stat3``.
    """
    stat = _read_stat3(pid)
    return None if stat is None else (stat[0], stat[2])


def _read_stat3(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) from /proc/<pid>/stat, None if gone.

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
    # after the LAST ')'. Then field 3 is the state, 4 the parent, 22 the start time.
    fields = data[data.rindex(b")") + 2 :].split()
    return fields[0].decode("ascii"), int(fields[1]), int(fields[19])


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

# How long the owner of a process whose status only it can read is given to
# store its exit code, from the death (see owner_down). A fork/spawn child's
# owner stores the code right after it reaps (the same thread, microseconds;
# longer only if the reaping thread loses the CPU or the GIL); a forkserver
# child's only once the owner calls join()/is_alive()/exitcode (or
# multiprocessing's own cleanup at the next start()/active_children()).
_REAP_STORE_WAIT = 0.1
_OWNER_WAIT = 0.5

# exit_down's answer for a multiprocessing.Process seen dead whose status
# neither this library nor (yet) its owner read; compared by identity.
_UNREAD_EXIT = Down("exit")

# The library's record of a Popen or multiprocessing.Process, kept on it.
_RECORD = "_foundation_process"

# Held while the library reads a forkserver child's status pipe (owner_down,
# past the owner's deadline). Every manager watching the process reaches that
# deadline on its own poller thread, and multiprocessing's forkserver
# Popen.poll() is not thread-safe: two threads calling it at once both see the
# pipe readable, one reads the code and the other gets EOF and stores 255 (in
# the Down it answers and as the owner's exitcode; the last store wins). One
# lock for all processes: taken only then, for a read that never blocks.
_FORKSERVER_READ = threading.Lock()


def _new_read_lock_after_fork() -> None:
    """``os.register_at_fork(after_in_child=...)``: a lock a parent thread held
    at the fork stays held for ever in the child; the child gets a new one."""
    global _FORKSERVER_READ
    _FORKSERVER_READ = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_read_lock_after_fork)


class _Owned:
    """What the library keeps of a ``Popen`` or ``multiprocessing.Process``.

    ``popen``: the object whose ``returncode`` the owner stores (the Popen
    itself; a Process's inner ``_popen``, held so its code is still read
    after the owner's ``close()``, which drops ``Process._popen``).
    ``start``: the process's identity (start time in clock ticks) at first
    sight, -1 if it was not (or no longer) ours then, None without /proc.
    ``deadline``: once a death was seen whose status only the owner can
    read, the monotonic time until which it may still store it.
    """

    __slots__ = ("deadline", "forkserver", "is_popen", "pid", "popen", "start")

    def __init__(self, popen: Any, *, is_popen: bool, forkserver: bool) -> None:
        self.popen = popen
        self.pid: int = popen.pid
        self.is_popen = is_popen  # a subprocess.Popen (else a Process's inner popen)
        self.forkserver = forkserver
        self.deadline: float | None = None
        self.start: int | None = None
        if not _PROC_OK:
            return
        if popen.returncode is not None:
            self.start = -1  # reaped by its owner already
            return
        stat = _read_stat3(self.pid)
        # A Popen's or a fork/spawn Process's process is our child (its
        # parent is this process) until reaped: a process at that pid with
        # another parent took the pid over after the owner's child was reaped
        # behind its back. A forkserver child's parent is the forkserver.
        # Reuse by ANOTHER child of ours before this first sight cannot be
        # told (nothing records when the Popen started): it passes.
        if stat is None or stat[0] == "X" or (not forkserver and stat[1] != os.getpid()):
            self.start = -1
        else:
            self.start = stat[2]

    def same(self, *, zombie: bool) -> bool:
        """True if the pid still names the process seen at first sight
        (a zombie counts only if ``zombie``)."""
        start = self.start
        if start is None:
            return _kill0(self.pid)
        if start == -1:
            return False
        stat = _read_stat(self.pid)
        return stat is not None and stat[1] == start and (zombie or stat[0] not in "ZX")


def _owned(agent: Any) -> _Owned | None:
    """The record of a Popen or a started multiprocessing.Process (made at
    first sight); None for a Process never started (or closed before)."""
    record: _Owned | None = agent.__dict__.get(_RECORD)
    if record is not None:
        return record
    if isinstance(agent, agent_types().popen):
        record = _Owned(agent, is_popen=True, forkserver=False)
    else:
        popen = getattr(agent, "_popen", None)
        if popen is None:
            return None
        fs = type(popen).__module__ == "multiprocessing.popen_forkserver"
        record = _Owned(popen, is_popen=False, forkserver=fs)
    # Race: two threads may look first at once; setdefault keeps one record.
    stored: _Owned = agent.__dict__.setdefault(_RECORD, record)
    return stored


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


def _popen_down(rc: int) -> Down:
    """The Down of a Popen whose ``returncode`` is ``rc``.

    A Popen whose child was reaped by someone else stores 0 when its own
    ``waitpid`` fails with ECHILD (``subprocess``'s ``_try_wait`` and
    ``_internal_poll``), whatever the child's real status was. With SIGCHLD
    ignored every child is reaped by the kernel, so a 0 can only be that
    guess: ``Down("exit")``, code unknown. Otherwise (a SIGCHLD handler or a
    thread calling ``waitpid(-1)``) a 0 stored by the owner's ``wait()`` after
    the child was reaped elsewhere cannot be told from a real exit 0:
    ``"normal"``. A non-zero code is always real.
    """
    if rc == 0 and signal.getsignal(signal.SIGCHLD) is signal.SIG_IGN:
        return Down("exit")
    return _down_from_returncode(rc)


def _waitid_pid(pid: int) -> Any:
    """Non-reaping status of child ``pid``: None while running.

    Raises ChildProcessError if ``pid`` is not (or no longer) our child.
    """
    if not _HAS_WAITID:
        raise ChildProcessError(pid)
    return os.waitid(os.P_PID, pid, _WAIT_FLAGS)


def exit_down(agent: ProcessAgent) -> Down | None:
    """The agent's Down if it has exited (zombie included), None while it runs.

    Non-blocking and non-reaping where the platform allows it; it never
    waits for the owner to store an exit code (a death whose code is not
    known yet is ``Down("exit")``; for a multiprocessing.Process that is the
    constant ``_UNREAD_EXIT``, which ``polled_down`` turns into the wait).
    """
    if isinstance(agent, OSProcess):
        return _os_process_exit_down(agent)
    record = _owned(agent)
    if record is None:
        return NOPROC  # a Process never started: it cannot die later
    return _owned_exit_down(record)


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


def _owned_exit_down(record: _Owned) -> Down | None:
    """``exit_down`` for a Popen or a started multiprocessing.Process."""
    code = _stored_code(record)
    if code is not None:
        return code
    try:
        result = None if record.forkserver else _waitid_pid(record.pid)
    except ChildProcessError:
        # Reaped, and not (yet) stored by the owner: by other code, or by the
        # owner's own wait on another thread about to store it.
        return _unread_down(record)
    if result is None and not record.forkserver:
        # A running child of ours at that pid. Not checked against the
        # identity (a /proc read: 10x the cost of is_alive() on this hot
        # path): a child reaped behind the owner's back whose pid another
        # child of ours took over passes for it (polling fallback; a pidfd,
        # once open, refers to one process).
        return None
    if not record.same(zombie=result is not None):
        # A forkserver child that is gone or a zombie (not ours: its status
        # is the forkserver's to read), or a pid another process took over.
        return _unread_down(record)
    return None if result is None else _down_from_siginfo(result)


def _stored_code(record: _Owned) -> Down | None:
    """The Down from the code the owner's object stored, None if none yet."""
    rc = record.popen.returncode
    if rc is None:
        return None
    return _popen_down(rc) if record.is_popen else _down_from_returncode(rc)


def _unread_down(record: _Owned) -> Down | None:
    """The Down of a process known dead whose status this library cannot
    read: the owner's stored code, else ``Down("exit")`` (``_UNREAD_EXIT``
    for a multiprocessing.Process); None (look again) while a Popen's own
    ``wait()`` holds its lock, storing the code."""
    code = _stored_code(record)
    if code is not None:
        return code
    if _popen_reaping(record):
        return None
    # Race: read last, the owner may have stored the code meanwhile. A Popen
    # whose lock was free did not reap the child: its status is lost. A
    # Process's owner may be about to store it (see polled_down): _UNREAD_EXIT.
    return _stored_code(record) or (Down("exit") if record.is_popen else _UNREAD_EXIT)


def _popen_reaping(record: _Owned) -> bool:
    """True while a Popen's ``wait()``/``poll()`` holds its ``_waitpid_lock``.

    Popen reaps only under that lock and stores ``returncode`` before
    releasing it: after a ``waitid`` of ours failed with ECHILD, a free lock
    read BEFORE a ``returncode`` of None proves this Popen did not reap the
    child (someone else did; its status is lost).
    """
    lock = getattr(record.popen, "_waitpid_lock", None)
    return lock is not None and lock.locked()


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
    # check above and pidfd_open. Re-check identity (the start time recorded
    # at first sight, for every kind) now that the fd refers to one process.
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
    record = _owned(agent)
    return record is not None and record.popen.returncode is None and record.same(zombie=True)


def pidfd_readable(fd: int) -> bool:
    """True if the pidfd reports its process as exited (zero-timeout poll)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def down_from_pidfd(agent: ProcessAgent, fd: int) -> Down | None:
    """Exit status of the (exited) process behind ``fd``, without reaping it.

    For a process that is not our child the status cannot be read: the result
    is ``Down("exit", exit_code=None)`` unless the owning object stored it,
    or None while the owner may still store it (see ``down_from_status``).
    """
    return down_from_status(agent, waitid_pidfd(fd))


def down_from_status(agent: ProcessAgent, result: Any) -> Down | None:
    """``down_from_pidfd`` once ``waitid_pidfd`` answered ``result`` (no fd needed:
    the manager reads the status under its lock). Never waits.

    None: the status is not readable here and the owner may still store it
    (a multiprocessing.Process: a forkserver child, or one reaped by other
    code; a Popen whose own ``wait()`` is reaping it right now). The caller
    must not wait for it on the selector thread: it hands the watch to a
    poller whose check is ``owner_down``, which sets the deadline.
    """
    if result is not None:
        return _down_from_siginfo(result)
    if isinstance(agent, OSProcess):
        return Down("exit")  # not our child: only its parent can read the status
    record = _owned(agent)
    if record is None:
        return Down("exit")  # closed before we first saw it; cannot happen once watched
    down = _stored_code(record)
    if down is not None:
        return down
    if record.is_popen and not _popen_reaping(record):
        # Race: our read failed (ECHILD) BEFORE this lock check, and the lock
        # was free, so this Popen had not reaped the child (see
        # _popen_reaping): someone else did. Its status is lost; Popen will
        # store a guessed 0 when asked. Read the code last in case it came.
        return _stored_code(record) or Down("exit")
    return None


def owner_down(agent: ProcessAgent) -> Down | None:
    """The Down of a process whose death was seen but whose status only its
    owner can read (``down_from_status`` answered None); None while the
    owner may still store it.

    The owner's code is read from ``returncode`` only (never ``poll()``, which
    for a forkserver child consumes the status from the sentinel pipe: see
    the module docstring). Given ``_OWNER_WAIT`` s (a forkserver child) or
    ``_REAP_STORE_WAIT`` s (others) from the first call, then
    ``Down("exit")`` with ``exit_code=None`` (a forkserver child's status
    still unread by its owner is read then, from the pipe, by one manager:
    the real code, for every manager and the owner; see
    ``_read_forkserver_status``). Call it only once the death was seen: on
    a live Popen or Process it would still answer ``Down("exit")`` past the
    deadline (an OSProcess is checked as ``exit_down`` does).

    Example:
        >>> import subprocess
        >>> p = subprocess.Popen(["true"]); _ = p.wait()
        >>> owner_down(p).reason
        'normal'
    """
    if isinstance(agent, OSProcess):
        return exit_down(agent)
    record = _owned(agent)
    if record is None:
        return NOPROC
    down = _stored_code(record)
    if down is not None:
        return down
    now = time.monotonic()
    if record.deadline is None:
        # Race: managers may hand the same process over at once: the first
        # deadline set wins, close enough (they are set microseconds apart).
        record.deadline = now + (_OWNER_WAIT if record.forkserver else _REAP_STORE_WAIT)
    if now < record.deadline:
        return None
    down = _stored_code(record)
    if down is None and record.forkserver:
        down = _read_forkserver_status(record)
    return down or Down("exit")


def polled_down(agent: ProcessAgent) -> Down | None:
    """The process poller's check (the polling fallback, and deaths the pidfd
    path could not read): ``exit_down``, except that a multiprocessing.Process
    known gone (``_UNREAD_EXIT`` is answered for no other) whose
    status only its owner can read is given the owner's time
    (``owner_down``: the stored code, a forkserver child's status read once,
    else ``Down("exit")`` past the deadline).

    Race: multiprocessing reaps a fork child in ``Popen.poll()`` (its own
    cleanup at the next ``start()``, or ``is_alive()``, ``join()``) and stores
    the code a few bytecodes later; a look in between meets ECHILD and no code
    (before, a clean exit 0 was told as ``Down("exit")``, code unknown: CI,
    once in ~6,000 tests).

    Example:
        >>> import subprocess
        >>> p = subprocess.Popen(["false"]); _ = p.wait()
        >>> polled_down(p).exit_code
        1
    """
    down = exit_down(agent)
    if down is _UNREAD_EXIT:
        return owner_down(agent)
    return down


def _read_forkserver_status(record: _Owned) -> Down | None:
    """The Down from a forkserver child's status, read from its pipe if no
    one stored it yet; None if it cannot be read (closed sentinel, odd popen).

    The owner has not read the status in ``_OWNER_WAIT`` s since the death (an
    owner blocked in join() reads it at once): it is read here, once, so the
    Down has the real code; whoever reads it stores it, and every later
    ``poll()`` of the owner answers from it.

    Races: every manager watching the process calls this from its own poller
    thread, at about the same moment (the deadline is shared): the
    check-then-read runs under ``_FORKSERVER_READ``, so a second manager finds
    the code the first stored instead of reading the pipe again (EOF: 255).
    The owner's own ``poll()`` (``exitcode``, ``is_alive()``, ``join()``) does
    not take that lock: an owner whose poll() starts at this very moment could
    still lose the read (its exitcode 255), a window of microseconds once the
    owner left the status unread for ``_OWNER_WAIT`` s, instead of every
    join() racing the death.
    """
    with _FORKSERVER_READ:
        # Read again under the lock: another manager may have stored it meanwhile.
        down = _stored_code(record)
        if down is None:
            with contextlib.suppress(Exception):  # closed sentinel, odd popen: no code
                record.popen.poll()
            down = _stored_code(record)
    return down


def waitid_pidfd(fd: int) -> Any:
    """Non-reaping status of the process behind ``fd``; None if it cannot be read."""
    if not (_HAS_WAITID and hasattr(os, "P_PIDFD")):
        return None
    try:
        return os.waitid(os.P_PIDFD, fd, _WAIT_FLAGS)
    except OSError:  # ECHILD: not our child (or reaped); EINVAL: old kernel
        return None
