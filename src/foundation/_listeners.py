"""One way to hold and call listeners: registries, feature flags, stores.

``Listeners(where, area=...)`` is a copy-on-write tuple of callables:

- ``subscribe(listener)`` refuses a non-callable at once (``TypeError``), so a
  mistake fails at the call that made it, not at the next event; it returns an
  unsubscribe callable that is idempotent (a second call does nothing) and
  removes exactly this subscription (a listener subscribed twice is called
  twice, and one unsubscribe leaves the other subscription in place).
- ``dispatch(event)`` calls every listener of the tuple it read; an exception
  is reported through :func:`foundation._unraisable.report_unraisable` (a log
  record under ``foundation.<area>``, plus an installed ``sys.unraisablehook``)
  and the next listener runs: a broken listener never breaks the writer.

Race, handled here once for every user: a subscribe or unsubscribe racing with
a dispatch replaces ``current`` under the lock and never mutates the tuple
being iterated, so dispatch takes no lock (an unsubscribed listener may still
get an event that was already being delivered, as with any observer list).

Owners check their own closed state before calling ``subscribe``; the hot
path tests ``listeners.current`` (an empty tuple is false) before building an
event.

``DeliveryQueue`` is how an owner with a lock calls them (registries, feature
flags): events queued under the owner's lock, in write order, and delivered
once every lock is released, by one thread at a time that never waits for
another (``hand_off`` for events queued on a backend's own thread).

Example:
    >>> seen = []
    >>> listeners = Listeners("an example listener", area="example")
    >>> unsubscribe = listeners.subscribe(seen.append)
    >>> listeners.dispatch("one")
    >>> unsubscribe(); unsubscribe()        # idempotent
    >>> listeners.dispatch("two")
    >>> seen
    ['one']
    >>> listeners.subscribe(None)
    Traceback (most recent call last):
    ...
    TypeError: a listener must be callable, not None
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Generic, TypeVar

from foundation._unraisable import report_unraisable

__all__ = [
    "DeliveryQueue",
    "Listeners",
    "call_each",
    "check_listener",
    "subscribe_to",
    "unsubscriber",
    "without",
]

E = TypeVar("E")


def check_listener(listener: object) -> None:
    """``TypeError`` unless ``listener`` is callable (the one message every subscribe uses)."""
    if not callable(listener):
        raise TypeError(f"a listener must be callable, not {listener!r:.200}")


def without(listeners: tuple[Any, ...], listener: object) -> tuple[Any, ...]:
    """``listeners`` minus ONE occurrence of ``listener`` (by identity): one subscription."""
    for i, candidate in enumerate(listeners):
        if candidate is listener:
            return listeners[:i] + listeners[i + 1 :]
    return listeners


def subscribe_to(
    owner: object,
    attr: str,
    lock: threading.Lock | threading.RLock,
    listener: Callable[[Any], object],
    *,
    before: Callable[[], None] | None = None,
) -> Callable[[], None]:
    """Add ``listener`` to the tuple ``owner.<attr>`` (replaced under ``lock``).

    ``before`` runs under the lock first and may raise (a closed owner). Returns
    :func:`unsubscriber` for this subscription.

    Raises:
        TypeError: ``listener`` is not callable (checked before anything else).
    """
    check_listener(listener)
    with lock:
        if before is not None:
            before()
        setattr(owner, attr, (*getattr(owner, attr), listener))
    return unsubscriber(owner, attr, lock, listener)


def unsubscriber(
    owner: object, attr: str, lock: threading.Lock | threading.RLock, listener: object
) -> Callable[[], None]:
    """The unsubscribe of ONE subscription of ``listener`` in the tuple ``owner.<attr>``.

    Idempotent: the first call removes one occurrence (under ``lock``), later
    calls do nothing, so a listener subscribed twice keeps its other subscription.
    """
    done = False

    def unsubscribe() -> None:
        nonlocal done
        with lock:
            if done:
                return
            remaining = without(getattr(owner, attr), listener)
            # Race (Ctrl-C, raised at a call's start or a C call's return):
            # with `done` set before the calls above, a cut in them left the
            # listener subscribed and every later call did nothing. Now a cut
            # there changes nothing (the next call does it all), and no check
            # point sits between marking done and the one store: setattr is
            # the last call (a plain attribute: no Python code runs in it).
            done = True
            setattr(owner, attr, remaining)

    return unsubscribe


def call_each(
    listeners: tuple[Callable[[E], object], ...], event: E, where: str, area: str
) -> None:
    """Call each of ``listeners`` with ``event``; an ``Exception`` is reported
    (:func:`foundation._unraisable.report_unraisable`, naming ``where``) and the
    next listener runs. The one loop behind every ``dispatch``."""
    for listener in listeners:
        try:
            listener(event)
        except Exception as exc:  # a broken listener must not break the writer
            report_unraisable(exc, where, listener, area=area)


class Listeners(Generic[E]):
    """A copy-on-write list of listeners with reported dispatch (see the module docs).

    ``where`` names them in error reports ("MigratingRegistry listener"),
    ``area`` picks the logger ``foundation.<area>``.
    """

    __slots__ = ("_area", "_lock", "_where", "current")

    def __init__(self, where: str, *, area: str) -> None:
        self._lock = threading.Lock()
        self._where = where
        self._area = area
        #: The subscribed listeners: read without a lock, replaced (never mutated) under it.
        self.current: tuple[Callable[[E], object], ...] = ()

    def subscribe(self, listener: Callable[[E], object]) -> Callable[[], None]:
        """Add ``listener``; returns an idempotent unsubscribe for this subscription.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        return subscribe_to(self, "current", self._lock, listener)

    def dispatch(self, event: E) -> None:
        """Call every listener with ``event``; errors are reported, never raised."""
        call_each(self.current, event, self._where, self._area)

    def clear(self) -> None:
        """Drop every listener (``close()``); later unsubscribes do nothing."""
        with self._lock:
            self.current = ()

    def __repr__(self) -> str:
        return f"<Listeners {self._where!r}: {len(self.current)}>"


class _WriteTags(threading.local):
    """Per thread: the tag of the writes this thread is making (None: untagged)."""

    def __init__(self) -> None:  # run in each thread (an instance attribute reads
        self.tag: object = None  # about 3x faster than a class attribute default)


#: The per-thread tag a writer (``MigratingRegistry``) puts on the events of the
#: writes it makes; ``DeliveryQueue`` clears it around the listeners it runs.
_write_tags = _WriteTags()


class DeliveryQueue(Generic[E]):
    """Events for ``subscribe()`` listeners, delivered in queue order, one at a
    time, by one thread at a time, which never waits for another.

    A writer appends ``(event, tag)`` to ``pending`` (under its own lock, so
    the queue order is the write order; ``tag``: its ``_write_tags.tag``, or
    None), releases every lock it holds, then calls :meth:`deliver`. If
    another thread is delivering at that moment, that thread delivers these
    events too, once the listener it is running returns, and the writer
    returns at once: a slow listener delays the listeners of later events,
    never a writer. The listeners are the tuple ``source.<attr>``, read again
    for each event (copy-on-write: a subscribe racing with a delivery never
    changes the tuple being iterated). A listener that raises ``Exception`` is
    reported (:func:`foundation._unraisable.report_unraisable`: logger
    ``foundation.<area>``, ``where`` naming it) and the next one runs.

    ``delivering`` is the tag of the event whose listeners are running (None
    between events); a listener reads it in the delivering thread.
    """

    __slots__ = ("_area", "_courier_name", "_listeners_of", "_lock", "_owned", "_source",
                 "_where", "busy", "delivering", "pending")  # fmt: skip

    def __init__(
        self,
        source: object,
        attr: str,
        where: str,
        *,
        area: str,
        courier_name: str = "foundation-events",
    ) -> None:
        #: (event, its writer's tag), in write order, not yet delivered.
        self.pending: deque[tuple[E, object]] = deque()
        self.delivering: object = None
        #: True while a thread delivers (between its taking and releasing the
        #: lock): ``hand_off`` then starts no courier. Read without the lock.
        self.busy = False
        self._source = source
        self._listeners_of: Callable[[object], tuple[Callable[[E], object], ...]] = attrgetter(attr)
        self._where = where
        self._area = area
        self._courier_name = courier_name
        # Held by the one thread delivering. Never re-entered: a listener that
        # writes, in that thread, finds it held (``_is_owned``) and returns, as
        # any other writer finding it taken does. An RLock for that owner
        # check, which also tells an interrupted acquire whether it took it.
        self._lock = threading.RLock()
        self._owned: Callable[[], bool] = self._lock._is_owned  # type: ignore[attr-defined]

    def deliver(self) -> None:
        """Deliver the queued events in this thread, which holds no lock of the
        owner; unless another thread is delivering: it delivers them, and this
        one returns at once.

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
            if not self._take_turn():
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
                            report_unraisable(exc, self._where, listener, area=self._area)
            finally:
                # (A BaseException from a listener, KeyboardInterrupt say, leaves
                # the rest queued: the next deliver() delivers them.)
                self.delivering = None
                self.busy = False
                if tag is not None:
                    tags.tag = tag
                lock.release()

    def _take_turn(self) -> bool:
        """Take the delivery lock; False when another thread delivers (it looks
        at the queue again after releasing) or this one does, re-entered: a
        listener wrote (its events are queued behind the one it is handling),
        and the loop further up this stack delivers them once it returns."""
        if self._owned():
            return False
        lock = self._lock
        try:
            if not lock.acquire(blocking=False):
                return False
            self.busy = True
        except BaseException:
            # Race: a Ctrl-C is raised at the first check after acquire()
            # returned, its own end: the lock was taken, and no finally in
            # deliver() would release it (every later deliver() would return
            # at once: no listener would hear anything again). (No check point
            # between this return and deliver()'s try: a Python return.)
            if self._owned():
                lock.release()
            raise
        return True

    def hand_off(self) -> None:
        """Deliver the queued events from a short-lived courier thread (a new
        thread: it holds no lock), for an event queued in a thread that must
        not run listeners (a backend's own thread, which may hold a lock of
        the backend that a writer waits for, or has more work to do: a
        listener waiting for that writer would deadlock, a slow one would
        stall every writer, or the backend's thread itself)."""
        if self.busy:  # (a shortcut: a courier finding the lock taken returns at once)
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
