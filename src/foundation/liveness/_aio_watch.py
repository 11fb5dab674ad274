"""The asyncio watch: one done-callback per future and manager, the future held weakly."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import weakref
from typing import TYPE_CHECKING, Any

from foundation.liveness._core import CANCELLED, Down, Watch, fire_retrying, redeliver_later, report
from foundation.liveness._watches import _future_down, _release_unfired

if TYPE_CHECKING:
    # Not imported at run time (see _types).
    import asyncio

    from foundation.liveness._manager import MonitorManager

__all__ = [
    "_ATTACHED",
    "_ATTACH_RETRY",
    "_DETACHED",
    "_LOOP_CONTEXTS",
    "_NEW",
    "_RETRYING",
    "_AioRef",
    "_AsyncioWatch",
    "_aio_collected",
    "_loop_context",
]


def _get_running_loop() -> Any:
    # Replaced by asyncio's own by _bind_agent_types(); only called for an
    # asyncio future, so asyncio is imported.
    return sys.modules["asyncio"]._get_running_loop()


# An asyncio watch's state; _RETRYING: fired, and one redelivery attempt (the
# monitors its fire could not take) is queued on the loop (see redeliver).
_NEW, _ATTACHED, _DETACHED, _RETRYING = 0, 1, 2, 3
# The pause before a queued asyncio attach that ran out of memory is retried.
_ATTACH_RETRY = 0.05


class _AioRef(weakref.ref):  # type: ignore[type-arg]
    """The weak reference ``_aio`` holds a future by: it carries the entry's
    manager and key, and its (shared, module-level) callback drops the entry."""

    __slots__ = ("key", "manager")
    key: int
    manager: MonitorManager


# One empty context per event loop for this module's done-callbacks, instead of
# the copy of the caller's context add_done_callback would make per future (64 B
# each). Safe to share: a loop runs one callback at a time on one thread, and
# ours never runs another callback synchronously, so a context is never entered
# twice at once. It stays empty: every on_down runs in a fresh context of its
# own (``fire`` -> ``invoke_fresh``, per death, not per watched future), so
# nothing one listener sets is seen by another's. Race: two threads may create a
# loop's context at once; the loser's is simply used for that one callback
# (each is only entered on the loop's thread).
_LOOP_CONTEXTS: weakref.WeakKeyDictionary[Any, contextvars.Context] = weakref.WeakKeyDictionary()


def _loop_context(loop: asyncio.AbstractEventLoop) -> contextvars.Context | None:
    try:
        ctx = _LOOP_CONTEXTS.get(loop)
        if ctx is None:
            ctx = _LOOP_CONTEXTS.setdefault(loop, contextvars.Context())
    except TypeError:  # a loop type without weak references: a copy per future
        return None
    return ctx


def _aio_collected(ref: _AioRef) -> None:
    """The weakref callback: a watched future was freed; drop its entry.

    Runs while the future is being freed, so no other object can have its id
    yet: the entry at this key can only be this future's watch. A watch that
    fired keeps its monitors: any left are being retried by whoever holds it
    (the redeliverer: :meth:`_AsyncioWatch.fire_on_loop`), the death being
    known; releasing them here lost that death. A pending one's monitors are
    released. If that runs out of memory (``popitem``), the rest are released
    by the manager's next ``active_count()``/``stats()`` (``_sweep``;
    ``close()`` drops them anyway): nothing here may allocate to keep them,
    nor take a lock (a collection can run on any thread, holding any lock).
    """
    manager = ref.manager
    watch = manager._aio.pop(ref.key, None)
    if watch is None or watch.down is not None:
        return
    try:
        _release_unfired(watch.monitors)
    except BaseException as exc:  # out of memory: before, these stayed counted for ever
        manager._sweep_needed = True  # an attribute store: allocates nothing
        with contextlib.suppress(BaseException):  # logging needs memory too
            report(exc, "liveness: releasing a collected future's monitors (retried)", manager)


class _AsyncioWatch(Watch):
    """This manager's one done-callback on an asyncio future: the watch itself.

    Added on the first monitor and kept while the future lives (monitors come
    and go as dict entries: no callback per monitor, nothing accumulates on a
    long-lived task); removed by ``close()``. The manager finds it in
    ``_aio[id(fut)]`` but holds the future only weakly (``_AioRef``): the
    entry is dropped when the future is collected, before its id can be
    reused. The watch is its own done-callback and the ref carries the key,
    so a watch allocates no bound methods (memory per entry).

    ``attach``/``detach``/``__call__`` all run on the loop's thread (directly,
    or queued with call_soon_threadsafe), so ``state`` needs no lock: a queued
    attach that arrives after a detach sees _DETACHED and does nothing. Race:
    only ``redeliver`` (the redeliverer thread) writes it elsewhere, moving a
    fired watch between _DETACHED and _RETRYING; a lost write there costs at
    most one extra queued attempt, which finds no monitor left.
    """

    __slots__ = ("loop", "ref", "state")

    def __init__(
        self, manager: MonitorManager, fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(None)
        ref = _AioRef(fut, _aio_collected)
        ref.key = id(fut)
        ref.manager = manager
        self.ref = ref
        self.loop = loop
        self.state = _NEW

    def target(self) -> object:
        return self.ref()

    def attach(self) -> None:
        fut = self.ref()
        if self.state == _NEW and fut is not None:
            # The state only once the callback is on: out of memory (the
            # future's callback list grows) it stays _NEW, and can be retried.
            fut.add_done_callback(self, context=_loop_context(self.loop))
            self.state = _ATTACHED

    def attach_queued(self) -> None:
        """``attach``, queued on the loop by a ``monitor()`` from another thread.

        Those monitors were returned already: out of memory, the attach is
        retried ``_ATTACH_RETRY`` s later rather than lost (before, the
        state said attached and no callback was on: the monitors waited, and
        stayed counted, until the future was collected)."""
        try:
            self.attach()
        except BaseException as exc:
            report(exc, "asyncio watch: adding its done-callback (retried)", self.ref())
            try:
                self.loop.call_later(_ATTACH_RETRY, self.attach_queued)
            except BaseException as again:  # loop closed, or still no memory
                report(again, "asyncio watch: no done-callback (released when collected)")

    def detach(self) -> None:
        fut = self.ref()
        if self.state == _ATTACHED and fut is not None:
            fut.remove_done_callback(self)
        self.state = _DETACHED

    def detach_soon(self) -> None:
        """Detach on the loop's thread (now, if this is it)."""
        if _get_running_loop() is self.loop:
            self.detach()
            return
        with contextlib.suppress(RuntimeError):  # loop closed: no callback runs again
            self.loop.call_soon_threadsafe(self.detach)

    def __call__(self, fut: asyncio.Future[Any]) -> None:
        """The done-callback."""
        if self.state == _DETACHED:  # the manager closed after it was scheduled
            return
        self.state = _DETACHED
        self.fire_on_loop(_future_down(fut))

    def fire_loop_closed(self) -> None:
        """Its loop is closed (seen by the manager's poller): fire now, on the
        poller's thread, as no callback of that loop ever runs again.

        A future still pending can never complete: ``Down("cancelled")`` (it
        was abandoned, as asyncio's own ``run()`` cancels what is left; before,
        it stayed watched, and a registry kept its entry, for ever).

        Races: a closed loop runs nothing and cannot be running (``close()``
        refuses a running loop), so no done-callback of ours runs during or
        after this, and ``state`` is ours to write. A future completed just
        before the close had its done-callbacks queued, then dropped unrun
        by the close: it is done, so its own Down (normal, exception,
        cancelled) is told here. One whose callback did run has fired
        (``down`` set): left alone (monitors it could not take are the
        redeliverer's). An attach queued by a ``monitor()`` from another
        thread and dropped by the close is the same as a pending future.
        """
        fut = self.ref()
        if fut is None or self.down is not None:  # collected (entry dropped), or fired
            return
        self.state = _DETACHED
        down = _future_down(fut) if fut.done() else CANCELLED
        fire_retrying(self, down, "asyncio watch of a closed loop (the monitors left are retried)")

    def fire_on_loop(self, down: Down) -> None:
        """``fire``, on the loop's thread; monitors it could not take (out of
        memory: the rest stay in ``monitors``) are handed to the redeliverer
        thread, which queues one attempt at a time on the loop, and delivers
        on its own thread once the loop is closed (:meth:`redeliver`). Before,
        the retry was a ``call_later`` on the loop: dropped unrun when the
        loop closed first (the end of ``asyncio.run``), it left those
        monitors untold and counted for ever. Race: a ``close()`` meanwhile
        drops them (the retry then finds none); a ``demonitor()`` takes its
        own."""
        try:
            self.fire(down)
        except BaseException as exc:
            if not self.monitors:
                raise  # every monitor was called: an on_down's SystemExit & co
            report(exc, "asyncio watch (monitors left are retried)", self.ref())
            # Race/trade-off: should even the hand-over fail (out of memory
            # twice), redeliver_later retries here, pausing the loop (1 ms, up
            # to 0.5 s) until it can: a call_later instead would be dropped if
            # the loop closed first, and the death never told.
            redeliver_later(self)

    def redeliver(self) -> bool:
        """The redeliverer's retry (True once no monitor is left to tell).

        At most one attempt is queued on the loop's thread (where ``on_down``
        runs for asyncio) at a time: ``state`` is ``_RETRYING`` until it ran.
        A loop that is stopped but not closed keeps that one attempt until it
        runs again (before, one more was queued every round, twice a second,
        for as long as the loop stayed stopped: unbounded memory). Once the
        loop is closed (it dropped the attempt unrun), or on the loop's own
        thread (``redeliver_later``'s fallback), the monitors are told here.
        The redeliverer keeps the watch until no monitor is left."""
        down = self.down
        if down is None:  # handed over unfired: never (see _aio_collected)
            return True
        if not self.monitors:
            return True
        # Race: the loop may close right after this check; the queued attempt
        # is then dropped unrun and the next round, seeing it closed, tells
        # the monitors here (fire is safe against the loop's attempt too).
        if self.loop.is_closed() or _get_running_loop() is self.loop:
            return super().redeliver()
        if self.state == _RETRYING:
            return False  # the queued attempt has not run yet: queue no other
        # Race: set before queueing, since the attempt may run (and reset it)
        # before call_soon_threadsafe returns here.
        self.state = _RETRYING
        try:
            self.loop.call_soon_threadsafe(self._fire_once, down)
        except RuntimeError:  # the loop closed meanwhile: deliver on this thread
            self.state = _DETACHED
            return super().redeliver()
        except BaseException:  # out of memory: retried next round
            self.state = _DETACHED
            return False
        return False  # done once the attempt emptied monitors (seen next round)

    def _fire_once(self, down: Down) -> None:
        """A redelivery attempt on the loop; a failure is left to the redeliverer.

        Race: ``state`` is reset before firing, so a round of the redeliverer
        that sees monitors left meanwhile may queue the next attempt while
        this one runs (at most one more, which finds what this one left)."""
        self.state = _DETACHED
        try:
            self.fire(down)
        except BaseException:
            if not self.monitors:
                raise  # every monitor was called: an on_down's SystemExit & co
