"""The runner: a supervision tree as a program's main, owning SIGTERM and SIGINT.

:func:`run` starts the tree on a new event loop, stops it in order on the
first SIGTERM or SIGINT, forces it on a second one, and returns an exit
status for ``raise SystemExit(...)``. :class:`SignalHandlers` is the piece it
shares with :meth:`foundation.Application.wait_for_signal`: handlers installed
for a while, the previous ones restored after.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Self

from foundation.errors import ShutdownError, SupervisorError
from foundation.supervision._runs import force_tree
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


class SignalHandlers:
    """Our handler for each of ``signals`` while open; the previous ones after.

    ``callback(signum)`` runs on ``loop`` (through ``loop.add_signal_handler``)
    when one is given, else in the main thread between bytecodes (through
    ``signal.signal``). Either way the main thread must create it. ``close()``
    (or leaving the ``with`` block) puts back exactly the handlers that were
    there before (``SIG_DFL`` for one not installed from Python).

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
    ) -> None:
        self._loop = loop
        self._previous: dict[int, Any] = {}

        def handler(signum: int, _frame: FrameType | None) -> None:
            callback(signum)

        try:
            for signum in signals:
                self._previous[signum] = signal.getsignal(signum)
                if loop is not None:
                    loop.add_signal_handler(signum, callback, signum)
                else:
                    signal.signal(signum, handler)
        except BaseException:  # a failed install leaves nothing of ours behind
            self.close()
            raise

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
    the new loop) on a new event loop (``asyncio.run``) with handlers for
    ``signals`` installed first, so a signal during the start is handled too
    (the start is cancelled and rolled back). Then it waits:

    - the first signal stops the tree in order (reverse start order, each
      child within its ``shutdown_timeout``), as ``Supervisor.stop()`` does;
    - a second signal, or ``stop_timeout`` seconds after the first, forces it:
      process children are SIGKILLed and tasks cancelled at once, throughout
      the tree; threads, which cannot be killed, are asked to stop and left
      running as daemon threads. A third signal meets the previous handlers
      (by default: SIGTERM kills the process, SIGINT raises KeyboardInterrupt).

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
    return asyncio.run(_main(supervisor, stop_timeout, chosen, on_started))


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
    with SignalHandlers(signals, arrivals.put_nowait, loop=asyncio.get_running_loop()) as ours:
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
    logger.info(
        "received %s: stopping supervisor %s in order (send it again to force)",
        _name(signo),
        sup.name,
        extra={"supervisor": sup.name, "reason": "signal", "signal": signo},
    )
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
            # the shutdown itself completed.
            logger.warning("%s; exit status 0", error, extra={"supervisor": sup.name})
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
    killed = force_tree(sup)
    status = 128 + forced_by
    logger.warning(
        "%s: forcing the stop of supervisor %s: killed %s; threads left running; exit status %d",
        f"received {_name(forced_by)} again" if second.done() else f"stop_timeout {stop_timeout}s",
        sup.name,
        ", ".join(killed) or "nothing",
        status,
        extra={"supervisor": sup.name, "reason": "forced", "signal": forced_by},
    )
    await asyncio.wait({stopping}, timeout=FORCE_GRACE)
    if stopping.done():
        stopping.exception()  # retrieved: its outcome is the forced status
    return status


async def _stop(sup: Supervisor, starting: asyncio.Task[None]) -> None:
    import asyncio

    if not starting.done():
        starting.cancel()  # start() rolls back what it started, then re-raises
        await asyncio.wait({starting})
    await sup.stop()


def _name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"
