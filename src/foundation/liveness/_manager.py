"""The monitor manager: watches, watcher threads and the pidfd selector.

Where each ``on_down`` runs (it is never called with a manager lock held):

* synchronously inside ``monitor()`` when the agent is already dead
  (``"noproc"``), or when its shared watch has already recorded a Down
  (``spawn_thread`` threads, ``concurrent.futures.Future``: that Down);
* on the ``spawn_thread`` thread itself, as its target returns or raises;
* on the thread that completes a ``concurrent.futures.Future``;
* on the event loop's thread for asyncio tasks and futures;
* on ``foundation-<name>-threads`` for foreign threads (polled), and for
  asyncio futures still pending when their loop is closed;
* on ``foundation-<name>-pidfd`` for OS processes (or
  ``foundation-<name>-procpoll`` with the polling fallback, and for a
  process whose exit status only its owner can read: a forkserver
  ``multiprocessing.Process``, a child reaped by other code; it waits there,
  briefly, for the owner to store the code);
* on ``foundation-liveness-redeliver`` for the monitors of a ``spawn_thread``
  thread or a ``concurrent.futures.Future`` that its own thread could not
  tell (out of memory), and of an asyncio future whose loop is closed by then.

The manager is split by job: the watches (``_watches``, ``_aio_watch``), the
watcher threads (``_watchers``), managed watches (``_managed``) and
``close()``'s steps (``_closing``) are its bases' modules; the hot path
(``monitor()`` and its helpers) is here.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from foundation.errors import BackendUnavailable, InvalidConfig, bounded_repr
from foundation.liveness import _aio_watch
from foundation.liveness._agents import unsupported
from foundation.liveness._aio_watch import _AsyncioWatch
from foundation.liveness._closing import _Closing
from foundation.liveness._core import (
    NOPROC,
    Down,
    ManagerStats,
    Monitor,
    OnDown,
    Watch,
    claim,
    invoke,
    report,
)
from foundation.liveness._process import (
    OSProcess,
    down_from_status,
    pidfd_readable,
    polled_down,
    waitid_pidfd,
)
from foundation.liveness._threads import SpawnedThread
from foundation.liveness._types import AGENT_TYPES, NotLoaded, refresh_agent_types
from foundation.liveness._watches import (
    _CF_ATTR,
    _FutureWatch,
    _ManagedWatch,
    _ProcessWatch,
    _release_unfired,
    _ThreadWatch,
)

if TYPE_CHECKING:
    # Not imported at run time (see _types and _bind_agent_types below).
    import asyncio
    import concurrent.futures

# Tests import _AsyncioWatch and patch pidfd_readable here: both are used here.
__all__ = ["MonitorManager"]

_PIDFD_OK = hasattr(os, "pidfd_open") and hasattr(select, "epoll")
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
        _aio_watch._get_running_loop = _get_running_loop  # its asyncio watches' too
    _UNBOUND = _NOT_LOADED in (_AIO_TASK, _AIO_FUTURE, _CF_FUTURE)


_EXIT = Down("exit")  # a process whose exit status cannot be read
_WAKE = (1).to_bytes(8, "little")  # what close() writes to the selector's eventfd

# Every manager not yet collected, for the fork hook below (added once per
# manager, in __init__: off every monitor/demonitor path).
_MANAGERS: weakref.WeakSet[MonitorManager] = weakref.WeakSet()


def _inherited_after_fork() -> None:
    """``os.register_at_fork(after_in_child=...)``: every manager of the parent
    is inherited by a forked child, sharing the parent's epoll instance, wake-up
    eventfd and pidfds (the same open files, not copies). Used from the child,
    they broke the PARENT: a ``close()`` woke (stopped) the parent's selector
    for good, a ``demonitor()`` unregistered the parent's pidfd, a pidfd the
    child registered spun the parent's selector. So each is marked here, in
    the child, as inherited: closed (every ``monitor()`` raises ``Closed``,
    saying so, with no check added to the hot path), and its ``close()`` /
    ``demonitor()`` only close the child's own fd copies, never an
    ``epoll_ctl`` nor a write to the wake-up fd. Its locks are new: a lock a
    parent thread held at the fork stays held for ever in the child.

    Race: none in the child (only the forking thread exists there); the
    WeakSet is copied first, as a collection may drop entries meanwhile."""
    for manager in list(_MANAGERS):
        manager._forked = True
        manager._closed = True
        lock = manager._lock = threading.Lock()
        manager._threads_cond = threading.Condition(lock)
        manager._procs_cond = threading.Condition(lock)
        manager._stopping = threading.Event()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_inherited_after_fork)


class MonitorManager(_Closing):
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
    its monitors released without being called. One still pending when its
    loop is closed is told ``Down("cancelled")`` on the threads poller (which
    then also checks each distinct loop of this manager's asyncio futures for
    ``is_closed()``: every ``thread_poll_interval`` while it polls foreign
    threads, else every ``LOOP_CHECK_INTERVAL``, one second: no wake-up 20
    times a second for a program that only monitors tasks). ``close()``
    releases every monitor without calling it, stops and joins the threads
    and closes every fd; every public call then raises ``errors.Closed``
    (``monitor()``, ``active_count()``, ``stats()``), except ``closed``,
    ``close()`` itself (idempotent) and ``repr()``.
    A manager is not usable in a child after ``fork()``: there it is closed
    (``monitor()`` raises ``Closed``, saying it was inherited; ``closed`` is
    True) and nothing the child does with it (``demonitor()``, ``close()``,
    a registry's ``unregister()``/``close()``) reaches the parent's watcher
    threads or their epoll: the child's ``close()`` only closes its own copies
    of the fds. Create a new manager (or registry) in the child.
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
        # The distinct event loops of those watches, by id (held, so the id is
        # theirs), checked for is_closed() by the threads poller; guarded by _lock.
        self._aio_loops: dict[int, Any] = {}
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
        self._forked = False  # set in a forked child (_inherited_after_fork)
        # fds the epoll reported with no watch, in the selector's previous and
        # current round (_drop_stray_locked; the selector thread's only)
        self._strays: set[int] = set()
        self._strays_now: set[int] = set()
        # pidfd numbers released (detach_locked) since the selector's last
        # round ended: a number reported with no watch is then a stale event,
        # never a stray (see _drop_stray_locked); bounded by the fd limit
        self._fds_released: set[int] = set()
        self._pid = os.getpid()  # the creating process (for Closed's message)
        _MANAGERS.add(self)

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
        if self._is_closed():  # Closed before any argument is judged
            raise self._closed_error()
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
            forked = self._forked
            # A forked child has none of the watcher threads (they are the
            # parent's): nothing to wake or join.
            threads = [
                t
                for t in (self._pidfd_thread, self._thread_poller, self._proc_poller)
                if t is not None and not forked
            ]
            self._step(self._stopping.set, "ending a watcher's pause")
            self._step(self._threads_cond.notify_all, "waking its thread poller")
            self._step(self._procs_cond.notify_all, "waking its process poller")
        self._step(self._drop_monitors, "releasing its monitors")
        # Race: two close() calls at once (the second no longer returns early,
        # see above): the other may have closed the wake-up fd meanwhile, and
        # an unrelated open() been given its number. Read and written under the
        # lock _release_resources closes it under: never a stale fd number.
        # In a forked child the wake-up fd is the PARENT's eventfd (the same
        # open file): a write there stopped the parent's selector for good.
        with self._lock:
            wake_w = -1 if forked else self._wake_w
            woken = wake_w < 0 or self._step(os.write, "waking its pidfd selector", wake_w, _WAKE)
        interrupted = self._join_watchers(threads, woken=woken)
        self._release_resources()
        self._released = True
        if interrupted is not None:
            raise interrupted

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
                new_loop = id(loop) not in self._aio_loops
                if new_loop:
                    # The poller that sees the loop close; started first (it may
                    # raise BackendUnavailable), so a failure stores nothing.
                    self._thread_poller = self._ensure_poller_locked()
                watch = _AsyncioWatch(self, fut, loop)
                try:
                    if _get_running_loop() is loop:
                        watch.attach()
                    else:  # add_done_callback is not thread-safe
                        loop.call_soon_threadsafe(watch.attach_queued)
                except RuntimeError:  # the loop closed since the check above
                    return None
                self._aio[watch.ref.key] = watch  # the same int object: 32 B less
                # Race: the loop may close from here on (even before a queued
                # attach ran): it is tracked under the same lock as the watch
                # is stored, and the poller scans both under it, so the next
                # round fires this watch (_poll_loops). Closed before the
                # attach above, call_soon_threadsafe raised: noproc instead.
                if new_loop:
                    self._aio_loops[id(loop)] = loop
        return watch

    # ------------------------------------------------------------------ selector

    def _hand_to_owner_wait(self, watch: _ProcessWatch, fd: int) -> bool:
        """The process behind ``fd`` died and only its owner can read its
        status (``down_from_status`` answered None: a forkserver child, a
        child reaped by other code, a Popen whose own ``wait()`` is storing
        its code). Never wait for the owner here: this thread serves every
        process (before, it slept up to 0.5 s per such death, and told the
        others that late). The watch moves to the process poller
        (``foundation-<name>-procpoll``, checking ``polled_down`` every
        ``process_poll_interval``, as on the polling fallback), which fires it
        once the owner stored the code, or with ``Down("exit")`` past the
        owner's deadline; its pidfd is closed. False (fire now, code unknown)
        if no poller thread can start.

        Races: a last ``demonitor()`` may have released the watch since the
        status was read (its fd closed, maybe reused): then nothing is moved
        (True: nothing left to tell). Both steps are under the lock that
        ``demonitor()`` releases under.
        """
        with self._lock:
            if self._by_fd.get(fd) is not watch:
                return True
            try:
                self._proc_poller = self._poll_locked(
                    watch, self._proc_poller, "procpoll",
                    table=self._polled_procs, cond=self._procs_cond,
                    interval=self._process_interval, check=polled_down,
                )  # fmt: skip
            except BackendUnavailable:
                return False
            # Unregistered and closed (fd -1): from now on the watch is a polled
            # one, released by demonitor() from _polled_procs. If this raises
            # (ENOMEM), the fd stays registered and the selector meets it again:
            # the poller may fire it first, then the selector fires nothing new.
            watch.detach_locked()
        return True

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
            if watch is None:
                # No watch has it: a stale event (released since), or a
                # registration that is not ours, reported again and again
                # (level-triggered): drop it, or this thread spins.
                self._drop_stray_locked(fd)
                return
            # Race: the fd may have been released (and closed) after epoll
            # reported it, and its number reused by another process's pidfd:
            # confirm this fd really is ready before believing the event.
            if not pidfd_readable(fd):
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
            if down is None and self._hand_to_owner_wait(watch, fd):
                return
        watch.fire(down or _EXIT)
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
