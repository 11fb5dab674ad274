"""How ``subscribe()`` listeners of this package are held and called.

- :class:`CopyOnWriteListeners`: the copy-on-write ``subscribe`` of
  ``MemoryRegistry``, on the shared listener rules (a non-callable refused
  with ``TypeError``, an idempotent unsubscribe that removes one
  subscription) of :mod:`foundation._listeners`. It keeps the tuple in the
  owner's own ``_listeners`` attribute, for a write path that tests
  ``self._listeners`` inline.
- :class:`DeliveryQueue`: :class:`foundation._listeners.DeliveryQueue` (the
  one piece of code that calls listeners, for ``MemoryRegistry``,
  ``MigratingRegistry`` and ``FeatureFlags`` alike: queued events, in order,
  one at a time, by one thread at a time that holds no lock of the owner,
  and no thread ever waits for another thread's delivery; a writer delivers
  the events of its turn, a courier thread the later ones), reporting (a
  listener's error, a backlog WARNING) under ``foundation.registry``.
- ``_write_tags`` (from :mod:`foundation._listeners`): the per-thread tag a
  writer (``MigratingRegistry``) puts on the events of the writes it makes;
  delivery clears it around the listeners and publishes the tag of the event
  being delivered (``DeliveryQueue.delivering``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from foundation._listeners import DeliveryQueue as _DeliveryQueue
from foundation._listeners import _write_tags, subscribe_to
from foundation.errors import Closed
from foundation.registry._types import Listener, RegistryEvent

__all__ = ["CopyOnWriteListeners", "DeliveryQueue", "_write_tags"]


class CopyOnWriteListeners:
    """``subscribe`` over an immutable tuple ``_listeners``, swapped under ``_lock``.

    Writers deliver events by iterating whatever tuple they read: a subscribe
    or unsubscribe racing with a delivery replaces the tuple and never mutates
    the one being iterated, so delivery needs no lock of its own. After
    ``close()`` (the owner's ``_closed`` attribute is true) ``subscribe`` raises
    ``errors.Closed``.
    """

    _lock: threading.Lock | threading.RLock
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


class DeliveryQueue(_DeliveryQueue[RegistryEvent]):
    """:class:`foundation._listeners.DeliveryQueue` of registry events: a
    listener's error and a backlog WARNING are reported under
    ``foundation.registry`` (telemetry: ``foundation.registry.listener_backlog``)."""

    __slots__ = ()

    def __init__(
        self, source: object, attr: str, where: str, *, courier_name: str = "foundation-events"
    ) -> None:
        super().__init__(source, attr, where, area="registry", courier_name=courier_name)
