"""The copy-on-write ``subscribe`` of ``MemoryRegistry``, on the shared listener rules.

The rules (a non-callable refused with ``TypeError``, an idempotent
unsubscribe that removes one subscription, errors reported through
``report_unraisable``) live in :mod:`foundation._listeners`; new code holds a
:class:`foundation._listeners.Listeners`. This mixin keeps the tuple in the
owner's own ``_listeners`` attribute instead, for a backend whose write path
tests ``self._listeners`` and iterates it inline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from foundation._listeners import subscribe_to
from foundation.errors import Closed
from foundation.registry._types import Listener

__all__ = ["CopyOnWriteListeners"]


class CopyOnWriteListeners:
    """``subscribe`` over an immutable tuple ``_listeners``, swapped under ``_lock``.

    Writers deliver events by iterating whatever tuple they read: a subscribe
    or unsubscribe racing with a delivery replaces the tuple and never mutates
    the one being iterated, so delivery needs no lock of its own. After
    ``close()`` (the owner's ``_closed`` attribute is true) ``subscribe`` raises
    ``errors.Closed``.
    """

    _lock: threading.Lock
    _listeners: tuple[Listener, ...]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every change; returns an idempotent unsubscribe.

        Raises:
            TypeError: ``listener`` is not callable.
            Closed: the registry is closed.
        """
        self._refuse_if_closed()  # first, as every call of a closed registry
        # Race: closed meanwhile; checked again under the lock (before=).
        return subscribe_to(self, "_listeners", self._lock, listener, before=self._refuse_if_closed)

    def _refuse_if_closed(self) -> None:
        if getattr(self, "_closed", False):
            raise Closed(f"this {type(self).__name__} is closed")
