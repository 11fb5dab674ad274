"""Adding and releasing the monitors of foreign threads and processes.

Their watches are owned by one manager (``_watches``, under its lock) and
attached by its watcher threads; the excepthook that records a foreign
thread's exception (``_threads``) is held while the manager watches one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from foundation.errors import bounded_repr
from foundation.liveness._core import NOPROC, Monitor, OnDown, Watch, claim, report
from foundation.liveness._process import ProcessAgent, exit_down
from foundation.liveness._threads import acquire_hook, ensure_hook
from foundation.liveness._watchers import _WatcherThreads
from foundation.liveness._watches import _ManagedWatch, _ProcessWatch, _ThreadWatch

if TYPE_CHECKING:
    from foundation.liveness._manager import MonitorManager

__all__ = ["_ManagedWatches"]

_W = TypeVar("_W", bound="_ManagedWatch")


class _ManagedWatches(_WatcherThreads):
    """The part of ``MonitorManager`` that adds and releases managed watches."""

    if TYPE_CHECKING:
        # MonitorManager's (the hot path's helpers stay there).
        def _dead(self, agent: object, on_down: OnDown) -> Monitor: ...
        def _take_back(self, mon: Monitor, watch: Watch, exc: BaseException) -> Monitor: ...
        def _take_back_cut(self, mon: Monitor, watch: Watch) -> None: ...

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
            watch = factory(self, agent)  # type: ignore[arg-type]  # self: a MonitorManager
            if self._attach_locked(watch):
                self._watches[key] = watch
            else:  # gone between the liveness check and the attach
                watch.down = NOPROC
        return watch

    def _add_managed(self, watch: _ManagedWatch, on_down: OnDown) -> Monitor:
        """Insert a monitor into a managed watch; called with the lock held."""
        mon = Monitor(self, watch)  # type: ignore[arg-type]  # self: a MonitorManager
        watch.monitors[mon] = on_down
        try:
            self._monitors[mon] = None
        except BaseException as exc:  # out of memory: the caller drops the watch if unused
            return self._take_back(mon, watch, exc)
        return mon

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
