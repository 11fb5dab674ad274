"""The monitor manager: watches, watcher threads and the pidfd selector.

Where each ``on_down`` runs (it is never called with a manager lock held):

* synchronously inside ``monitor()`` when the agent is already dead
  (``"noproc"``), or when its shared watch has already recorded a Down
  (``spawn_thread`` threads, ``concurrent.futures.Future``: that Down);
* on the ``spawn_thread`` thread itself, as its target returns or raises;
* on the thread that completes a ``concurrent.futures.Future``;
* on the event loop's thread for asyncio tasks and futures;
* on ``foundation-<name>-threads`` for foreign threads (polled);
* on ``foundation-<name>-pidfd`` for OS processes (or
  ``foundation-<name>-procpoll`` with the polling fallback);
* on ``foundation-liveness-redeliver`` for the monitors of a ``spawn_thread``
  thread or a ``concurrent.futures.Future`` that its own thread could not
  tell (out of memory), and of an asyncio future whose loop is closed by then.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import logging
import os
import select
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from foundation.errors import BackendUnavailable, Closed, InvalidConfig, bounded_repr
from foundation.liveness._agents import unsupported
from foundation.liveness._core import (
    CANCELLED,
    NOPROC,
    NORMAL,
    Down,
    ManagerStats,
    Monitor,
    OnDown,
    Watch,
    claim,
    exception_down,
    fire_retrying,
    invoke,
    redeliver_later,
    report,
)
from foundation.liveness._process import (
    OSProcess,
    ProcessAgent,
    down_from_status,
    exit_down,
    open_pidfd,
    pidfd_readable,
    waitid_pidfd,
)
from foundation.liveness._threads import (
    EXC_ATTR,
    SpawnedThread,
    acquire_hook,
    ensure_hook,
    release_hook,
)
from foundation.liveness._types import AGENT_TYPES, NotLoaded, refresh_agent_types

if TYPE_CHECKING:
    # Not imported at run time (see _types and _bind_agent_types below).
    import asyncio
    import concurrent.futures

__all__ = ["MonitorManager"]

_log = logging.getLogger("foundation.liveness")

_PIDFD_OK = hasattr(os, "pidfd_open") and hasattr(select, "epoll")
_HAS_EVENTFD = hasattr(os, "eventfd")
_CF_ATTR = "_foundation_watch"  # the shared watch, stored on the future itself
# Exact types of the hot path in MonitorManager.monitor (subclasses take the general path).
# asyncio and concurrent.futures are not imported here (`import foundation` stays
# cheap): until _bind_agent_types() takes them from AGENT_TYPES these are NotLoaded,
# the type of no agent, which is exact, since no asyncio or concurrent future can
# exist before its module is imported. The general path of monitor() binds them
# when it sees a future, so from the first one on, the hot path serves them.
# Race: threads may bind at once; each stores the same classes.
_NOT_LOADED: Any = NotLoaded  # typed Any: compared with the classes it stands in for
_AIO_TASK: type = NotLoaded
_AIO_FUTURE: type = NotLoaded
_CF_FUTURE: type = NotLoaded
_UNBOUND = True  # some of the three are still NotLoaded


def _get_running_loop() -> Any:
    # Replaced by asyncio's own by _bind_agent_types(); only called for an
    # asyncio future, so asyncio is imported.
    return sys.modules["asyncio"]._get_running_loop()


def _bind_agent_types() -> None:
    global _AIO_TASK, _AIO_FUTURE, _CF_FUTURE, _UNBOUND, _get_running_loop
    if not _UNBOUND:
        return
    types = AGENT_TYPES
    _AIO_TASK, _AIO_FUTURE, _CF_FUTURE = types.aio_task, types.aio_future, types.cf_future
    if _AIO_FUTURE is not _NOT_LOADED:
        _get_running_loop = sys.modules["asyncio"]._get_running_loop
    _UNBOUND = _NOT_LOADED in (_AIO_TASK, _AIO_FUTURE, _CF_FUTURE)


# An asyncio watch's state; _RETRYING: fired, and one redelivery attempt (the
# monitors its fire could not take) is queued on the loop (see redeliver).
_NEW, _ATTACHED, _DETACHED, _RETRYING = 0, 1, 2, 3
# After a defect of a watcher loop itself (not a callback's error): pause this
# long before the next iteration, so that a repeating defect cannot spin hot.
_DEFECT_BACKOFF = 0.1

_W = TypeVar("_W", bound="_ManagedWatch")


_EXIT = Down("exit")  # a process whose exit status cannot be read
_WAKE = (1).to_bytes(8, "little")  # what close() writes to the selector's eventfd
# The pause before a queued asyncio attach that ran out of memory is retried.
_ATTACH_RETRY = 0.05


def _future_down(fut: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> Down:
    """A done future's Down; never raises for want of memory (see ``exception_down``)."""
    if fut.cancelled():
        return CANCELLED
    exc = fut.exception()
    return NORMAL if exc is None else exception_down(exc)


def _thread_down(thread: threading.Thread) -> Down | None:
    if thread.is_alive():
        return None
    # threading.excepthook runs inside the thread before it is marked dead,
    # so by now the exception (if any) has been recorded on it.
    exc = getattr(thread, EXC_ATTR, None)
    return NORMAL if exc is None else exception_down(exc)


def _release_unfired(monitors: dict[Monitor, OnDown]) -> None:
    """A watched asyncio future was collected while pending: it can never complete.

    Its monitors would never fire, yet their managers' tables would keep them
    (and the watch) for ever: a leak per abandoned future. Release them
    without calling them, as ``close()`` does (this runs inside a garbage
    collection, where no callback may run). Race: a concurrent demonitor or
    close pops the same entries; the pop decides.
    """
    while monitors:
        try:
            mon, _ = monitors.popitem()
        except KeyError:
            break
        mon._manager._monitors.pop(mon, None)


class _FutureWatch(Watch):
    """Shared watch of a concurrent.futures.Future: one done-callback, ever
    (and one more per first monitor that lost a race to store its watch).

    It holds the future strongly, as managed watches hold threads and
    processes: a monitor of a pending future that nothing else references
    keeps it (and itself) until ``demonitor()`` or ``close()``. (Holding it
    weakly would free such a future, but costs a GC-tracked weak reference
    per watched future on the registries' register path.)
    """

    __slots__ = ()

    def __call__(self, fut: concurrent.futures.Future[Any]) -> None:
        """The done-callback (the watch itself: no bound method kept per future).

        Runs once, on the thread completing the future: nothing else holds
        this watch to retry from, so monitors it cannot take (out of memory)
        are handed to the redeliverer thread (:func:`fire_retrying`)."""
        fire_retrying(
            self,
            _future_down(fut),
            "a concurrent.futures done-callback (the monitors left are retried)",
        )


class _ManagedWatch(Watch):
    """A watch owned by one manager, in its ``_watches`` under ``id(agent)``.

    It holds the agent strongly, so the id cannot be reused while it is there.
    Detached (callback removed, fd closed) when its last monitor goes.
    """

    __slots__ = ("key", "manager")
    detachable = True

    def __init__(self, manager: MonitorManager, agent: object) -> None:
        super().__init__(agent)
        self.manager = manager
        self.key = id(agent)

    def detach_locked(self) -> None:
        """Stop watching; called with the manager lock held."""
        raise NotImplementedError


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
# twice at once. Race: two threads may create a loop's context at once; the
# loser's is simply used for that one callback (each is only entered on the
# loop's thread).
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


class _ThreadWatch(_ManagedWatch):
    """A foreign thread, polled by the manager's threads poller."""

    __slots__ = ()

    def detach_locked(self) -> None:
        self.manager._polled_threads.pop(self.key, None)


class _ProcessWatch(_ManagedWatch):
    """An OS process: a pidfd in the manager's epoll, or polled (fd == -1)."""

    __slots__ = ("fd",)

    def __init__(self, manager: MonitorManager, agent: object) -> None:
        super().__init__(manager, agent)
        self.fd = -1

    def detach_locked(self) -> None:
        manager = self.manager
        fd = self.fd
        if fd < 0:
            manager._polled_procs.pop(self.key, None)
            return
        # Unregistered first: if that fails (ENOMEM), nothing changed and the
        # watch is still found by its fd (the selector retries it).
        if manager._epoll is not None:
            # Race (Ctrl-C): a release cut right after its unregister left the
            # fd open and in _by_fd; this repeat (ENOENT) finishes it.
            with contextlib.suppress(FileNotFoundError):
                manager._epoll.unregister(fd)
        self.fd = -1
        del manager._by_fd[fd]
        # Closing while the selector may hold this fd number in a batch of
        # events is safe: it re-checks _by_fd and readiness under the lock.
        os.close(fd)


class MonitorManager:
    """Owns monitors and the threads and file descriptors that watch agents.

    One per registry or application (a process-wide default serves
    :func:`foundation.liveness.monitor`). Watcher threads are daemons, named
    ``foundation-<name>-pidfd`` (OS processes, one epoll over pidfds),
    ``foundation-<name>-threads`` (foreign threads, polled every
    ``thread_poll_interval`` seconds) and ``foundation-<name>-procpoll``
    (processes, polled every ``process_poll_interval`` seconds, only where
    ``pidfd_open`` is missing or fails with ENOSYS); each starts on first
    need. A pidfd is open only while at least one monitor watches that
    process. An asyncio future gets one done-callback from this manager on
    its first monitor, kept while the future lives (monitors come and go
    without touching the loop) and removed by ``close()``; the future is held
    weakly, and one collected while still pending (it can never complete) has
    its monitors released without being called. ``close()``
    releases every monitor without calling it, stops and joins the threads
    and closes every fd; every public call then raises ``errors.Closed``
    (``monitor()``, ``active_count()``, ``stats()``), except ``closed``,
    ``close()`` itself (idempotent) and ``repr()``.
    A manager is not usable in a child after ``fork()``.
    A watcher thread outlives anything an ``on_down`` raises (``SystemExit``
    included) and its own defects: each is logged under
    ``foundation.liveness`` and the thread carries on. A death reaches every
    monitor exactly once even if delivering it fails part-way (an
    ``on_down``, or this manager's bookkeeping, out of memory): the failure
    is logged, the other monitors are still called, and monitors that could
    not be taken are retried later, for as long as it takes (the watch is
    kept until all were called; a ``spawn_thread`` thread's or a future's
    death is retried by one process-wide thread,
    ``foundation-liveness-redeliver``, started on the first such failure, so
    the thread ending or completing the agent is not held). ``close()``
    never raises: a step that fails (an fd closed behind its back, out of
    memory) is logged as a WARNING and the rest is still released.

    Example:
        >>> import concurrent.futures
        >>> with MonitorManager(name="doc") as manager:
        ...     fut = concurrent.futures.Future()
        ...     mon = manager.monitor(fut, lambda down: print(down.reason))
        ...     fut.set_result(None)
        ...     mon.active, manager.active_count()
        normal
        (False, 0)
    """

    def __init__(
        self,
        *,
        thread_poll_interval: float = 0.05,
        process_poll_interval: float = 0.01,
        name: str = "foundation",
        _pidfd: bool | None = None,
    ) -> None:
        """``_pidfd=False`` forces the polling fallback for processes (tests)."""
        intervals = []
        for value in (thread_poll_interval, process_poll_interval):
            try:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TypeError
                seconds = float(value)  # OverflowError past the float range
            except (TypeError, OverflowError):
                seconds = -1.0
            if not 0 < seconds < float("inf"):
                raise InvalidConfig(
                    "poll intervals must be positive, finite numbers of seconds, "
                    f"not {bounded_repr(value)}"
                )
            intervals.append(seconds)
        self._name = name
        self._thread_interval, self._process_interval = intervals
        self._lock = threading.Lock()
        self._threads_cond = threading.Condition(self._lock)
        self._procs_cond = threading.Condition(self._lock)
        self._closed = False
        self._released = False  # close() ran to its end: everything released
        self._stopping = threading.Event()  # set by close(): ends a defect backoff early
        # Every live monitor of this manager (for active_count and close).
        self._monitors: dict[Monitor, None] = {}
        # Managed watches by id(agent); guarded by _lock.
        self._watches: dict[int, _ManagedWatch] = {}
        # This manager's asyncio watches by id(future), futures held weakly.
        self._aio: dict[int, _AsyncioWatch] = {}
        # Set (never allocating) when dropping entries of _monitors ran out of
        # memory (a fired monitor, a collected future's): see _sweep.
        self._sweep_needed = False
        self._polled_threads: dict[int, _ThreadWatch] = {}
        self._polled_procs: dict[int, _ProcessWatch] = {}
        self._by_fd: dict[int, _ProcessWatch] = {}
        self._use_pidfd = _PIDFD_OK if _pidfd is None else (_pidfd and _PIDFD_OK)
        self._epoll: select.epoll | None = None
        self._wake_r = -1
        self._wake_w = -1
        self._pidfd_thread: threading.Thread | None = None
        self._thread_poller: threading.Thread | None = None
        self._proc_poller: threading.Thread | None = None
        self._hook_held = False

    # ------------------------------------------------------------------ public

    @property
    def name(self) -> str:
        """The name used in this manager's thread names."""
        return self._name

    @property
    def uses_pidfd(self) -> bool:
        """True if OS processes are watched through pidfds (False: polled)."""
        return self._use_pidfd

    def monitor(self, agent: object, on_down: OnDown) -> Monitor:  # noqa: PLR0912 - hot path inline
        """Call ``on_down(Down)`` once when ``agent`` dies; see :func:`foundation.liveness.monitor`.

        A call cut short (a Ctrl-C) leaves no monitor behind: none counted,
        none to be called.

        Raises:
            UnsupportedAgent: ``agent`` is not a supported kind.
            TypeError: ``on_down`` is not callable.
            Closed: the manager is closed (a ``RuntimeError``).
            BackendUnavailable: the process is out of what the watch needs (an
                fd for a pidfd or ``/proc``, a watcher thread); ``errno`` says
                which (EMFILE, EAGAIN). Nothing was stored: retry later.
            MemoryError: out of memory; nothing was stored.
        """
        # The hot path, for every kind whose watch already exists (registries
        # monitor these): no lock, one object, two dict inserts. Exact type
        # checks pick the watch; a closed manager is caught after the inserts,
        # by _settle (the same logic as _add_shared, inlined).
        t = type(agent)
        if t is SpawnedThread:
            watch: Watch | None = agent._foundation_watch  # type: ignore[attr-defined]
        elif t is _AIO_TASK or t is _AIO_FUTURE:
            # An entry at id(agent) can only be agent's own watch (see _monitor_asyncio).
            watch = self._aio.get(id(agent))
        elif t is _CF_FUTURE:
            watch = agent.__dict__.get(_CF_ATTR)
        else:
            watch = None
        if watch is not None and callable(on_down):
            mon = Monitor(self, watch)
            watch.monitors[mon] = on_down
            try:
                self._monitors[mon] = None
            except BaseException as exc:  # out of memory: the call stores nothing
                return self._take_back(mon, watch, exc)
            if watch.down is None and not self._closed:
                return mon
            try:
                return self._settle(mon, watch)
            except BaseException:  # a Ctrl-C in _settle or claim: see _take_back_cut
                self._take_back_cut(mon, watch)
                raise
        if not callable(on_down):
            raise TypeError("on_down must be callable")
        types = AGENT_TYPES
        if isinstance(agent, types.aio_future):
            _bind_agent_types()
            return self._monitor_asyncio(agent, on_down)
        if isinstance(agent, types.cf_future):
            _bind_agent_types()
            return self._monitor_cf(agent, on_down)
        if isinstance(agent, threading.Thread):
            if isinstance(agent, SpawnedThread):
                return self._add_shared(agent._foundation_watch, on_down)
            return self._monitor_thread(agent, on_down)
        if isinstance(agent, (OSProcess, *types.processes)):
            return self._monitor_process(agent, on_down)
        return self._monitor_unknown(agent, on_down)

    def _monitor_unknown(self, agent: object, on_down: OnDown) -> Monitor:
        """``agent`` is of no class found so far: look again, else refuse it."""
        if refresh_agent_types():  # a class of a module imported since the last look
            return self.monitor(agent, on_down)
        raise unsupported(agent)

    def _monitor_as(self, agent: object, mon: Monitor) -> Monitor:
        """``monitor(agent, mon)`` where ``mon`` (an instance of a ``Monitor``
        subclass that is callable as its own ``on_down``) IS the monitor when the
        agent's watch already exists: one object less per monitor (registries).

        Otherwise (first monitor of a future, foreign threads, processes) a new
        ``Monitor`` whose ``on_down`` is ``mon`` is returned. Either way, the
        returned monitor is the one to ``demonitor()``. Raises as ``monitor``.
        """
        # The same exact-type watch lookup as monitor()'s hot path (kept inline:
        # this is the registries' register path).
        t = type(agent)
        if t is SpawnedThread:
            watch: Watch | None = agent._foundation_watch  # type: ignore[attr-defined]
        elif t is _AIO_TASK or t is _AIO_FUTURE:
            watch = self._aio.get(id(agent))
        elif t is _CF_FUTURE:
            watch = agent.__dict__.get(_CF_ATTR)
        else:
            watch = None
        if watch is None:  # the agent's first monitor here
            if t is _AIO_TASK or t is _AIO_FUTURE:
                return self._monitor_asyncio(agent, mon, mon)  # type: ignore[arg-type]
            if t is _CF_FUTURE:
                return self._monitor_cf(agent, mon, mon)  # type: ignore[arg-type]
            return self.monitor(agent, mon)  # type: ignore[arg-type]
        mon._manager = self
        mon._watch = watch
        watch.monitors[mon] = mon  # type: ignore[assignment]
        try:
            self._monitors[mon] = None
        except BaseException as exc:  # out of memory: the call stores nothing
            return self._take_back(mon, watch, exc)
        if watch.down is None and not self._closed:
            return mon
        try:
            return self._settle(mon, watch)
        except BaseException:  # a Ctrl-C in _settle or claim: see _take_back_cut
            self._take_back_cut(mon, watch)
            raise

    def active_count(self) -> int:
        """Number of monitors currently held (fired and released ones excluded).

        Raises:
            Closed: the manager is closed.
        """
        if self._closed:
            raise self._closed_error()
        if self._sweep_needed:
            self._sweep()
        return len(self._monitors)

    def _sweep(self) -> None:
        """Drop the entries of ``_monitors`` that bookkeeping out of memory left
        behind, so the counts are exact again: monitors a ``fire`` took whose
        removal failed (``_forget_stale``), and the monitors of collected
        pending futures that ``_aio_collected`` could not release.

        Races: as ``_forget_stale`` (a monitor being added is in its watch
        before ``_monitors``, so it is never swept; one being taken on another
        thread is popped here or there, the pop decides). The flag is cleared
        first, so a failure meanwhile sets it again for the next call. Still
        out of memory (or the table changed size under ``list()``), the flag
        stays set and the next call sweeps."""
        self._sweep_needed = False
        table = self._monitors
        try:
            for mon in list(table):
                watch = mon._watch
                if mon not in watch.monitors:
                    table.pop(mon, None)
                elif type(watch) is _AsyncioWatch and watch.down is None and watch.ref() is None:
                    _release_unfired(watch.monitors)
        except (MemoryError, RuntimeError):
            self._sweep_needed = True

    def stats(self) -> ManagerStats:
        """A snapshot of monitors, watched agents, running threads and open fds.

        Raises:
            Closed: the manager is closed.
        """
        if self._sweep_needed and not self._closed:
            self._sweep()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            monitors = list(self._monitors)
            shared = {
                id(m._watch)
                for m in monitors
                if not m._watch.detachable and not isinstance(m._watch, _AsyncioWatch)
            }
            threads = (self._pidfd_thread, self._thread_poller, self._proc_poller)
            fds = len(self._by_fd)
            if self._epoll is not None:
                fds += 2 if self._wake_r == self._wake_w else 3  # epoll + wake-up fd(s)
            return ManagerStats(
                monitors=len(monitors),
                watched_agents=len(self._watches) + len(self._aio) + len(shared),
                threads_running=sum(1 for t in threads if t is not None and t.is_alive()),
                open_fds=fds,
            )

    def close(self) -> None:
        """Release every monitor (without calling it), stop threads, close fds. Idempotent.

        Never raises: a step that fails (an fd closed behind the manager's
        back: EBADF; out of memory) is logged as a WARNING under
        ``foundation.liveness`` and every other step still runs, so whatever
        can be released is. Closing the epoll drops its registrations at
        once: no pidfd is unregistered one by one (an ``epoll_ctl`` that could
        fail with ENOMEM or EBADF). A signal's exception (``KeyboardInterrupt``)
        raised while it waits for its threads stops the wait: it is raised
        once everything is released.
        """
        # Race: a Ctrl-C lands at any call in here. Once _closed was set, the
        # next close() returned at once: a close cut before its release left
        # the watcher threads running and the epoll, the pidfds, the wake-up
        # pipe and the excepthook held for good. So only a close() that ran to
        # its end (_released) makes the next one return; every other runs the
        # steps again (each is idempotent), whatever the cut one did.
        with self._lock:
            if self._released:
                return
            self._closed = True
            threads = [
                t
                for t in (self._pidfd_thread, self._thread_poller, self._proc_poller)
                if t is not None
            ]
            wake_w = self._wake_w
            self._step(self._stopping.set, "ending a watcher's pause")
            self._step(self._threads_cond.notify_all, "waking its thread poller")
            self._step(self._procs_cond.notify_all, "waking its process poller")
        self._step(self._drop_monitors, "releasing its monitors")
        woken = wake_w < 0 or self._step(os.write, "waking its pidfd selector", wake_w, _WAKE)
        interrupted = self._join_watchers(threads, woken=woken)
        self._release_resources()
        self._released = True
        if interrupted is not None:
            raise interrupted

    def _join_watchers(
        self, threads: list[threading.Thread], *, woken: bool
    ) -> BaseException | None:
        """close(): wait for the watcher threads (told to stop) to end; the
        exception that cut the wait short (a Ctrl-C), to raise once released."""
        current = threading.current_thread()
        for t in threads:
            if t is current:  # close() from an on_down on a watcher thread
                continue
            if t is self._pidfd_thread and not woken:
                # It cannot be woken: it ends at its next event (it sees _closed
                # first, or its epoll closed below), a daemon meanwhile.
                continue
            try:
                t.join()
            except BaseException as exc:  # a signal's: KeyboardInterrupt, SIGTERM's
                # Race: a Ctrl-C landing in this join (a second one, as a `with`
                # block's exit unwinds the first) escaped close() before the
                # release: _closed was set, so no later close() released the
                # epoll, the pidfds and the excepthook, for good. The wait stops
                # there (the operator asked to stop); what the threads still do
                # finds _closed and the tables cleared, as for a selector that
                # could not be woken. (CPython 3.11's join, interrupted, may mark
                # a thread still running as stopped: is_alive() is not relied on.)
                return exc
        return None

    def _step(self, action: Callable[..., object], what: str, *args: Any) -> bool:
        """Run ``action(*args)``, one step of ``close()``; False (logged as a
        WARNING) if it raised."""
        try:
            action(*args)
        except Exception as exc:  # close() must finish and never raise: log, carry on
            self._step_failed(what, exc)
            return False
        return True

    def _step_failed(self, what: str, exc: Exception) -> None:
        """Log a failed step of ``close()`` (never raises)."""
        with contextlib.suppress(Exception):  # logging needs memory too
            _log.warning(
                "MonitorManager %r close(): %s failed (%s: %s); carrying on",
                self._name, what, type(exc).__name__, exc, exc_info=exc,
            )  # fmt: skip

    def _drop_monitors(self) -> None:
        """close(): release every monitor without calling it."""
        # Race: a monitor() that checked _closed before we set it inserts into
        # _monitors before re-checking _closed; either we pop it here or it
        # sees _closed and takes itself back.
        monitors = self._monitors
        while monitors:
            try:
                mon, _ = monitors.popitem()
            except KeyError:
                break
            mon._watch.monitors.pop(mon, None)

    def _release_resources(self) -> None:
        """close(), once the watcher threads stopped: detach watches, close fds,
        drop the hook. One step failing skips no other.

        Race: a Ctrl-C lands at any call in here, and the next ``close()`` runs
        it again. Before, each resource was taken out of its attribute and
        released by a later call: a cut in between lost it (the epoll, the
        pidfds, the wake-up fds stayed open for good). Now what can be released
        twice harmlessly (the epoll object, the asyncio callbacks) is forgotten
        once released; an fd number (never closed twice: it may be reused by
        then) is forgotten right before its ``os.close``, with no call, so no
        check point, in between.
        """
        with self._lock:
            self._step(self._forget_watches_locked, "forgetting its watches")
            self._step(self._detach_asyncio_locked, "removing its asyncio done-callbacks")
            self._close_pidfds_locked()
            if self._epoll is not None:
                self._step(self._epoll.close, "closing its epoll")  # idempotent
                self._epoll = None
            wake_r, wake_w = self._wake_r, self._wake_w
            if wake_w >= 0 and wake_w != wake_r:
                self._wake_w = -1  # (no call before the close: see above)
                try:
                    os.close(wake_w)
                except OSError as exc:
                    self._step_failed("closing its wake-up fd", exc)
            if wake_r >= 0:
                self._wake_r = self._wake_w = -1  # (no call before the close: see above)
                try:
                    os.close(wake_r)
                except OSError as exc:
                    self._step_failed("closing its wake-up fd", exc)
            if self._hook_held:
                # Dropped before the release, a reference count: a cut in
                # between keeps our hook installed (it hands every report on to
                # the previous one), never drops another user's reference.
                self._hook_held = False
                self._step(release_hook, "restoring threading.excepthook")

    def _forget_watches_locked(self) -> None:
        # No unregister (epoll_ctl): the pidfds are closed with the epoll.
        for watch in self._watches.values():
            if isinstance(watch, _ProcessWatch):
                watch.fd = -1
        self._watches.clear()
        self._polled_threads.clear()
        self._polled_procs.clear()

    def _detach_asyncio_locked(self) -> None:
        aio = self._aio
        for key in list(aio):
            self._step(aio[key].detach_soon, "removing an asyncio done-callback")
            del aio[key]  # once detached (a cut before: detached again, harmlessly)

    def _close_pidfds_locked(self) -> None:
        by_fd = self._by_fd  # every pidfd of every process watch
        for fd in list(by_fd):
            del by_fd[fd]  # (no call before the close: see _release_resources)
            try:
                os.close(fd)
            except OSError as exc:
                self._step_failed("closing a pidfd", exc)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def __enter__(self) -> MonitorManager:
        """The manager itself; ``Closed`` once closed (a block never runs on it)."""
        if self._closed:
            raise self._closed_error()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._monitors)} monitors"
        return f"<MonitorManager {self._name!r} {state}>"

    # ------------------------------------------------------------------ adding

    def _is_closed(self) -> bool:
        # A call, not an attribute read: another thread may close meanwhile.
        return self._closed

    def _closed_error(self) -> Closed:
        return Closed(f"MonitorManager {self._name!r} is closed")

    def _add_shared(self, watch: Watch, on_down: OnDown, mon: Monitor | None = None) -> Monitor:
        """Add a monitor (``mon``, else a new one) to a watch that lives on the agent
        (lock-free)."""
        if self._closed:
            raise self._closed_error()
        if mon is None:
            mon = Monitor(self, watch)
        else:
            mon._manager = self
            mon._watch = watch
        watch.monitors[mon] = on_down
        try:
            self._monitors[mon] = None
        except BaseException as exc:  # out of memory: the call stores nothing
            return self._take_back(mon, watch, exc)
        try:
            if watch.down is None and not self._is_closed():
                return mon
            return self._settle(mon, watch)
        except BaseException:  # a Ctrl-C at _is_closed, in _settle or claim
            self._take_back_cut(mon, watch)
            raise

    def _take_back(self, mon: Monitor, watch: Watch, exc: BaseException) -> Monitor:
        """The second insert of ``mon`` (into ``_monitors``) failed with ``exc``
        (out of memory): take it back out of its watch and raise ``exc``, so
        that the failed call stored nothing (before, its ``on_down`` was still
        called at the death, and ``close()`` missed it).

        Race: a death delivered between the two inserts took it and calls it
        (or did): the call then succeeded after all, and ``mon`` (inactive)
        is returned; the firing side's pop of ``_monitors`` found nothing, and
        the failed insert left nothing either.
        """
        if watch.monitors.pop(mon, None) is None:
            return mon
        raise exc

    def _take_back_cut(self, mon: Monitor, watch: Watch) -> None:
        """A ``monitor()`` raising once ``mon`` was inserted (a Ctrl-C; or
        ``Closed``, an ``on_down``'s ``SystemExit``, after ``mon`` was taken):
        take ``mon`` back, so the failed call stored nothing.

        Race (Ctrl-C): a cut after the inserts (in ``_settle``, at the start
        of ``claim``, at ``_is_closed``, as the lock is released) left ``mon``
        in its watch and counted, and the caller never got it to release it:
        counted for good if the agent was dead already (its watch never fires
        again), else live until it dies. The ``del`` decides against a death
        on another thread (whoever removes ``mon`` from the watch owns it); it
        is no call, so nothing cuts between it and the count's removal. A
        managed watch it leaves empty is released.
        """
        try:
            del watch.monitors[mon]
        except KeyError:  # taken already (claim, a fire): its count may be left
            self._monitors.pop(mon, None)
            return
        self._monitors.pop(mon, None)
        if watch.detachable and not watch.monitors:
            self._release_watch(watch)

    def _settle(self, mon: Monitor, watch: Watch) -> Monitor:
        """After inserting ``mon``: the watch had fired, or the manager closed.

        Race: either may have happened between the caller's checks and its
        inserts. Whoever pops the monitor from ``watch.monitors`` owns it: the
        firing watch (which calls it), close() (which drops it), or us here.
        """
        if self._is_closed() and watch.monitors.pop(mon, None) is not None:
            self._monitors.pop(mon, None)
            raise self._closed_error()
        if watch.down is not None:
            claim(mon, watch, watch.down)
        return mon

    def _dead(self, agent: object, on_down: OnDown) -> Monitor:
        """The agent is already dead: call on_down("noproc") now; inactive monitor."""
        if self._closed:
            raise self._closed_error()
        watch = Watch(agent)
        watch.down = NOPROC
        mon = Monitor(self, watch)
        invoke(on_down, NOPROC)
        return mon

    def _monitor_cf(
        self, fut: concurrent.futures.Future[Any], on_down: OnDown, mon: Monitor | None = None
    ) -> Monitor:
        attrs = fut.__dict__
        watch = attrs.get(_CF_ATTR)
        if watch is None:
            if self._closed:
                raise self._closed_error()
            if fut.done():
                return self._dead(fut, on_down)
            new = _FutureWatch(fut)
            # Race (Ctrl-C): the done-callback goes on before the watch is
            # stored. Stored first, a cut before the add left a watch that
            # never fires: every later monitor of the future joined it, never
            # told and counted for good. Racing first monitors each add their
            # own; setdefault (atomic) stores one, and a loser's fires with no
            # monitor. It may fire right here if done (then stored fired).
            fut.add_done_callback(new)
            watch = attrs.setdefault(_CF_ATTR, new)
        return self._add_shared(watch, on_down, mon)

    def _monitor_asyncio(
        self, fut: asyncio.Future[Any], on_down: OnDown, mon: Monitor | None = None
    ) -> Monitor:
        # An entry at id(fut) can only be fut's own watch: entries go when
        # their future is freed, and fut is alive here.
        watch = self._aio.get(id(fut))
        if watch is None:
            loop = fut.get_loop()
            if fut.done() or loop.is_closed():
                return self._dead(fut, on_down)
            watch = self._asyncio_watch(fut, loop)
            if watch is None:
                return self._dead(fut, on_down)
        return self._add_shared(watch, on_down, mon)

    def _asyncio_watch(
        self, fut: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> _AsyncioWatch | None:
        """``fut``'s watch, created and attached if it has none; None if its loop closed."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            watch = self._aio.get(id(fut))
            if watch is None:
                watch = _AsyncioWatch(self, fut, loop)
                try:
                    if _get_running_loop() is loop:
                        watch.attach()
                    else:  # add_done_callback is not thread-safe
                        loop.call_soon_threadsafe(watch.attach_queued)
                except RuntimeError:  # the loop closed since the check above
                    return None
                self._aio[watch.ref.key] = watch  # the same int object: 32 B less
        return watch

    def _monitor_thread(self, thread: threading.Thread, on_down: OnDown) -> Monitor:
        # Install the excepthook before looking at the thread, so an exception
        # raised from now on is recorded.
        if not self._hook_held:
            with self._lock:
                if not self._hook_held and not self._closed:
                    acquire_hook()
                    self._hook_held = True
        else:
            ensure_hook()
        if not thread.is_alive():
            return self._dead(thread, on_down)
        return self._monitor_managed(thread, on_down, _ThreadWatch)

    def _monitor_process(self, agent: ProcessAgent, on_down: OnDown) -> Monitor:
        try:
            down = exit_down(agent)
        except OSError as exc:  # /proc unreadable: no fd left (EMFILE, ENFILE), ...
            raise self._exhausted(exc, f"read the state of {bounded_repr(agent)}") from exc
        if down is not None:
            return self._dead(agent, on_down)
        return self._monitor_managed(agent, on_down, _ProcessWatch)

    def _exhausted(self, exc: BaseException, what: str) -> BackendUnavailable:
        """The typed error for a resource the watch needs (an fd, a thread) that
        the process has run out of; nothing was stored. ``errno`` is kept."""
        if isinstance(exc, BackendUnavailable):
            return exc  # typed already (by _start or a /proc read below us)
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EAGAIN
        return BackendUnavailable(code, f"MonitorManager {self._name!r} cannot {what}: {exc}")

    def _monitor_managed(
        self, agent: object, on_down: OnDown, factory: Callable[[MonitorManager, object], _W]
    ) -> Monitor:
        mon: Monitor | None = None
        try:
            with self._lock:
                watch = self._watch_locked(agent, factory)
                try:
                    mon = self._add_managed(watch, on_down)
                except BaseException:  # out of memory: store nothing, keep no unused watch
                    if not watch.monitors and self._watches.get(watch.key) is watch:
                        self._release_locked(watch)
                    raise
            if watch.down is not None:
                claim(mon, watch, watch.down)
        except BaseException:
            # Race (Ctrl-C): a cut as the lock is released or in claim() left
            # mon in its watch (live, or dead for good) and counted, with no
            # handle to release it: take it back (mon set: inserted).
            if mon is not None:
                self._take_back_cut(mon, watch)
            raise
        return mon

    def _watch_locked(
        self, agent: object, factory: Callable[[MonitorManager, object], _W]
    ) -> _ManagedWatch:
        """``agent``'s managed watch, made (and attached) if it has none. Lock held."""
        if self._closed:
            raise self._closed_error()
        key = id(agent)
        watch = self._watches.get(key)
        if watch is not None and not watch.monitors and watch.down is None:
            # Race (Ctrl-C): an empty, unfired watch still here is one being
            # released; a release cut part-way may have detached it already
            # (reused, it would never fire): finish that, watch anew.
            self._release_locked(watch)
            watch = None
        if watch is None:
            watch = factory(self, agent)
            if self._attach_locked(watch):
                self._watches[key] = watch
            else:  # gone between the liveness check and the attach
                watch.down = NOPROC
        return watch

    def _add_managed(self, watch: _ManagedWatch, on_down: OnDown) -> Monitor:
        """Insert a monitor into a managed watch; called with the lock held."""
        mon = Monitor(self, watch)
        watch.monitors[mon] = on_down
        try:
            self._monitors[mon] = None
        except BaseException as exc:  # out of memory: the caller drops the watch if unused
            return self._take_back(mon, watch, exc)
        return mon

    def _attach_locked(self, watch: _ManagedWatch) -> bool:
        """Start watching; False if the agent is already gone. Lock held."""
        if isinstance(watch, _ThreadWatch):
            self._thread_poller = self._poll_locked(
                watch, self._thread_poller, "threads",
                table=self._polled_threads, cond=self._threads_cond,
                interval=self._thread_interval, check=_thread_down,
            )  # fmt: skip
            return True
        assert isinstance(watch, _ProcessWatch)
        if self._use_pidfd:
            attached = self._attach_pidfd_locked(watch)
            if attached is not None:
                return attached
        self._proc_poller = self._poll_locked(
            watch, self._proc_poller, "procpoll",
            table=self._polled_procs, cond=self._procs_cond,
            interval=self._process_interval, check=exit_down,
        )  # fmt: skip
        return True

    def _poll_locked(
        self,
        watch: _ManagedWatch,
        poller: threading.Thread | None,
        role: str,
        *,
        table: dict[int, Any],
        cond: threading.Condition,
        interval: float,
        check: Callable[[Any], Down | None],
    ) -> threading.Thread:
        """Hand ``watch`` to the poller of ``table`` (started if need be, as
        ``_poll_loop(table, cond, interval, check)``); returns the poller. Lock held."""
        if poller is None:
            poller = self._start(role, self._poll_loop, table, cond, interval, check)
        elif not table:
            cond.notify_all()  # wakes it from its idle wait
        table[watch.key] = watch
        return poller

    def _attach_pidfd_locked(self, watch: _ProcessWatch) -> bool | None:
        """Watch a process by pidfd: False if it is gone, None if no pidfd_open. Lock held."""
        try:
            fd = open_pidfd(watch.agent)  # type: ignore[arg-type]
        except OSError as exc:
            if exc.errno != errno.ENOSYS:  # EMFILE and the like: nothing was stored
                raise self._exhausted(exc, "open a pidfd") from exc
            self._use_pidfd = False  # kernel without pidfd_open: poll from now on
            return None
        if fd is None:
            return False
        try:
            self._ensure_epoll_locked()
            assert self._epoll is not None
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):  # no fd for the epoll, ENOMEM/ENOSPC to register
                raise self._exhausted(exc, "watch a pidfd") from exc
            raise
        watch.fd = fd
        self._by_fd[fd] = watch
        return True

    # ------------------------------------------------------------------ releasing

    def _release_watch(self, watch: Watch) -> None:
        """The last monitor of a managed watch went: detach it (unless re-used)."""
        assert isinstance(watch, _ManagedWatch)
        with self._lock:
            # Race: a monitor() may have added to this watch since the caller
            # saw it empty; it did so under this lock, so this check is exact.
            if watch.monitors or self._watches.get(watch.key) is not watch:
                return
            self._release_locked(watch)

    def _release_locked(self, watch: _ManagedWatch) -> None:
        """Detach ``watch`` (no monitor left), then drop it from ``_watches``. Lock held.

        Race (Ctrl-C): it is forgotten last. Before, it left ``_watches``
        first: a cut at the detach left its pidfd open and registered (or the
        thread polled) until the agent died or the manager closed, since the
        next ``demonitor()`` no longer found it. Now a cut leaves it in
        ``_watches``, empty and unfired, maybe half detached: the next
        ``demonitor()`` of its monitor (``_settle_released``) or ``monitor()``
        of its agent (``_watch_locked``) runs this again (``detach_locked`` is
        idempotent).
        """
        try:
            watch.detach_locked()
        except OSError as exc:  # epoll_ctl out of memory: the selector retries
            # The pidfd stays registered in _by_fd: when its process exits
            # the selector fires it (no monitor left) and detaches it; close()
            # closes it otherwise. demonitor() itself raises nothing.
            report(exc, "liveness: detaching a released process watch", self)
        del self._watches[watch.key]

    # ------------------------------------------------------------------ threads

    def _start(self, role: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        """Start a watcher thread; ``BackendUnavailable`` if none can be started."""
        thread = threading.Thread(
            target=target, args=args, name=f"foundation-{self._name}-{role}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # "can't start new thread" (EAGAIN: thread limit)
            raise self._exhausted(exc, f"start thread {thread.name!r}") from exc
        return thread

    def _poll_loop(
        self,
        table: dict[int, Any],
        cond: threading.Condition,
        interval: float,
        check: Callable[[Any], Down | None],
    ) -> None:
        """Every ``interval`` s, check each watched agent; fire the dead ones.

        Nothing escapes an iteration: see :meth:`_survive`. A ``MemoryError``
        anywhere in a round (the snapshot copy, a check, the wait itself) is
        logged once per run of such rounds and the round retried after
        ``interval`` (each would log the same; a watch not yet fired stays in
        ``table``, so its death is seen by the next round that has memory).
        """
        out_of_memory = False
        while True:
            try:
                with self._lock:
                    while not self._closed and not table:
                        cond.wait()
                    if self._closed:
                        return
                    # A copy of every watch: MemoryError here too (inside the try).
                    snapshot: list[_ManagedWatch] = list(table.values())
                self._poll_once(table, snapshot, check)
                out_of_memory = False
            except MemoryError as exc:
                if not out_of_memory:
                    out_of_memory = True
                    with contextlib.suppress(MemoryError):  # logging needs memory too
                        report(exc, "liveness poller (out of memory; retrying each interval)", self)
            except BaseException as exc:  # this thread outlives anything: report, carry on
                self._survive(exc, "liveness poller")
            if self._pause(cond, interval):
                return

    def _pause(self, cond: threading.Condition, interval: float) -> bool:
        """Wait ``interval`` s between two poll rounds (cut short by ``close()``);
        True once the manager is closed.

        ``Condition.wait`` allocates a lock: out of memory it raises before
        waiting, so the pause is then a plain sleep (``close()`` is seen at the
        next round, ``interval`` later) rather than a hot loop."""
        try:
            with self._lock:
                if self._is_closed():
                    return True
                cond.wait(interval)
        except MemoryError:
            time.sleep(interval)
        return False

    def _poll_once(
        self,
        table: dict[int, Any],
        snapshot: list[_ManagedWatch],
        check: Callable[[Any], Down | None],
    ) -> None:
        """One pass of a poller: fire the watches in ``snapshot`` whose agent died.

        A dead agent's watch stays in ``table`` (and ``_watches``) until its
        ``fire`` returned with every monitor called: if it could not take them
        all (out of memory), the next round finds the agent dead again and
        fires the rest (``fire`` keeps the first Down). One watch's failure
        does not stop the others; the first exception is raised at the end.
        Races: while it fires, a ``monitor()`` finds the watch, sees its
        ``down`` and calls its own ``on_down`` (whoever pops a monitor calls
        it); a last ``demonitor()`` detaches it, and the removal below then
        finds another entry, or none, and leaves it.
        """
        dead: list[tuple[_ManagedWatch, Down]] = []
        for watch in snapshot:
            try:
                down = check(watch.agent)
            except Exception as exc:  # never let one odd agent stop the poller
                report(exc, f"liveness check of {watch.agent!r}")
                continue
            if down is not None:
                dead.append((watch, down))
        escaped: BaseException | None = None
        for watch, down in dead:
            if table.get(watch.key) is not watch:
                continue  # released meanwhile (an atomic read: no lock needed)
            try:
                watch.fire(down)
            except BaseException as exc:
                escaped = escaped or exc
            if watch.monitors:
                continue  # not all taken: retried next round (still in table)
            with self._lock:
                if table.get(watch.key) is watch:
                    del table[watch.key]
                if self._watches.get(watch.key) is watch:
                    del self._watches[watch.key]
        if escaped is not None:
            raise escaped

    def _survive(self, exc: BaseException, where: str) -> None:
        """Report what escaped a watcher loop's iteration, so the loop can carry on.

        Callbacks' own errors never get here (``invoke`` reports them). What
        does is either a ``BaseException`` a callback raised (``SystemExit``:
        reported, no pause) or an ``Exception`` of the loop's own code, a
        defect that may repeat on every iteration: reported, then a short
        pause (cut short by ``close()``) so the thread cannot spin hot.
        Never raises: out of memory (``Event.wait`` allocates a lock), the
        pause is a plain sleep (before, that ``MemoryError`` killed the thread).
        """
        report(exc, where, self)
        if isinstance(exc, Exception):
            try:
                self._stopping.wait(_DEFECT_BACKOFF)
            except MemoryError:  # not cut short by close() then, still paused
                time.sleep(_DEFECT_BACKOFF)  # sleep-ok: backoff after a defect

    def _ensure_epoll_locked(self) -> None:
        if self._epoll is not None:
            return
        epoll = select.epoll()
        wake_r = wake_w = -1
        try:
            if _HAS_EVENTFD:
                wake_r = wake_w = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            else:  # pragma: no cover - Linux has eventfd
                wake_r, wake_w = os.pipe()
            epoll.register(wake_r, select.EPOLLIN)
        except BaseException:  # out of fds or epoll memory: close what was opened
            epoll.close()
            for fd in {wake_r, wake_w} - {-1}:
                os.close(fd)
            raise
        try:
            thread = self._start("pidfd", self._pidfd_loop, epoll, wake_r)
        except BaseException:  # no thread: leave no epoll that nobody waits on
            epoll.close()
            os.close(wake_r)
            if wake_w != wake_r:
                os.close(wake_w)
            raise
        self._epoll = epoll
        self._wake_r, self._wake_w = wake_r, wake_w
        self._pidfd_thread = thread

    def _pidfd_loop(self, epoll: select.epoll, wake_r: int) -> None:
        """Wait on every pidfd at once; the wake-up fd only ever means "stop".

        Nothing escapes it while the manager is open (see :meth:`_survive`):
        one odd process, or a defect, must never stop the selector, or every
        later death would go unseen.
        """
        while not self._closed:
            try:
                events = epoll.poll()
            except BaseException as exc:
                if self._is_closed():  # closed under us by close() called from a callback
                    return
                self._survive(exc, "pidfd selector")
                continue
            for fd, _ in events:
                if self._is_closed() or fd == wake_r:
                    return
                try:
                    self._pidfd_ready(fd)
                except BaseException as exc:
                    self._survive(exc, "pidfd selector")

    def _pidfd_ready(self, fd: int) -> None:
        """Fire the watch whose pidfd is ready, then forget it.

        The watch stays findable (in ``_by_fd``, ``_watches`` and the epoll,
        its fd open) until its ``fire`` returned with every monitor called.
        Whatever fails before (reading the status, taking the monitors: out of
        memory), the epoll, level-triggered, reports the fd again and this
        runs again after the selector's pause; ``fire`` keeps the first Down
        and calls only the monitors not yet called. Nothing is lost, nothing
        is called twice.
        """
        with self._lock:
            watch = self._by_fd.get(fd)
            # Race: the fd may have been released (and closed) after epoll
            # reported it, and its number reused by another process's pidfd:
            # confirm this fd really is ready before believing the event.
            if watch is None or not pidfd_readable(fd):
                return
            # Race: a last demonitor() may detach the watch (and close fd) as
            # soon as the lock is released: read the status (a non-blocking
            # waitid) while holding it. Only the owner's wait (no fd) is outside.
            status = None if watch.down is not None else waitid_pidfd(fd)
        down = watch.down
        if down is None:
            try:
                down = down_from_status(watch.agent, status)  # type: ignore[arg-type]
            except MemoryError:
                # Out of memory building the record (or waiting for the owner's
                # code): not "unreadable". Nothing was reaped (WNOWAIT) and the
                # fd stays registered, so the selector runs this again after its
                # pause (_survive reports it) and reads the status anew. Before,
                # the death was told as Down("exit") without its exit code (or
                # a kill as an exit), for good: fire keeps the first Down.
                raise
            except Exception as exc:  # the status is unreadable, but the process is gone
                report(exc, f"reading the exit status of {watch.agent!r}", self)
                down = _EXIT
        watch.fire(down)
        if watch.monitors:  # raced by a monitor() that takes itself, or else a
            return  # late fire: the fd is still registered, so this runs again
        with self._lock:
            # Race: detached meanwhile by a last demonitor() (fd closed, maybe
            # reused by another watch): then the entry is not ours to remove.
            if self._by_fd.get(fd) is not watch:
                return
            if self._watches.get(watch.key) is watch:
                del self._watches[watch.key]
            watch.detach_locked()  # unregister, drop from _by_fd, close fd
