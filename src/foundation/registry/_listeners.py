"""Copy-on-write listener lists shared by the in-process registry backends."""

from __future__ import annotations

import threading
from collections.abc import Callable

from foundation.registry._types import Listener

__all__ = ["CopyOnWriteListeners"]


class CopyOnWriteListeners:
    """``subscribe`` over an immutable tuple ``_listeners``, swapped under ``_lock``.

    Writers deliver events by iterating whatever tuple they read: a subscribe
    or unsubscribe racing with a delivery replaces the tuple and never mutates
    the one being iterated, so delivery needs no lock of its own.
    """

    _lock: threading.Lock
    _listeners: tuple[Listener, ...]

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every change; returns an idempotent unsubscribe."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
        done = False

        def unsubscribe() -> None:
            nonlocal done
            with self._lock:
                if done:
                    return
                done = True
                listeners = list(self._listeners)
                for i, candidate in enumerate(listeners):
                    if candidate is listener:  # one subscription: remove one occurrence
                        del listeners[i]
                        break
                self._listeners = tuple(listeners)

        return unsubscribe
