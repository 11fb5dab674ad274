"""Objects inherited across ``fork()``: closed in the child, with no I/O.

A forked child (a gunicorn or celery worker of a preloaded app, a
``multiprocessing`` child with ``fork``) inherits the parent's objects but
none of its threads, and shares its sockets and files. An object whose work
needs those (a flag store's watcher, a registry node's lease and tail) served
the fork-time state for ever in the child, and its writes or ``close()``
reached the parent's state on the shared backend (a child deleted the
parent's registrations). So each such object is tracked here and marked
closed in the child (``os.register_at_fork(after_in_child=...)``): every
public call raises ``errors.Closed`` naming ``fork()``, and ``close()`` does
nothing on the shared backend. The hooks do no I/O and take no lock a dead
parent thread may hold: each object gets fresh locks.

A tracked class defines ``_inherited_by_fork(self) -> None`` (run in the child,
which has one thread) and calls ``track(self)`` once constructed. An object
that stays usable in the child (a ``MemoryRegistry``: the child's private
copy) resets its own locks there with ``reset_locks``, in place: a closure
that captured a lock (an unsubscribe) sees the reset too, and nothing is
added to the hot path.

A module-level lock is registered with ``unlock_after_fork(lock)``: a parent
thread holding it at the fork holds it for ever in the child (that thread does
not exist there), so the child's first use hung (a new ``RedisFlagStore``, as
the ``Closed`` message advises, while a metrics scrape held the stores' lock).
In the child it is reset, unlocked, in place (``_at_fork_reinit``, as the
standard library's ``logging`` and ``threading`` do): every module that
imported it sees the reset. This runs before the objects' hooks.

These hooks also run in a ``subprocess`` child with a ``preexec_fn``, between
fork and exec (Python runs every ``after_in_child`` hook there): they never
wait for a lock (a ``MemoryFlagStore`` only tries its old one), do no I/O and
log nothing (only a hook that fails is reported, with a log record); they
cost a reset per registered lock and each tracked object's new locks.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Final

from foundation import _unraisable
from foundation._unraisable import report_unraisable
from foundation.errors import Closed

__all__ = ["forked_closed", "keep", "reset_locks", "track", "unlock_after_fork"]

_LIVE: Final[weakref.WeakSet[Any]] = weakref.WeakSet()
"""Every tracked object not yet collected (added once, by its constructor)."""

_KEPT: Final[list[object]] = []
"""Handles of the parent a child must never close (see ``keep``)."""


_LOCKS: Final[list[Any]] = []
"""Every module-level lock to unlock in a forked child (see ``unlock_after_fork``)."""


def unlock_after_fork(*locks: object) -> None:
    """Reset ``locks`` (module-level ``Lock`` or ``RLock``) to unlocked in a
    forked child, before the tracked objects' hooks run.

    For locks that live as long as the process (a module's): each is held here
    for good. An ``RLock`` the forking thread holds is left as it is (that
    thread goes on in the child and releases it); a ``Lock`` is for our own
    short code only, never held around a call out (a thread that forked
    there would release the reset lock: ``RuntimeError``). Raises
    ``TypeError`` on a Python without ``_at_fork_reinit`` (CPython has it).
    """
    for lock in locks:
        if not callable(getattr(lock, "_at_fork_reinit", None)):
            raise TypeError(f"cannot reset {lock!r} after fork(): no _at_fork_reinit")
    _LOCKS.extend(locks)


def reset_locks(*locks: Any) -> None:
    """In a forked child (from an ``_inherited_by_fork`` hook): reset ``locks``
    (``Lock`` or ``RLock``) to unlocked, in place.

    A parent thread holding one at the fork held it for ever in the child (that
    thread does not exist there): the child's next write hung. An ``RLock`` the
    forking thread holds is left as it is (that thread goes on in the child and
    releases it); a ``Lock`` must be one no caller's code runs under (the
    forking thread cannot hold it). Never waits.

    >>> import threading
    >>> lock = threading.Lock(); lock.acquire()
    True
    >>> reset_locks(lock); lock.locked()
    False
    """
    for lock in locks:
        owned = getattr(lock, "_is_owned", None)  # an RLock's (a Lock has no owner)
        if owned is None or not owned():
            lock._at_fork_reinit()


def track(obj: Any) -> None:
    """Close ``obj`` in a forked child (``obj._inherited_by_fork()``); one set add."""
    _LIVE.add(obj)


def keep(*handles: object) -> None:
    """Hold ``handles`` (the parent's SQLite connections) for the child's life.

    SQLite forbids using a connection across ``fork()``; closing one in the
    child may checkpoint or delete the parent's WAL files. Held here, it is
    never closed nor collected in the child (its fd stays open, unused).
    """
    _KEPT.extend(handles)


def forked_closed(
    what: str,
    *,
    create: str | None = None,
    why: str = "its threads and connections belong to the parent process",
) -> Closed:
    """The ``Closed`` of an object inherited across ``fork()`` (``what``: its class)."""
    return Closed(
        f"this {what} was inherited across fork(): it is closed in the child ({why}); "
        f"create {create or 'a new ' + what} in the child after the fork (for example "
        "in gunicorn's post_fork hook or the worker's start)"
    )


def _inherited_after_fork() -> None:
    """In the forked child: reset the module locks, then mark every tracked
    object closed (see the module docs).

    Race: none in the child (only the forking thread exists there); the
    WeakSet is copied first, as a collection may drop entries meanwhile. The
    locks come first: an object's hook, or the report of its failure
    (``_unraisable``'s lock), may take one.
    """
    reset_locks(*_LOCKS)
    for obj in list(_LIVE):
        try:
            obj._inherited_by_fork()
        except Exception as exc:  # one object's defect must not spare the others
            report_unraisable(exc, "closing an object inherited across fork()", obj)


# The lock of the error path above (_unraisable cannot import this module).
unlock_after_fork(_unraisable._type_lock)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_inherited_after_fork)
