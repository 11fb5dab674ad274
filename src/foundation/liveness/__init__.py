"""Liveness: know when an agent dies, exactly once, without leaking.

``monitor(agent, on_down)`` calls ``on_down(Down)`` once when ``agent`` dies,
unless the returned :class:`Monitor` was demonitored first. Supported agents
and how their death is seen:

===============================================  ==============================
agent                                            detection
===============================================  ==============================
``asyncio.Task``, ``asyncio.Future``             done callback (on the loop)
``concurrent.futures.Future``                    done callback
``threading.Thread`` from :func:`spawn_thread`   exact: recorded as target ends
other ``threading.Thread``                       polled (``thread_poll_interval``)
``subprocess.Popen``, ``multiprocessing.Process``,  ``pidfd_open`` + one epoll
:class:`OSProcess`                               thread; polling fallback
===============================================  ==============================

Anything else raises :class:`foundation.errors.UnsupportedAgent`.

Monitors belong to a :class:`MonitorManager` (one per registry or
application), which owns the watcher threads and file descriptors. Without
``manager=``, :func:`monitor` uses a process-wide default manager created on
first use (:func:`default_manager`); its threads are daemons.

Costs: monitoring a ``spawn_thread`` thread or a ``concurrent.futures.Future``
adds one small object to a dict (the per-agent watch is created once); an
asyncio future gets one done-callback while it has monitors; an OS process one
pidfd while it has monitors. ``demonitor()`` removes them again. A manager
holds an asyncio future only weakly: one garbage-collected while still pending
can never complete, so its monitors are released without being called (as
``close()`` releases them), rather than kept for ever.

Example:
    >>> import threading
    >>> from foundation.liveness import MonitorManager, spawn_thread
    >>> seen, done = [], threading.Event()
    >>> def on_down(down):
    ...     seen.append(down.reason)
    ...     done.set()
    >>> with MonitorManager(name="doc-liveness") as manager:
    ...     mon = manager.monitor(spawn_thread(lambda: None), on_down)
    ...     done.wait(5)
    True
    >>> seen
    ['normal']
"""

from __future__ import annotations

import os
import threading

from foundation import _fork
from foundation._public import fixup_module_paths
from foundation.liveness._agents import check_supported, describe_agent, is_alive
from foundation.liveness._core import Down, DownReason, ManagerStats, Monitor, OnDown
from foundation.liveness._manager import MonitorManager
from foundation.liveness._process import OSProcess
from foundation.liveness._threads import spawn_thread

__all__ = [
    "Down",
    "DownReason",
    "ManagerStats",
    "Monitor",
    "MonitorManager",
    "OSProcess",
    "OnDown",
    "check_supported",
    "default_manager",
    "describe_agent",
    "is_alive",
    "monitor",
    "spawn_thread",
]


# The documented process-wide default manager (created lazily, replaced if
# someone closed it). The lock is unlocked in a forked child (a parent thread
# may have held it at the fork).
_default: MonitorManager | None = None
_default_lock = threading.Lock()
_fork.unlock_after_fork(_default_lock)


def _forget_default_after_fork() -> None:
    # A forked child has none of the parent's watcher threads: it must not
    # reuse the parent's default manager.
    global _default
    _default = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_default_after_fork)


def default_manager() -> MonitorManager:
    """The process-wide manager used by :func:`monitor` without ``manager=``.

    Created on first use (named ``"default"``: threads
    ``foundation-default-*``); if it was closed, a new one replaces it, and a
    forked child process gets a fresh one of its own. Other managers are not
    usable across ``fork()``: create them in the process that uses them.
    """
    global _default
    manager = _default
    if manager is None or manager.closed:
        with _default_lock:
            manager = _default
            if manager is None or manager.closed:
                manager = _default = MonitorManager(name="default")
    return manager


def monitor(agent: object, on_down: OnDown, *, manager: MonitorManager | None = None) -> Monitor:
    """Call ``on_down(Down)`` once when ``agent`` dies; returns the :class:`Monitor`.

    ``on_down`` is never called with a manager lock held, so it may take
    other locks and call ``monitor``/``demonitor``. It runs synchronously
    inside this call when the agent is already dead (``Down("noproc")``, or
    the Down already recorded for a ``spawn_thread`` thread or a
    ``concurrent.futures.Future``); otherwise on the thread that sees the
    death (see :class:`MonitorManager`). An exception raised by ``on_down`` is
    never propagated: it is logged under ``foundation.liveness`` and passed to
    ``sys.unraisablehook`` if one is installed.

    Raises:
        UnsupportedAgent: ``agent`` is not a supported kind (a ``TypeError``).
        TypeError: ``on_down`` is not callable.
        RuntimeError: ``manager`` is closed.
        BackendUnavailable: the process is out of fds or threads for the
            watch (``errno`` EMFILE, EAGAIN); nothing was stored.
        MemoryError: out of memory; nothing was stored (``on_down`` is
            never called for it).

    Example:
        >>> import concurrent.futures
        >>> fut = concurrent.futures.Future()
        >>> mon = monitor(fut, lambda down: print("down:", down.reason))
        >>> fut.cancel()
        down: cancelled
        True
        >>> mon.demonitor()
        False
    """
    return (manager or default_manager()).monitor(agent, on_down)


# Last: every name in __all__ (monitor, default_manager included) exists now.
fixup_module_paths(globals(), __name__)
