"""The runner: a supervision tree as a program's main, owning SIGTERM and SIGINT.

:func:`run` starts the tree on a new event loop, stops it in order on the
first SIGTERM or SIGINT, forces it on a second one, and returns an exit
status for ``raise SystemExit(...)``. It shares with
:meth:`foundation.Application.wait_for_signal` :class:`SignalHandlers`
(handlers installed for a while, the previous ones restored after, or at the
second signal) and its reports (``report_signal``, ``report_left_running``,
``report_forced``): one wording and one status for each outcome.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Coroutine, Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from foundation.errors import ShutdownError, SupervisorError
from foundation.supervision._cancelled_stop import watched_stop
from foundation.supervision._runs import abandon_tasks, force_tree
from foundation.supervision._spec import _check_number
from foundation.supervision._supervisor import Supervisor

if TYPE_CHECKING:
    # Imported in the functions that use it (`import foundation` stays cheap).
    import asyncio

__all__ = ["SignalHandlers", "run"]

logger = logging.getLogger("foundation.supervision.runner")

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Seconds a forced stop waits for the killed children's exits to be seen
#: (so they are reaped and the tree's state is final) before returning.
FORCE_GRACE = 1.0
#: Seconds given at the end to the tasks still on the loop (a task child that
#: swallowed its cancellation and was abandoned) once they are cancelled again.
#: ``asyncio.run`` waits for them without a bound: one such task hung the exit.
LOOP_CLOSE_GRACE = 1.0


class SignalHandlers:
    """Our handler for each of ``signals`` while open; the previous ones after.

    ``callback(signum)`` runs on ``loop`` (through ``loop.add_signal_handler``)
    when one is given, else in the main thread between bytecodes (through
    ``signal.signal``; it must then be safe there, as ``SimpleQueue.put``).
    Either way the main thread must create it. ``close()`` (or leaving the
    ``with`` block) puts back exactly the handlers that were there before
    (``SIG_DFL`` for one not installed from Python). With ``restore_after=n``,
    the n-th arrival puts the previous handlers back at once, in the signal
    handler itself (the main thread), so the next one meets them even while
    the loop is blocked; ``callback`` still gets every arrival seen (with a
    loop: whenever the loop runs again).

    Example:
        >>> import os, signal
        >>> seen = []
        >>> with SignalHandlers([signal.SIGUSR1], seen.append):
        ...     os.kill(os.getpid(), signal.SIGUSR1)
        >>> seen == [signal.SIGUSR1], signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
        (True, True)
    """

    def __init__(
        self,
        signals: Iterable[int],
        callback: Callable[[int], None],
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        restore_after: int | None = None,
    ) -> None:
        self._loop = loop
        self._previous: dict[int, Any] = {}
        self._arrivals = 0

        def handler(signum: int, frame: FrameType | None) -> None:
            counter(signum, frame)
            callback(signum)

        def counter(_signum: int, _frame: FrameType | None) -> None:
            # Runs in the main thread between bytecodes, even while a child
            # blocks the loop (time.sleep in a coroutine): the loop learns of
            # the signal through its wakeup fd, whenever it runs again. Only
            # signal.signal here: no lock, no logging (it may interrupt either).
            self._arrivals += 1
            if restore_after is not None and self._arrivals >= restore_after:
                self._restore_previous()

        try:
            for signum in signals:
                self._previous[signum] = signal.getsignal(signum)
                if loop is not None:
                    loop.add_signal_handler(signum, callback, signum)
                    if restore_after is not None:
                        # The C-level handler still writes the loop's wakeup fd;
                        # this Python-level one replaces asyncio's no-op.
                        signal.signal(signum, counter)
                else:
                    signal.signal(signum, handler)
        except BaseException:  # a failed install leaves nothing of ours behind
            self.close()
            raise

    def _restore_previous(self) -> None:
        """Put back the previous Python-level handlers (from a signal handler:
        the loop's own registrations are left for ``close()``)."""
        for signum, old in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)

    def close(self) -> None:
        """Restore the previous handlers (idempotent)."""
        previous, self._previous = self._previous, {}
        for signum, old in previous.items():
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_DFL if old is None else old)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def run(
    supervisor: Supervisor | Callable[[], Supervisor],
    /,
    *,
    stop_timeout: float | None = None,
    signals: Iterable[int] = DEFAULT_SIGNALS,
    on_started: Callable[[Supervisor], None] | None = None,
) -> int:
    """Run a supervision tree as the program: start it, stop it on a signal.

    Starts ``supervisor`` (or the one a zero-argument factory returns, built on
    the new loop) on a new event loop with handlers for
    ``signals`` installed first, so a signal during the start is handled too
    (the start is cancelled and rolled back). Then it waits:

    - the first signal stops the tree in order (reverse start order, each
      child within its ``shutdown_timeout``), as ``Supervisor.stop()`` does;
    - a second signal, or ``stop_timeout`` seconds after the first, forces it:
      process children are SIGKILLed and tasks cancelled at once, throughout
      the tree; threads, which cannot be killed, are asked to stop and left
      running as daemon threads. A third signal meets the previous handlers
      (by default: SIGTERM kills the process, SIGINT raises KeyboardInterrupt),
      even while a child blocks the event loop (then the first two cannot be
      acted on until it lets go: the third is the way out).

    At the end, tasks still on the loop (a task child that swallowed its
    cancellation and was abandoned) are cancelled again and given
    ``LOOP_CLOSE_GRACE`` seconds; then the loop is closed without them. One
    that raised meanwhile is reported to the loop's exception handler (logged
    by ``asyncio``), as ``asyncio.run`` does.

    The previous handlers are restored before it returns. ``on_started(sup)``
    runs once the tree is up (announce readiness there). Log records go to
    the ``foundation.supervision.runner`` logger.

    Returns the exit status, as OTP's ``init:stop()`` and a crashed node do:

    - ``0``: stopped in order after a signal (also when a thread had to be
      abandoned, as OTP's shutdown after a kill is still a shutdown), or the
      supervisor ended on its own normally (``stop()``, auto-shutdown);
    - ``1``: the supervisor failed: it could not start (``StartError``) or
      gave up (``RestartIntensityExceeded``);
    - ``128 + signo``: the stop was forced (by signal ``signo``, or by the
      first signal's when ``stop_timeout`` ran out). ``128 + signo`` is not
      returned after an orderly stop: that shutdown was clean, not a death
      by signal.

    Example (``app.py``; run it, press Ctrl-C)::

        import asyncio
        from foundation.supervision import ChildSpec, Supervisor, run

        async def worker(ctx):
            ctx.ready()
            await asyncio.Event().wait()   # serve until cancelled

        if __name__ == "__main__":
            raise SystemExit(run(Supervisor([ChildSpec("w", worker)], name="app")))

    Raises:
        SupervisorError: called from a thread other than the main thread (with
            ``signals``) or from inside a running event loop.
        TypeError: ``supervisor`` is neither a ``Supervisor`` nor callable, the
            factory did not return one, or ``stop_timeout`` is not a number.
        ValueError: a negative ``stop_timeout``, or one past the float range.
    """
    import asyncio

    chosen = tuple(signals)
    if chosen and threading.current_thread() is not threading.main_thread():
        raise SupervisorError("run() installs signal handlers: call it from the main thread")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise SupervisorError(
            "run() starts an event loop of its own: call it outside a running loop "
            "(inside one, use `async with supervisor:` and `await supervisor.wait()`)"
        )
    if not isinstance(supervisor, Supervisor) and not callable(supervisor):
        raise TypeError(f"run() needs a Supervisor or a factory of one, got {supervisor!r}")
    if stop_timeout is not None:
        _check_number("stop_timeout", stop_timeout)  # a str, or past the float range
        if not stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be >= 0 or None, not {stop_timeout!r}")
    return _run_loop(_main(supervisor, stop_timeout, chosen, on_started))


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, except that the tasks left over at the end get a
    bounded grace: ``asyncio.run`` waits for them for ever, and a task child
    that swallows its cancellation would hang the program's exit."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _cancel_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            # Bounded too: a job stuck in the default executor must not hang the exit.
            closing = loop.create_task(loop.shutdown_default_executor())
            loop.run_until_complete(asyncio.wait({closing}, timeout=LOOP_CLOSE_GRACE))
            if not closing.done():
                closing.cancel()
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still on ``loop``; wait ``LOOP_CLOSE_GRACE`` at most."""
    import asyncio

    leftover = asyncio.all_tasks(loop)
    if not leftover:
        return
    for task in leftover:
        task.cancel()
    loop.run_until_complete(asyncio.wait(leftover, timeout=LOOP_CLOSE_GRACE))
    abandon_tasks(leftover, logger)
    for task in leftover:
        if task.done() and not task.cancelled() and task.exception() is not None:
            # Told as asyncio.run() tells it: a task that raised while cancelled
            # here (a task of the program's own, outside the tree, or the cleanup
            # of a child the tree abandoned) is news the tree never reported.
            # Retrieved and unreported, it vanished with the loop.
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during foundation's run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


async def _main(
    target: Supervisor | Callable[[], Supervisor],
    stop_timeout: float | None,
    signals: tuple[int, ...],
    on_started: Callable[[Supervisor], None] | None,
) -> int:
    import asyncio

    sup = target if isinstance(target, Supervisor) else target()
    if not isinstance(sup, Supervisor):
        raise TypeError(f"run() needs a Supervisor or a factory of one, got {sup!r}")
    arrivals: asyncio.Queue[int] = asyncio.Queue()
    # restore_after=2: the second signal puts the previous handlers back at
    # once, in the signal handler, so that a third one meets them even while
    # a child blocks the loop (which then cannot act on the first two).
    with SignalHandlers(
        signals, arrivals.put_nowait, loop=asyncio.get_running_loop(), restore_after=2
    ) as ours:
        return await _drive(sup, arrivals, stop_timeout, on_started, ours.close)


async def _drive(
    sup: Supervisor,
    arrivals: asyncio.Queue[int],
    stop_timeout: float | None,
    on_started: Callable[[Supervisor], None] | None,
    restore: Callable[[], None],
) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    first = loop.create_task(arrivals.get())
    starting = loop.create_task(sup.start(), name=f"start supervisor {sup.name}")
    pending: list[asyncio.Task[Any]] = [first, starting]
    try:
        await asyncio.wait({first, starting}, return_when=asyncio.FIRST_COMPLETED)
        # Race: the start may end and a signal arrive in the same loop step:
        # a failed start is reported as such; a started tree is stopped in
        # order below.
        if starting.done() and (error := starting.exception()) is not None:
            # The crash report already carries the traceback: one line here.
            logger.error(
                "supervisor %s failed to start: %s; exit status 1",
                sup.name,
                error,
                extra={"supervisor": sup.name, "reason": "start_failed"},
            )
            return 1
        if not first.done():
            if on_started is not None:
                try:
                    on_started(sup)
                except BaseException:
                    await sup.stop()
                    raise
            ended = loop.create_task(_ended(sup))
            pending.append(ended)
            await asyncio.wait({first, ended}, return_when=asyncio.FIRST_COMPLETED)
            if not first.done():
                return _ended_status(sup)
        return await _shutdown(
            sup,
            first.result(),
            starting=starting,
            arrivals=arrivals,
            stop_timeout=stop_timeout,
            pending=pending,
            restore=restore,
        )
    finally:
        for task in pending:
            task.cancel()


async def _ended(sup: Supervisor) -> None:
    with contextlib.suppress(SupervisorError):  # its failure is read from sup.failure
        await sup.wait()


def _ended_status(sup: Supervisor) -> int:
    failure = sup.failure
    if failure is None:
        logger.info(
            "supervisor %s ended normally; exit status 0",
            sup.name,
            extra={"supervisor": sup.name, "reason": "normal"},
        )
        return 0
    logger.error(
        "supervisor %s failed: %s; exit status 1",
        sup.name,
        failure,
        extra={"supervisor": sup.name, "reason": type(failure).__name__},
    )
    return 1


async def _shutdown(
    sup: Supervisor,
    signo: int,
    *,
    starting: asyncio.Task[None],
    arrivals: asyncio.Queue[int],
    stop_timeout: float | None,
    pending: list[asyncio.Task[Any]],
    restore: Callable[[], None],
) -> int:
    import asyncio

    loop = asyncio.get_running_loop()
    report_signal(sup.name, signo)
    stopping = loop.create_task(_stop(sup, starting), name=f"run: stop {sup.name}")
    second = loop.create_task(arrivals.get())
    pending += [stopping, second]
    await asyncio.wait(
        {stopping, second}, timeout=stop_timeout, return_when=asyncio.FIRST_COMPLETED
    )
    if stopping.done():
        error = stopping.exception()
        if isinstance(error, ShutdownError):
            # A thread outlived its timeout: reported, left as a daemon thread;
            # the shutdown itself completed. With the status returned below.
            report_left_running(sup.name, error, 0 if sup.failure is None else 1)
        elif error is not None:
            logger.error(
                "supervisor %s failed to stop; exit status 1",
                sup.name,
                exc_info=error,
                extra={"supervisor": sup.name, "reason": "stop_failed"},
            )
            return 1
        if sup.failure is not None:  # it had given up before the signal was handled
            return _ended_status(sup)
        logger.info(
            "supervisor %s stopped after %s; exit status 0",
            sup.name,
            _name(signo),
            extra={"supervisor": sup.name, "reason": "shutdown", "signal": signo},
        )
        return 0
    forced_by = second.result() if second.done() else signo
    restore()  # a third signal meets the previous handlers (default: death)
    # Starting: its cancellation is under way and rolls back (in `stopping`);
    # what it had started is forced below as well.
    why = None if second.done() else f"stop_timeout {stop_timeout}s"
    status = report_forced(sup.name, forced_by, force_tree(sup), why)
    await asyncio.wait({stopping}, timeout=FORCE_GRACE)
    if stopping.done():
        stopping.exception()  # retrieved: its outcome is the forced status
    return status


# The runner's reports, shared with Application.wait_for_signal (one wording,
# one logger, one exit status for each).


def report_signal(name: str, signo: int) -> None:
    """The first signal: the orderly stop of supervisor ``name`` begins."""
    logger.info(
        "received %s: stopping supervisor %s in order (send it again to force)",
        _name(signo),
        name,
        extra={"supervisor": name, "reason": "signal", "signal": signo},
    )


def report_left_running(name: str, error: ShutdownError, status: int | None) -> None:
    """An orderly stop that left a thread running (reported, left as a daemon
    thread): the shutdown itself completed. ``status``: the exit status the
    caller returns (``None``: it raises instead)."""
    if status is None:
        logger.warning("%s", error, extra={"supervisor": name})
    else:
        logger.warning("%s; exit status %d", error, status, extra={"supervisor": name})


def report_forced(name: str, forced_by: int, forced: list[str], why: str | None = None) -> int:
    """Report a forced stop (by a second ``forced_by``, or ``why``); its status.

    ``forced``: what :func:`force_tree` did, each with its verb ("killed
    process ...", "cancelled task ...", "asked thread ... to stop").
    """
    status = 128 + forced_by
    logger.warning(
        "%s: forcing the stop of supervisor %s: %s; exit status %d",
        why or f"received {_name(forced_by)} again",
        name,
        ", ".join(forced) or "nothing left to force",
        status,
        extra={"supervisor": name, "reason": "forced", "signal": forced_by},
    )
    return status


async def _stop(sup: Supervisor, starting: asyncio.Task[None]) -> None:
    import asyncio

    if not starting.done():
        starting.cancel()  # start() rolls back what it started, then re-raises
        await asyncio.wait({starting})
    # Its cut (forced, then the loop's end) is this runner's to report: forced.
    await watched_stop(sup)


def _name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"
