"""The synchronous facade: a supervisor on an event loop in a thread of its own."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from foundation._unraisable import report_unraisable
from foundation.errors import (
    Closed,
    FoundationError,
    ShutdownError,
    StartError,
    SupervisorError,
)
from foundation.supervision._cancelled_stop import watched_stop
from foundation.supervision._runs import abandon_tasks, in_thread_child_of
from foundation.supervision._spec import ChildCounts, ChildInfo, ChildSpec

if TYPE_CHECKING:
    # Imported in the methods that use them (`import foundation` stays cheap).
    import asyncio
    import concurrent.futures

    from foundation.supervision._supervisor import Supervisor

__all__ = ["SupervisorThread"]

T = TypeVar("T")

_LOOP_CLOSE_GRACE = 1.0  # seconds given to leftover tasks (abandoned ones) at loop close
_DEFECT_BACKOFF = 0.1  # seconds before serving again after the loop itself failed

_log = logging.getLogger("foundation.supervision")


class SupervisorThread:
    """A running supervisor, driven from synchronous code.

    Made by :meth:`Supervisor.run_in_thread`: the supervisor runs on a new event
    loop in a daemon thread named ``name`` (default ``"supervisor:<name>"``),
    started by the time the constructor returns. Every method is thread-safe
    (its work runs on the loop) and blocks until done; a Ctrl-C landing in a
    call leaves no coroutine unawaited. Leaving the
    ``with`` block calls :meth:`stop`, which stops the children and the loop.

    The handle is closeable: after :meth:`stop` (or :meth:`close`, the same)
    its loop is gone, and every management and introspection call raises
    ``errors.Closed`` (a ``RuntimeError``). ``stop()``/``close()`` stay
    idempotent, ``closed`` says so, and :meth:`wait` still answers (the
    supervisor has ended: it returns, or raises why it gave up). The
    :class:`Supervisor` itself is not closed by this: it is restartable, and
    between runs its management calls raise ``SupervisorError`` with
    ``reason == "supervisor_not_running"`` (OTP's ``noproc``).

    Example:
        >>> from foundation.supervision import ChildSpec, Supervisor
        >>> def worker(ctx):
        ...     ctx.ready()
        ...     ctx.stopping.wait()
        >>> with Supervisor([ChildSpec("w", worker)]).run_in_thread() as handle:
        ...     handle.count_children().active
        1
    """

    def __init__(self, supervisor: Supervisor, *, name: str | None = None) -> None:
        import asyncio

        self.supervisor = supervisor
        try:
            self._loop = asyncio.new_event_loop()
        except OSError as exc:  # no fd left for its selector (EMFILE)
            raise StartError(supervisor.name, f"cannot create an event loop: {exc}") from exc
        self._closed = False
        self._lock = threading.Lock()
        self._calls: set[Any] = set()  # the futures of calls not answered yet
        self._stopper: threading.Thread | None = None  # stop() asked by a thread child
        self._thread = threading.Thread(
            target=self._serve, name=name or f"supervisor:{supervisor.name}", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread": the thread limit
            self._loop.close()  # its fds: nothing is left half-started
            raise StartError(supervisor.name, f"cannot start its thread: {exc}") from exc
        try:
            self._call(supervisor.start)
        except BaseException:
            self._close_loop()
            raise

    @property
    def thread(self) -> threading.Thread:
        """The thread running the event loop."""
        return self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the supervisor runs on."""
        return self._loop

    # ------------------------------------------------------------------ loop thread
    def _serve(self) -> None:
        """Run the loop until ``_close_loop``; whatever escapes it is reported, then served on.

        asyncio re-raises ``SystemExit`` and ``KeyboardInterrupt`` out of
        ``run_forever`` (a task child calling ``sys.exit()`` does that), after
        recording them on the task: the supervisor handles that child's exit
        as soon as the loop runs again. Any other exception out of
        ``run_forever`` is a defect of the loop itself: reported, and retried
        after a short backoff so that it cannot spin hot.
        """
        import asyncio

        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            while True:
                try:
                    loop.run_forever()
                except BaseException as exc:  # this thread must outlive anything a child throws
                    if self._closed:
                        break
                    where = f"the event loop of supervisor {self.supervisor.name!r}"
                    report_unraisable(exc, where, self.supervisor, area="supervision")
                    if isinstance(exc, Exception):
                        time.sleep(_DEFECT_BACKOFF)
                    continue
                # Race: _close_loop sets _closed before it schedules loop.stop(),
                # so a normal return with _closed False is someone else's stop().
                if self._closed:
                    break
                _log.warning(
                    "the event loop of supervisor %r was stopped from outside; serving on",
                    self.supervisor.name,
                )
        finally:
            try:
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                if leftover:
                    loop.run_until_complete(asyncio.wait(leftover, timeout=_LOOP_CLOSE_GRACE))
                    abandon_tasks(leftover, _log)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                self._fail_unanswered_calls()

    def _fail_unanswered_calls(self) -> None:
        """After the loop closed: ``Closed`` for every call it will never run.

        Race: a call that passed its closed check while stop() ran queued its
        start on the loop, which then stopped before running it: without this,
        its caller (no timeout) waited for ever."""
        import concurrent.futures

        for outcome in list(self._calls):  # (one C-level copy: callers add meanwhile)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                outcome.set_exception(self._closed_error())

    def _closed_error(self) -> Closed:
        return Closed(
            f"the handle of supervisor {self.supervisor.name!r} is closed (stopped); "
            "start a new one with Supervisor.run_in_thread()"
        )

    def _call(self, make: Callable[[], Coroutine[Any, Any, T]], timeout: float | None = None) -> T:
        """Run ``make()`` on the loop as a task; block for its result (as
        ``asyncio.run_coroutine_threadsafe``, which takes a coroutine)."""
        import asyncio
        import concurrent.futures

        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        # Race: stop() may be closing the loop. Listed first, then checked: either
        # the close's sweep (_fail_unanswered_calls) finds it, or _closed, set
        # before that sweep, is seen here.
        self._calls.add(outcome)
        if self._closed or threading.current_thread() is self._thread:
            self._calls.discard(outcome)
            raise self._closed_error() if self._closed else self._own_loop_error()
        outcome.add_done_callback(self._calls.discard)
        started: list[asyncio.Task[T]] = []

        def start() -> None:  # in the loop's thread
            # Race: the coroutine is made here, not in the caller's thread. A
            # Ctrl-C landing there between making it and handing it over (the
            # KeyboardInterrupt goes to the main thread) would leave it
            # unawaited: "coroutine ... was never awaited" on stderr.
            if outcome.done():  # timed out, or failed by the close, before the loop got here
                return
            if self._closed:  # the loop is closing: no new work (its task would be left pending)
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    outcome.set_exception(self._closed_error())
                return
            try:
                task = asyncio.ensure_future(make())
            except Exception as exc:  # make() itself failed (a bad argument)
                outcome.set_exception(exc)
                return
            started.append(task)
            task.add_done_callback(lambda done: _settle(outcome, done))

        try:
            self._loop.call_soon_threadsafe(start)
        except RuntimeError:
            # Race: stop() in another thread closed the loop after the check above.
            if self._closed:
                raise self._closed_error() from None
            raise
        try:
            return outcome.result(timeout)
        except concurrent.futures.TimeoutError:
            outcome.cancel()  # start() not run yet: it returns at once

            def cancel_started() -> None:
                for task in started:
                    task.cancel()

            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                self._loop.call_soon_threadsafe(cancel_started)
            raise

    def _own_loop_error(self) -> SupervisorError:
        # Blocking the loop thread on a result only that loop can produce: a
        # task child calling the synchronous handle would hang for ever.
        return SupervisorError(
            f"the handle of supervisor {self.supervisor.name!r} was called from its own "
            "event loop (a task child?), where it would wait for itself for ever; "
            "await the Supervisor's methods there instead"
        )

    def _call_soon(self, fn: Callable[[], T]) -> T:
        if self._closed:  # before building the coroutine: nothing to clean up
            raise self._closed_error()

        async def call() -> T:
            return fn()

        return self._call(call)

    def _close_loop(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    # ------------------------------------------------------------------ public
    def stop(self) -> None:
        """Stop the supervisor (children in reverse order), then the loop; idempotent.

        Called from one of this tree's own thread children, it starts the stop
        in a thread of its own (``"<thread name>:stop"``) and returns at once:
        the stop waits for that child to return, so waiting here would wait
        for itself until the child's ``shutdown_timeout`` (for ever with
        ``None``) and then report it abandoned. Its ``ShutdownError``, if any,
        is then logged (``foundation.supervision``, WARNING). A Ctrl-C cutting
        the stop short (the ``KeyboardInterrupt`` goes on, the loop closes) is
        logged as WARNING ``supervisor_stop_cut_short``, naming the children
        still running.

        Raises:
            ShutdownError: as :meth:`Supervisor.stop` (the loop is closed anyway);
                from a thread child, when no stopper thread can be started (the
                thread limit; a later call tries again).
        """
        self._stop(self.supervisor._report_stop_cut_short)

    def _stop(self, on_cut_short: Callable[[], object]) -> None:
        """:meth:`stop`, a cut of it reported by ``on_cut_short()`` (an
        Application, which owns this handle, reports it in its own words:
        WARNING ``app_stop_cut_short``, the one record of that Ctrl-C)."""
        if self._closed:
            return
        if threading.current_thread() is self._thread:
            raise self._own_loop_error()
        if in_thread_child_of(self._loop):
            self._stop_in_background()
            return
        try:
            self._call(lambda: watched_stop(self.supervisor))
        except BaseException:
            self._close_loop()
            self._report_cut_short(on_cut_short)
            raise
        self._close_loop()

    def _report_cut_short(self, on_cut_short: Callable[[], object]) -> None:
        """After a stop() that raised, its loop closed: ``on_cut_short()``
        (WARNING ``supervisor_stop_cut_short`` naming the children still
        running, or the owner's words), unless the stop reached its end (a
        ``ShutdownError``).

        Race (a Ctrl-C cutting the wait for the stop): the caller gets the
        ``KeyboardInterrupt``, the loop's end cancels the stop, and its task
        leaves the report to its waiter (``watched_stop``): this call. Was:
        nothing said the stop had not finished, nor named the children left
        running. Read once the loop's thread has ended: the tree no longer
        changes. (A Ctrl-C landing as the stop ended finds it ended: no report.)
        """
        sup = self.supervisor
        if sup.state not in ("stopped", "failed") and not sup._stop_cut_reported:
            sup._stop_cut_reported = True  # one record per stop (as _cancelled_stop's)
            on_cut_short()

    def _stop_in_background(self) -> None:
        """stop() from a thread child: run it in a new thread; return now."""
        with self._lock:
            # Race: two children may ask at once, or one twice: one stopper.
            if self._stopper is not None:
                return
            stopper = self._stopper = threading.Thread(
                target=self._stop_and_report, name=f"{self._thread.name}:stop", daemon=True
            )
        try:
            stopper.start()
        except RuntimeError as exc:  # the thread limit: let a later stop() try again
            with self._lock:
                self._stopper = None
            raise ShutdownError(f"{self._thread.name}: cannot start its stopper: {exc}") from exc

    def _stop_and_report(self) -> None:
        try:
            self.stop()
        except ShutdownError as exc:
            _log.warning("%s (stop requested by a child of its own)", exc)
        except BaseException as exc:  # this thread reports whatever the stop raised
            where = f"the stop of supervisor {self.supervisor.name!r} requested by its child"
            report_unraisable(exc, where, self.supervisor, area="supervision")

    def close(self) -> None:
        """The same as :meth:`stop` (the name every closeable has); idempotent."""
        self.stop()

    @property
    def closed(self) -> bool:
        """True once :meth:`stop` (or :meth:`close`) ran: later calls raise ``Closed``."""
        return self._closed

    def wait(self, timeout: float | None = None) -> None:
        """Block until the supervisor ends.

        Raises:
            RestartIntensityExceeded: it gave up.
            TimeoutError: still running after ``timeout`` seconds.
            SupervisorError: called from the supervisor's own event loop (as
                every call of this handle; it would wait for itself).
        """
        if self._closed:
            failure = self.supervisor.failure
            if failure is not None:
                raise failure
            return
        try:
            self._call(self.supervisor.wait, timeout)
        except TimeoutError as exc:
            if str(exc):
                raise
            raise TimeoutError(
                f"supervisor {self.supervisor.name!r} still running after {timeout} s"
            ) from None

    def which_children(self) -> list[ChildInfo]:
        """See :meth:`Supervisor.which_children`."""
        return self._call_soon(self.supervisor.which_children)

    def count_children(self) -> ChildCounts:
        """See :meth:`Supervisor.count_children`."""
        return self._call_soon(self.supervisor.count_children)

    def which_child(self, id: str) -> ChildInfo:
        """See :meth:`Supervisor.which_child`."""
        return self._call_soon(lambda: self.supervisor.which_child(id))

    def get_childspec(self, id: str) -> ChildSpec:
        """See :meth:`Supervisor.get_childspec`."""
        return self._call_soon(lambda: self.supervisor.get_childspec(id))

    def start_child(self, *args: Any, **kwargs: Any) -> ChildInfo:
        """See :meth:`Supervisor.start_child` and :meth:`DynamicSupervisor.start_child`."""
        return self._call(lambda: self.supervisor.start_child(*args, **kwargs))

    def terminate_child(self, id: str) -> None:
        """See :meth:`Supervisor.terminate_child`.

        Called from a thread child on itself (or on a nested supervisor it
        runs under), it starts the terminate and returns at once, as
        :meth:`stop` does: the terminate waits for this thread to return, so
        waiting here would wait for itself until the child's
        ``shutdown_timeout`` and then report it abandoned. Its
        ``ShutdownError``, if any, is then logged (``foundation.supervision``,
        WARNING).
        """
        if in_thread_child_of(self._loop):
            me = threading.current_thread()
            if self._call_soon(lambda: self._terminate_in_background(id, me)):
                return
        self._call(lambda: self.supervisor.terminate_child(id))

    def _terminate_in_background(self, id: str, me: threading.Thread) -> bool:
        """On the loop: when child ``id``'s run is thread ``me`` or a supervisor
        tree holding it, start its terminate in a task and return True."""
        # Race: the check and the task's creation run in one loop callback, so
        # no restart or terminate of ``id`` comes in between; the task then
        # takes the lock as any terminate_child does (one already in flight
        # finishes first, and this one stops whatever runs then, or finds the
        # child stopped).
        child = self.supervisor._children.get(id)
        run = child.run if child is not None else None
        if run is None or not _holds_thread(run.handle, me):
            return False
        task = self._loop.create_task(
            self.supervisor.terminate_child(id), name=f"{self._thread.name}:terminate {id}"
        )
        task.add_done_callback(partial(self._report_terminate, id))
        return True

    def _report_terminate(self, id: str, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, FoundationError):  # ShutdownError; or the supervisor stopped meanwhile
            _log.warning("%s (terminate_child of %r requested by the child itself)", exc, id)
        elif exc is not None:
            where = f"terminate_child of {id!r} requested by the child itself"
            report_unraisable(exc, where, self.supervisor, area="supervision")

    def restart_child(self, id: str) -> ChildInfo:
        """See :meth:`Supervisor.restart_child`."""
        return self._call(lambda: self.supervisor.restart_child(id))

    def delete_child(self, id: str) -> None:
        """See :meth:`Supervisor.delete_child`."""
        self._call(lambda: self.supervisor.delete_child(id))

    def __enter__(self) -> Self:
        """``self``; ``Closed`` once stopped (a stopped handle is not reused)."""
        if self._closed:
            raise self._closed_error()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.supervisor.state
        return f"<SupervisorThread {self.supervisor.name!r} {state}>"


def _holds_thread(handle: object, thread: threading.Thread) -> bool:
    """Whether a run's ``handle`` is ``thread`` or a supervisor whose tree runs it
    (call on the tree's loop)."""
    from foundation.supervision._supervisor import Supervisor

    if handle is thread:
        return True
    if isinstance(handle, Supervisor):
        return any(
            c.run is not None and _holds_thread(c.run.handle, thread)
            for c in handle._children.values()
        )
    return False


def _settle(outcome: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    """Copy a finished task's result, error or cancellation to the caller's future."""
    import concurrent.futures

    # Race: the caller cancels ``outcome`` on its timeout, from its own thread,
    # possibly between this check and the copy: the copy then has nobody to tell.
    if outcome.cancelled():
        return
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if task.cancelled():
            outcome.cancel()
        elif (error := task.exception()) is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(task.result())
