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
which has one thread) and calls ``track(self)`` once constructed.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Final

from foundation._unraisable import report_unraisable
from foundation.errors import Closed

__all__ = ["forked_closed", "keep", "track"]

_LIVE: Final[weakref.WeakSet[Any]] = weakref.WeakSet()
"""Every tracked object not yet collected (added once, by its constructor)."""

_KEPT: Final[list[object]] = []
"""Handles of the parent a child must never close (see ``keep``)."""


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


def forked_closed(what: str, *, create: str | None = None) -> Closed:
    """The ``Closed`` of an object inherited across ``fork()`` (``what``: its class)."""
    return Closed(
        f"this {what} was inherited across fork(): it is closed in the child (its "
        f"threads and connections belong to the parent process); create "
        f"{create or 'a new ' + what} in the child after the fork (for example in "
        "gunicorn's post_fork hook or the worker's start)"
    )


def _inherited_after_fork() -> None:
    """In the forked child: mark every tracked object closed (see the module docs).

    Race: none in the child (only the forking thread exists there); the
    WeakSet is copied first, as a collection may drop entries meanwhile.
    """
    for obj in list(_LIVE):
        try:
            obj._inherited_by_fork()
        except Exception as exc:  # one object's defect must not spare the others
            report_unraisable(exc, "closing an object inherited across fork()", obj)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_inherited_after_fork)
