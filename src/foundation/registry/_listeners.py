"""How ``subscribe()`` listeners of this package are held and called.

- :class:`CopyOnWriteListeners`: the copy-on-write ``subscribe`` of
  ``MemoryRegistry``, on the shared listener rules (a non-callable refused
  with ``TypeError``, an idempotent unsubscribe that removes one
  subscription) of :mod:`foundation._listeners`. It keeps the tuple in the
  owner's own ``_listeners`` attribute, for a write path that tests
  ``self._listeners`` inline.
- :class:`DeliveryQueue`: the one piece of code that calls them, for
  ``MemoryRegistry`` and ``MigratingRegistry`` alike: queued events, in
  order, one at a time, by one thread at a time that holds no lock of the
  registry, and no thread ever waits for another thread's delivery.
- ``_write_tags``: the per-thread tag a writer (``MigratingRegistry``) puts
  on the events of the writes it makes; delivery clears it around the
  listeners and publishes the tag of the event being delivered
  (``DeliveryQueue.delivering``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from operator import attrgetter

from foundation._listeners import subscribe_to
from foundation._unraisable import report_unraisable
from foundation.errors import Closed
from foundation.registry._types import Listener, RegistryEvent

__all__ = ["CopyOnWriteListeners", "DeliveryQueue"]


class _WriteTags(threading.local):
    """Per thread: the tag of the writes this thread is making (None: untagged)."""

    def __init__(self) -> None:  # run in each thread (an instance attribute reads
        self.tag: object = None  # about 3x faster than a class attribute default)


_write_tags = _WriteTags()


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


class DeliveryQueue:
    """Events for ``subscribe()`` listeners, delivered in queue order, one at a
    time, by one thread at a time, which never waits for another.

    A writer appends ``(event, tag)`` to ``pending`` (under its own lock, so
    the queue order is the write order; ``tag``: its ``_write_tags.tag``),
    releases every lock it holds, then calls :meth:`deliver`. If another
    thread is delivering at that moment, that thread delivers these events
    too, once the listener it is running returns, and the writer returns at
    once. The listeners are the tuple ``source.<attr>``, read again for each
    event (copy-on-write: a subscribe racing with a delivery never changes the
    tuple being iterated). A listener that raises ``Exception`` is reported
    (:func:`foundation._unraisable.report_unraisable`: logger
    ``foundation.registry``, ``where`` naming it) and the next one runs.

    ``delivering`` is the tag of the event whose listeners are running (None
    between events); a listener reads it in the delivering thread.
    """

    __slots__ = ("_courier_name", "_listeners_of", "_lock", "_source", "_where", "delivering",
                 "pending")  # fmt: skip

    def __init__(
        self, source: object, attr: str, where: str, *, courier_name: str = "foundation-events"
    ) -> None:
        #: (event, its writer's tag), in write order, not yet delivered.
        self.pending: deque[tuple[RegistryEvent, object]] = deque()
        self.delivering: object = None
        self._source = source
        self._listeners_of: Callable[[object], tuple[Listener, ...]] = attrgetter(attr)
        self._where = where
        self._courier_name = courier_name
        # Held by the one thread delivering. Not re-entrant: a listener that
        # writes, in that thread, finds it taken as any other writer does.
        self._lock = threading.Lock()

    def deliver(self) -> None:
        """Deliver the queued events in this thread, which holds no lock of the
        registry; unless another thread is delivering: it delivers them, and
        this one returns at once.

        Race: a thread whose try fails leaves its events to the deliverer,
        which looks at the queue again after releasing its lock; an event
        queued after that look finds the lock free (or a newer deliverer that
        looks again in turn). So no event is stranded, and no thread waits for
        a listener running in another thread: that listener may be waiting for
        it (a deadlock), or be slow (every writer stalled).
        """
        pending = self.pending
        lock = self._lock
        while pending:
            if not lock.acquire(blocking=False):
                # Another thread delivers: it looks again after releasing. Or
                # this one, re-entered: a listener wrote (its events are queued
                # behind the one it is handling), and the loop below, further
                # up this stack, delivers them once that listener returns.
                return
            tags = _write_tags
            tag = tags.tag
            if tag is not None:
                # The writes listeners make are not those of the write this
                # thread may be making (whose events it is delivering).
                tags.tag = None
            try:
                source, listeners_of = self._source, self._listeners_of
                while pending:  # only the lock's holder pops: not empty here, not empty below
                    event, self.delivering = pending.popleft()
                    for listener in listeners_of(source):
                        try:
                            listener(event)
                        except Exception as exc:  # a broken listener must not break a writer
                            report_unraisable(exc, self._where, listener, area="registry")
            finally:
                # (A BaseException from a listener, KeyboardInterrupt say, leaves
                # the rest queued: the next deliver() delivers them.)
                self.delivering = None
                if tag is not None:
                    tags.tag = tag
                lock.release()

    def hand_off(self) -> None:
        """Deliver the queued events from a short-lived courier thread (a new
        thread: it holds no lock), for an event queued in a thread that must
        not run listeners (a backend's own thread, which may hold a lock of
        the backend that a writer waits for: a listener waiting for that
        writer would deadlock, a slow one would stall every writer)."""
        if self._lock.locked():
            # Race: another thread delivers; it looks at the queue again after
            # releasing its lock, later than this event was queued (deliver).
            # Or this one: the event was queued under a listener it runs (a
            # listener wrote to a backend directly), and the loop up this
            # stack delivers it once that listener returns.
            return
        courier = threading.Thread(target=self.deliver, name=self._courier_name, daemon=True)
        try:
            courier.start()
        except RuntimeError:  # no thread can start (interpreter shutdown, thread limit)
            self.deliver()  # here, rather than never

    def __repr__(self) -> str:
        return f"<DeliveryQueue {self._where!r}: {len(self.pending)} queued>"
