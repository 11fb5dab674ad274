"""What ``MonitorManager.close()`` runs: each step logged if it fails, never raised."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from foundation.liveness._managed import _ManagedWatches
from foundation.liveness._threads import release_hook
from foundation.liveness._watches import _ProcessWatch

__all__ = ["_Closing"]

_log = logging.getLogger("foundation.liveness")


class _Closing(_ManagedWatches):
    """The part of ``MonitorManager`` that releases everything at ``close()``."""

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
        self._aio_loops.clear()
        aio = self._aio
        if self._forked:
            # In a forked child the loops are the parent's copies: queueing a
            # removal (call_soon_threadsafe) writes to a self-pipe the parent's
            # loop shares. Nothing of them runs here: just forget the watches.
            aio.clear()
            return
        # Race: a collected future's weakref callback pops its watch from _aio
        # without our lock, on any thread (this one too: a collection inside
        # detach_soon's allocations): a key listed here may be gone when it
        # is reached, or right after its detach.
        for key in list(aio):
            watch = aio.get(key)
            if watch is None:
                continue  # its future was collected: nothing left to detach
            self._step(watch.detach_soon, "removing an asyncio done-callback")
            aio.pop(key, None)  # once detached (a cut before: detached again, harmlessly)

    def _close_pidfds_locked(self) -> None:
        by_fd = self._by_fd  # every pidfd of every process watch
        for fd in list(by_fd):
            del by_fd[fd]  # (no call before the close: see _release_resources)
            try:
                os.close(fd)
            except OSError as exc:
                self._step_failed("closing a pidfd", exc)
