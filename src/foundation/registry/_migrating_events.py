"""Event routing of a ``MigratingRegistry``: which backend's events reach its listeners.

The facade subscribes once to each backend. A facade call runs inside
``with _Call(owner):``; each backend call it makes is wrapped in
``_Keep(ctx, side)``, which says whether that call's events are kept (the
authoritative call) or dropped (mirror and catch-up calls). Events delivered
by another thread are forwarded when their side is authoritative at delivery
time. See the "Events" item of "Why this is correct under concurrent flips"
in ``foundation.registry._migrating``.

A backend that delivers one thread's events in another, possibly after the
call that made them returned (``MemoryRegistry``, ``RedisRegistry``: a writer
that finds another thread delivering leaves its events to it and does not
wait), lets a writer
tag its writes (``_write_tags``): each event carries the tag of the thread's
backend call that queued it (not those of writes by listeners run
meanwhile). On such a side each backend call of a facade call is made under
one of the facade's two tags for that side (``_Tags``): kept or dropped.
Its own events are recognised by it, whichever thread delivers them and
whenever: kept, dropped or muted as decided when the call was made, never by
the flag or the call in progress at delivery time. Nothing is booked per
call: a tag is two thread-local stores, and the tag travels with the event.

A death (``unregistered``/``down``) is reported by both backends, each
monitoring the agent, in their own threads and times: it is told once, by
the first report of a registration the listeners were told of (or made
before they subscribed), whatever the flag, and the other report is dropped
(``_death_told``; a per-thread legacy side monitors nothing: see
``_reports``). So the facade notes what its listeners were told, per
registration, while it has any, and forgets a per-thread legacy copy's once
its thread ended and the target cannot hold it: no one can tell its end
(``_drop_ended_told``).

Every forwarded event goes to one queue, in the order the backends delivered
them, and the facade's listeners are called from it, one event at a time, by
one thread at a time that holds no lock of the facade (nor, for events a
backend delivers from its own threads, any lock of the backend). The queue is
a ``registry._listeners.DeliveryQueue``, the helper that delivers
``MemoryRegistry``'s events too:

* a facade call delivers at exit, once it has released the facade lock (a
  pump or a pass, rules 6 and 7, once it has released its lock too);
* an event a backend delivers outside any facade call (a death its monitor
  saw, a remote change) is handed to a short-lived courier thread: the
  backend may be delivering it holding a lock of its own (``MemoryRegistry``
  holds its delivery lock while it delivers, and a slow listener there
  would delay every event queued behind it);
* a thread that finds another one delivering leaves its events to it and
  returns at once (that thread delivers them after the listener it is
  running returns), so a listener may wait for another thread's facade call.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Final, Literal

from foundation._listeners import DeliveryQueue as _DeliveryQueue  # (typing)
from foundation.registry._listeners import DeliveryQueue, _write_tags
from foundation.registry._types import Entry, Registry, RegistryEvent

if TYPE_CHECKING:
    from foundation._listeners import Listeners

Side = Literal["legacy", "target"]
_LEGACY: Final = "legacy"
_TARGET: Final = "target"


_UNMUTED: Final = object()


class _Tag:
    """The tag of a facade's backend calls on a side that tags its events:
    their events are forwarded (``keep``: an authoritative call) or dropped
    (a mirror or catch-up call), wherever and whenever delivered."""

    __slots__ = ("keep",)

    def __init__(self, keep: bool) -> None:
        self.keep = keep


class _Tags:
    """A side of a facade that tags its events (``MemoryRegistry``,
    ``RedisRegistry``): the backend's delivery queue and the facade's two tags
    for its calls there (unique to this facade: another facade's, or none, is
    an asynchronous event here)."""

    __slots__ = ("delivery", "drop", "keep")

    def __init__(self, delivery: _DeliveryQueue[RegistryEvent]) -> None:
        self.delivery = delivery  # .delivering: the tag of the event it delivers
        self.keep = _Tag(True)
        self.drop = _Tag(False)


class _Ctx:
    """Per-thread state of one facade call: which side's events to keep, and the
    key of the mirror call in progress whose events are muted (``_Mute``)."""

    __slots__ = ("keep", "muted")

    def __init__(self) -> None:
        self.keep: Side | None = None
        self.muted: object = _UNMUTED


class _Call:
    """``with _Call(owner):`` one facade call; its kept events are delivered at exit.

    Exit runs after the facade lock is released (``with _Call(self), self._lock:``
    releases the lock first). A call made holding a lock of the facade (a
    pump's or a pass's backend call) leaves them queued: the pump or pass
    delivers them once it has released its lock (``_flush_out``).
    """

    __slots__ = ("_outer", "_owner")

    def __init__(self, owner: _EventRouting) -> None:
        self._owner = owner
        self._outer: _Ctx | None = None

    def __enter__(self) -> _Ctx:
        tls = self._owner._tls
        self._outer = getattr(tls, "ctx", None)
        ctx = tls.ctx = _Ctx()
        return ctx

    def __exit__(self, *exc: object) -> None:
        self._owner._tls.ctx = self._outer
        self._owner._flush_out()  # events (and telemetry) decided under the facade lock


class _Keep:
    """``with _Keep(ctx, side, tag):`` the backend call inside keeps ``side``'s
    events (``None``: drops every event); ``tag``: the facade's tag for it, on
    a side that tags its events (else None). Outside a facade call (no
    ``ctx``) it does nothing."""

    __slots__ = ("_ctx", "_saved", "_saved_tag", "_side", "_tag")

    def __init__(self, ctx: _Ctx | None, side: Side | None, tag: _Tag | None) -> None:
        self._ctx = ctx
        self._side = side
        self._tag = tag
        self._saved: Side | None = None
        self._saved_tag: object = None

    def __enter__(self) -> None:
        ctx = self._ctx
        if ctx is not None:
            self._saved, ctx.keep = ctx.keep, self._side
            tag = self._tag
            if tag is not None:
                tags = _write_tags
                self._saved_tag, tags.tag = tags.tag, tag

    def __exit__(self, *exc: object) -> None:
        ctx = self._ctx
        if ctx is not None:
            if self._tag is not None:
                _write_tags.tag = self._saved_tag
            ctx.keep = self._saved


class _Mute:
    """``with _Mute(owner, ctx, key, tag):`` a mirror call on ``key`` whose
    events are dropped, wherever and whenever they are delivered.

    On a side that tags its events, by its tag (``tag``, the side's drop tag):
    exactly the call's own events, even when another thread delivers them
    after the call returned. On any other backend a call's events are
    delivered before it returns, though maybe by another thread: they are
    recognised by key, in every thread, while the call runs. Either way any
    other event this thread delivers meanwhile (a death its monitor saw) is
    routed as the asynchronous event it is."""

    __slots__ = ("_ctx", "_key", "_owner", "_saved", "_saved_tag", "_tag")

    def __init__(self, owner: _EventRouting, ctx: _Ctx, key: Hashable, tag: _Tag | None) -> None:
        self._owner = owner
        self._ctx = ctx
        self._key = key
        self._tag = tag
        self._saved: tuple[Side | None, object] = (None, _UNMUTED)
        self._saved_tag: object = None

    def __enter__(self) -> None:
        ctx, owner, key = self._ctx, self._owner, self._key
        self._saved = (ctx.keep, ctx.muted)
        ctx.keep, ctx.muted = None, key
        if self._tag is not None:
            tags = _write_tags
            self._saved_tag, tags.tag = tags.tag, self._tag
            return
        with owner._muted_lock:
            owner._muted[key] = owner._muted.get(key, 0) + 1

    def __exit__(self, *exc: object) -> None:
        ctx, owner, key = self._ctx, self._owner, self._key
        ctx.keep, ctx.muted = self._saved
        if self._tag is not None:
            _write_tags.tag = self._saved_tag
            return
        with owner._muted_lock:
            left = owner._muted[key] - 1
            if left:
                owner._muted[key] = left
            else:
                del owner._muted[key]


_MAX_KEPT: Final = 1_000
"""The most deaths kept for a later report (``_withheld``, all keys together)
and ends noted (``_told_gone``): past it the oldest is dropped, so keys used
once cannot keep dead agents without bound (a death dropped so may then be
told twice, or not at all, as without this bookkeeping)."""


_SWEEP_AT_LEAST: Final = 256
"""The fewest registrations told by a per-thread legacy store (``_told_in``)
at which a write sweeps those whose thread ended (``_drop_ended_told``);
then at twice what the last sweep left."""


_Held = tuple[Any, Side, float]
"""What the listeners were told of a registration: its agent, the side whose
event told it, its ``registered_at``."""


_Holders = threading.Thread | tuple[threading.Thread, ...]
"""The threads whose per-thread legacy stores hold a registration (``_told_in``):
one, or several (each registered the same agent under the same key)."""


def _also_in(held_in: _Holders, thread: threading.Thread) -> _Holders:
    """``held_in`` and ``thread``."""
    threads = held_in if isinstance(held_in, tuple) else (held_in,)
    return threads if thread in threads else (*threads, thread)


def _alive_of(held_in: _Holders) -> _Holders | None:
    """The threads of ``held_in`` still alive (``held_in`` itself if all are), or None."""
    if not isinstance(held_in, tuple):
        return held_in if held_in.is_alive() else None
    alive = tuple(t for t in held_in if t.is_alive())
    if len(alive) == len(held_in):
        return held_in
    return (alive[0] if len(alive) == 1 else alive) if alive else None


def _identity(agent: Any) -> Any:
    """What tells registrations' agents apart: the agent itself where hashable (a
    ``RemoteAgent`` is decoded anew at a resync: equal, another object), else its id."""
    try:
        hash(agent)
    except TypeError:
        return id(agent)
    return agent


def _registration(entry: Entry) -> tuple[Hashable, Any]:
    """The key of ``entry``'s registration in what the listeners were told."""
    return entry.key, _identity(entry.agent)


def _keep_bounded(table: dict[Any, Any], key: Any, value: Any) -> None:
    """``table[key] = value``, the oldest entry dropped past ``_MAX_KEPT``."""
    if key not in table and len(table) >= _MAX_KEPT:
        del table[next(iter(table))]
    table[key] = value


class _EventRouting:
    """The event layer of ``MigratingRegistry`` (its lowest base class).

    The attributes below are set by ``MigratingRegistry.__init__``.
    """

    _tls: threading.local  # .ctx: the _Ctx of the facade call this thread is making
    _listeners: Listeners[RegistryEvent]  # the facade's own listeners
    _on: bool  # the cached flag: True when the target is authoritative
    _dead: deque[tuple[Hashable, Any]]  # the target's deaths, applied at the next write
    _muted: dict[Hashable, int]  # keys of the mirror calls in progress (``_Mute``), counted
    _muted_lock: threading.Lock
    _tags: dict[Side, _Tags]  # the sides that tag their events

    _delivery: DeliveryQueue  # the forwarded events and the one delivering them
    _out: deque[tuple[RegistryEvent, object]]  # its queue: (event, None), in delivery order
    _shared_view: object  # None: a per-thread legacy, which monitors nothing

    # What the listeners were told (``_queue_told``, ``_forward_death``), in queue
    # order, all under ``_told_lock``: by ``_registration`` (key, agent), each registration
    # they were told of and not told the end of (its agent, the side whose
    # event told it); the ends told of registrations made before
    # ``_told_since`` (the first event with a listener; 0.0: none yet), which
    # no registered event told.
    _told: dict[tuple[Hashable, Any], _Held]  # (agent, side, its registered_at)
    _told_gone: dict[tuple[Hashable, Any], Any]  # (at most _MAX_KEPT: _keep_bounded)
    # Those of ``_told`` told by a per-thread legacy store: the thread holding
    # the copy (whose end only that thread's writes can tell; swept once it
    # ended: ``_drop_ended_told``), and the size at which a write sweeps them.
    _told_in: dict[tuple[Hashable, Any], _Holders]
    _sweep_at: int
    _track_told_in: bool  # a per-thread legacy, a target that tags its events
    # (``_death_told``; at most _MAX_KEPT) per registration: a withheld death,
    # and its report; and per key, how many of them it has (``_death_withheld``)
    _withheld: dict[tuple[Hashable, Any], tuple[_Held, RegistryEvent]]
    _unheard: dict[Hashable, int]
    _told_since: float
    _told_lock: threading.Lock

    if TYPE_CHECKING:  # as _LegacyRetries defines them

        def _flush_out(self) -> None: ...

    def _init_delivery(self) -> None:
        """Set the delivery queue (called once, by ``MigratingRegistry.__init__``,
        once ``_listeners`` is set).

        The facade's listeners are called by ``DeliveryQueue.deliver`` (in a
        thread that holds no lock of the facade: ``_flush_out`` checks), or by
        a courier thread (``DeliveryQueue.hand_off``: for an event queued
        outside any facade call, in a backend's own thread, which may hold a
        lock of the backend that a facade writer waits for); a thread that
        finds another one delivering leaves its events to it and does not wait.
        """
        self._delivery = DeliveryQueue(
            self._listeners,
            "current",
            "MigratingRegistry listener",
            courier_name="foundation-migrating-events",
        )
        self._out = self._delivery.pending  # (bound here: an attribute load less)
        self._tags = {}
        self._told = {}
        self._told_gone = {}
        self._told_in = {}
        self._sweep_at = _SWEEP_AT_LEAST
        self._track_told_in = False  # (set by _tag_events_of)
        self._withheld = {}
        self._unheard = {}
        self._told_since = 0.0
        self._told_lock = threading.Lock()

    def _tag_events_of(self, side: Side, backend: Registry) -> None:
        """Tag the calls on side ``backend`` if it tags its events (called once
        per side, by ``MigratingRegistry.__init__``)."""
        # Race: such a backend may deliver a call's events in another thread
        # (one already delivering), after the call returned: only the tag
        # travelling with each event says which facade call made it. A side
        # without one delivers each call's events in the calling thread.
        # Opted in by the class (``_events_carry_write_tags``): a backend
        # with a delivery queue whose events carry no writer's tag (a
        # MigratingRegistry as a side) is recognised by side and thread.
        if getattr(type(backend), "_events_carry_write_tags", False):
            self._tags[side] = _Tags(backend._delivery)  # type: ignore[attr-defined]
        if side == _TARGET:
            # ``_drop_ended_told`` needs to see the target's reports delivered
            # (its delivery queue idle): else nothing is noted, nor forgotten.
            self._track_told_in = self._shared_view is None and side in self._tags

    def _ctx(self) -> _Ctx | None:
        ctx: _Ctx | None = getattr(self._tls, "ctx", None)
        return ctx

    def _events_of(self, side: Side) -> _Keep:
        """``with``: the authoritative backend call inside keeps its events for delivery."""
        tags = self._tags.get(side)
        return _Keep(self._ctx(), side, None if tags is None else tags.keep)

    def _events_dropped(self, on: Side) -> _Keep:
        """``with``: the mirror or catch-up backend call on side ``on`` inside has
        its events dropped."""
        tags = self._tags.get(on)
        return _Keep(self._ctx(), None, None if tags is None else tags.drop)

    def _events_muted(self, ctx: _Ctx, key: Hashable, on: Side) -> _Mute:
        """``with``: the mirror call on ``key`` on side ``on`` inside (``ctx``: its
        facade call) has its events dropped, whichever thread delivers them and
        when (see ``_Mute``)."""
        tags = self._tags.get(on)
        return _Mute(self, ctx, key, None if tags is None else tags.drop)

    def _forward(self, side: Side, event: RegistryEvent) -> None:
        if not self._listeners.current:
            if self._told_since:
                self._forget_told()  # no listener: what they were told is moot
            return
        if not self._told_since:
            self._start_told()
        if event.reason == "down":  # a death: by what the listeners were told, not the flag
            self._forward_death(side, event)
            return
        tags = self._tags.get(side)
        if tags is None:
            self._forward_untagged(side, event)
            return
        # The tag of the backend call that queued this event (read in the
        # thread delivering it, while it does: this event's).
        tag = tags.delivery.delivering
        if tag is tags.drop:
            return  # a dropped or muted call's own event, delivered by whichever thread
        # A kept call's own event; or asynchronous (another writer's
        # change, another facade's call): forwarded when this
        # side is authoritative at delivery time. Delivered after the
        # facade call this thread is in, if any; else by a courier
        # thread (_delivery.hand_off).
        if tag is tags.keep or (side == _TARGET) == self._on:
            self._queue_told(side, event)
            if self._ctx() is None:
                self._delivery.hand_off()

    def _forward_untagged(self, side: Side, event: RegistryEvent) -> None:
        """``_forward`` from a side whose events carry no tag (not a death)."""
        ctx = self._ctx()
        if ctx is not None:
            # An event of a call this facade is making in this thread: queued,
            # delivered when the call exits (after the lock is released).
            if ctx.keep == side:
                self._queue_told(side, event)
                return
            if ctx.muted is _UNMUTED:
                return  # a dropped (mirror or catch-up) call's own event
        if self._muted and event.entry.key in self._muted:
            return  # a muted mirror call's own event, delivered by whichever thread
        # Asynchronous (a remote change, a direct write), or delivered
        # here by a backend whose dispatching thread delivers other threads'
        # events too: forward when this side is authoritative at delivery time.
        # Inside a facade call (maybe a pump's or a pass's, holding its lock),
        # delivered after it; else by a courier thread (_delivery.hand_off). A
        # listener's error is reported by the delivery queue, never raised into
        # a backend.
        if (side == _TARGET) == self._on:
            self._queue_told(side, event)
            if ctx is None:
                self._delivery.hand_off()

    def _queue_told(self, side: Side, event: RegistryEvent) -> None:
        """Queue ``event`` (not a death) for the listeners, noting what it tells them."""
        # Race: the two backends deliver in their own threads at once; noting
        # and queuing under one lock keeps ``_told`` in the queue's order.
        entry = event.entry
        agent = entry.agent
        told = _registration(entry)
        with self._told_lock:
            if event.kind == "registered":
                self._told[told] = (agent, side, entry.registered_at)
                if side == _LEGACY and self._track_told_in:
                    # (delivered in the writing thread: the store's own)
                    held_in, thread = self._told_in.get(told), threading.current_thread()
                    if held_in is None or held_in is thread:
                        self._told_in[told] = thread
                    else:  # Race: several threads' stores hold it (one registration)
                        self._told_in[told] = _also_in(held_in, thread)
                else:
                    self._told_in.pop(told, None)
                if side == _TARGET and entry.key in self._unheard:
                    # The target answered the retake of a key whose deaths are
                    # withheld: told now, before its new registration, as the
                    # target's own report was (the flag on again since the
                    # death: it was dropped, never told). Race: a retake
                    # racing a flip on, before ``_tell_withheld`` ran. Each of
                    # them: several threads' copies of the key may be dead.
                    # (A per-thread legacy's registration may be another thread's
                    # copy: the dead one stays for its own store's report.)
                    self._tell_unheard_of(entry.key)
            elif event.kind == "unregistered" and not self._end_told(told, agent, entry):
                return
            self._out.append((event, None))

    def _end_told(self, told: tuple[Hashable, Any], agent: Any, entry: Entry) -> bool:
        """Note the end an ``unregistered`` event (not a death) tells
        (``_told_lock`` held); False: that end was told already, not told again."""
        held = self._told.pop(told, None)
        if held is None:
            # A per-thread legacy's register (replace=True) over a dead copy
            # whose death is withheld tells its end ("replaced"): no longer
            # withheld (was kept: the flag on again later told it twice).
            held = self._unheard_of(told)
        if held is None and self._told_gone.pop(told, None) is not None:
            # Race: its death was told at a flip on (``_tell_withheld``) while
            # its dead copy was kept, or being retaken with the flag off, in
            # the thread's legacy store: that store's "replaced" is its end again.
            return False
        self._note_end(told, agent, held, entry)
        return True

    def _forward_death(self, side: Side, event: RegistryEvent) -> None:
        """A backend's report of a death: queued if ``_death_told`` says it is news."""
        ctx = self._ctx()
        # The answering legacy call's own report: a per-thread legacy store
        # tells a death only so (its register over the dead copy), in the
        # writing thread, so ``ctx`` is that call's (a shared legacy's and the
        # target's reports tell it anyway: ``_reports``).
        answering = side == _LEGACY and ctx is not None and ctx.keep == _LEGACY
        with self._told_lock:
            if not self._death_told(side, event, answering):
                return
            self._out.append((event, None))
        if ctx is None:
            self._delivery.hand_off()

    def _death_told(self, side: Side, event: RegistryEvent, answering: bool = False) -> bool:
        """Whether to tell this death (``_told_lock`` held): once per registration.

        Race (a flip between the two sides' reports): both backends monitor
        the agent and report its death, each in its own thread and time. Told
        by the flag at delivery time, a flip between the two reports told it
        twice or never. Now the flag plays no part (but for a per-thread
        legacy, ``_reports``): the first report of a registration the
        listeners hold (``_told``) is told, and its end noted, so the other
        side's report, however late, finds nothing (or a newer registration)
        and is dropped. A death of a registration they were never told of
        (a dropped event's, or one whose end they were told) is not told.
        ``answering``: the report of the answering backend call (its kept
        events), made as that backend alone would make it: a per-thread
        legacy's register over a dead copy, flag off, tells it whoever told
        the registration (the target, before a flip) or none (made before
        any listener): it is that store's own report (was dropped: only
        "registered" was told, where the bare store tells the death first).
        """
        entry = event.entry
        agent = entry.agent
        told = _registration(entry)
        held = self._told.pop(told, None)
        if held is None:
            held = self._unheard_of(told)
        if held is not None:
            if not (answering or self._reports(side, held[1])):
                # Told by a per-thread legacy side, which answers: not told,
                # as that store tells none; kept for that store's own
                # report, if its dead copy is replaced, or until the target
                # answers (``_tell_withheld``) (bounded: keys used once
                # would each keep a dead agent).
                self._withhold(told, held, event)
                return False
            self._note_end(told, agent, held, entry)
            return True
        if entry.registered_at >= self._told_since:
            return False
        return self._death_before_listeners(side, event, answering)

    def _withhold(self, told: tuple[Hashable, Any], held: _Held, event: RegistryEvent) -> None:
        """Keep the death of registration ``told`` (``event``: its report) for a
        later report or the flag on (``_told_lock`` held); the oldest withheld
        death dropped past ``_MAX_KEPT`` (then never told: a known limit)."""
        # Race: kept per registration, not per key (was: the newest per key).
        # Several threads each hold their own legacy copy of a key, and the
        # shared target holds one at a time: one copy's death withheld, the
        # key free in the target, another thread's copy taken there and
        # dead too replaced the first death here, which was then never told
        # (not at the flip on, not at its thread's retake of the key).
        unheard = self._withheld
        if told not in unheard:
            if len(unheard) >= _MAX_KEPT:
                self._unheard_of(next(iter(unheard)))
            keys = self._unheard
            keys[told[0]] = keys.get(told[0], 0) + 1
        unheard[told] = (held, event)

    def _take_unheard(self, told: tuple[Hashable, Any]) -> tuple[_Held, RegistryEvent] | None:
        """Take the withheld death of registration ``told``, if any (``_told_lock`` held)."""
        unheard = self._withheld.pop(told, None)
        if unheard is not None:
            keys = self._unheard
            key = told[0]
            left = keys[key] - 1
            if left:
                keys[key] = left
            else:
                del keys[key]
        return unheard

    def _unheard_of(self, told: tuple[Hashable, Any]) -> _Held | None:
        """What the listeners were told of registration ``told``, whose death
        was withheld: taken (``_told_lock`` held); None if none is."""
        unheard = self._take_unheard(told)
        return None if unheard is None else unheard[0]

    def _tell_unheard_of(self, key: Hashable) -> None:
        """Tell every withheld death of ``key`` (``_told_lock`` held)."""
        # A scan of at most _MAX_KEPT, only while a death of ``key`` is withheld.
        for told in [t for t in self._withheld if t[0] == key]:
            unheard = self._take_unheard(told)
            if unheard is not None:
                self._tell_unheard(unheard[1])

    def _death_before_listeners(self, side: Side, event: RegistryEvent, answering: bool) -> bool:
        """``_death_told`` for a registration made before any listener: told
        once, by its first eligible report; the other side's report is dropped."""
        entry = event.entry
        agent = entry.agent
        told = _registration(entry)
        if self._told_gone.pop(told, None) is not None:
            return False
        if not (answering or self._reports(side, None)):
            if side == _TARGET:
                # The target's monitor saw it first, a per-thread legacy
                # answering: withheld, as a told registration's (``_death_told``), for
                # that store's own report when the thread retakes the key
                # (was dropped: the catch-up then deleted the dead copy).
                self._withhold(told, (agent, _LEGACY, entry.registered_at), event)
            return False
        _keep_bounded(self._told_gone, told, agent)
        return True

    def _tell_withheld(self) -> None:
        """The flag is on (called after each refresh of it, and by ``finish()``):
        tell the deaths withheld for a per-thread legacy store's report
        (``_death_told``).

        The target answers now, and would have told each of them when the
        agent died: a withheld death whose key the thread had not taken again
        before the flag came back on was never told (its retake, by the
        target, dropped it; not taken again, it was kept until evicted).
        Told once: the legacy store's report at a later retake (the flag off
        again) and the target's still to come (``_death_told``) find it told.
        """
        with self._told_lock:
            # Race: a flip back off since this flip's refresh: the legacy store
            # answers again, and they stay withheld for its reports. Reports
            # read the flag under this lock too (``_reports``): one made before
            # the flip was withheld before this runs; one made after is told.
            # Race: so ``_withheld`` is read under it too (was an unlocked look
            # first: a report that read the flag off just before the flip, and
            # kept its death just after that look, was never told).
            if not self._on or not self._withheld:
                return
            unheard = list(self._withheld.values())
            self._withheld.clear()
            self._unheard.clear()
            for _, event in unheard:
                self._tell_unheard(event)
        if self._ctx() is None:
            self._delivery.hand_off()

    def _tell_unheard(self, event: RegistryEvent) -> None:
        """Queue a withheld death (``_told_lock`` held), taken from ``_withheld``."""
        entry = event.entry
        # Noted whatever its age (not as ``_note_end``): the per-thread legacy
        # store may still hold the dead copy, and its report at a retake (the
        # flag off again), "down" or "replaced", must find this end told. The
        # agent is dead: no registration of it can come again to be told.
        _keep_bounded(self._told_gone, _registration(entry), entry.agent)
        self._out.append((event, None))

    def _death_withheld(self, key: Hashable) -> bool:
        """Whether a death of a registration of ``key`` is withheld for the
        per-thread legacy store's own report (``_death_told``), the store
        answering when its dead copy is taken.

        Per key, not per registration: the catch-up that asks does not know
        its dead copy's agent. So a thread's dead copy may be kept while
        another thread's death of the key is withheld; its retake then tells
        its own death only if it was not told yet (``_death_told``)."""
        return key in self._unheard  # (one dict lookup: no lock needed)

    def _note_end(
        self,
        told: tuple[Hashable, Any],
        agent: Any,
        held: _Held | None,
        entry: Entry,
    ) -> None:
        """The end of a registration (``held``: as told, if it was) is told: a
        report of its death still to come would pass for one of a registration
        made before any listener (``_death_told``) if either side's copy is
        that old: it is noted in ``_told_gone``, and dropped."""
        # Race: a registration made just before the first listener (or the
        # first event) may have its registered event told, or not; its two
        # sides' copies are stamped apart. Noted whenever either may be older.
        since = self._told_since
        if entry.registered_at < since or (held is not None and held[2] < since):
            _keep_bounded(self._told_gone, told, agent)

    def _drop_ended_told(self, target_may_hold: Callable[[Hashable, Any], bool]) -> None:
        """Forget the registrations told by a per-thread legacy store whose
        thread ended and which the target may not hold (``target_may_hold(key,
        agent)``, asked under the facade lock, which the caller holds).

        Their end can be told by no one, ever: a ``threading.local`` copy dies
        with its thread, silently (only that thread's writes report it), and
        the target, which never took it, has nothing to report. Kept, each
        held its agent (dead, often: a Task, a Future) for ever: a service
        whose threads register a key once and end leaked one per thread (a
        divergent copy, the target holding another thread's). Live agents
        too: no backend holds their registration any more (a later one of the
        same key and agent is noted anew).
        """
        # Race: a target death report may pop an entry between the two
        # looks (it is then not dropped again: ``is held``). The target holds
        # none of the dropped: the facade lock, held, keeps the records and the
        # queued mirrors as read (a target entry whose death was reported
        # before its record was dropped: reported, popped already).
        # Race: another thread's store may hold the same registration (one
        # agent, one key, several threads): forgotten only once all ended (was:
        # the last writer's thread alone; its end, then, swept, the death the
        # live thread's retake reported was never told).
        with self._told_lock:
            told, told_in = self._told, self._told_in
            ended = []
            for reg, thread in list(told_in.items()):
                held = told.get(reg)
                if held is None:
                    del told_in[reg]  # its end was told
                    continue
                alive = _alive_of(thread)
                if alive is None:
                    ended.append((reg, held, thread))
                elif alive is not thread:
                    told_in[reg] = alive
        gone = [e for e in ended if not target_may_hold(e[0][0], e[1][0])]
        with self._told_lock:
            for reg, held, thread in gone:
                if told.get(reg) is held:  # (else told anew, or its end told)
                    del told[reg]
                if told_in.get(reg) is thread:
                    del told_in[reg]
            self._sweep_at = max(_SWEEP_AT_LEAST, 2 * len(told_in))

    def _reports(self, side: Side, teller: Side | None) -> bool:
        """Whether ``side``'s report of a death tells it (``teller``: the side
        whose event told the registration, if known)."""
        # A per-thread legacy (ThreadLocalRegistry) monitors nothing: while it
        # answers (flag off) a death is not told, as that store tells none,
        # until its register over the dead copy reports it (``answering``, in
        # ``_death_told``) or the flag is on again (``_tell_withheld``); the
        # target's report tells it when the target answers, or told the
        # registration. With a shared legacy both sides report: the first tells.
        return side == teller or self._shared_view is not None or (side == _TARGET and self._on)

    def _start_told(self) -> None:
        """Start noting what the listeners are told (the first event with a listener)."""
        with self._told_lock:
            if not self._told_since:
                # (as Entry.registered_at) Known limit: registered_at is the
                # wall clock of the backend that stamped it (a remote node's for
                # a RemoteAgent): a clock step, or a remote clock behind, can
                # misjudge a registration made around this moment (its death
                # told though its registration was not; an end noted in
                # _told_gone, bounded).
                self._told_since = time.time()

    def _forget_told(self) -> None:
        """No listener left: forget what they were told (the next ones start afresh)."""
        with self._told_lock:
            self._told.clear()
            self._told_gone.clear()
            self._told_in.clear()
            self._sweep_at = _SWEEP_AT_LEAST
            self._withheld.clear()
            self._unheard.clear()
            self._told_since = 0.0

    def _on_target_event(self, event: RegistryEvent) -> None:
        # Deaths are applied to the records at the next write (rule 5); a
        # deque append is safe from any thread and takes no facade lock, so a
        # backend calling listeners under its own lock cannot deadlock with us.
        # Race: appended only once the death is forwarded (withheld, if so:
        # ``_death_told``). Appended first, a write could drop its record, and
        # the owning thread's catch-up its dead copy (silently: the death not
        # yet withheld), before the withhold: its thread's retake of the key
        # then told nothing (told only at the next flip on).
        try:
            self._forward(_TARGET, event)
        finally:
            if event.kind == "unregistered" and event.reason == "down":
                self._dead.append((event.entry.key, event.entry.agent))

    def _on_legacy_event(self, event: RegistryEvent) -> None:
        self._forward(_LEGACY, event)
