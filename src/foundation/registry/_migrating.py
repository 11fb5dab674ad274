"""MigratingRegistry: two registry backends behind one flag, switchable at runtime.

The facade reads a flag (cached, see "The flag") on every call. When the flag
is on, the *target* (normally the shared table) is authoritative; when it is
off, the *legacy* backend is. The authoritative backend's answer — result or
error — is the answer, and its events are the events. Every successful write
is then mirrored to the other backend, best effort, so that a flip in either
direction at any moment loses nothing.

Vocabulary
----------

*View*: what one caller sees of the legacy backend. A per-thread legacy
(``ThreadLocalRegistry``, or any backend with a true ``per_thread`` attribute)
has one private view per thread; a shared legacy (``MemoryRegistry``,
``RedisRegistry``) has one view that every thread shares. The target must be
shared.

*Record*: ``records[key] = (view, gen, agent)`` says "the target's entry for
``key`` is ``agent``, and ``view``'s legacy copy of ``key`` mirrors it at
generation ``gen``". Each view keeps ``mirrors[key] = gen`` for the copies it
holds as mirrors, and ``divergent[key]`` for private copies the target refused.

*Divergence*: a write the other side refused (a key two threads hold in their
private legacy views, which the shared target holds once; a key or metadata
the target rejects; an unreachable target). It is counted, listed by
``divergences()``, reported by ``readiness()`` and emitted as the telemetry
event ``registry.divergence``. It is resolved when the private copy is
unregistered or replaced, its agent dies, or its thread ends.

Rules
-----

1. Every write (``register``, ``unregister``, ``update_metadata``) runs under
   one facade lock: catch up the caller's view (rule 4), do the authoritative
   write, mirror it, update the records. Between two writes the records
   describe both sides exactly (modulo deaths, rule 5, and the queued
   flag-off mirrors of rule 6).
2. A mirrored write replaces or removes only what the caller holds: in the
   target, only the entry that the record says mirrors the caller's own view
   (or a dead or absent entry); in a private legacy view, anything (the view
   is the caller's); in a shared legacy view, only the mirror of the entry the
   call acted on. Anything else is refused and becomes a divergence, so a
   best-effort write never replaces a registration the caller does not hold.
3. A write made with the flag on may change a target entry whose legacy
   mirror lives in *another thread's* private view, which no other thread can
   touch. The writer updates the record first, then pushes the key onto that
   view's *inbox* (a deque).
4. *Catch-up*: before a thread reads or writes its private legacy view, it
   drains its inbox and re-checks each key against the record: a copy whose
   record now names another view (or no view) is stale and is removed (no
   resurrection); a copy whose record has a newer generation takes the
   target's current metadata. Catch-up runs in the view's own thread, so it
   needs no lock.
5. The target's deaths (``unregistered``/``down`` events) are queued and
   applied at the next write: the record is dropped and the owner view's
   inbox is told. Meanwhile no dead agent surfaces: the answering backend
   never returns an agent it knows is dead (the legacy store checks liveness
   on read; the shared table drops the entry when the monitor fires).
6. *Queued target mirrors* (flag off). The target may be remote and slow or
   frozen (a ``RedisRegistry`` waits up to its ``op_timeout``), so a flag-off
   write does not mirror under the facade lock: it queues the mirror, in
   legacy-write order, and returns once the legacy write is done. One thread
   at a time (whoever takes the pump lock: normally the writer itself, right
   after releasing the facade lock) applies the queue in order: it plans each
   mirror and books its outcome (records, mirrors, divergences) under the
   facade lock and calls the target *outside* it, so other threads' legacy
   writes never wait for the target. Nothing may observe the target as
   authoritative while a mirror is queued or in flight: a flag-on write,
   ``finish()``, ``divergences()`` and ``readiness()`` first apply the queue
   (waiting with the facade lock released), and after a flip the reader helps
   pump before its first answer from the target. A queued register books the
   legacy copy as a mirror only if no later register/unregister of the same
   view replaced that copy (``view.copy_op``); the later op books it. While the
   target reports itself unavailable without I/O (``status().state``
   ``disconnected`` or ``degraded``), queued mirrors are not attempted: each is
   a divergence (logged once per outage, telemetry ``registry.mirror_skipped``),
   exactly as a mirror the target refused. A register skipped that way, or
   failed with ``BackendUnavailable``, is kept in ``view.retry`` (agent and
   current metadata; dropped when the copy is unregistered or replaced) and
   queued again, as a register of that copy, once the target is available:
   at the first mirror that succeeds after the outage, and by
   ``divergences()``/``readiness()``. Its success resolves the divergence.

Why this is correct under concurrent flips
------------------------------------------

* A call reads the flag once. Whatever it reads, a successful write reaches
  both sides before any later call can read the target as authoritative:
  with the flag on it is mirrored under the lock (rule 1); with the flag off
  its target mirror is queued in write order before the lock is released and
  applied before any flag-on write, ``finish()`` or flag-on read proceeds
  (rule 6). So the next call, under either flag value, sees it: *nothing is
  lost*. A flag flip between calls, or during one, only changes which side
  answers the next call.
* A thread's legacy copies catch up before that thread consults its view:
  the writer of a change updates the record and *then* pushes the inbox; the
  owner drains the inbox and *then* reads the record. If the owner read the
  old record, the push happened after its drain, so the next catch-up sees
  it; a read that returns the old value is ordered before the write, which is
  a legal linearisation. Copies are therefore never resurrected: the only way
  a key leaves the target (unregister, replace by another thread, death)
  removes its record and tells the owner view.
* No duplicates: the target is one shared table and is written only with
  ``replace=True`` for the caller's own mirror (rule 2); each legacy view
  holds a key once.
* No monitor leak: the facade never monitors anything itself. Each backend
  monitors its own entries, and the facade removes from a backend exactly
  what it mirrored there, so each side's monitor count follows its entries.
* Events: the facade subscribes once to each backend and delivers to its own
  listeners. During a facade write, events of the authoritative call (made
  inside ``with self._events_of(side)``) are collected and delivered after
  the lock is released; events of mirror and catch-up calls (made inside
  ``with self._events_dropped()``) are dropped. Events delivered by another thread (deaths
  seen by the target's monitors; or, on a backend that lets whichever thread
  is already dispatching deliver a writer's events, such as
  ``MemoryRegistry``) are forwarded when their side is authoritative at
  delivery time — so only an event that races a flip can go to the side
  that just stopped answering. After ``finish()`` only the target's events
  exist.

The flag
--------

Reading ``FeatureFlags.enabled`` on every call would cost about as much as
the lookup, so the facade caches it, refreshed by a ``FeatureFlags.subscribe``
listener on every change of the flag: the boolean (for writes) and the
authoritative reader (the target itself, or a reader of the legacy side), so
a read costs one attribute load more than calling the backend directly. The listener
*re-reads* ``enabled(flag)`` under a small lock instead of trusting the
change it is given: whichever listener call runs last reads the newest
committed state, so the cache converges to the flag even when two writers'
notifications arrive out of order. ``FeatureFlags`` notifies after a write
commits and before the writing call returns, so a flip made through
``Migration.advance()``, ``rollback_to()`` or ``emergency_rollback()`` takes
effect on the next call.

``finish()`` retires the legacy side: it is refused (``MigrationError``)
while the flag is off or divergences remain; afterwards the facade writes
only to the target, closes the legacy backend and never reads the flag
again. A later change that would turn the flag off is reported as a warning
(telemetry ``registry.flag_ignored``, and the ``foundation.registry`` logger) and
never obeyed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from foundation import telemetry
from foundation._listeners import Listeners
from foundation.errors import (
    AlreadyRegistered,
    BackendUnavailable,
    Closed,
    MigrationError,
    NotAlive,
    NotRegistered,
)
from foundation.liveness import is_alive
from foundation.registry._async import MigratingAsyncWrites
from foundation.registry._types import (
    Criterion,
    Divergence,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    RegistryEvent,
)
from foundation.registry._validation import freeze_metadata, validate_key

if TYPE_CHECKING:
    from foundation.flags import FeatureFlags, FlagChange

__all__ = ["MigratingRegistry"]

_log = logging.getLogger("foundation.registry")

Side = Literal["legacy", "target"]
_LEGACY: Final = "legacy"
_TARGET: Final = "target"


class _View:
    """One legacy view: a thread's private store, or the shared legacy store."""

    __slots__ = ("copy_op", "divergent", "inbox", "mirrors", "private", "retry", "thread")

    def __init__(self, thread: threading.Thread | None) -> None:
        self.thread = thread
        self.private = thread is not None
        self.mirrors: dict[Hashable, int] = {}
        self.divergent: dict[Hashable, _Divergent] = {}
        self.inbox: deque[Hashable] = deque()
        # key -> seq of the queued register op that wrote this view's current
        # copy (rule 6); present only while that op is queued.
        self.copy_op: dict[Hashable, int] = {}
        # key -> (agent, metadata) of a current copy whose mirror the target
        # could not take because it was unavailable; retried when it is back.
        self.retry: dict[Hashable, tuple[Any, Mapping[str, Any] | None]] = {}

    def ended(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    def ident(self) -> int:
        if self.thread is not None and self.thread.ident is not None:
            return self.thread.ident
        return threading.get_ident()


class _Divergent(NamedTuple):
    agent: Any
    divergence: Divergence


class _Op(NamedTuple):
    """A flag-off write's target mirror, queued in legacy-write order (rule 6)."""

    kind: Literal["register", "unregister", "update"]
    view: _View
    key: Hashable
    agent: Any
    metadata: Mapping[str, Any] | None
    seq: int


class _Record(NamedTuple):
    view: _View | None  # None: the target entry is mirrored in no legacy view
    gen: int
    agent: Any


class _LegacyReader:
    """Reads of the legacy side, after catching the caller's view up (flag off)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: MigratingRegistry) -> None:
        self._owner = owner

    def lookup(self, key: Hashable) -> Entry | None:
        self._owner._catch_up_reader()
        return self._owner._legacy.lookup(key)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        self._owner._catch_up_reader()
        return self._owner._legacy.query(criteria)

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        self._owner._catch_up_reader()
        return self._owner._legacy.find_by_attribute(attr, value)

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        self._owner._catch_up_reader()
        return self._owner._legacy.list_all(filter)

    def count(self) -> int:
        self._owner._catch_up_reader()
        return self._owner._legacy.count()


class _SettlingReader:
    """Reads of the target while flag-off mirrors are still queued (flag on).

    Applies the queued mirrors first (rule 6), then answers from the target;
    once the queue is empty the facade reads the target directly again.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: MigratingRegistry) -> None:
        self._owner = owner

    def lookup(self, key: Hashable) -> Entry | None:
        self._owner._settle()
        return self._owner._target.lookup(key)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        self._owner._settle()
        return self._owner._target.query(criteria)

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        self._owner._settle()
        return self._owner._target.find_by_attribute(attr, value)

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        self._owner._settle()
        return self._owner._target.list_all(filter)

    def count(self) -> int:
        self._owner._settle()
        return self._owner._target.count()


class _ClosedReader:
    """The reader of a closed facade: every read raises ``Closed``."""

    __slots__ = ()

    def _closed(self) -> Closed:
        return Closed("this MigratingRegistry is closed")

    def lookup(self, key: Hashable) -> Entry | None:
        raise self._closed()

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        raise self._closed()

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        raise self._closed()

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        raise self._closed()

    def count(self) -> int:
        raise self._closed()


_CLOSED_READER: Final = _ClosedReader()


class _Ctx:
    """Per-thread state of one facade call: which side's events to keep."""

    __slots__ = ("keep", "pending")

    def __init__(self) -> None:
        self.keep: Side | None = None
        self.pending: list[RegistryEvent] = []


class _Call:
    """``with _Call(owner):`` one facade call; its kept events are delivered at exit.

    Exit runs after the facade lock is released (``with _Call(self), self._lock:``
    releases the lock first), so listeners never run under the facade lock.
    """

    __slots__ = ("_outer", "_owner")

    def __init__(self, owner: MigratingRegistry) -> None:
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


class _Writing:
    """``with _Writing(owner, settled) as on:`` the facade lock for one write."""

    __slots__ = ("_owner", "_settled")

    def __init__(self, owner: MigratingRegistry, settled: bool) -> None:
        self._owner = owner
        self._settled = settled

    def __enter__(self) -> bool:
        return self._owner._acquire_for_write(self._settled)

    def __exit__(self, *exc: object) -> None:
        self._owner._lock.release()


_LAG_WARNING: Final = 64  # queued mirrors behind a busy pump that earn a WARNING


def _bind_register(target: Registry, op: _Op, mine: bool) -> Callable[[], Any]:
    # Rule 2: replace only the target entry that mirrors our own copy;
    # otherwise a live entry refuses (a dead one is simply replaced).
    return lambda: target.register(op.key, op.agent, op.metadata, replace=mine)


def _bind_unregister(target: Registry, key: Hashable, agent: Any) -> Callable[[], Any]:
    def call() -> None:
        entry = target.lookup(key)
        if entry is not None and entry.agent is agent:  # rule 2: only our own mirror
            target.unregister(key)

    return call


def _bind_update(target: Registry, op: _Op) -> Callable[[], Any]:
    metadata = op.metadata if op.metadata is not None else {}
    return lambda: target.update_metadata(op.key, metadata)


class MigratingRegistry(MigratingAsyncWrites, Registry):
    """A registry that answers from ``legacy`` or ``target`` as ``flag`` says.

    Writes reach both backends (best effort for the non-authoritative one), so
    the flag can flip either way at runtime without losing, duplicating or
    resurrecting a registration. See the module documentation for the rules
    and why they hold under concurrent flips. The facade owns both backends:
    ``close()`` closes them, and every later call raises ``errors.Closed``.

    Example:
        >>> import threading
        >>> from foundation import (FeatureFlags, Flag, MemoryRegistry,
        ...     MigratingRegistry, ThreadLocalRegistry, spawn_thread)
        >>> flags = FeatureFlags([Flag("use_ets_agent_registry")])
        >>> stop = threading.Event()
        >>> reg = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
        >>> reg.register("w1", spawn_thread(stop.wait), {"role": "io"})
        >>> flags.enable("use_ets_agent_registry")      # flip: now the shared table answers
        >>> reg.lookup("w1").metadata["role"]
        'io'
        >>> reg.finish()                                # retire the legacy store
        >>> reg.close(); stop.set()
    """

    def __init__(
        self,
        legacy: Registry,
        target: Registry,
        flags: FeatureFlags,
        flag: str = "use_ets_agent_registry",
    ) -> None:
        """Raises:
        ValueError: ``legacy`` and ``target`` are the same object (every write
            would be mirrored onto itself and refused as a divergence).
        UnknownFlag: ``flag`` is not declared in ``flags``.
        """
        if legacy is target:
            raise ValueError(
                "MigratingRegistry needs two different backends: legacy and target "
                f"are the same object ({legacy!r})"
            )
        self._on = bool(flags.enabled(flag))  # UnknownFlag before anything changes
        self._legacy = legacy
        self._target = target
        self._legacy_reader = _LegacyReader(self)
        self._settling_reader = _SettlingReader(self)
        self._reader: Registry | _LegacyReader | _SettlingReader | _ClosedReader = (
            target if self._on else self._legacy_reader
        )
        self._flags = flags
        self._flag = flag
        self._lock = threading.RLock()
        self._flag_lock = threading.Lock()
        # Rule 6: flag-off target mirrors, applied in order by one pumping thread
        # at a time (whoever holds _pump_lock) outside the facade lock. Lock
        # order: _pump_lock, then _lock; nobody waits for _pump_lock while
        # holding _lock (the facade writes only try it).
        self._pending: deque[_Op] = deque()
        self._inflight: _Op | None = None  # popped, target call made, not yet booked
        self._pump_lock = threading.Lock()
        self._pump_owner: int | None = None  # thread ident holding _pump_lock
        self._target_status: Callable[[], Any] | None = getattr(target, "status", None)
        self._op_seq = 0
        self._lag_warned = False  # a "mirrors queued behind a slow target" warning is out
        self._skip_warned = False  # a "target unavailable, mirrors skipped" warning is out
        self._skipped = 0
        self._tls = threading.local()
        self._finished = False
        self._closed = False
        self._gen = 0
        self._detected = 0
        self._records: dict[Hashable, _Record] = {}
        self._dead: deque[tuple[Hashable, Any]] = deque()
        per_thread = bool(getattr(legacy, "per_thread", False)) or hasattr(
            legacy, "snapshot_all_threads"
        )
        self._shared_view: _View | None = None if per_thread else _View(None)
        self._views: dict[int, _View] = {}
        self._listeners: Listeners[RegistryEvent] = Listeners(
            "MigratingRegistry listener", area="registry"
        )
        # The facade's own subscriptions: the target's (deaths and events) and the
        # flag's now; the legacy side's on the first subscribe() (no listener, no
        # events to build on the legacy store's writes).
        self._unsubscribers: list[Callable[[], None]] = []
        self._legacy_unsubscribe: Callable[[], None] | None = None
        self._unsubscribers.append(target.subscribe(self._on_target_event))
        self._unsubscribers.append(flags.subscribe(self._on_flag_change))
        self._refresh_flag()  # a change between the first read and subscribe is not missed
        self._backfill()

    # ------------------------------------------------------------------ flag

    def _refresh_flag(self) -> None:
        # Re-read under a lock: the last listener call to run reads the newest
        # committed state, so out-of-order notifications cannot leave a stale cache.
        with self._flag_lock:
            if not self._finished and not self._closed:
                on = bool(self._flags.enabled(self._flag))
                self._on = on
                self._reader = self._pick_reader(on)

    def _pick_reader(self, on: bool) -> Registry | _LegacyReader | _SettlingReader:
        """The authoritative reader (under ``_flag_lock``): with the flag on, the
        target itself once no flag-off mirror is queued or in flight (rule 6)."""
        if not on:
            return self._legacy_reader
        if self._pending or self._inflight is not None:
            return self._settling_reader
        return self._target

    def _on_flag_change(self, change: FlagChange) -> None:
        if change.flag != self._flag:
            return
        if not self._finished:
            self._refresh_flag()
            return
        new = change.new
        if not new.switch or (new.percentage is not None and new.percentage < 100):
            data = {
                "registry": self,
                "flag": self._flag,
                "level": "warning",
                "by": change.by,
                "reason": change.reason,
                "message": "migration finished: the legacy registry is retired, flag ignored",
            }
            _log.warning("flag %r turned off after MigratingRegistry.finish(); ignored", self._flag)
            telemetry.emit("registry.flag_ignored", data)

    @property
    def flag_on(self) -> bool:
        """The cached flag value: True when the target answers (always, after ``finish()``)."""
        return self._on

    @property
    def legacy(self) -> Registry:
        """The legacy backend (closed once ``finish()`` has retired it)."""
        return self._legacy

    @property
    def target(self) -> Registry:
        """The target backend."""
        return self._target

    @property
    def finished(self) -> bool:
        """True once ``finish()`` has retired the legacy backend."""
        return self._finished

    # ------------------------------------------------------------------ views

    def _view(self) -> _View:
        """The caller's legacy view, created if needed. Called under the lock only."""
        shared = self._shared_view
        if shared is not None:
            return shared
        ident = threading.get_ident()
        current = threading.current_thread()
        view = self._views.get(ident)
        if view is None or view.thread is not current:  # a reused ident is a new thread
            view = _View(current)
            self._views[ident] = view
        return view

    def _existing_view(self) -> _View | None:
        """The caller's private view if it has one (lock-free; never creates)."""
        view = self._views.get(threading.get_ident())
        if view is not None and view.thread is threading.current_thread():
            return view
        return None

    def _catch_up(self, view: _View) -> None:
        """Apply the changes other threads made to this view's mirrored keys (rule 4).

        Runs in the view's own thread only, so ``view.mirrors`` and the legacy
        store are touched by one thread. The inbox is drained *before* each
        record is read; a writer updates the record *before* pushing, so a
        change this pass misses is pushed again and seen by the next pass.

        Best effort: a key the legacy backend refuses (unreachable) stays in
        ``view.mirrors`` at its old generation and goes back in the inbox, so
        a later pass retries it; the caller's own call is never failed by it.
        """
        inbox = view.inbox
        retry: list[Hashable] = []
        try:
            while True:
                try:
                    key = inbox.popleft()
                except IndexError:
                    return
                try:
                    self._catch_up_key(view, key)
                except Exception as exc:  # retried by a later pass, after this one ends
                    _log.warning("MigratingRegistry: legacy catch-up of %r failed: %r", key, exc)
                    retry.append(key)
        finally:
            inbox.extend(retry)

    def _catch_up_key(self, view: _View, key: Hashable) -> None:
        legacy = self._legacy
        gen = view.mirrors.get(key)
        if gen is None:
            return  # not (or no longer) a mirror here: nothing to catch up
        rec = self._records.get(key)
        # The mirror is forgotten only once its legacy copy is gone, so that a
        # refused unregister is retried rather than leaving an untracked copy.
        if rec is None or rec.view is not view:
            # Unregistered, replaced by another thread, or dead: drop the stale copy.
            with self._events_dropped():
                legacy.unregister(key)
            view.mirrors.pop(key, None)
        elif rec.gen != gen:
            entry = self._target.lookup(key)
            if entry is None or entry.agent is not rec.agent:
                with self._events_dropped():
                    legacy.unregister(key)
                view.mirrors.pop(key, None)
            else:
                try:
                    with self._events_dropped():
                        legacy.update_metadata(key, entry.metadata)
                    view.mirrors[key] = rec.gen
                except NotRegistered:  # the private copy's agent died
                    view.mirrors.pop(key, None)

    def _catch_up_reader(self) -> None:
        """Lock-free catch-up before a legacy read (flag off)."""
        view = self._existing_view()
        if view is not None and view.inbox:
            with _Call(self):
                self._catch_up(view)

    def _tell(self, view: _View | None, key: Hashable, caller: _View) -> None:
        """Tell ``view`` that the record of ``key`` changed (rule 3)."""
        if view is not None and view is not caller and view.private and not view.ended():
            view.inbox.append(key)

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    # ------------------------------------------------------------------ events

    def _ctx(self) -> _Ctx | None:
        ctx: _Ctx | None = getattr(self._tls, "ctx", None)
        return ctx

    def _events_of(self, side: Side) -> _Keep:
        """``with``: the authoritative backend call inside keeps its events for delivery."""
        return _Keep(self._ctx(), side)

    def _events_dropped(self) -> _Keep:
        """``with``: the mirror or catch-up backend call inside has its events dropped."""
        return _Keep(self._ctx(), None)

    def _forward(self, side: Side, event: RegistryEvent) -> None:
        if not self._listeners.current:
            return
        ctx = self._ctx()
        if ctx is not None:
            # An event of a call this facade is making in this thread.
            if ctx.keep == side:
                ctx.pending.append(event)
            return
        # Asynchronous (a death seen by a monitor, a remote change): forward
        # when this side is authoritative at delivery time. A listener's error
        # is reported by dispatch, never raised into the backend's thread.
        if (side == _TARGET) == self._on:
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

    def _drain_dead(self) -> None:
        dead = self._dead
        while True:
            try:
                key, agent = dead.popleft()
            except IndexError:
                return
            rec = self._records.get(key)
            if rec is not None and rec.agent is agent:
                del self._records[key]
                view = rec.view
                if view is not None:
                    if view.private:
                        if not view.ended():
                            view.inbox.append(key)
                    else:
                        view.mirrors.pop(key, None)

    # ------------------------------------------------------------------ queued target mirrors

    def _writing(self, *, settled: bool = False) -> _Writing:
        """``with self._writing() as on:`` hold the facade lock for one write;
        ``on`` is the flag value the call uses (see ``_acquire_for_write``)."""
        return _Writing(self, settled)

    def _acquire_for_write(self, settled: bool) -> bool:
        """Take the facade lock for one write; return the flag value the call uses.

        A write that will touch the target as authoritative (flag on, or
        ``settled``) first waits, with the lock released, until no flag-off
        mirror is queued or in flight: those describe older legacy writes and
        must reach the target before it (rule 6).
        """
        lock = self._lock
        while True:
            lock.acquire()
            on = self._on  # the call reads the flag once
            if not (on or settled) or self._finished:
                break
            if not self._pending and self._inflight is None:
                break
            if self._pump_owner == threading.get_ident():
                break  # re-entered from a telemetry listener of our own booking: no wait
            # Race: the pump books each mirror under this lock, so waiting for it
            # here would deadlock; release, help pump (lock order: pump, then
            # facade), and re-check, since a flag-off writer that read the flag
            # before the flip may have queued one more meanwhile.
            lock.release()
            self._pump(block=True)
        return on

    def _enqueue(
        self,
        kind: Literal["register", "unregister", "update"],
        view: _View,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        """Queue a flag-off write's target mirror (under the facade lock: in write order)."""
        self._op_seq += 1
        seq = self._op_seq
        if kind == "register":
            view.copy_op[key] = seq
            view.retry.pop(key, None)  # a new copy: its own op mirrors it
        elif kind == "unregister":
            view.copy_op.pop(key, None)
            view.retry.pop(key, None)
        elif key in view.retry:  # the retry must carry the copy's current metadata
            view.retry[key] = (view.retry[key][0], metadata)
        self._pending.append(_Op(kind, view, key, agent, metadata, seq))
        if self._on:
            # Race: the flag was turned on after this call read it. A reader
            # picked after the append sees it queued (_pick_reader); one picked
            # before is replaced here, so no read answers from a target that
            # lacks a write whose call has returned.
            with self._flag_lock:
                if self._on and not self._finished and not self._closed:
                    self._reader = self._settling_reader

    def _retry_skipped(self) -> bool:
        """Queue again the mirrors the target could not take while it was
        unavailable (flag off, target available; under the facade lock).
        True if any was queued. Each is a register of the view's current copy,
        so it books like the original (rule 2 decides replace)."""
        if self._on or self._closed or self._target_unavailable() is not None:
            return False
        queued = False
        for view in self._all_views():
            if not view.retry or view.ended():
                view.retry.clear()
                continue
            items = list(view.retry.items())
            view.retry.clear()
            for key, (agent, metadata) in items:
                held = view.divergent.get(key)
                if held is None or held.agent is not agent or not is_alive(agent):
                    continue  # resolved meanwhile (unregistered, replaced or dead)
                self._enqueue("register", view, key, agent, metadata)
                queued = True
        return queued

    def _may_hold(self, view: _View, key: Hashable) -> bool:
        """False only if the target surely holds no mirror of ``view``'s ``key``
        and none can appear: nothing queued or in flight, and no record of it
        (under the facade lock). Saves queueing mirrors that would do nothing."""
        if self._pending or self._inflight is not None:
            return True
        rec = self._records.get(key)
        return rec is not None and rec.view is view

    def _after_write(self) -> None:
        """Apply queued mirrors unless another thread is already doing so (never waits)."""
        if not self._pending:
            return
        if self._pump(block=False):
            return
        # Another thread is pumping (maybe waiting on a slow or frozen target):
        # it applies our mirror after its own; this call returns now.
        if not self._lag_warned and len(self._pending) >= _LAG_WARNING:
            self._lag_warned = True
            n = len(self._pending)
            _log.warning(
                "MigratingRegistry: %d mirrors to the target are queued behind a slow "
                "target call; the legacy side answers meanwhile",
                n,
            )
            telemetry.emit(
                "registry.mirror_deferred", {"registry": self, "pending": n, "level": "warning"}
            )

    def _pump(self, *, block: bool) -> bool:
        """Apply queued mirrors in order until none is left; False if another thread
        holds the pump and ``block`` is false. Never called under the facade lock."""
        me = threading.get_ident()
        if self._pump_owner == me:
            # Re-entered (a telemetry listener called while this thread books a
            # mirror): the lock is not reentrant, and the outer pump continues.
            return False
        while True:
            if not self._pump_lock.acquire(blocking=block):
                return False
            self._pump_owner = me
            try:
                while self._pending and self._apply_next():
                    pass
            finally:
                self._pump_owner = None
                self._pump_lock.release()
            # Race: an op queued after our last look, whose writer's try failed
            # because we still held the pump, would be stranded: look again.
            if not self._pending:
                break
        if self._lag_warned and not self._pending:
            self._lag_warned = False
            _log.info("MigratingRegistry: queued mirrors to the target are applied")
        if self._on:
            with self._flag_lock:
                if self._on and not self._finished and not self._closed:
                    self._reader = self._pick_reader(True)
        return True

    def _settle(self) -> None:
        """Wait until no flag-off mirror is queued or in flight (not under the facade lock)."""
        if self._pump_owner == threading.get_ident():
            return  # re-entered from our own booking: the outer pump finishes the queue
        while (self._pending or self._inflight is not None) and not self._closed:
            self._pump(block=True)
        if self._on:
            with self._flag_lock:
                if self._on and not self._finished and not self._closed:
                    self._reader = self._pick_reader(True)

    def _target_unavailable(self) -> str | None:
        """The target's own report that it cannot be written now (no I/O), or None.

        ``RedisRegistry.status()`` reads its connection state without touching
        Redis; a backend without ``status()`` is always tried.
        """
        status = self._target_status
        if status is None:
            return None
        try:
            state = getattr(status(), "state", None)
        except Exception:  # closed or odd: let the write itself decide
            return None
        if state in ("disconnected", "degraded"):
            return f"the target is {state}"
        return None

    def _plan(self, op: _Op, rec: _Record | None) -> Callable[[], Any] | None:
        """The target call that mirrors ``op`` now (under the facade lock), or None."""
        if op.kind == "register":
            mine = rec is not None and rec.view is op.view
            return _bind_register(self._target, op, mine)
        if rec is None or rec.view is not op.view:
            return None  # the target holds no mirror of this view's copy
        if op.kind == "unregister":
            return _bind_unregister(self._target, op.key, rec.agent)
        if op.key in op.view.mirrors:
            return _bind_update(self._target, op)
        return None

    def _apply_next(self) -> bool:
        """Apply the oldest queued mirror (rule 6): plan under the facade lock,
        call the target outside it, book the outcome under it again."""
        with self._lock:
            if self._closed:
                self._pending.clear()
                return False
            if not self._pending:
                return False
            self._drain_dead()
            op = self._pending[0]
            rec = self._records.get(op.key)
            call = self._plan(op, rec)
            if call is None:  # nothing of ours in the target: nothing to mirror
                self._pending.popleft()
                retry = op.view.retry.get(op.key)
                if op.kind == "update" and retry is not None:
                    # Race: the register of this copy was skipped and booked for a
                    # retry after this update was written; the retry must carry it.
                    op.view.retry[op.key] = (retry[0], op.metadata)
                return True
            skipped = self._target_unavailable()
            if skipped is not None:  # no I/O: booked at once
                self._pending.popleft()
                self._book(op, rec, None, skipped)
                return True
            # Race: the op is marked in flight before it leaves the queue, so a
            # concurrent "anything queued or in flight?" check never sees neither.
            self._inflight = op
            self._pending.popleft()
        outcome: BaseException | None = None
        try:
            with _Call(self), self._events_dropped():
                call()
        except Exception as exc:  # best effort: booked as a divergence below
            outcome = exc
        except BaseException:  # KeyboardInterrupt and the like: never leave it in flight
            with self._lock:
                self._inflight = None
            raise
        with self._lock:
            try:
                if not self._closed:
                    self._book(op, rec, outcome, None)
            finally:
                self._inflight = None
        return True

    def _book(
        self, op: _Op, rec: _Record | None, exc: BaseException | None, skipped: str | None
    ) -> None:
        """Record the outcome of one applied mirror (under the facade lock)."""
        self._note_skip(skipped, exc)
        if op.kind == "register":
            self._book_register(op, rec, exc, skipped)
        elif op.kind == "unregister":
            assert rec is not None  # a call was planned only for a record of this view
            self._book_unregister(op, rec, exc, skipped)
        else:
            assert rec is not None
            self._book_update(op, rec, exc, skipped)

    def _note_skip(self, skipped: str | None, exc: BaseException | None) -> None:
        """Tell the operator, once per outage, that mirrors are skipped; and when they resume."""
        if skipped is not None:
            self._skipped += 1
            if not self._skip_warned:
                self._skip_warned = True
                _log.warning(
                    "MigratingRegistry: %s: mirroring to the target skipped (no wait); "
                    "skipped writes are listed by divergences()",
                    skipped,
                )
                telemetry.emit(
                    "registry.mirror_skipped",
                    {"registry": self, "reason": skipped, "level": "warning"},
                )
        elif exc is None and self._skip_warned:
            self._skip_warned = False
            _log.info(
                "MigratingRegistry: mirroring to the target resumed (%d skipped so far)",
                self._skipped,
            )
            self._retry_skipped()

    def _book_register(
        self, op: _Op, rec: _Record | None, exc: BaseException | None, skipped: str | None
    ) -> None:
        view, key = op.view, op.key
        # Current: no later register/unregister of this view replaced the copy
        # this op mirrors (a later op books that copy instead).
        current = view.copy_op.get(key) == op.seq
        if current:
            del view.copy_op[key]
        if skipped is not None or exc is not None:
            if not current or isinstance(exc, NotAlive):
                return  # died between the two writes: nothing to mirror
            if isinstance(exc, AlreadyRegistered):
                holder = rec.view.ident() if rec is not None and rec.view is not None else None
                who = f"thread {holder}" if holder is not None else "another registration"
                why = f"the target holds {key!r} for {who} ({exc.entry})"
            else:
                why = f"the target refused the mirror: {skipped or repr(exc)}"
                if skipped is not None or isinstance(exc, BackendUnavailable):
                    view.retry[key] = (op.agent, op.metadata)  # retried when it is back
            self._diverge(view, key, op.agent, why)
            return
        old = self._records.get(key)
        if old is not None:
            self._tell(old.view, key, view)
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, op.agent)
        if current:
            view.mirrors[key] = gen
            view.divergent.pop(key, None)  # a retried copy is resolved

    def _book_unregister(
        self, op: _Op, rec: _Record, exc: BaseException | None, skipped: str | None
    ) -> None:
        view, key = op.view, op.key
        if skipped is not None or exc is not None:
            # The target still holds the mirror of a copy the legacy side no
            # longer has: listed, and the record stays so a later unregister
            # of the key retries the removal.
            self._diverge(view, key, rec.agent, f"the target kept {key!r}: {skipped or repr(exc)}")
            return
        if self._records.get(key) is rec:
            del self._records[key]

    def _book_update(
        self, op: _Op, rec: _Record, exc: BaseException | None, skipped: str | None
    ) -> None:
        view, key = op.view, op.key
        if isinstance(exc, NotRegistered):
            return  # died in the target; the queued down event drops the record
        if skipped is not None or exc is not None:
            self._diverge(
                view, key, rec.agent, f"the target refused an update: {skipped or repr(exc)}"
            )
            return
        now = self._records.get(key)
        if now is not None and now.view is view and key in view.mirrors:
            gen = self._next_gen()
            self._records[key] = now._replace(gen=gen)
            view.mirrors[key] = gen

    # ------------------------------------------------------------------ divergences

    def _diverge(self, view: _View, key: Hashable, agent: Any, reason: str) -> None:
        div = Divergence(key, view.ident(), reason)
        view.divergent[key] = _Divergent(agent, div)
        self._detected += 1
        if telemetry.has_listeners("registry.divergence"):
            telemetry.emit(
                "registry.divergence",
                {"registry": self, "key": key, "thread": div.thread, "reason": reason},
            )

    def _purge(self) -> None:
        """Resolve divergences whose copy died or whose thread ended; forget ended views."""
        views = list(self._views.items())
        for ident, view in views:
            if view.ended():
                view.divergent.clear()
                if self._views.get(ident) is view:
                    del self._views[ident]
        for view in self._all_views():
            for key, d in list(view.divergent.items()):
                if not is_alive(d.agent):
                    del view.divergent[key]

    def _all_views(self) -> list[_View]:
        views = list(self._views.values())
        if self._shared_view is not None:
            views.append(self._shared_view)
        return views

    def divergences(self) -> list[Divergence]:
        """The unresolved divergences, each a ``Divergence(key, thread, reason)``.

        Applies the queued flag-off mirrors first, so a refusal among them is listed.
        """
        self._check_open()
        self._settle_and_retry()
        with self._lock:
            return self._divergences()

    def _settle_and_retry(self) -> None:
        """Apply queued mirrors; then retry the ones skipped while the target was
        unavailable, if it is available now, and apply those too."""
        self._settle()
        with self._lock:
            queued = self._retry_skipped()
        if queued:
            self._settle()

    def _divergences(self) -> list[Divergence]:
        self._check_open()
        self._drain_dead()
        self._purge()
        return [d.divergence for v in self._all_views() for d in v.divergent.values()]

    def divergence_count(self) -> int:
        """How many divergences were detected since construction (resolved ones included)."""
        self._check_open()
        return self._detected

    def readiness(self) -> list[str]:
        """Problems that should stop a migration from advancing (empty when ready).

        Hand it to ``Migration(flags, plan, readiness=[registry.readiness])``.
        """
        self._check_open()
        self._settle_and_retry()
        with self._lock:
            return self._problems()

    def _problems(self) -> list[str]:
        return [
            f"registry divergence: key {d.key!r} in thread {d.thread}: {d.reason}"
            for d in self._divergences()
        ]

    # ------------------------------------------------------------------ writes

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Register on the authoritative backend, then mirror (see the module docs).

        Raises what the authoritative backend raises; nothing is stored then.
        """
        key = validate_key(key)  # the one key rule (InvalidKey): both sides see one key
        metadata = freeze_metadata(metadata)  # and one frozen copy (InvalidMetadata)
        with _Call(self):  # events are delivered at exit, after the lock is released
            try:
                with self._writing() as on:
                    self._check_open()
                    self._drain_dead()
                    if self._finished:
                        with self._events_of(_TARGET):
                            self._target.register(key, agent, metadata, replace=replace)
                        return
                    view = self._view()
                    self._catch_up(view)
                    if on:
                        with self._events_of(_TARGET):
                            self._target.register(key, agent, metadata, replace=replace)
                        old = self._records.pop(key, None)
                        if old is not None:
                            self._tell(old.view, key, view)
                        self._mirror_register_legacy(view, key, agent, metadata, old)
                    else:
                        with self._events_of(_LEGACY):
                            self._legacy.register(key, agent, metadata, replace=replace)
                        # The private copy it replaced is gone: resolved, no longer a mirror.
                        view.divergent.pop(key, None)
                        view.mirrors.pop(key, None)
                        self._enqueue("register", view, key, agent, metadata)
            finally:
                self._after_write()  # the target mirror, outside the facade lock (rule 6)

    def _mirror_register_legacy(
        self,
        view: _View,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None,
        old: _Record | None,
    ) -> None:
        # Rule 2: a private view is the caller's own; in a shared view only
        # the mirror of the target entry just replaced may be replaced.
        holds = view.private or (old is not None and old.view is view)
        try:
            with self._events_dropped():
                self._legacy.register(key, agent, metadata, replace=holds)
        except Exception as exc:  # best effort: a refused mirror is a divergence, not an error
            view.mirrors.pop(key, None)
            if isinstance(exc, AlreadyRegistered) and key in view.divergent:
                return  # the refusing copy is already a listed divergence
            self._diverge(view, key, agent, f"the legacy backend refused the mirror: {exc}")
            self._records[key] = _Record(None, self._next_gen(), agent)
            return
        view.divergent.pop(key, None)  # our private copy was replaced: resolved
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, agent)
        view.mirrors[key] = gen

    def unregister(self, key: Hashable) -> bool:
        """Unregister on the authoritative backend (its answer), then mirror."""
        key = validate_key(key)  # the one key rule (InvalidKey)
        with _Call(self):  # events are delivered at exit, after the lock is released
            try:
                with self._writing() as on:
                    return self._unregister(key, on)
            finally:
                self._after_write()  # the target mirror, outside the facade lock (rule 6)

    def _unregister(self, key: Hashable, on: bool) -> bool:
        self._check_open()
        self._drain_dead()
        if self._finished:
            with self._events_of(_TARGET):
                return self._target.unregister(key)
        view = self._view()
        self._catch_up(view)
        if on:
            with self._events_of(_TARGET):
                removed = self._target.unregister(key)
            rec = self._records.pop(key, None)
            if rec is not None:
                self._tell(rec.view, key, view)
            if view.private or (rec is not None and rec.view is view):
                try:
                    with self._events_dropped():
                        self._legacy.unregister(key)
                except Exception as exc:  # best effort: the next catch-up retries it
                    _log.warning("MigratingRegistry: legacy unregister %r failed: %r", key, exc)
                    view.inbox.append(key)  # the record is gone: catch-up drops the copy
                else:
                    view.mirrors.pop(key, None)
                view.divergent.pop(key, None)
            return removed
        with self._events_of(_LEGACY):
            removed = self._legacy.unregister(key)
        view.divergent.pop(key, None)
        view.mirrors.pop(key, None)
        if self._may_hold(view, key):
            self._enqueue("unregister", view, key, None, None)
        else:
            view.copy_op.pop(key, None)
            view.retry.pop(key, None)
        return removed

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace metadata on the authoritative backend, then mirror.

        Raises:
            NotRegistered: the authoritative backend does not hold ``key``.
            InvalidMetadata: not a JSON-compatible mapping (nothing changes).
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
        """
        key = validate_key(key)  # the one key rule (InvalidKey), before any lookup by key
        metadata = freeze_metadata(metadata)  # one frozen copy for both sides
        with _Call(self):  # events are delivered at exit, after the lock is released
            try:
                with self._writing() as on:
                    self._update_metadata(key, metadata, on)
            finally:
                self._after_write()  # the target mirror, outside the facade lock (rule 6)

    def _update_metadata(self, key: Hashable, metadata: Mapping[str, Any], on: bool) -> None:
        self._check_open()
        self._drain_dead()
        if self._finished:
            with self._events_of(_TARGET):
                self._target.update_metadata(key, metadata)
            return
        view = self._view()
        self._catch_up(view)
        rec = self._records.get(key)
        if on:
            with self._events_of(_TARGET):
                self._target.update_metadata(key, metadata)
            if rec is None:
                return
            gen = self._next_gen()
            self._records[key] = rec._replace(gen=gen)
            if rec.view is view:
                try:
                    with self._events_dropped():
                        self._legacy.update_metadata(key, metadata)
                    view.mirrors[key] = gen
                except NotRegistered:  # the legacy copy's agent died
                    view.mirrors.pop(key, None)
                except Exception as exc:  # best effort: its mirror keeps the old gen,
                    _log.warning(  # so the next catch-up copies the new metadata
                        "MigratingRegistry: legacy update of %r failed: %r", key, exc
                    )
                    view.inbox.append(key)
            else:
                self._tell(rec.view, key, view)
            return
        with self._events_of(_LEGACY):
            self._legacy.update_metadata(key, metadata)
        if self._may_hold(view, key) or key in view.retry:
            self._enqueue("update", view, key, None, metadata)

    # ------------------------------------------------------------------ reads

    # The authoritative reader is one attribute, swapped when the flag flips:
    # the target itself, or a small reader that catches the caller's legacy
    # view up first. A read is then one attribute load and one call.

    def lookup(self, key: Hashable) -> Entry | None:
        """The live entry for ``key`` from the authoritative backend."""
        return self._reader.lookup(key)  # the hot path (flag on: the target itself)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching every criterion, from the authoritative backend."""
        return self._reader.query(criteria)

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        """Exactly ``query([(attr, "eq", value)])``, from the authoritative backend."""
        return self._reader.find_by_attribute(attr, value)

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """Every live entry the authoritative backend shows to the caller."""
        return self._reader.list_all(filter)

    def count(self) -> int:
        """Number of live entries the authoritative backend shows to the caller."""
        return self._reader.count()

    def protocol_version(self) -> str:
        """``"2.0"``; ``Closed`` after ``close()``, as every call."""
        self._check_open()
        return super().protocol_version()

    def indexed_attributes(self) -> frozenset[str]:
        """The indexed attributes of the authoritative backend."""
        self._check_open()
        return (self._target if self._on else self._legacy).indexed_attributes()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Forward the authoritative backend's events to ``listener``.

        Events of the authoritative call of a facade write are delivered after
        the write completes, in the writing thread; mirror and catch-up events
        are never delivered. Asynchronous events (deaths seen by a backend's
        monitors) are forwarded when their backend is authoritative at
        delivery time, so a flip switches the event source with the answers.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        with self._lock:
            self._check_open()
            unsubscribe = self._listeners.subscribe(listener)  # TypeError first: nothing changes
            if not self._finished and self._legacy_unsubscribe is None:
                self._legacy_unsubscribe = self._legacy.subscribe(self._on_legacy_event)
        return unsubscribe

    # ------------------------------------------------------------------ lifecycle

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this MigratingRegistry is closed")

    def _backfill(self) -> None:
        """Copy the legacy entries that exist at construction into the target.

        A shared legacy is copied in bulk; a per-thread legacy exposing
        ``snapshot_all_threads()`` is copied per live thread. A key the target
        already holds for the same agent is adopted as a mirror; for another
        agent it is a divergence.
        """

        with _Call(self), self._lock:
            if self._shared_view is not None:
                for entry in self._legacy.list_all():
                    self._backfill_one(self._shared_view, entry)
                return
            snapshot = getattr(self._legacy, "snapshot_all_threads", None)
            if snapshot is None:
                return
            threads = {t.ident: t for t in threading.enumerate()}
            for ident, entries in snapshot().items():
                thread = threads.get(ident)
                if thread is None or not entries:
                    continue
                view = self._views.get(ident)
                if view is None or view.thread is not thread:
                    view = self._views[ident] = _View(thread)
                for entry in entries:
                    self._backfill_one(view, entry)

    def _backfill_one(self, view: _View, entry: Entry) -> None:
        key, agent = entry.key, entry.agent
        try:
            with self._events_dropped():
                self._target.register(key, agent, entry.metadata)
        except AlreadyRegistered as exc:
            held = exc.entry
            if held is None or held.agent is not agent:
                self._diverge(view, key, agent, f"the target already holds {key!r} ({held})")
                return
            if held.metadata != entry.metadata:
                try:
                    with self._events_dropped():
                        self._target.update_metadata(key, entry.metadata)
                except Exception as exc:  # best effort: the adopted copy keeps its metadata
                    _log.warning("MigratingRegistry: backfill update %r failed: %r", key, exc)
        except NotAlive:
            return
        except Exception as exc:
            self._diverge(view, key, agent, f"the target refused the backfill: {exc!r}")
            return
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, agent)
        view.mirrors[key] = gen

    def finish(self) -> None:
        """Retire the legacy backend: stop writing to it, close it, stop reading the flag.

        Idempotent once it succeeded.

        Raises:
            MigrationError: the flag is off, or divergences remain (listed).
        """
        with self._writing(settled=True):  # queued flag-off mirrors are applied first
            self._check_open()
            if self._finished:
                return
            problems = self._problems()
            with self._flag_lock:
                if not self._flags.enabled(self._flag):
                    raise MigrationError(
                        f"cannot finish the migration: flag {self._flag!r} is off, so the "
                        "legacy registry is still authoritative; turn it on first"
                    )
                if problems:
                    raise MigrationError(
                        "cannot finish the migration while divergences remain: "
                        + "; ".join(problems)
                    )
                self._finished = True
                self._on = True
                self._reader = self._target
            if self._legacy_unsubscribe is not None:
                self._legacy_unsubscribe()
                self._legacy_unsubscribe = None
            self._records.clear()
            self._views.clear()
            self._shared_view = None
            self._dead.clear()
            self._legacy.close()

    def close(self) -> None:
        """Stop listening to the flag and close both backends. Idempotent.

        Every later call raises ``errors.Closed`` (reads included).
        """
        with self._lock:
            if self._closed:
                return
            # Race: a flag listener may be refreshing the cached reader right
            # now; under the flag lock, _closed and the closed reader are set
            # together and _refresh_flag re-checks _closed, so it cannot put a
            # live reader back.
            with self._flag_lock:
                self._closed = True
                self._reader = _CLOSED_READER
            for unsub in self._unsubscribers:
                unsub()
            self._unsubscribers.clear()
            if self._legacy_unsubscribe is not None:
                self._legacy_unsubscribe()
                self._legacy_unsubscribe = None
            self._listeners.clear()
            self._records.clear()
            self._views.clear()
            self._dead.clear()
            # Queued mirrors are dropped: both sides close now. A mirror in
            # flight books nothing once it sees _closed (_apply_next).
            self._pending.clear()
        self._close_async()
        if not self._finished:
            self._legacy.close()
        self._target.close()

    def __repr__(self) -> str:
        mode = "finished" if self._finished else ("target" if self._on else "legacy")
        return (
            f"<MigratingRegistry {mode} legacy={type(self._legacy).__name__} "
            f"target={type(self._target).__name__} flag={self._flag!r}>"
        )
