"""Event routing of a ``MigratingRegistry``: which backend's events reach its listeners.

The facade subscribes once to each backend. A facade call runs inside
``with _Call(owner):``; each backend call it makes is wrapped in
``_Keep(ctx, side)``, which says whether that call's events are kept (the
authoritative call) or dropped (mirror and catch-up calls). Kept events are
delivered when the facade call exits, after the facade lock is released.
Events delivered by another thread are forwarded when their side is
authoritative at delivery time. See the "Events" item of "Why this is
correct under concurrent flips" in ``foundation.registry._migrating``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final, Literal

from foundation.registry._types import RegistryEvent

if TYPE_CHECKING:
    from foundation._listeners import Listeners

Side = Literal["legacy", "target"]
_LEGACY: Final = "legacy"
_TARGET: Final = "target"


_UNMUTED: Final = object()


class _Ctx:
    """Per-thread state of one facade call: which side's events to keep, and the
    key of the mirror call in progress whose events are muted (``_Mute``)."""

    __slots__ = ("keep", "muted", "pending")

    def __init__(self) -> None:
        self.keep: Side | None = None
        self.muted: object = _UNMUTED
        self.pending: list[RegistryEvent] = []


class _Call:
    """``with _Call(owner):`` one facade call; its kept events are delivered at exit.

    Exit runs after the facade lock is released (``with _Call(self), self._lock:``
    releases the lock first), so listeners never run under the facade lock.
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
        tls = self._owner._tls
        ctx: _Ctx = tls.ctx
        tls.ctx = self._outer
        dispatch = self._owner._listeners.dispatch
        for event in ctx.pending:
            dispatch(event)
        self._owner._flush_telemetry()  # events decided under the facade lock


class _Keep:
    """``with _Keep(ctx, side):`` the backend call inside it keeps ``side``'s events
    (``None``: drops every event). Outside a facade call (no ``ctx``) it does nothing."""

    __slots__ = ("_ctx", "_saved", "_side")

    def __init__(self, ctx: _Ctx | None, side: Side | None) -> None:
        self._ctx = ctx
        self._side = side
        self._saved: Side | None = None

    def __enter__(self) -> None:
        ctx = self._ctx
        if ctx is not None:
            self._saved, ctx.keep = ctx.keep, self._side

    def __exit__(self, *exc: object) -> None:
        ctx = self._ctx
        if ctx is not None:
            ctx.keep = self._saved


class _Mute:
    """``with _Mute(owner, ctx, key):`` a mirror call on ``key`` whose events are dropped,
    wherever they are delivered. A backend may deliver one thread's events in
    another thread (``MemoryRegistry``: whoever is already dispatching
    delivers), so the mirror's own events are recognised by key, in every
    thread, and any other event this thread delivers meanwhile (a death its
    monitor saw) is routed as the asynchronous event it is."""

    __slots__ = ("_ctx", "_key", "_owner", "_saved")

    def __init__(self, owner: _EventRouting, ctx: _Ctx, key: Hashable) -> None:
        self._owner = owner
        self._ctx = ctx
        self._key = key
        self._saved: tuple[Side | None, object] = (None, _UNMUTED)

    def __enter__(self) -> None:
        ctx, owner, key = self._ctx, self._owner, self._key
        self._saved = (ctx.keep, ctx.muted)
        ctx.keep, ctx.muted = None, key
        with owner._muted_lock:
            owner._muted[key] = owner._muted.get(key, 0) + 1

    def __exit__(self, *exc: object) -> None:
        ctx, owner, key = self._ctx, self._owner, self._key
        ctx.keep, ctx.muted = self._saved
        with owner._muted_lock:
            left = owner._muted[key] - 1
            if left:
                owner._muted[key] = left
            else:
                del owner._muted[key]


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

    if TYPE_CHECKING:  # as _LegacyRetries defines it

        def _flush_telemetry(self) -> None: ...

    def _ctx(self) -> _Ctx | None:
        ctx: _Ctx | None = getattr(self._tls, "ctx", None)
        return ctx

    def _events_of(self, side: Side) -> _Keep:
        """``with``: the authoritative backend call inside keeps its events for delivery."""
        return _Keep(self._ctx(), side)

    def _events_dropped(self) -> _Keep:
        """``with``: the mirror or catch-up backend call inside has its events dropped."""
        return _Keep(self._ctx(), None)

    def _events_muted(self, ctx: _Ctx, key: Hashable) -> _Mute:
        """``with``: the target mirror call on ``key`` inside (``ctx``: its facade
        call) has its events dropped, whichever thread delivers them (see ``_Mute``)."""
        return _Mute(self, ctx, key)

    def _forward(self, side: Side, event: RegistryEvent) -> None:
        if not self._listeners.current:
            return
        ctx = self._ctx()
        if ctx is not None:
            # An event of a call this facade is making in this thread.
            if ctx.keep == side:
                ctx.pending.append(event)
                return
            if ctx.muted is _UNMUTED:
                return  # a dropped (mirror or catch-up) call's own event
        if self._muted and event.entry.key in self._muted:
            return  # a muted mirror call's own event, delivered by whichever thread
        # Asynchronous (a death seen by a monitor, a remote change), or delivered
        # here by a backend whose dispatching thread delivers other threads'
        # events too: forward when this side is authoritative at delivery time.
        # A listener's error is reported by dispatch, never raised into the
        # backend's thread; inside a facade call, after it (outside its lock).
        if (side == _TARGET) == self._on:
            if ctx is not None:
                ctx.pending.append(event)
            else:
                self._listeners.dispatch(event)

    def _on_target_event(self, event: RegistryEvent) -> None:
        # Deaths are applied to the records at the next write (rule 5); a
        # deque append is safe from any thread and takes no facade lock, so a
        # backend calling listeners under its own lock cannot deadlock with us.
        if event.kind == "unregistered" and event.reason == "down":
            self._dead.append((event.entry.key, event.entry.agent))
        self._forward(_TARGET, event)

    def _on_legacy_event(self, event: RegistryEvent) -> None:
        self._forward(_LEGACY, event)
