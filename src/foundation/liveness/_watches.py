"""The watches of futures, foreign threads and OS processes.

A ``concurrent.futures.Future`` carries its one shared watch on itself
(``_FutureWatch``); a foreign thread or a process gets a watch owned by one
manager (``_ManagedWatch``), which its watcher threads attach (``_watchers``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import TYPE_CHECKING, Any

from foundation.liveness._core import (
    CANCELLED,
    NORMAL,
    Down,
    Monitor,
    OnDown,
    Watch,
    exception_down,
    fire_retrying,
)
from foundation.liveness._threads import EXC_ATTR

if TYPE_CHECKING:
    # Not imported at run time (see _types).
    import asyncio
    import concurrent.futures

    from foundation.liveness._manager import MonitorManager

__all__ = [
    "_CF_ATTR",
    "_FutureWatch",
    "_ManagedWatch",
    "_ProcessWatch",
    "_ThreadWatch",
    "_future_down",
    "_release_unfired",
    "_thread_down",
]

_CF_ATTR = "_foundation_watch"  # the shared watch, stored on the future itself


_NO_ATTR = object()  # a future-like object without ``_exception``


def _future_down(fut: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> Down:
    """A done future's Down; never raises for want of memory (see ``exception_down``).

    The exception is peeked at (``_exception``), never retrieved: asyncio's
    ``exception()`` marks it retrieved, which silenced asyncio's own "Task
    exception was never retrieved" log for a crashed fire-and-forget task
    that was merely watched (registered, monitored). Watching must not change
    the agent, and the flag cannot be set back (C futures refuse ``True``).
    ``_exception`` holds it on asyncio's C and pure-Python futures (3.11+)
    and on ``concurrent.futures.Future`` (whose ``exception()`` marks
    nothing). A future-like object without it falls back to ``exception()``
    (its Down first: it then counts as retrieved, as before).
    """
    if fut.cancelled():
        return CANCELLED
    exc: Any = getattr(fut, "_exception", _NO_ATTR)
    if exc is _NO_ATTR:
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
        # watch is still found by its fd (the selector retries it). Not in a
        # forked child: its epoll is the parent's (the same instance), and
        # the registration the parent's: unregistering it there hid that
        # process's death from the parent. Closing the child's copy of the fd
        # below does not remove it (epoll drops a registration only once
        # every fd of that open file is closed, and the parent keeps its own).
        if manager._epoll is not None and not manager._forked:
            # Recorded first (out of memory: nothing changed): the selector may
            # meet this number in an event reported before this release, maybe
            # once the number names the next pidfd (see _drop_stray_locked).
            manager._fds_released.add(fd)
            # Race (Ctrl-C): a release cut right after its unregister left the
            # fd open and in _by_fd; this repeat (ENOENT) finishes it.
            with contextlib.suppress(FileNotFoundError):
                manager._epoll.unregister(fd)
        self.fd = -1
        del manager._by_fd[fd]
        # Closing while the selector may hold this fd number in a batch of
        # events is safe: it re-checks _by_fd and readiness under the lock.
        os.close(fd)
