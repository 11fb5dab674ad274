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
another (``hand_off`` for events queued on a backend's own thread). A writer
delivers the events queued before its turn (its own) and leaves later ones
to a courier thread; nothing is dropped, and a growing backlog (a stuck
listener) is logged (``BACKLOG_WARNING``). A listener's ``BaseException``
(``KeyboardInterrupt``, ``SystemExit``) robs no other listener: a courier
reports it and goes on; a writer's own thread re-raises it (a Ctrl-C reaches
its user) once a courier has what is left, that event's later listeners
first, then the events behind it (in order, none twice).

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

import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from operator import attrgetter
from types import FrameType
from typing import Any, Final, Generic, TypeVar

from foundation import telemetry
from foundation._unraisable import report_unraisable

__all__ = [
    "BACKLOG_WARNING",
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


#: The backlog (events queued) at which a WARNING names the listener holding
#: up a ``DeliveryQueue``; then at 10x, 100x, ... of it, once each, and again
#: after the backlog fell below a tenth of it (a module constant: tests lower it).
BACKLOG_WARNING = 10_000

_NO_TURN: Final = object()  # (_take_turn: the turn is taken)

#: The telemetry event of such a WARNING, ``foundation.<area>.listener_backlog``.
BACKLOG_EVENT = "listener_backlog"

_MAX_REPR = 200  # (as report_unraisable bounds a listener's repr)


class DeliveryQueue(Generic[E]):
    """Events for ``subscribe()`` listeners, delivered in queue order, one at a
    time, by one thread at a time, which never waits for another.

    A writer appends ``(event, tag)`` to ``pending`` (under its own lock, so
    the queue order is the write order; ``tag``: its ``_write_tags.tag``, or
    None), releases every lock it holds, then calls :meth:`deliver`: it
    delivers the events queued when it took its turn (its own among them, and
    those its listeners' writes queue meanwhile) and hands any later ones to a
    courier thread (:meth:`hand_off`), so a busy second writer never keeps it
    delivering (unless its listeners write on the other writer's events too:
    what precedes their writes is part of the turn). If another thread is
    delivering at that moment, that thread (or its courier) delivers these
    events too, once the listener it is
    running returns, and the writer returns at once: a slow listener delays
    the listeners of later events, never a writer. The listeners are the
    tuple ``source.<attr>``, read again for each event (copy-on-write: a
    subscribe racing with a delivery never changes the tuple being
    iterated). A listener that raises ``Exception`` is reported
    (:func:`foundation._unraisable.report_unraisable`: logger
    ``foundation.<area>``, ``where`` naming it) and the next one runs; so
    does any ``BaseException`` on a courier thread (a library thread must not
    die of a listener). In any other thread (a writer's) a ``BaseException``
    (a Ctrl-C must reach the user; a ``sys.exit()``) propagates once the
    event is left, with the listeners not yet called, for a courier started
    at once (``_call``, ``_after_cut``): the write is published already, and
    no listener misses the event or gets it twice.

    Nothing is dropped: a listener that never returns holds every later event.
    A thread that finds another delivering checks the backlog (nothing on the
    uncontended path): past :data:`BACKLOG_WARNING` events, then each 10x more,
    one WARNING under ``foundation.<area>`` names the running listener, how long
    its event's listeners have run (at least) and the backlog (and the
    telemetry event ``foundation.<area>.listener_backlog``, if someone listens).

    ``delivering`` is the tag of the event whose listeners are running (None
    between events); a listener reads it in the delivering thread.
    """

    __slots__ = ("_area", "_courier_name", "_head", "_listeners_of", "_lock", "_more", "_owned",
                 "_rest", "_source", "_warned", "_where", "busy", "delivering",
                 "pending")  # fmt: skip

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
        #: lock) or a courier waits for the turn a writer relayed to it: a
        #: writer then leaves its events, ``hand_off`` starts no courier.
        #: Read without the lock.
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
        # Set when a listener run by the deliverer queued events (it wrote):
        # the deliverer's turn then covers them too.
        self._more = False
        # The event whose listeners are running, off the queue: (it, an
        # iterator over its listeners not yet called); None between events.
        # Left set by a turn a BaseException cut (a listener's, a Ctrl-C in a
        # writer's thread): the next turn finishes it first. Touched only by
        # the lock's holder.
        self._rest: tuple[tuple[E, object], Iterator[Callable[[E], object]]] | None = None
        # The backlog WARNING last given (0: none since the backlog was small),
        # and (the queue's head, when first seen there) for "no event delivered
        # for": both touched only by threads that find another delivering.
        self._warned = 0
        self._head: tuple[object, float] = (None, 0.0)

    def deliver(self, *, drain: bool = False, wait: bool = False, courier: bool = False) -> None:
        """Deliver the events queued when this thread took its turn (it holds
        no lock of the owner), and those its listeners queue meanwhile; hand
        any later ones to a courier. Unless another thread is delivering (or a
        courier is on its way): it delivers them, and this one returns at once.
        ``drain``: deliver until the queue is empty (a courier); ``wait``: wait
        for the turn (a courier that the writer holding it started: ``_relay``);
        ``courier``: this thread is the library's own (a courier, or one that
        must not run listeners but has to: ``hand_off`` when no thread can
        start), so a listener's ``BaseException`` is reported, never raised
        (``_call``).

        Race: a thread whose try fails leaves its events to the deliverer,
        which looks at the queue again after releasing its lock; an event
        queued after that look finds the lock free (or a newer deliverer that
        looks again in turn). So no event is stranded, and no thread waits for
        a listener running in another thread: that listener may be waiting for
        it (a deadlock), or be slow (every writer stalled).
        """
        pending = self.pending  # (callers look first: deliver() with none is a turn for nothing)
        tag = self._take_turn(drain, wait)
        if tag is _NO_TURN:
            return
        n = 0  # (no call before the try: a Ctrl-C at its return left the lock held)
        done = False
        try:
            n = self._turn(drain, courier)  # 0, or -1: relayed to a courier
            done = True
        finally:
            self.delivering = None
            self.busy = n < 0  # (relayed: set until the courier has the turn)
            if tag is not None:
                _write_tags.tag = tag
            self._lock.release()
            if not done:
                self._after_cut()
        if pending:
            # Race: events queued by other writers after the last look above,
            # looked at after the release as above. The courier relayed to
            # delivers them; else a new one (hand_off starts none if another
            # thread took the turn meanwhile, or a courier waits for it: they
            # look again in turn). Never this writer: its own are delivered.
            self._hand_off(courier)

    def _turn(self, drain: bool, courier: bool) -> int:
        """``deliver``'s turn (the lock held): the event a cut turn left first,
        then the events queued when it began, and more (``_next_batch``).
        Returns 0, or -1 once the rest is relayed to a courier (``_relay``)."""
        pending = self.pending
        if self._rest is not None:  # an event a cut turn left half delivered: first
            self._resume(courier)
        source, listeners_of = self._source, self._listeners_of
        n = len(pending)  # a writer's turn: the events queued so far
        while n > 0:
            for _ in range(n):  # only the lock's holder pops: n are there
                # Race (a Ctrl-C, or a listener's BaseException, cutting the
                # turn): the event is recorded with an iterator over its
                # listeners (``_rest``) before it leaves the queue, so no check
                # point (a C call's return) sits where it is in neither: a cut
                # leaves it with exactly the listeners not yet called (none
                # before ``_call`` ran one) for the next turn. Never lost, no
                # listener called twice.
                item = pending[0]
                listeners = iter(listeners_of(source))
                self._rest = (item, listeners)
                pending.popleft()
                self._call(item, listeners, courier)
                self._rest = None  # (no check point since _call returned)
            n = len(pending)
            if n:
                n = self._next_batch(n, drain)
        return n

    def _call(
        self, item: tuple[E, object], listeners: Iterator[Callable[[E], object]], courier: bool
    ) -> None:
        """Call ``listeners`` (the lock held) with the event of ``item`` (its
        tag published as ``delivering``). A listener's ``Exception`` is
        reported and the next one runs; so is any ``BaseException`` on a
        courier (a library thread: it must not die of a listener). Elsewhere
        (a writer's own thread) a ``BaseException`` (``KeyboardInterrupt``: a
        Ctrl-C must reach its user; ``SystemExit``) propagates, and the
        caller leaves the event with the listeners not yet called (``_rest``)
        for a courier (``_after_cut``).

        Race (a Ctrl-C between listeners): the iterator advances before each
        call, so a cut anywhere (in a listener, in the report of its error, at
        the loop's backward jump) leaves exactly the listeners not yet called:
        none is called twice, none skipped. (A Ctrl-C at a listener's first
        instruction counts as in it: its own check point.)
        """
        event, self.delivering = item
        for listener in listeners:
            try:
                listener(event)
            except BaseException as exc:  # a broken listener must not break a writer
                if not (courier or isinstance(exc, Exception)):
                    raise
                report_unraisable(exc, self._where, listener, area=self._area)

    def _resume(self, courier: bool) -> None:
        """Finish the event a cut turn left (``_rest``; the lock held) before
        any event behind it: the order is kept. Cut again, it stays there, its
        iterator further on.

        Race (a cut between recording it and popping it, if a Python version
        checks there): then it is still the queue's head (the same tuple, by
        identity: each queued one is new), popped here, not told again."""
        item, listeners = self._rest  # type: ignore[misc]  # (checked by the caller)
        pending = self.pending
        if pending and pending[0] is item:
            pending.popleft()
        self._call(item, listeners, courier)
        self._rest = None

    def _after_cut(self) -> None:
        """A turn cut by a ``BaseException`` (a listener's, or a Ctrl-C in this
        writer's thread) that propagates: the write is published and its event
        queued or half delivered (``_rest``); a courier delivers what is left
        at once, in order, so the other listeners are not robbed of it and the
        exception reaches the caller without waiting for them.

        Race: read after the release: another thread may have taken the turn
        (``busy``: it delivers them, ``_rest`` first) or delivered them all
        already (nothing to do). A courier finding nothing ends at once. A
        courier that cannot start (or a second Ctrl-C cutting its start)
        leaves them queued: the next ``deliver()`` delivers them.
        """
        if (self.pending or self._rest is not None) and not self.busy:
            self._start_courier(wait=False)

    def _next_batch(self, n: int, drain: bool) -> int:
        """How many of the ``n`` events queued after those this turn counted it
        delivers too: all for a courier, or when a listener here wrote
        (``_more``: its events are part of the turn); else none: -1 once
        relayed to a courier (``_relay``), or all when none can start."""
        if drain or self._more:
            self._more = False
            return n
        return -1 if self._relay() else n

    def _relay(self) -> bool:
        """Start a courier that takes the turn after this writer (which holds
        it) to deliver the events other writers queued during its turn; False
        if none can start.

        Race (the livelock this prevents): a writer kept delivering while a
        second writer kept writing; its own write never returned. And with a
        courier started only after the release, the second writer took the
        turn meanwhile, with every event queued so far as its own turn (and
        the first one the next turn, and so on). So the courier is started
        holding the turn, and waits for it; until it has it, ``busy`` stays
        set (``deliver``), and a writer leaves its events to it.
        """
        # (A Ctrl-C cutting the start returns nothing: not relayed, the events
        # stay queued: the next deliver() delivers them (this one's cut turn
        # starts a courier for them: _after_cut); or the courier, if it
        # started, does.)
        return self._start_courier(wait=True)

    def _start_courier(self, *, wait: bool) -> bool:
        """Start a courier thread delivering until the queue is empty (``wait``:
        for the turn a writer holding it relays to it); False if none can start."""
        courier = threading.Thread(
            target=self.deliver,
            kwargs={"drain": True, "wait": wait, "courier": True},
            name=self._courier_name,
            daemon=True,
        )
        try:
            courier.start()
        except RuntimeError:  # no thread can start (interpreter shutdown, thread limit)
            return False
        return True

    def _take_turn(self, drain: bool, wait: bool) -> object:
        """Take the delivery lock and clear this thread's write tag for the
        listeners; returns the tag to restore. ``_NO_TURN`` when another thread
        delivers (it looks at the queue again after releasing), a courier is
        on its way (``_relay``; for a writer: a courier takes the turn) or this
        thread delivers, re-entered (``_turn_taken``).

        ``busy`` is set from taking the lock to releasing it, and from a
        relay to the courier taking it: a writer finding it set returns
        before trying the lock (cheaper than the owner check a courier makes).
        """
        if self._owned() if drain else self.busy:
            self._turn_taken()
            return _NO_TURN
        lock = self._lock
        try:
            if not lock.acquire(wait):
                self._check_backlog()  # (the backlog grows while another delivers)
                return _NO_TURN
            if self.busy and not drain:
                # Race: it read ``busy`` unset before a writer took the turn and
                # relayed it: the courier waits for this lock and delivers
                # these events (``busy`` set until it has it).
                lock.release()
                self._check_backlog()
                return _NO_TURN
            self.busy = True
            self._more = False
        except BaseException:
            # Race: a Ctrl-C is raised at the first check after acquire()
            # returned, its own end: the lock was taken, and no finally in
            # deliver() would release it (every later deliver() would return
            # at once: no listener would hear anything again). (No check point
            # from here to deliver()'s try: no call, no backward jump.)
            if self._owned():
                lock.release()
            raise
        # The writes listeners make are not those of the write this thread may
        # be making (whose events it is delivering); deliver() restores it.
        tag = _write_tags.tag
        if tag is not None:
            _write_tags.tag = None
        return tag

    def _turn_taken(self) -> None:
        """The turn is taken: by this thread, re-entered (a listener wrote: its
        events are queued behind the one it is handling, and the loop further
        up this stack delivers them once it returns, ``_more``: part of its
        turn), else by another thread (check the backlog)."""
        if self._owned():
            self._more = True
        else:
            self._check_backlog()

    def hand_off(self) -> None:
        """Deliver the queued events from a short-lived courier thread (a new
        thread: it holds no lock, and delivers until the queue is empty), for
        an event queued in a thread that must not run listeners (a backend's
        own thread, which may hold a lock of the backend that a writer waits
        for, or has more work to do: a listener waiting for that writer would
        deadlock, a slow one would stall every writer, or the backend's thread
        itself), or left after a writer's turn. If no thread can start, they
        are delivered here, as a courier would (this thread, the backend's,
        must not die of a listener: its ``BaseException`` is reported)."""
        self._hand_off(True)

    def _hand_off(self, courier: bool) -> None:
        """``hand_off``; ``courier``: how this thread delivers them if no thread
        can start (a writer's thread: a listener's ``BaseException`` raised)."""
        if self.busy:  # (a shortcut: a courier finding the lock taken returns at once)
            # Race: another thread delivers; it looks at the queue again after
            # releasing its lock, later than this event was queued (deliver).
            # Or a courier waits for the turn (_relay), and delivers it.
            # Or this one: the event was queued under a listener it runs (a
            # listener wrote to a backend directly), and the loop up this
            # stack delivers it once that listener returns (``_more``).
            self._turn_taken()
            return
        if not self._start_courier(wait=False):
            self.deliver(drain=True, courier=courier)  # here, rather than never

    def _check_backlog(self) -> None:
        """Warn when the backlog crosses :data:`BACKLOG_WARNING` or 10x, 100x, ...
        of it, once each (again once it fell below a tenth of it). Called by a
        thread that found another delivering: never on the uncontended path."""
        pending = self.pending
        try:
            head = pending[0]
        except IndexError:  # (the deliverer took the last one meanwhile)
            return
        if head is not self._head[0]:
            # The deliverer moved on since the last look: time it from here.
            self._head = (head, time.monotonic())
        queued, level = len(pending), BACKLOG_WARNING
        if queued < level:
            if queued < level // 10:
                self._warned = 0
            return
        while queued >= level * 10:
            level *= 10
        if level <= self._warned:
            return
        # Race: two threads may both get here for one level (a second WARNING,
        # never none); marked first, so a failing log call is not retried.
        self._warned = level
        self._warn_backlog(queued, time.monotonic() - self._head[1])

    def _warn_backlog(self, queued: int, stalled: float) -> None:
        """The backlog WARNING and telemetry event (never raises)."""
        try:
            listener, thread = _running_listener(self)
            text = _short_repr(listener)
            logging.getLogger(f"foundation.{self._area}").warning(
                "%s backlog: %d events queued; the delivering thread %r has been in"
                " one event's listeners for at least %.1f s, now in %s. None is"
                " dropped: a listener that never returns holds them all",
                self._where, queued, thread, stalled, text,
            )  # fmt: skip
        except Exception as exc:  # a broken handler: never the writer's problem
            report_unraisable(exc, f"the backlog warning of {self._where}", area=self._area)
            return
        name = f"foundation.{self._area}.{BACKLOG_EVENT}"
        if telemetry.has_listeners(name):
            telemetry.emit(
                name,
                {"where": self._where, "queued": queued, "listener": text,
                 "thread": thread, "stalled_s": stalled},
            )  # fmt: skip

    def inherited_by_fork(self) -> None:
        """In a forked child (the owner's ``_inherited_by_fork``, ``foundation._fork``):
        deliver the child's events in the child.

        A parent thread delivering at the fork (or a courier it relayed the turn
        to, ``busy``) does not exist in the child: every event the child queued
        waited for it for ever (no listener heard the child's writes), and a
        courier's owner check found the lock held. So the lock is reset in
        place, the turn freed, and the events queued before the fork dropped:
        they are the parent's, which delivers them. Unless the forking thread
        itself is delivering (a listener forked): it goes on in the child and
        its turn ends as in the parent. Race: none (one thread in the child).
        """
        if self._owned():
            return
        self._lock._at_fork_reinit()  # type: ignore[attr-defined]
        self.pending.clear()
        self._rest = None
        self.busy = self._more = False
        self.delivering = None

    def __repr__(self) -> str:
        return f"<DeliveryQueue {self._where!r}: {len(self.pending)} queued>"


def _running_listener(queue: DeliveryQueue[Any]) -> tuple[object, str | None]:
    """The listener ``queue``'s deliverer runs now (a local of its ``_call``
    frame) and that thread's name; (None, None) if none is found.
    Read from the threads' frames only when warning: nothing is recorded on
    the delivery path (a ``_call`` frame before its first call has no
    ``listener``)."""
    code = DeliveryQueue._call.__code__
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        at: FrameType | None = frame
        while at is not None:
            if at.f_code is code:
                found = at.f_locals
                if found.get("self") is queue and "listener" in found:
                    return found["listener"], names.get(ident)
            at = at.f_back
    return None, None


def _short_repr(obj: object) -> str:
    """``obj``'s qualified name (a function, a bound method), else its repr, bounded."""
    try:
        name, module = getattr(obj, "__qualname__", None), getattr(obj, "__module__", None)
        named = isinstance(name, str) and isinstance(module, str)
        text = f"{module}.{name}" if named else repr(obj)
    except Exception:  # a broken __repr__ or __getattr__ must not hide the warning
        text = f"<{type(obj).__name__} object>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."
