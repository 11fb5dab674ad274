"""One run of one child, per kind: launch it, see it become ready, see it end,
stop it. Everything here runs on the supervisor's event loop, except the body
of a thread child.

Every run resolves two futures: ``ready`` (the start handshake) and ``exited``
(a :class:`ChildExit`, exactly once, however the run ends). ``shutdown`` is
idempotent: concurrent callers share one stop sequence; ``force`` (the
runner's second signal) kills at once what can be killed.

OS-process children die with their parent, even when the parent is SIGKILLed
(Linux only; elsewhere nothing is armed): each child asks the kernel for
SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``), an argv child in a
``preexec_fn`` between fork and exec, a ``multiprocessing`` child first thing
in its entry point. Caveats:

- The kernel sends the signal when the *thread* that started the child ends,
  not the process: here that is the supervisor's event-loop thread, which
  outlives its children (they are stopped before its loop ends).
- ``preexec_fn`` runs in the forked child of a threaded parent: it only calls
  ``prctl``, ``getppid`` and ``kill`` (no import, no lock, no logging), and
  glibc's fork handlers reset malloc's locks, so it cannot deadlock on a lock
  another thread held at fork time. Before it, Python runs every
  ``os.register_at_fork(after_in_child=...)`` hook in the child: the standard
  library's and this package's (``foundation._fork``: module locks reset,
  inherited flag stores and registries marked closed; liveness, Redis
  Sentinel), which take no lock, do no I/O and log nothing (unless one
  fails). It does rule out the ``vfork`` fast path.
- Grandchildren (a shell's children) are not covered by the parent-death
  signal: only the direct child. An argv child leading its own process group
  (the default, below), and every multiprocessing child (it makes its group
  first thing), is stopped as a group instead: SIGTERM and SIGKILL go
  to the whole group, and whatever is left in it when the child ends is
  SIGKILLed (before the child is reaped, so the group id cannot have been
  reused; not for an argv child watched by polling, without pidfd: the poll
  reaps it). A grandchild that left the group (``setsid``, a daemon's double
  fork) is not followed.
- A child reaped by other code (SIGCHLD ignored, a ``waitpid(-1)``
  elsewhere) frees its pid at once: signals go through the child's pidfd
  (never to a process that took the pid since), and its lost status is
  ``"exit"`` with no code (see ``_ProcessRun._exit_of``).
- Each OS-process child is put in a process group of its own, so a terminal's
  Ctrl-C (sent to the whole foreground group) reaches the supervisor alone,
  which then stops the children in order. An argv child that must read the
  terminal can stay in the terminal's group with ``kwargs={"process_group":
  None}`` (a background group reading the terminal is stopped by SIGTTIN).
  A multiprocessing child makes its group only after its bootstrap; it is
  spawned with SIGINT blocked until then (``_hold_sigint``).
- Interpreter exit with a tree running (the main thread returned):
  ``multiprocessing``'s exit handler SIGTERMs the multiprocessing children.
  That death is no crash (the run counts as stopped: no report, no
  restart), and no multiprocessing child is spawned once the exit has begun
  (``interpreter_exiting``): it would die mid-bootstrap with a raw traceback.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal as signal_module
import sys
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, cast

from foundation import _fork
from foundation.errors import RestartIntensityExceeded, ShutdownError
from foundation.liveness import Down, spawn_thread
from foundation.liveness._core import NORMAL, exception_down
from foundation.liveness._process import down_from_status, owner_down, waitid_pidfd
from foundation.liveness._threads import record_own_end
from foundation.supervision import _reports as reports
from foundation.supervision._child import StopRequested
from foundation.supervision._context import (
    READY_FD_ENV,
    ChildContext,
    _loop_signal,
    _process_entry,
)
from foundation.supervision._spec import ChildExit, ChildSpec

if TYPE_CHECKING:
    # Imported in the functions that use them (`import foundation` stays cheap).
    import asyncio
    import multiprocessing.process
    import subprocess

    from foundation.supervision._supervisor import Supervisor

_HAVE_PIDFD = sys.platform == "linux" and hasattr(os, "pidfd_open")
_POLL_INTERVAL = 0.02  # process exit polling where pidfd is unavailable
_KILL_GRACE = 0.1  # s a task cancelled again after its shutdown timeout gets to end
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PIDFD_SIGNAL_PROCESS_GROUP = 4  # <linux/pidfd.h>, Linux 6.9+
_NO_WAIT_STATUS = (os.WEXITED | os.WNOHANG | os.WNOWAIT) if hasattr(os, "waitid") else 0


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (None where unavailable)."""
    if sys.platform != "linux":
        return None
    import ctypes  # here, not at the top: only process children need it

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return cast("Callable[..., int]", prctl)


_UNRESOLVED: Any = object()
_prctl: Any = _UNRESOLVED


def resolve_prctl() -> Callable[..., int] | None:
    """``prctl``, resolved on first use and kept (None where unavailable).

    Resolved lazily, so that ``import foundation`` does not import ctypes. A
    parent calls it before forking an argv child, so the forked child finds
    it resolved and imports nothing between fork and exec. Race: two threads
    may resolve it at once; both get the same libc function, the last
    assignment wins, and either value is correct.
    """
    global _prctl
    if _prctl is _UNRESOLVED:
        _prctl = _load_prctl()
    return cast("Callable[..., int] | None", _prctl)


def die_with_parent(parent: int) -> None:
    """In a child process: be SIGKILLed when ``parent`` (its parent's pid) dies.

    A no-op where ``prctl`` is unavailable (not Linux). Safe between fork and
    exec once the parent has called :func:`resolve_prctl`: no allocation
    beyond ctypes' argument conversion, no lock, no import.
    """
    prctl = resolve_prctl()
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(signal_module.SIGKILL), 0, 0, 0)
    # Race: the parent may have died between fork and the prctl above; the
    # kernel then never sends the signal, but this child has been reparented
    # (to init or a subreaper), so its parent pid no longer matches: die now,
    # as the signal would have made it.
    if os.getppid() != parent:
        os.kill(os.getpid(), signal_module.SIGKILL)


def interpreter_exiting() -> bool:
    """Whether this interpreter's exit has begun: ``multiprocessing``'s exit
    handler (which SIGTERMs every daemonic child, ours too) has started, or
    the interpreter is finalizing."""
    util = sys.modules.get("multiprocessing.util")
    return sys.is_finalizing() or bool(getattr(util, "_exiting", False))


def _preexec(parent: int, then: Callable[[], Any] | None) -> None:
    """An argv child's ``preexec_fn``: arm the parent-death signal, then the caller's."""
    die_with_parent(parent)
    if then is not None:
        then()


def _process_group_entry(parent: int, entry: tuple[Any, ...], sigint_held: bool = False) -> None:
    """Body of a multiprocessing child: die with the parent, leave the terminal's
    process group, then run ``_process_entry(*entry)`` (picklable: module level).

    ``sigint_held``: the parent spawned it with SIGINT blocked (see
    :func:`_hold_sigint`); released once the child has its own group.
    """
    die_with_parent(parent)
    with contextlib.suppress(OSError):  # already a group leader: nothing to leave
        os.setpgid(0, 0)
    if sigint_held:
        _release_sigint()
    _process_entry(*entry)


_CAN_HOLD_SIGINT = hasattr(signal_module, "pthread_sigmask") and hasattr(
    signal_module, "sigtimedwait"
)


def _hold_sigint() -> bool:
    """Block SIGINT in this thread while it spawns a multiprocessing child;
    whether it was not blocked already (then :func:`_unhold_sigint` undoes it).

    The child inherits the mask (fork, then exec): a terminal's Ctrl-C that
    reaches it while it bootstraps (~0.5 s, re-importing ``__main__``) in the
    terminal's process group stays pending, and is discarded once it has left
    that group, instead of raising ``KeyboardInterrupt`` there. Only this
    thread's mask changes: meanwhile the process gets its SIGINT in another
    thread, or once this one unblocks it.
    """
    if not _CAN_HOLD_SIGINT:
        return False
    from multiprocessing import resource_tracker

    # Started first (spawn needs it): starting it unblocks SIGINT in this
    # thread afterwards, which would undo the block below.
    resource_tracker.ensure_running()
    sigint = signal_module.SIGINT
    return sigint not in signal_module.pthread_sigmask(signal_module.SIG_BLOCK, {sigint})


def _unhold_sigint(held: bool) -> None:
    if held:
        signal_module.pthread_sigmask(signal_module.SIG_UNBLOCK, {signal_module.SIGINT})


def _release_sigint() -> None:
    """In a child spawned with SIGINT held, now in a group of its own: discard
    the SIGINT pending from the terminal's group (the supervisor got that
    Ctrl-C too, and stops the tree), then unblock it.

    Race: a SIGINT sent to this pid alone before this point is discarded too.
    """
    signal_module.sigtimedwait({signal_module.SIGINT}, 0)
    _unhold_sigint(True)


# Which supervision loop the current thread is a thread child of (set in the
# child's own thread): a stop() called from there must not wait for itself.
_thread_child = threading.local()


def in_thread_child_of(loop: asyncio.AbstractEventLoop) -> bool:
    """True when called from the body of a thread child supervised on ``loop``
    (at any depth of the tree: nested supervisors share their parent's loop)."""
    return getattr(_thread_child, "loop", None) is loop


def _is_ctrl_c(exc: KeyboardInterrupt) -> bool:
    """Whether ``exc`` is the operator's interrupt rather than a child's own raise.

    Signals are handled in the main thread only; there, a ``KeyboardInterrupt``
    comes from a signal when Python's default SIGINT handler is installed (it
    raises it between any two bytecodes) or when ``asyncio.run``'s handler
    (``Runner._on_sigint``) raised it. A loop in another thread never gets one.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal_module.getsignal(signal_module.SIGINT) is signal_module.default_int_handler:
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    return code is not None and code.co_name == "_on_sigint" and "asyncio" in code.co_filename


_SIGTERM = int(signal_module.SIGTERM)


def _clean_stop(exit: ChildExit) -> bool:
    """Whether ``exit`` ends a run cleanly once its stop was asked for.

    Clean: it returned, was cancelled (by the stop, or by a loop cancelling
    every task as it ends), shut down; a process ended by SIGTERM, the signal
    the stop sends (also when it came from elsewhere first: a service
    manager signals every process of the service), or exiting with 128 +
    SIGTERM (the shells' and the JVM's way to say so); a task or thread
    ending by ``sys.exit()`` / ``SystemExit(0)`` (as a process exiting 0; a
    thread's ``SystemExit`` is Python's silent end of it). Anything else (an
    exception, another exit code or signal) is OTP's ``shutdown_error``. A
    process whose exit status is unknown (``"exit"`` without a code: reaped by
    another waiter, see :meth:`_ProcessRun._exit_of`) ended after its stop was
    asked for, and nothing shows it failed: no ``shutdown_error`` either.
    """
    if exit.reason in ("normal", "shutdown", "cancelled", "abandoned"):
        return True
    if isinstance(exit.exception, SystemExit) and exit.exception.code in (None, 0):
        return True
    if exit.reason == "killed":
        return exit.signal == _SIGTERM
    return exit.reason == "exit" and exit.exit_code in (None, 128 + _SIGTERM)


class Run:
    """Base class of a child run."""

    def __init__(self, spec: ChildSpec, supervisor: str, attempt: int) -> None:
        import asyncio

        self.spec = spec
        self.name = f"{supervisor}/{spec.id}"
        self.label = self.name  # its supervisor sets the metric label (Supervisor._label)
        self.supervisor = supervisor
        self.attempt = attempt
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.exited: asyncio.Future[ChildExit] = self.loop.create_future()
        self.started_at = self.loop.time()
        self.stopping = False  # set when the supervisor itself stops this run
        self.discarded = False  # set when its start failed: its exit means nothing
        self.forced = False  # set by force(): a kill, already reported, no stop error
        # How the run ended, when it ended otherwise than cleanly once its stop
        # was asked for (see _clean_stop): for its supervisor's shutdown_error.
        self.stop_error: ChildExit | None = None
        self._shutdown: asyncio.Task[ChildExit] | None = None

    # ------------------------------------------------------------------ subclass API
    handle: Any = None

    @property
    def agent(self) -> Any:
        """What the registry is given for this run (monitorable)."""
        return self.handle

    async def launch(self) -> None:
        """Spawn the child; readiness and exit arrive through the futures."""
        raise NotImplementedError

    async def _stop(self, timeout: float | None) -> ChildExit:
        raise NotImplementedError

    # ------------------------------------------------------------------ common
    def _exit(self, exit: ChildExit) -> None:
        if not self.exited.done():
            self.exited.set_result(exit)

    def shutdown(self, timeout: float | None) -> asyncio.Task[ChildExit]:
        """Stop this run (once); the task's result is how it ended."""
        self.stopping = True
        if self._shutdown is None:
            self._shutdown = self.loop.create_task(
                self._stop_once(timeout), name=f"shutdown {self.name}"
            )
        return self._shutdown

    async def _stop_once(self, timeout: float | None) -> ChildExit:
        if self.exited.done():  # it ended on its own first: report how
            # Race: a crash just before the stop reached it; its exit event is
            # dropped (the run is stopping), so this is where it is seen.
            exit = self.exited.result()
            self._stopped_cleanly(exit)
            return exit
        return await self._stop(timeout)

    async def _stopped(self) -> ChildExit:
        """The exit of a run that ended once asked to stop: ``"shutdown"``, or
        its own exit when that was not a clean stop (kept as ``stop_error``)."""
        import asyncio

        if not self.exited.done():
            # Race: a task is done, its done callback (which resolves exited)
            # is still scheduled: it runs in the next loop turn.
            await asyncio.wait({self.exited})
        exit = self.exited.result()
        return ChildExit("shutdown") if self._stopped_cleanly(exit) else exit

    def _stopped_cleanly(self, exit: ChildExit) -> bool:
        """Whether ``exit`` is a clean end of this stopped run; if not, it is
        kept as ``stop_error`` (a forced run's end is no error: it was killed)."""
        if self.forced or _clean_stop(exit):
            return True
        self.stop_error = exit
        return False

    async def _wait_exit(self, timeout: float | None) -> bool:
        """Wait for the run to end, at most ``timeout`` seconds; True if it did."""
        import asyncio

        done, _ = await asyncio.wait({self.exited}, timeout=timeout)
        return bool(done)

    def force(self) -> list[str]:
        """Kill now, without waiting, whatever of this run can be killed (the
        runner's forced stop); its exit is no longer acted on (no restart).
        Returns what was done, each with its verb: ``"killed process app/p
        (pid 7)"``, ``"cancelled task app/t"`` (it may ignore it and run on),
        ``"asked thread app/th to stop"`` (it cannot be killed)."""
        self.stopping = True
        if self.exited.done():
            return []
        self.forced = True
        return self._force()

    def _force(self) -> list[str]:
        raise NotImplementedError

    def _in_process_context(self) -> ChildContext:
        """The context of a child run in this process (task, thread); ready at
        once unless its spec has it call ``ready()`` itself."""
        ctx = ChildContext(
            self.spec.id, self.supervisor, self.attempt, _loop_signal(self.loop, self.ready)
        )
        if not self.spec.explicit_ready:
            self.ready.set_result(None)
        return ctx


class TaskRun(Run):
    """A coroutine function run as an asyncio task; stopped by cancellation."""

    handle: asyncio.Task[Any]

    async def launch(self) -> None:
        import asyncio

        spec = self.spec
        self.ctx = self._in_process_context()
        coro = spec.start(self.ctx, *spec.args, **spec.kwargs)  # type: ignore[operator]
        if not asyncio.iscoroutine(coro):  # as create_task(coro) refused it: a failed start
            raise TypeError(f"a coroutine was expected, got {coro!r}")
        self._escaped: BaseException | None = None
        self._interrupted = False
        self.handle = self.loop.create_task(self._contained(coro), name=self.name)
        self.handle.add_done_callback(self._done)

    async def _contained(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run the child's coroutine; keep its ``KeyboardInterrupt``/``SystemExit`` in.

        asyncio re-raises those two out of the event loop (``Task.__step``):
        under ``run()`` or ``asyncio.run`` a child calling ``sys.exit()`` (or
        raising ``KeyboardInterrupt``) ended the whole program, the rest of
        the tree unstopped and the exit status the child's (0 for
        ``SystemExit()``). Here it is that child's exit, as any exception.

        Except the operator's Ctrl-C: a ``KeyboardInterrupt`` that Python's
        SIGINT handler (or ``asyncio.run``'s) raised in the main thread lands in
        whatever code runs, a busy child's as well; it is the program's, not
        the child's, and goes on out of the loop (see :func:`_is_ctrl_c`).
        """
        try:
            return await coro
        except KeyboardInterrupt as exc:
            if _is_ctrl_c(exc):
                self._interrupted = True
                raise
            self._escaped = exc
            return None
        except SystemExit as exc:
            self._escaped = exc
            return None

    def _done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self._exit(ChildExit("cancelled"))
        elif self._interrupted:  # the program is being interrupted: not a crash
            task.exception()  # retrieved: it left the loop as the program's
            self._exit(ChildExit("shutdown"))
        elif self._escaped is not None:
            self._exit(ChildExit("exception", exception=self._escaped))
        elif (exc := task.exception()) is not None:
            self._exit(ChildExit("exception", exception=exc))
        else:
            self._exit(ChildExit("normal"))

    async def _stop(self, timeout: float | None) -> ChildExit:
        import asyncio

        self.ctx.stopping.set()
        began = self.loop.time()
        # Race: a loop cancelling every task (asyncio.run ending) cancelled this
        # one already: a second cancel would cut its cleanup (a flush after its
        # CancelledError) short. It has its cancellation; wait for it as for ours.
        if not self.handle.cancelling():
            self.handle.cancel()
        if timeout == 0:  # brutal_kill: the cancellation, delivered, is all it gets
            for _ in range(3):  # the task's step, its done callback, _done's result
                await asyncio.sleep(0)
            if self.exited.done():
                return await self._stopped()
            # Not waited for: a cleanup that awaits runs on, abandoned.
            return self._abandoned(0.0)
        # Race: a child that blocks the loop (time.sleep in its cleanup) past
        # its timeout ends in the loop turn its timer fires in; which of the
        # two asyncio.wait sees first is chance. Its task is done either way:
        # it stopped (late, reported below), it was not abandoned.
        if await self._wait_exit(timeout) or self.handle.done():
            self._report_late(timeout, began)
            return await self._stopped()
        assert timeout is not None  # (None: waited until it ended)
        return await self._cancel_again(timeout)

    def _report_late(self, timeout: float | None, began: float) -> None:
        """A stop that ended past its ``timeout`` (it blocked the loop): say so."""
        took = self.loop.time() - began
        if timeout is not None and took > timeout:
            reports.shutdown_late(self.supervisor, self.spec.id, "task", timeout=timeout, took=took)

    async def _cancel_again(self, timeout: float) -> ChildExit:
        """Past its shutdown ``timeout``: cancel it again, OTP's kill (a second
        cancellation interrupts a cleanup that awaits, so that its restart does
        not run beside it), and wait at most ``_KILL_GRACE`` more seconds for
        it to end; one still running then swallows its cancellations."""
        self.handle.cancel()
        # Race: as in _stop, a task done in the turn the grace ends is not abandoned.
        if await self._wait_exit(_KILL_GRACE) or self.handle.done():
            reports.shutdown_timeout(
                self.supervisor, self.spec.id, "task", timeout=timeout, action="cancelled again"
            )
            return ChildExit("killed")
        return self._abandoned(timeout)

    def _abandoned(self, timeout: float) -> ChildExit:
        # A task that swallows its cancellation cannot be stopped by force.
        reports.shutdown_timeout(
            self.supervisor, self.spec.id, "task", timeout=timeout, action="abandoned task"
        )
        return ChildExit("abandoned")

    def _force(self) -> list[str]:
        self.ctx.stopping.set()
        self.handle.cancel()
        # Only cancelled: a task that swallows its cancellation runs on.
        return [f"cancelled task {self.name}"]


class ThreadRun(Run):
    """A plain function run in a daemon thread; stopped by ``ctx.stopping``.

    A thread cannot be killed: one still running after its shutdown timeout is
    abandoned (it stays a daemon thread, so it cannot block interpreter exit)
    and reported as ``"abandoned"``.
    """

    handle: threading.Thread

    async def launch(self) -> None:
        self.ctx = self._in_process_context()
        # spawn_thread: a daemon thread whose end a registry sees exactly (no polling).
        self.handle = spawn_thread(self._body, name=self.name, daemon=True)

    def _body(self) -> None:
        import asyncio

        spec = self.spec
        _thread_child.loop = self.loop
        try:
            result = spec.start(self.ctx, *spec.args, **spec.kwargs)  # type: ignore[operator]
            if asyncio.iscoroutine(result):
                result.close()
                raise TypeError(f"thread child {spec.id!r} returned a coroutine: use kind='task'")
            exit = ChildExit("normal")
        except BaseException as exc:  # every way out of a child is reported, none escapes
            exit = ChildExit("exception", exception=exc)
        # Race: once told of this exit, the supervisor may restart the child
        # (or finish its stop) at once, while this thread still unwinds:
        # spawn_thread records the thread's end only after this function has
        # returned. The thread counted as alive meanwhile, so the next run's
        # register(key, current_thread()) of a key this run held was refused
        # (AlreadyRegistered: 3 restarts in 200).
        # Its end is recorded first (OTP: the process is dead before its
        # supervisor gets the EXIT): dead for is_alive() and every registry's
        # conflict check from here. Its death listeners (monitors: a registry
        # dropping its keys) are told after, as this function returns: the
        # supervisor does not wait for them, as they may wait for it (a
        # listener restarting this child); a registry whose listener has not
        # run yet finds the key's holder dead, and the next run takes it
        # (reason "down", with or without replace=True).
        # A crash is told as one (Down "exception", with the exception), as for
        # any spawn_thread target that raised; it used to be "normal" (caught here).
        record_own_end(NORMAL if exit.exception is None else exception_down(exit.exception))
        # RuntimeError: the loop is closed (an abandoned thread that ended late).
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._exit, exit)

    async def _stop(self, timeout: float | None) -> ChildExit:
        self.ctx.stopping.set()
        if await self._wait_exit(timeout):
            return await self._stopped()
        reports.thread_abandoned(
            self.supervisor,
            self.spec.id,
            thread_name=self.handle.name,
            still_running=_count_abandoned(self.supervisor, self.spec.id, self.handle),
        )
        return ChildExit("abandoned")

    def _force(self) -> list[str]:
        self.ctx.stopping.set()  # all one can do to a thread: ask
        # Not "left running": a thread that looks at ctx.stopping (a service's)
        # ends now; one that does not runs on as a daemon thread.
        return [f"asked thread {self.name} to stop"]


# The abandoned threads of each (supervisor name, child id), by name: a
# supervisor restarted by its parent is a new one with the same name, and a
# crash loop beside a child that ignores ctx.stopping abandons one more
# thread per restart. Weak: a finished thread drops out. Loop threads of
# several trees abandon at once: under the lock, unlocked in a forked child (a
# process child running a tree of its own would hang on one held at the fork).
_abandoned: dict[tuple[str, str], weakref.WeakSet[threading.Thread]] = {}
_abandoned_lock = threading.Lock()
_fork.unlock_after_fork(_abandoned_lock)


def _count_abandoned(supervisor: str, child: str, thread: threading.Thread) -> int:
    """Record ``thread`` as abandoned; how many abandoned runs of that child
    (this one included) are still running."""
    key = (supervisor, child)
    with _abandoned_lock:
        threads = _abandoned.setdefault(key, weakref.WeakSet())
        threads.add(thread)
        for done in [t for t in threads if not t.is_alive()]:
            threads.discard(done)
        return len(threads)


class _ProcessRun(Run):
    """Shared by both process flavours: SIGTERM, then SIGKILL after the timeout,
    to the child's own process group (``_group``, its pid) when it leads one.

    A signal goes only where the child provably still is. Other code may reap
    the child behind the supervisor's back (SIGCHLD ignored, also when
    inherited across exec; a thread calling ``waitpid(-1)``); its pid, so its
    group id, may then name an unrelated process. Where the child is watched
    through a pidfd, signals go through it (it names the child, never a later
    process with the same pid); else only while a non-reaping ``waitid``
    finds the child unreaped (see :meth:`_unreaped`).
    """

    _group: int | None = None

    def _child_pidfd(self) -> int | None:
        """The open pidfd on the child; None without one (polling, sentinel)."""
        raise NotImplementedError

    def _stored_code(self) -> int | None:
        """The exit code the process object stored (its wait reaped the child)."""
        raise NotImplementedError

    def _unreaped(self) -> bool:
        """Without a pidfd: True while the child is provably unreaped (its pid,
        and the group id it leads, cannot name another process).

        Race: the non-reaping ``waitid`` finds the pid a child of ours; one
        reaped elsewhere whose pid another child of ours took over passes
        (the pid space must wrap between that reap and this call), as does a
        reap between this check and the signal. A pidfd has no such window.
        """
        pid = self.handle.pid
        if pid is None or self._stored_code() is not None:
            return False
        if not _NO_WAIT_STATUS:
            return True  # no waitid here: the stored code is all there is to go by
        try:
            os.waitid(os.P_PID, pid, _NO_WAIT_STATUS)
        except ChildProcessError:  # reaped by someone else
            return False
        return True

    def _signal(self, signum: int) -> None:
        """``signum`` to the child's own group, else to the child alone; to
        nothing once the child was reaped by someone else (its pid is free)."""
        fd = self._child_pidfd()
        if fd is not None:
            self._signal_by_pidfd(fd, signum)
        elif self._unreaped() and not self._signal_group(signum):
            if signum == signal_module.SIGKILL:
                self.handle.kill()
            else:
                self.handle.terminate()

    def _signal_by_pidfd(self, fd: int, signum: int) -> None:
        """``signum`` through the child's pidfd: to the group it leads while it
        is in it, else (no such group, or it left it) to the child alone."""
        group = self._group
        if group is not None and _pidfd_signal_group(fd, group, signum) and self._in_group(fd):
            return
        with contextlib.suppress(ProcessLookupError):  # reaped (by anyone): nothing to reach
            signal_module.pidfd_send_signal(fd, signum)

    def _in_group(self, fd: int) -> bool:
        """Whether the child is in its own group still (a zombie answers too);
        True once it was reaped: there is nothing more to reach."""
        try:
            pgid = os.getpgid(self.handle.pid)
            # Race: the pid may name another process by now. Asked after, the
            # pidfd tells whether that answer was the child's (a reap is final).
            signal_module.pidfd_send_signal(fd, 0)
        except OSError:
            return True
        return pgid == self._group

    def _signal_group(self, signum: int) -> bool:
        """Without a pidfd, once :meth:`_unreaped` said yes: ``signum`` to the
        child's own group; True when that reached the child. False when there
        is no such group, or the child left it (it moved to another group: a
        shell with job control; or a multiprocessing child that has not made
        its group yet): the caller then signals the child itself, once."""
        if self._group is None:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._group, signum)
        try:
            return os.getpgid(self.handle.pid) == self._group  # a zombie still answers
        except OSError:  # reaped meanwhile by someone else: nothing more to reach
            return True

    def _sweep_group(self, pidfd: int | None) -> None:
        """The child has ended, not yet reaped by us: SIGKILL what is left in
        its own group (its grandchildren). Through its pidfd where there is one
        (on Linux 6.9+ also once another waiter reaped it: the group of the
        child's own pid, never one a later process with that pid leads)."""
        if self._group is None:
            return
        if pidfd is not None:
            _pidfd_signal_group(pidfd, self._group, signal_module.SIGKILL)
        elif self._unreaped():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._group, signal_module.SIGKILL)

    def _terminate(self) -> None:
        """SIGTERM to the group, else to the child alone (``Popen`` and
        ``multiprocessing`` processes both have ``terminate``/``kill``)."""
        self._signal(signal_module.SIGTERM)

    def _kill(self) -> None:
        """SIGKILL to the group, else to the child alone."""
        self._signal(signal_module.SIGKILL)

    async def _stop(self, timeout: float | None) -> ChildExit:
        if timeout == 0:  # brutal_kill
            reports.child_killed(self.supervisor, self.spec.id, "process", brutal=True)
        else:
            with contextlib.suppress(ProcessLookupError):
                self._terminate()
            if await self._wait_exit(timeout):
                return await self._stopped()
            assert timeout is not None
            reports.shutdown_timeout(
                self.supervisor, self.spec.id, "process", timeout=timeout, action="killed"
            )
        with contextlib.suppress(ProcessLookupError):
            self._kill()
        await self._wait_exit(None)
        return ChildExit("killed", signal=int(signal_module.SIGKILL))

    def _force(self) -> list[str]:
        with contextlib.suppress(ProcessLookupError):
            self._kill()
        return [f"killed process {self.name} (pid {self.handle.pid})"]

    def _read_exit(self, status: Any) -> Down | None:
        """The ended child's exit from its ``_ended_status``, read before our
        own wait reaps it; None: read the code that wait stores
        (``_stored_down``)."""
        # A status None (reaped) is read before our wait: a code still unstored
        # then, our read having failed, means someone else reaped the child
        # (down_from_status: no code; a Popen's wait() would store a made-up 0).
        return None if status is _UNREAD else down_from_status(self.handle, status)

    def _stored_down(self) -> Down:
        """After our own wait: the Down from the code the process object
        stored (a ``Popen``'s 0 under SIGCHLD ignored is the guess it makes:
        no code, see liveness), ``Down("exit")`` without a code if none."""
        if self._stored_code() is None:
            return Down("exit")
        return owner_down(self.handle) or Down("exit")

    @staticmethod
    def _exit_of(down: Down) -> ChildExit:
        """The run's exit, from the liveness layer's reading of its status.

        ``Down("exit")`` without a code: the status could not be read, the
        child was reaped by another waiter (SIGCHLD ignored, a
        ``waitpid(-1)`` elsewhere) and the kernel kept none. It stays
        ``ChildExit("exit", exit_code=None)``: abnormal for the restart
        policy (OTP restarts a transient child on any reason but normal and
        shutdown; a crash is never taken for a clean end), reported as "exit
        status unknown", and no ``shutdown_error`` after a stop asked for
        (:func:`_clean_stop`).
        """
        if down.reason == "normal":
            return ChildExit("normal", exit_code=0)
        if down.reason == "killed":
            return ChildExit("killed", signal=down.signal)
        return ChildExit("exit", exit_code=down.exit_code)


#: _ended_status: no status read, the child unreaped: its owner's wait reads it.
_UNREAD = object()


def _ended_status(pidfd: int, pid: int | None) -> Any:
    """Non-reaping status of the ended child behind ``pidfd`` (its pid
    ``pid``); None once another waiter reaped it (the status is lost).

    ``waitid(P_PIDFD)``; where that cannot be used (Linux before 5.4, a
    Python built without ``os.P_PIDFD``), ``waitid(P_PID)``, kept only if the
    pidfd shows the child unreaped after it; ``_UNREAD`` if still none.
    """
    status = waitid_pidfd(pidfd)
    if status is not None:
        return status
    if _NO_WAIT_STATUS and pid is not None:
        with contextlib.suppress(ChildProcessError):  # reaped: checked below
            status = os.waitid(os.P_PID, pid, _NO_WAIT_STATUS)
    try:
        # Race: the pid may name another child of ours by now. Asked after,
        # the pidfd tells whether that answer was the child's (a reap is final).
        signal_module.pidfd_send_signal(pidfd, 0)
    except ProcessLookupError:
        return None
    return _UNREAD if status is None else status


def _pidfd_signal_group(pidfd: int, group: int, signum: int) -> bool:
    """``signum`` to the process group led by the pidfd's process (``group``,
    its pid); False when there is no such group (left, not made yet, empty).

    Linux 6.9+ signals it through the pidfd: the group of the child's own pid,
    never a group a later process with the same pid number leads. Before,
    ``killpg``, only while the pidfd shows the child unreaped (its pid held,
    the group id cannot be reused). Race: reaped by another waiter and the
    pid reused between that check and ``killpg`` (the pid space must wrap
    meanwhile): closed on 6.9+ only.
    """
    try:
        signal_module.pidfd_send_signal(pidfd, signum, None, _PIDFD_SIGNAL_PROCESS_GROUP)
    except ProcessLookupError:
        return False
    except PermissionError:  # sent to the members it may signal, as killpg
        return True
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: no group flag before Linux 6.9
            raise
        return _killpg_while_unreaped(pidfd, group, signum)
    return True


def _killpg_while_unreaped(pidfd: int, group: int, signum: int) -> bool:
    """``killpg(group)`` while the pidfd shows its leader unreaped; whether sent."""
    try:
        signal_module.pidfd_send_signal(pidfd, 0)
        os.killpg(group, signum)
    except ProcessLookupError:  # reaped (its group id may be another's), or no group
        return False
    except PermissionError:
        pass
    return True


class PopenRun(_ProcessRun):
    """An argv child run with :class:`subprocess.Popen`.

    Exit is seen through a pidfd on the event loop (exact, no polling) where
    Linux provides it, else by polling. With explicit readiness the child gets
    the write end of a pipe, named by ``$FOUNDATION_READY_FD``.
    """

    handle: subprocess.Popen[bytes]

    async def launch(self) -> None:
        import subprocess

        spec = self.spec
        argv = [*cast("Sequence[str]", spec.start), *(str(a) for a in spec.args)]
        kwargs = dict(spec.kwargs)
        write_fd = self._open_ready_pipe(kwargs)
        resolve_prctl()  # in the parent: the forked child must not import (see _preexec)
        kwargs["preexec_fn"] = functools.partial(_preexec, os.getpid(), kwargs.get("preexec_fn"))
        if "process_group" not in kwargs and not kwargs.get("start_new_session"):
            kwargs["process_group"] = 0  # out of the terminal's group: Ctrl-C reaches us only
        # A group led by the child (pgid == its pid) is its own: stop and
        # sweep it whole, so that its children (a shell's, a forked worker's)
        # do not outlive it. A group it merely joined is left alone.
        own_group = kwargs.get("process_group") == 0 or bool(kwargs.get("start_new_session"))
        try:
            self.handle = subprocess.Popen(argv, **kwargs)
        except BaseException:
            self._close_ready_fd()
            raise
        finally:
            if write_fd is not None:
                os.close(write_fd)  # only the child holds it now: EOF once it exits
        self._group = self.handle.pid if own_group else None
        self._pidfd: int | None = None
        try:
            self._watch_exit()
        except BaseException:
            # No fd left for the pidfd (EMFILE: other threads took the ones
            # Popen freed) or the loop refused a reader: the child runs but
            # nothing would see it end. The start fails; it must not outlive it.
            self._abandon_launch()
            raise

    def _watch_exit(self) -> None:
        """launch(): watch the ready fd and the child's exit on the loop."""
        if self._ready_fd is not None:
            os.set_blocking(self._ready_fd, False)
            self.loop.add_reader(self._ready_fd, self._on_ready_fd)
        if _HAVE_PIDFD:
            # The child is not reaped until we wait for it, so even a child that
            # has already exited still has a pid (a zombie) to open here.
            self._pidfd = os.pidfd_open(self.handle.pid)
            self.loop.add_reader(self._pidfd, self._reap)
        else:
            self.loop.call_later(_POLL_INTERVAL, self._poll)

    def _open_ready_pipe(self, kwargs: dict[str, Any]) -> int | None:
        """Explicit readiness: a pipe whose write end (returned) ``kwargs`` passes the child."""
        self._ready_fd: int | None = None
        if not self.spec.explicit_ready:
            self.ready.set_result(None)
            return None
        # os.pipe() fds are close-on-exec: a process spawned concurrently by
        # another thread cannot inherit the write end and hold it open.
        self._ready_fd, write_fd = os.pipe()
        env = dict(kwargs.get("env") or os.environ)
        env[READY_FD_ENV] = str(write_fd)
        kwargs["env"] = env
        kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), write_fd)
        return write_fd

    def _on_ready_fd(self) -> None:
        assert self._ready_fd is not None
        try:
            data = os.read(self._ready_fd, 64)
        except BlockingIOError:
            return
        self._close_ready_fd()
        if data and not self.ready.done():
            self.ready.set_result(None)
        # EOF without a byte: the child closed it or is ending; its exit tells.

    def _abandon_launch(self) -> None:
        """A launch that failed after the fork: kill and reap the child (and its
        own group), close what was opened. Quick: the child is SIGKILLed."""
        self._kill()
        self.handle.wait()
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)
        self._close_ready_fd()
        for stream in (self.handle.stdin, self.handle.stdout, self.handle.stderr):
            if stream is not None:
                stream.close()

    def _close_ready_fd(self) -> None:
        fd, self._ready_fd = self._ready_fd, None
        if fd is not None:
            self.loop.remove_reader(fd)
            os.close(fd)

    def _poll(self) -> None:
        if self.handle.poll() is None:
            self.loop.call_later(_POLL_INTERVAL, self._poll)
        else:
            self._finish()

    def _reap(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is None:
            return
        self.loop.remove_reader(fd)
        try:
            # The status, read without reaping before our wait() reaps: exact
            # while the child is a zombie of ours; None once another waiter
            # reaped it (Popen's wait() would then store a made-up 0).
            status = _ended_status(fd, self.handle.pid)
            down = self._read_exit(status)
            # Race: swept through the pidfd, before our wait() reaps the
            # child: the group of the child's own pid, whoever else is in it,
            # never a group a later process with a reused pid leads.
            self._sweep_group(fd)
        finally:
            os.close(fd)
        if status is None and down is not None and self.handle.returncode is None:
            # Reaped by another waiter, its status lost (down_from_status saw
            # no wait() of the Popen's own under way). wait() would waitpid()
            # a pid free since, maybe another child of ours by now: the loop
            # blocked until that one ends, its status stolen. Stored instead
            # as wait() stores a status it cannot get (ECHILD): 0. Race: a
            # user's wait()/poll() on another thread meanwhile stores the same.
            self.handle.returncode = 0
        else:
            self.handle.wait()  # readable pidfd: the process has ended, this does not block
        self._finish(down)

    def _finish(self, down: Down | None = None) -> None:
        """The run's exit: ``down``, else (polling; a reap the user's own
        ``wait()`` was storing) the code Popen stored."""
        self._close_ready_fd()
        for stream in (self.handle.stdin, self.handle.stdout, self.handle.stderr):
            if stream is not None:
                stream.close()
        self._exit(self._exit_of(down or self._stored_down()))

    def _child_pidfd(self) -> int | None:
        return getattr(self, "_pidfd", None)

    def _stored_code(self) -> int | None:
        return self.handle.returncode


class MultiprocessingRun(_ProcessRun):
    """A picklable function run in a ``multiprocessing`` "spawn" process.

    "spawn" rather than "fork": the supervisor's process has threads (its
    event loop may run in one), and forking a threaded process can deadlock.
    Exit is seen on the event loop through a pidfd where Linux provides it,
    else through the process sentinel (a pipe the child's own forks inherit:
    there, a child that forked a helper is seen ended only once the helper
    is gone too).

    The child makes a process group of its own first thing
    (``_process_group_entry``), so it is stopped and swept as a group, as an
    argv child is: SIGTERM and SIGKILL go to the group, and what is left in
    it when the child ends is SIGKILLed before the child is reaped (its
    grandchildren do not outlive it). Until the child has made its group the
    signals go to the child alone (it has started nothing yet).
    """

    handle: multiprocessing.process.BaseProcess

    async def launch(self) -> None:
        import multiprocessing

        if interpreter_exiting():
            # A process spawned now would lose its parent mid-bootstrap (a raw
            # EOFError traceback): none is started; not a failed start either.
            raise StopRequested("the interpreter is exiting")
        spec = self.spec
        mp = multiprocessing.get_context("spawn")
        recv, send = mp.Pipe(duplex=False) if spec.explicit_ready else (None, None)
        self._recv = recv
        try:
            self._spawn(mp, send)
        except BaseException:
            if recv is not None:
                recv.close()
                self._recv = None
            raise
        finally:
            if send is not None:
                send.close()  # only the child holds it now: EOF once it exits
        if recv is not None:
            self.loop.add_reader(recv.fileno(), self._on_ready)
        else:
            self.ready.set_result(None)
        self._group = self.handle.pid  # the group it makes (see _signal_group until then)
        self._exit_fd: int | None
        self._exit_fd, self._own_exit_fd = self._exit_watch()
        self.loop.add_reader(self._exit_fd, self._reap)

    def _spawn(self, mp: Any, send: Any) -> None:
        """Start the child process with SIGINT held in this thread (``_hold_sigint``).

        Race: unblocking SIGINT runs a Ctrl-C that arrived meanwhile (Python's
        default handler, the loop in the main thread): its KeyboardInterrupt
        is raised there, the child started. Its start has failed, so nothing
        would stop it, and it is out of the terminal's group, its own pending
        Ctrl-C discarded: it is killed and reaped before the interrupt goes on.
        """
        spec = self.spec
        held = False
        started = None
        try:
            held = _hold_sigint()
            process = mp.Process(
                target=_process_group_entry,
                args=(os.getpid(), (spec.start, spec.id, send, spec.args, dict(spec.kwargs)), held),
                name=self.name,
                daemon=True,
            )
            self.handle = process
            process.start()
            started = process
        finally:
            try:
                _unhold_sigint(held)
            except BaseException:
                if started is not None:
                    started.kill()
                    started.join()
                raise

    def _exit_watch(self) -> tuple[int, bool]:
        """The fd readable once the child has ended, and whether it is ours to close.

        A pidfd where there is one. Not the sentinel, where that can be helped:
        it is a pipe whose write end every fork of the child inherits, so a
        child that forked a helper and died was seen running, neither
        reported nor restarted, until the helper ended (for ever, for a
        daemon-style helper). A pidfd says the child itself ended.
        """
        pid = self.handle.pid  # (started: never None here)
        if _HAVE_PIDFD and pid is not None:
            # The child is not reaped until join(): even one that has already
            # exited has a pid (a zombie) to open here.
            with contextlib.suppress(OSError):  # no fd left (EMFILE): the sentinel then
                return os.pidfd_open(pid), True
        return self.handle.sentinel, False

    def _on_ready(self) -> None:
        recv, self._recv = self._recv, None
        if recv is None:
            return
        self.loop.remove_reader(recv.fileno())
        try:
            recv.recv()
            if not self.ready.done():
                self.ready.set_result(None)
        except EOFError:  # ended without calling ready(); its exit tells
            pass
        finally:
            recv.close()

    def _reap(self) -> None:
        fd, self._exit_fd = self._exit_fd, None
        if fd is None:
            return
        self.loop.remove_reader(fd)
        pidfd = fd if self._own_exit_fd else None
        status: Any = _UNREAD
        try:
            # As for an argv child (PopenRun._reap): the status read without
            # reaping, the group swept through the pidfd, both before join()
            # reaps the child. Without a pidfd (the sentinel): swept only while
            # _unreaped() finds it ours, the status is what join() stores.
            if pidfd is not None:
                status = _ended_status(pidfd, self.handle.pid)
            down = self._read_exit(status)
            self._drain_ready()
            self._sweep_group(pidfd)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        self._join(reaped=status is None)
        if interpreter_exiting():
            # multiprocessing's exit handler terminated it (the program's main
            # thread returned with the tree running): no crash, no restart.
            # Race: it sets its flag before terminating, so this sees it.
            self.stopping = True
        # No status and none stored (reaped by another waiter: join() finds
        # nothing to reap, exitcode stays None): Down("exit"), no code.
        self._exit(self._exit_of(down or self._stored_down()))

    def _join(self, *, reaped: bool) -> None:
        """join() the ended child, which reaps it; not once ``reaped`` by
        another waiter with no code stored: join() would waitpid() a pid free
        since, maybe another child of ours by now (the loop blocked until that
        one ends, its status stolen)."""
        if not (reaped and self._stored_code() is None):
            self.handle.join()  # the exit fd is readable: the process has ended
        if self._stored_code() is None:  # reaped elsewhere: join() found nothing
            self._forget_reaped()

    def _forget_reaped(self) -> None:
        """join() found nothing to reap: another waiter reaped the child, and
        multiprocessing, whose code for it stays None, would keep it among its
        children for ever (listed by ``active_children()``, its pid polled
        at each ``start()`` though another process may hold it by now, its
        pipes open). Dropped from them: the pipes close with the object."""
        import multiprocessing.process

        # Race: other threads may read or change the set meanwhile (join(),
        # active_children()); each access is one atomic operation on it.
        children = getattr(multiprocessing.process, "_children", None)
        if isinstance(children, set):
            children.discard(self.handle)

    def _drain_ready(self) -> None:
        """At the child's end: a ready() sent just before exiting is still in
        the pipe: read it first; else close the pipe."""
        if self._recv is not None:
            if self._recv.poll():
                self._on_ready()
            else:
                self.loop.remove_reader(self._recv.fileno())
                self._recv.close()
                self._recv = None

    def _child_pidfd(self) -> int | None:
        return self._exit_fd if getattr(self, "_own_exit_fd", False) else None

    def _stored_code(self) -> int | None:
        popen = getattr(self.handle, "_popen", None)  # multiprocessing's own, since 3.4
        return None if popen is None else cast("int | None", popen.returncode)


class SupervisorRun(Run):
    """A nested supervisor: ready when its children are, ended when it stops or
    gives up (a ``"shutdown"`` exit whose exception is its
    ``RestartIntensityExceeded``, as OTP's ``shutdown``); killed or failed on a
    defect, its exit is an ``"exception"``."""

    handle: Supervisor

    @property
    def agent(self) -> Any:
        return self.handle.task

    async def launch(self) -> None:
        from foundation.supervision._supervisor import Supervisor

        start = self.spec.start
        sup = start if isinstance(start, Supervisor) else start()  # type: ignore[operator]
        if not isinstance(sup, Supervisor):
            raise TypeError(f"child {self.spec.id!r}: factory returned {sup!r}, not a Supervisor")
        if not sup._named and sup.state not in ("starting", "running", "stopping"):
            # Its place in the tree, "<parent>/<child id>": a factory's fresh
            # tree keeps one name over restarts (a unique default each time made
            # new log names and metric series per restart, without end).
            sup._name = self.name
            sup._label = self.label
        self.handle = sup
        self._starting = self.loop.create_task(sup.start(), name=f"start {self.name}")
        self._starting.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._exit(ChildExit("cancelled"))
        elif (exc := task.exception()) is not None:
            self._exit(ChildExit("exception", exception=exc))
        else:
            self.ready.set_result(None)
            self.handle._done_future().add_done_callback(self._ended)

    def _ended(self, fut: asyncio.Future[None]) -> None:
        failure = self.handle.failure
        if isinstance(failure, RestartIntensityExceeded):
            # OTP: a supervisor that reaches its restart intensity exits with
            # reason shutdown (supervisor.erl restart/2): its parent restarts
            # it only if permanent, and a significant one may auto_shutdown.
            # The error is kept: the parent reports why the subtree gave up.
            self._exit(ChildExit("shutdown", exception=failure))
        elif failure is not None:  # killed, or a defect: a crash
            self._exit(ChildExit("exception", exception=failure))
        else:
            self._exit(ChildExit("normal"))

    async def _stop(self, timeout: float | None) -> ChildExit:
        import asyncio

        # A supervisor always gets the time its own children's timeouts add up to.
        if not self._starting.done():
            # Still starting: cancelling start() rolls back what it started.
            self._starting.cancel()
            await asyncio.wait({self._starting})
        try:
            await self.handle.stop()
        except ShutdownError as exc:
            await self._wait_exit(None)
            # It did stop; a child of its own runs on. Kept as the exit's
            # exception: it names that grandchild (terminate_child chains it).
            return ChildExit("abandoned", exception=exc)
        await self._wait_exit(None)
        return ChildExit("shutdown")

    def _force(self) -> list[str]:
        if not self._starting.done():
            self._starting.cancel()
        return force_tree(self.handle)


def force_tree(sup: Supervisor) -> list[str]:
    """Force every run of ``sup``'s tree, youngest first; what was done to
    each (see :meth:`Run.force`)."""
    forced: list[str] = []
    for child in reversed(list(sup._children.values())):
        run = child.run
        if run is not None:
            forced.extend(run.force())
    return forced


def abandon_tasks(tasks: Iterable[asyncio.Task[Any]], log: logging.Logger) -> list[str]:
    """At loop close: report the ``tasks`` still pending (they ignored their
    cancellation) in one WARNING, and returns their names.

    asyncio's own "Task was destroyed but it is pending!" ERROR, logged when
    the closed loop's task is collected, is turned off for them: it would
    report as a defect what the supervisor already reported as an abandoned
    task, and this record says what happened.
    """
    stuck = [task for task in tasks if not task.done()]
    names = sorted(task.get_name() for task in stuck)
    if names:
        log.warning(
            "the event loop closes with %d task(s) still running (they ignore their "
            "cancellation): %s; abandoned",
            len(names),
            ", ".join(names),
            extra={"reason": "abandoned", "tasks": names},
        )
    for task in stuck:
        # CPython's Task attribute behind the "destroyed but it is pending" log.
        with contextlib.suppress(AttributeError):
            task._log_destroy_pending = False  # type: ignore[attr-defined]
    return names


def make_run(spec: ChildSpec, supervisor: str, attempt: int) -> Run:
    """The run class for ``spec.kind``."""
    cls: Callable[[ChildSpec, str, int], Run]
    if spec.kind == "task":
        cls = TaskRun
    elif spec.kind == "thread":
        cls = ThreadRun
    elif spec.kind == "supervisor":
        cls = SupervisorRun
    elif isinstance(spec.start, (list, tuple)):
        cls = PopenRun
    else:
        cls = MultiprocessingRun
    return cls(spec, supervisor, attempt)
