"""A manager's watcher threads: the pollers and the pidfd selector.

``foundation-<name>-threads`` polls foreign threads,
``foundation-<name>-procpoll`` polls processes (no ``pidfd_open``), and
``foundation-<name>-pidfd`` waits on one epoll over every watched process's
pidfd (what it does with a ready one, ``_pidfd_ready``, is the manager's).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from foundation.errors import BackendUnavailable, Closed
from foundation.liveness._core import Down, Monitor, report
from foundation.liveness._process import open_pidfd, polled_down
from foundation.liveness._watches import (
    _ManagedWatch,
    _ProcessWatch,
    _thread_down,
    _ThreadWatch,
)

if TYPE_CHECKING:
    from foundation.liveness._aio_watch import _AsyncioWatch

__all__ = ["_DEFECT_BACKOFF", "_HAS_EVENTFD", "_WatcherThreads"]

_HAS_EVENTFD = hasattr(os, "eventfd")
_log = logging.getLogger("foundation.liveness")
# After a defect of a watcher loop itself (not a callback's error): pause this
# long before the next iteration, so that a repeating defect cannot spin hot.
_DEFECT_BACKOFF = 0.1
# Seconds between two checks of the asyncio watches' loops (is_closed()) while
# the threads poller has no foreign thread to poll.
LOOP_CHECK_INTERVAL = 1.0


class _WatcherThreads:
    """The part of ``MonitorManager`` that runs its watcher threads."""

    if TYPE_CHECKING:
        # The manager's state, set by MonitorManager.__init__ (see there).
        _name: str
        _thread_interval: float
        _process_interval: float
        _lock: threading.Lock
        _threads_cond: threading.Condition
        _procs_cond: threading.Condition
        _closed: bool
        _released: bool
        _stopping: threading.Event
        _monitors: dict[Monitor, None]
        _watches: dict[int, _ManagedWatch]
        _aio: dict[int, _AsyncioWatch]
        _aio_loops: dict[int, Any]
        _sweep_needed: bool
        _polled_threads: dict[int, _ThreadWatch]
        _polled_procs: dict[int, _ProcessWatch]
        _by_fd: dict[int, _ProcessWatch]
        _use_pidfd: bool
        _epoll: select.epoll | None
        _wake_r: int
        _wake_w: int
        _pidfd_thread: threading.Thread | None
        _thread_poller: threading.Thread | None
        _proc_poller: threading.Thread | None
        _hook_held: bool
        _forked: bool
        _pid: int
        _strays: set[int]
        _strays_now: set[int]
        _fds_released: set[int]

        def _pidfd_ready(self, fd: int) -> None: ...  # MonitorManager's

    def _is_closed(self) -> bool:
        # A call, not an attribute read: another thread may close meanwhile.
        return self._closed

    def _closed_error(self) -> Closed:
        if self._forked:
            return Closed(
                f"MonitorManager {self._name!r} was inherited across fork() (created in "
                f"process {self._pid}, this is {os.getpid()}): it watches nothing in this "
                "child; create a new MonitorManager (or registry) in the child"
            )
        return Closed(f"MonitorManager {self._name!r} is closed")

    def _exhausted(self, exc: BaseException, what: str) -> BackendUnavailable:
        """The typed error for a resource the watch needs (an fd, a thread) that
        the process has run out of; nothing was stored. ``errno`` is kept."""
        if isinstance(exc, BackendUnavailable):
            return exc  # typed already (by _start or a /proc read below us)
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EAGAIN
        return BackendUnavailable(code, f"MonitorManager {self._name!r} cannot {what}: {exc}")

    def _attach_locked(self, watch: _ManagedWatch) -> bool:
        """Start watching; False if the agent is already gone. Lock held."""
        if isinstance(watch, _ThreadWatch):
            self._thread_poller = self._ensure_poller_locked()
            self._polled_threads[watch.key] = watch
            return True
        assert isinstance(watch, _ProcessWatch)
        if self._use_pidfd:
            attached = self._attach_pidfd_locked(watch)
            if attached is not None:
                return attached
        self._proc_poller = self._poll_locked(
            watch, self._proc_poller, "procpoll",
            table=self._polled_procs, cond=self._procs_cond,
            interval=self._process_interval, check=polled_down,
        )  # fmt: skip
        return True

    def _ensure_poller_locked(self) -> threading.Thread:
        """The threads poller (``foundation-<name>-threads``), started if need
        be: it polls foreign threads and checks the asyncio watches' loops for
        ``is_closed()``. Lock held; ``BackendUnavailable`` if no thread starts.

        Race: it idles while it has nothing to check; the caller adds to
        ``_polled_threads`` or ``_aio_loops`` and notifies, under this lock,
        so the poller's idle check (also under it) cannot miss the addition."""
        poller = self._thread_poller
        if poller is None:
            poller = self._start(
                "threads", self._poll_loop, self._polled_threads, self._threads_cond,
                self._thread_interval, _thread_down, True,
            )  # fmt: skip
        elif not self._polled_threads:
            # Wakes it from its idle wait, or from the slower pause it takes
            # while it only checks loops (a first foreign thread is polled at
            # once, every interval from then on).
            self._threads_cond.notify_all()
        return poller

    def _poll_loops(self) -> None:
        """One round's check of the asyncio watches' loops: fire every watch of
        a loop that is closed (``_AsyncioWatch.fire_loop_closed``), once per
        distinct loop (cheap: a loop, not each future, is checked).

        Races: ``is_closed()`` is read without the lock (a loop method); a loop
        found closed is taken out of ``_aio_loops`` and its watches listed under
        the lock, as ``_asyncio_watch`` stores a watch and its loop under it:
        no watch of it can be added after (its loop closed: the attach raises,
        it is noproc). A watch collected meanwhile fires nothing (its future is
        gone). Once no asyncio watch is left, the loops still open are dropped
        too (not held for ever): the next watch of one adds it again."""
        with self._lock:
            if not self._aio:
                self._aio_loops.clear()
                return
            loops = list(self._aio_loops.values())
        for loop in loops:
            watches = self._watches_of_closed(loop)
            escaped: BaseException | None = None
            for watch in watches:
                try:
                    watch.fire_loop_closed()
                except BaseException as exc:  # an on_down's SystemExit: the others still
                    escaped = escaped or exc
            if escaped is not None:
                raise escaped

    def _watches_of_closed(self, loop: Any) -> list[_AsyncioWatch]:
        """The asyncio watches of ``loop`` if it is closed, taken out of
        ``_aio_loops`` (once: another round finds it gone); else []."""
        try:
            if not loop.is_closed():
                return []
        except Exception as exc:  # an odd loop type must not stop the poller
            report(exc, f"liveness: is_closed() of {loop!r}")
            return []
        with self._lock:
            if self._aio_loops.pop(id(loop), None) is not loop:
                return []
            # A copy first (one C call, no allocation per item): a collected
            # future's weakref callback pops _aio without this lock, on any
            # thread (this one too, at a collection inside the comprehension).
            return [w for w in list(self._aio.values()) if w.loop is loop]

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
        loops: bool = False,
    ) -> None:
        """Every ``interval`` s, check each watched agent; fire the dead ones.
        With ``loops`` (the threads poller), also the asyncio watches' loops
        (:meth:`_poll_loops`).

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
                    while not self._closed and not table and not (loops and self._aio_loops):
                        cond.wait()
                    if self._closed:
                        return
                    # A copy of every watch: MemoryError here too (inside the try).
                    snapshot: list[_ManagedWatch] = list(table.values())
                self._poll_once(table, snapshot, check)
                if loops:
                    self._poll_loops()
                out_of_memory = False
            except MemoryError as exc:
                if not out_of_memory:
                    out_of_memory = True
                    with contextlib.suppress(MemoryError):  # logging needs memory too
                        report(exc, "liveness poller (out of memory; retrying each interval)", self)
            except BaseException as exc:  # this thread outlives anything: report, carry on
                self._survive(exc, "liveness poller")
            # With no foreign thread to poll, only loops to check: a slower
            # pace (a program monitoring only tasks is woken once a second, not
            # every interval). See _pause for the race with a first thread watch.
            slow = max(interval, LOOP_CHECK_INTERVAL) if loops else interval
            if self._pause(cond, interval, table, slow):
                return

    def _pause(
        self,
        cond: threading.Condition,
        interval: float,
        table: dict[int, Any] | None = None,
        idle_interval: float | None = None,
    ) -> bool:
        """Wait ``interval`` s between two poll rounds (cut short by ``close()``),
        or ``idle_interval`` s while ``table`` is empty; True once the manager is
        closed.

        Race: ``table`` is read under the lock, right before the wait, as a
        first thread watch is added (``_ensure_poller_locked`` notifies ``cond``
        under it): either it is seen here (the short pause), or its notify
        comes once this thread waits, and ends the long pause at once.

        ``Condition.wait`` allocates a lock: out of memory it raises before
        waiting, so the pause is then a plain sleep (``close()`` is seen at the
        next round, ``interval`` later) rather than a hot loop."""
        try:
            with self._lock:
                if self._is_closed():
                    return True
                if idle_interval is not None and not table:
                    interval = idle_interval
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

    def _drop_stray_locked(self, fd: int) -> None:
        """The epoll reported ``fd``, which no watch has; lock held.

        Either a stale event (its watch was released, its fd closed, after
        the epoll reported it: the registration went with the close) or a
        registration this manager cannot name: one added to its epoll by
        other code (before the fork fix, a forked child registering its own
        pidfd in the shared epoll), or a pidfd of ours closed behind our back
        while a copy keeps its open file (and so its registration) alive. The
        epoll is level-triggered: such an fd is reported on every poll, and the
        selector spun at 100% CPU. Unregistered if this process can name it;
        else (EBADF, ENOENT: the number names no file, or another one) the
        epoll is rebuilt with exactly this manager's registrations once the fd
        is reported a second time (a stale event is reported once: no rebuild,
        no WARNING for it), and never when this manager released a pidfd of
        that number since its previous round ended (a stale event too: see
        below).

        Race: ``monitor()`` registers under this lock, so the new epoll misses
        no pidfd; the selector (this thread) polls the new one from its next
        poll (see ``_pidfd_loop``); ``close()`` closes whichever is current.
        A failure (out of fds or memory) is raised to the selector, which
        pauses (``_survive``) and meets the fd again: slow, never hot.
        """
        epoll = self._epoll
        if epoll is None:
            return
        try:
            epoll.unregister(fd)
        except OSError:
            pass
        else:
            return
        # Race: a stale event (a release racing a death) names an fd whose
        # registration went with its close: it is never reported again. A
        # registration the epoll keeps is (level-triggered), at the very next
        # poll: rebuild, and say so, only for an fd met in two rounds in a row
        # (_pidfd_loop keeps the previous round's), never for a stale event,
        # even one whose number a later stale event reuses.
        # Race (number reuse): the poll reports pidfd N (process A died); before
        # this thread takes the lock, a release (kill, then unregister at once)
        # unregisters and closes N; the next watch's pidfd gets N (the lowest
        # free number), its process dies and is released the same way before
        # the next round is handled: two stale events on N in two rounds in a
        # row, no registration foreign (before, a false WARNING and a rebuild).
        # Every release of a pidfd records its number (detach_locked, under
        # this lock) until the selector's round in progress ends (_round_done):
        # an fd released since the last round ended (so before or after this
        # round's poll reported it) is such a stale event, never a stray.
        # A foreign registration of a number we keep releasing is still met in
        # a round with no release of it, then in the next: rebuilt then.
        if fd in self._fds_released:
            return
        if fd not in self._strays:
            self._strays_now.add(fd)
            return
        self._strays.clear()
        fresh = select.epoll()
        try:
            fresh.register(self._wake_r, select.EPOLLIN)
            for pidfd in self._by_fd:
                fresh.register(pidfd, select.EPOLLIN)
        except BaseException:
            fresh.close()
            raise
        self._epoll = fresh
        epoll.close()
        _log.warning(
            "MonitorManager %r: fd %d in its epoll has no watch (a registration "
            "that is not its own); epoll rebuilt", self._name, fd,
        )  # fmt: skip

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
            epoll = self._round_done(epoll)

    def _round_done(self, epoll: select.epoll) -> select.epoll:
        """After a round of the selector: the epoll to poll next, which
        ``_drop_stray_locked`` (run in the round, on this thread) may have
        replaced (None only once closed: seen at the loop's test). The fds met
        with no watch in this round are those to rebuild for if the next round
        meets them again (only this thread uses them). The pidfd numbers
        released so far are forgotten: the next poll cannot report the
        registrations they had (unregistered), and a release from here on
        (before the poll, or after it reports a number) is recorded anew.
        Race: releases add under the lock, this clears without it (one atomic
        call): a number added just before the clear is forgotten (its
        registration is gone before the next poll), one added after it is kept."""
        if self._strays or self._strays_now:
            self._strays, self._strays_now = self._strays_now, set()
        if self._fds_released:
            self._fds_released.clear()
        return self._epoll or epoll
