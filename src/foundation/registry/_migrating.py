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
   describe both sides exactly (modulo deaths, rule 5, the queued
   flag-off mirrors of rule 6 and the legacy mirrors of rule 7). Only local
   stores are called for a mirror under the lock (a private legacy view);
   a mirror to a backend that may be remote (the target, a shared legacy)
   is decided under the lock and applied outside it (rules 6 and 7).
   Telemetry decided under the lock is emitted, and ``subscribe()`` events
   delivered, once it is released (and the pump's or the pass's lock too),
   so a listener may call the facade back whatever another thread is doing.
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
   exactly as a mirror the target refused. A mirror skipped that way, or
   failed with ``BackendUnavailable`` — a register, an update, an unregister,
   or the construction's copy of a legacy entry (which checks ``status()``
   too, so a frozen target costs one wait, not one per entry) — is kept in
   ``view.retry`` (agent and current metadata, or ``REMOVED`` for an
   unregister; dropped when the copy is unregistered or replaced) and queued
   again, as a register (replace) or unregister of that copy, once the target
   is available, whichever way the flag points (with the flag on, the target
   answers, and a live legacy copy it lacks would be lost to it): at the first
   write the target takes after the outage (a flag-off mirror, or a flag-on
   write), at a flip of the flag (the first read or write after it, once
   ``status()`` says the target is available), and by
   ``divergences()``/``readiness()``/``finish()``. Retries are only queued
   under the facade lock and applied by the pump outside it; with the flag
   on, reads settle them first. While ``status()`` says the target is down
   nothing is tried (a flip, or a write whose ``status()`` flapped to down,
   leaves the request for the next read or write). A flag-on
   ``update_metadata`` queues and applies the retries asked for first, as a
   read does, so it changes the registration a lookup shows (a flag-on
   register or unregister of the key supersedes its retry). Its success
   resolves the divergence; so does a later mirror of the same copy that
   succeeds. A register whose agent dies before its mirror lands (skipped
   and kept for retry, or in flight: ``NotAlive``) has nothing left to
   register, but the target still holds the entry it replaced on the legacy
   side: its retry becomes the unregister of that entry (in the mirror's
   place in the queue when in flight; else listed as a divergence until it
   lands), removed only if the target's own view (its ``lookup()``, best
   effort) still shows that agent (rule 2).
7. *Deferred legacy mirrors* (flag on). A shared legacy backend may be
   remote too (a ``RedisRegistry`` legacy), so a flag-on write never calls
   it under the facade lock (a private legacy view is a local store,
   mirrored under the lock as in rule 1). It decides: a register mirror is
   kept in ``view.legacy_retry`` (with the agent of our own older copy it
   may replace, rule 2) and the record names no view yet; an unregister or
   update mirror goes to the view's inbox (catch-up removes the stale copy
   (unless the legacy side's lookup shows another agent than the one marked
   there, rule 2) or copies the target's metadata). A *pass* applies them
   outside the lock, one thread at a time (whoever holds the pass lock:
   normally the writer, right after releasing the facade lock; a writer that
   finds another pass running leaves it its request, and that pass looks
   again before it stops, so no writer waits behind another's network call):
   each step planned and booked under the lock, re-checked against the
   record, the backends called outside it; catch-up steps before registers.
   While the pass runs it is the only writer of the shared legacy side
   (flag-on writes only ask for it; flag-off writes wait for it), so a
   register replaces only the copy it looked up: our own older copy or none,
   never another registration, even if that copy's agent died meanwhile and
   a newer flag-on write of the key is waiting (its own step comes later,
   after catch-up removed what the in-flight step wrote). A register whose
   agent dies (or whose target entry goes) before its mirror lands
   (deferred, or in flight: ``NotAlive``) has nothing left to register, but
   the legacy side still holds the facade's own copy it was to replace: that
   copy is listed as a divergence and removed by catch-up, only if the
   legacy backend's own view (its ``lookup()``, best effort) still shows
   that agent (rule 2); a later flag-on register of the key replaces it as
   its own (so it is no "other registration"). While the legacy side reports
   itself unavailable without I/O (``status()``, as in rule 6), nothing is
   tried: the registers asked for become divergences (still kept in
   ``view.legacy_retry``), the inbox stays (stale copies, listed by
   ``divergences()``); a pass stops at its first ``BackendUnavailable``. So
   writes cost at most one wait per outage, in one thread, and the operator
   gets one WARNING (until a legacy mirror succeeds, then one INFO). Once it
   is back, the refused registers are retried whichever way the flag points:
   at the first write the legacy side takes (a flag-on legacy mirror, or a
   flag-off write), at a flip of the flag (the first legacy read or write
   after it, once ``status()`` says the legacy backend is available), and by
   ``divergences()``/``readiness()``/``finish()``. A flag-off write and a
   legacy read first apply the passes asked for, or wait for the one in
   flight (with the facade lock released). While ``status()`` says the
   legacy backend is down nothing is tried and the request is kept. A legacy
   read also catches the shared view up first (its inbox, in a pass), so a
   flip back loses nothing and resurrects nothing. In a shared view, a
   flag-on register or unregister also replaces or removes the facade's own
   divergent copy (a write the target never took): else it would come back,
   unlisted, at the next flip; so does a flag-on register over the facade's
   own copy written with the flag off whose target mirror was skipped and
   not retried yet (the record still names the older mirror the target
   kept). Symmetrically, a target entry whose shared legacy mirror was not
   taken (still to be retried, or refused for good: a foreign copy there) is
   the shared view's own: a flag-off register of its key replaces it in the
   target, a flag-off unregister removes it (rule 2; once its mirror was
   refused for good, only while the target still holds that agent). A
   flag-off write of the key made before its pass (``status()`` still saying
   down while the legacy side takes writes: a Redis node recovering)
   supersedes what the pass would apply: a register or unregister drops the
   deferred register; an update of a key whose legacy side holds our older
   copy (or a stale copy of ours whose removal is due: the key was
   unregistered before that register) writes that register itself, with the
   new metadata, and books it; an update of a copy whose catch-up is due
   marks it current (its target mirror is queued), or is ``NotRegistered``
   if that catch-up removes the copy. Else the pass put the target's older
   metadata back, or the unregistered key.

Why this is correct under concurrent flips
------------------------------------------

* A call reads the flag once. Whatever it reads, a successful write reaches
  both sides before any later call can read the other side as authoritative:
  with the flag on, its legacy mirror is mirrored under the lock (a private
  view, rule 1) or asked for under it and applied, by a pass, before any
  flag-off write or legacy read proceeds (a shared view, rule 7); with the
  flag off its target mirror is queued in write order before the lock is
  released and applied before any flag-on write, ``finish()`` or flag-on
  read proceeds (rule 6). So the next call, under either flag value, sees
  it: *nothing is lost*. A flag flip between calls, or during one, only changes which side
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
  inside ``with self._events_of(side)``) are kept; events of mirror and
  catch-up calls (made inside ``with self._events_dropped(side)``, or the
  queued mirrors' ``_events_muted``) are dropped. On a backend that lets
  whichever thread is already delivering deliver a writer's events, maybe
  after the write returned (``MemoryRegistry``), a call's own events are
  recognised by the facade's tag they carry (set in the calling thread
  for the call's duration; the writes of listeners it runs meanwhile are
  untagged): kept or dropped as decided for the call, by whichever thread
  and whenever they are delivered. Other events delivered by another
  thread (remote changes, direct writes to a backend, another facade's
  calls) are forwarded when their side is authoritative at delivery time
  — so only an event that races a flip can go to the side that just
  stopped answering. A death, which both sides report, is told once, by
  the first report of a registration the listeners were told of, whatever
  the flag (``_EventRouting._death_told``). After ``finish()``
  only the target's events exist. Kept and forwarded events join one
  queue, in the order the backends delivered them, and
  listeners are called from it one event at a time,
  never holding a lock of the facade (nor of a backend): by the writer once
  it has released the facade lock, by a pump or a pass once it has released
  its own, or, for an event a backend delivers from its own thread (a
  death, a remote change), by a short-lived courier thread. A thread that
  finds another one delivering leaves its events to it and does not wait,
  so a listener may call the facade back, or wait for a thread that does
  (see ``_migrating_events``).

The flag
--------

Reading ``FeatureFlags.enabled`` on every call would cost about as much as
the lookup, so the facade caches it: the boolean (for writes) and the
authoritative reader (the target itself, or a reader of the legacy side), so
a read costs one attribute load more than calling the backend directly. The
cache is refreshed by a hook ``FeatureFlags`` calls each time it swaps its
answer tables (``_watch_tables``), in the thread that swapped them: the
writer's, before its write returns and before any ``subscribe()`` listener
runs, or the flag store's thread for another process's change. So a flip
made through ``Migration.advance()``, ``rollback_to()`` or
``emergency_rollback()`` takes effect on the next call, and so does one
made by another process as soon as this process applies it, even while a
``FeatureFlags.subscribe`` listener is stuck (listeners are delivered one
at a time, so a stuck one holds all later deliveries). The hook *re-reads*
``enabled(flag)`` under a small lock: whichever call runs last reads the
newest committed state, so the cache converges to the flag even when two
writers' hooks run out of order. A ``subscribe`` listener refreshes it too
(for a stand-in ``flags`` without the hook, it is the only refresh), and
warns of a change after ``finish()``.

``finish()`` retires the legacy side: it is refused (``MigrationError``)
while the flag is off or divergences remain; afterwards the facade writes
only to the target, closes the legacy backend and never reads the flag
again. A later change that would turn the flag off is reported as a warning
(telemetry ``registry.flag_ignored``, and the ``foundation.registry`` logger) and
never obeyed.

Layout
------

This module is the facade: construction, the flag, the writes, the reads and
the lifecycle. Its private base classes do one job each, lowest first:
``_EventRouting`` (``_migrating_events``: which events reach the listeners),
``_LegacyViews`` (``_migrating_views``: views, records, catch-up; rules 3 to
5), ``_DivergenceBook`` (``_migrating_divergences``), ``_LegacyRetries``
(``_migrating_legacy``: the legacy mirrors of a shared legacy view applied
outside the lock, and telemetry emitted once it is released; rule 7) and ``_TargetMirrors``
(``_migrating_mirror``: the queued target mirrors and the facade lock for
writes; rule 6). The readers the flag swaps are in ``_migrating_readers``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from foundation import _fork, telemetry
from foundation._listeners import Listeners
from foundation.errors import (
    AlreadyRegistered,
    BackendUnavailable,
    Closed,
    MigrationError,
    NotAlive,
    NotRegistered,
    bounded_list,
)
from foundation.liveness import is_alive
from foundation.registry._async import MigratingAsyncWrites
from foundation.registry._migrating_events import _LEGACY, _TARGET, _Call, _identity
from foundation.registry._migrating_mirror import REMOVED, _TargetMirrors, _unmirrored_own
from foundation.registry._migrating_readers import (
    _CLOSED_READER,
    _FORKED_READER,
    _LegacyReader,
    _SettlingReader,
)
from foundation.registry._migrating_views import _Record, _View
from foundation.registry._types import (
    Criterion,
    Divergence,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
)
from foundation.registry._validation import (
    check_bool,
    freeze_metadata,
    short_repr,
    validate_key,
)

if TYPE_CHECKING:
    from foundation.flags import FeatureFlags, FlagChange

__all__ = ["MigratingRegistry"]

_log = logging.getLogger("foundation.registry")


def _per_thread(registry: object) -> bool:
    """``registry`` shows each thread only its own entries (a ``ThreadLocalRegistry``)."""
    return bool(getattr(registry, "per_thread", False)) or hasattr(registry, "snapshot_all_threads")


def _mirrored_copy(view: _View, key: Hashable, old: _Record) -> Any:
    """``_replaceable_copy`` when the record ``old`` names ``view``: the agent of
    the copy there. Race: a flag-off write replaced the mirror of ``old`` while
    the target was unavailable; its mirror was skipped (a listed divergence,
    still to be retried) and the record still names ``old``, which the target
    kept. The copy there is that write's: naming ``old`` made the pass find
    "another registration" (a false divergence, dropped by the next unregister
    of the key) and left the stale copy, unlisted, to come back at the next flip."""
    held = view.divergent.get(key)
    if key not in view.mirrors and held is not None:
        return held.agent
    return old.agent


def _skipped_retry(view: _View, key: Hashable) -> tuple[Any, Mapping[str, Any] | None] | None:
    """The retry of ``view``'s current copy of ``key`` whose target mirror was
    skipped (agent, metadata or ``REMOVED``), if it is still the listed one."""
    retry = view.retry.get(key)
    held = view.divergent.get(key)
    if retry is None or held is None or held.agent is not retry[0]:
        return None
    return retry


def _deferred_over(view: _View, key: Hashable, copy: Entry, agent: Any, mine: Any) -> bool:
    """``_update_deferred_copy``: the legacy ``copy`` of ``key`` is ours to write
    ``agent``'s deferred register over: that agent's, our older copy ``mine``,
    or a stale copy of ours whose removal is due (``view.stale_copy``: that
    agent's, marked for the pass's catch-up, which removes it before the register).

    Race: ``key`` was unregistered with the flag on while the legacy side said
    down (its copy stayed, removal due), then registered again for another
    agent (mirror deferred). A flag-off update before the pass (the node takes
    writes while ``status()`` still says down) found that stale copy and
    answered as for an unregistered key (``BackendUnavailable``) although the
    key is registered; the pass would remove the copy and register ``agent``.
    Only a copy of the agent marked stale: one written meanwhile by another
    writer (the stale agent died and the key was taken, or it was replaced)
    is not ours (rule 2), and the update answers as before. Between this
    check and the register, a write of the key that bypasses the facade
    (another thread writing the legacy store directly, or another process on
    a shared backend) is not seen: best effort, the backend's business."""
    return copy.agent is agent or copy.agent is mine or view.stale_copy(key, copy.agent)


def _stale_agent(view: _View, key: Hashable, rec: _Record | None) -> Any:
    """``_defer_legacy_unregister``: the agent of our copy of ``key`` to remove:
    the mirror of ``rec`` (``_mirrored_copy``) or our listed divergent copy."""
    if rec is not None and rec.view is view:
        return _mirrored_copy(view, key, rec)
    return view.divergent[key].agent


def _ours(view: _View, rec: _Record | None) -> bool:
    """The target entry of ``rec`` is ``view``'s own to replace (rule 2)."""
    return rec is not None and (rec.view is view or _unmirrored_own(view, rec))


class MigratingRegistry(_TargetMirrors, MigratingAsyncWrites, Registry):
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

    #: Inherited across fork(): closed in the child (see ``_inherited_by_fork``).
    _forked = False

    def __init__(
        self,
        legacy: Registry,
        target: Registry,
        flags: FeatureFlags,
        flag: str = "use_ets_agent_registry",
    ) -> None:
        """Raises:
        TypeError: ``legacy`` or ``target`` is not a ``Registry``, or ``flags``
            is not a ``FeatureFlags`` (refused here, not at the first call).
        ValueError: ``legacy`` and ``target`` are the same object (every write
            would be mirrored onto itself and refused as a divergence), or
            ``target`` is a per-thread store (the target must be shared).
        UnknownFlag: ``flag`` is not declared in ``flags``.
        """
        for side, backend in (("legacy", legacy), ("target", target)):
            if not isinstance(backend, Registry):
                raise TypeError(
                    f"MigratingRegistry {side} must be a Registry, got {type(backend).__name__}"
                )
        if not callable(getattr(flags, "enabled", None)) or not callable(
            getattr(flags, "subscribe", None)
        ):
            raise TypeError(f"flags must be a FeatureFlags, got {type(flags).__name__}")
        if legacy is target:
            raise ValueError(
                "MigratingRegistry needs two different backends: legacy and target "
                f"are the same object ({short_repr(legacy)})"
            )
        if _per_thread(target):
            raise ValueError(
                "MigratingRegistry needs a shared target: a per-thread store "
                f"({type(target).__name__}) can only be the legacy side"
            )
        self._on = bool(flags.enabled(flag))  # UnknownFlag before anything changes
        self._legacy = legacy
        self._target = target
        self._legacy_reader = _LegacyReader(self)
        self._settling_reader = _SettlingReader(self)
        self._reader = target if self._on else self._legacy_reader
        self._flags = flags
        self._flag = flag
        self._lock = threading.RLock()
        self._flag_lock = threading.Lock()
        self._init_mirror_queue(target)  # rule 6: the queued target mirrors
        self._init_legacy_retries()  # rule 7: the retried legacy mirrors
        self._legacy_status = getattr(legacy, "status", None)
        self._legacy_warned = False
        self._tls = threading.local()
        self._finished = False
        self._closed = False
        self._gen = 0
        self._detected = 0
        self._records = {}
        self._dead = deque()
        self._muted = {}
        self._muted_lock = threading.Lock()
        self._shared_view = None if _per_thread(legacy) else _View(None)
        self._views = {}
        self._listeners = Listeners("MigratingRegistry listener", area="registry")
        self._init_delivery()  # the events to deliver, outside every lock
        self._tag_events_of(_LEGACY, legacy)
        self._tag_events_of(_TARGET, target)
        # The facade's own subscriptions: the target's (deaths and events) and the
        # flag's now; the legacy side's on the first subscribe() (no listener, no
        # events to build on the legacy store's writes).
        self._unsubscribers: list[Callable[[], None]] = []
        self._legacy_unsubscribe: Callable[[], None] | None = None
        self._unsubscribers.append(target.subscribe(self._on_target_event))
        self._unwatch_flag = self._watch_flag(flags)
        self._unsubscribers.append(flags.subscribe(self._on_flag_change))
        self._refresh_flag(retry=False)  # a change between the first read and the hook
        self._backfill()
        _fork.track(self)  # closed in a forked child (see _inherited_by_fork)

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): closed, with no I/O and no wait.

        The child has none of the facade's threads: a parent thread writing at
        the fork held the facade lock (or the pump's, the pass's) for ever in
        the child, whose next write or ``close()`` hung, and a mirror it had in
        flight (queued, booked half) would never land; its ``FeatureFlags`` is
        closed there too, so the flag could not be followed. So every call
        raises ``Closed`` naming fork(), reads included; the locks are reset in
        place and the delivery turn freed. ``close()`` then closes the child's
        copies of both backends (each fork-safe: an inherited ``RedisRegistry``
        does nothing) and touches neither the flags nor the parent's executor
        (kept, never shut down: its queue's lock may be held); the facade's
        subscriptions go with the child's copies of what it subscribed to.
        """
        _fork.reset_locks(
            self._lock,
            self._flag_lock,
            self._muted_lock,
            self._told_lock,
            self._pump_lock,
            self._legacy_retry_lock,
            self._listeners._lock,
        )
        self._delivery.inherited_by_fork()
        if self._pump_owner != threading.get_ident():
            self._pump_owner = None
        executor = getattr(self, "_async_executor", None)
        if executor is not None:
            _fork.keep(executor)
            self._async_executor = None
        self._unsubscribers.clear()
        self._legacy_unsubscribe = None
        self._closed = self._forked = True
        self._reader = _FORKED_READER

    # ------------------------------------------------------------------ flag

    def _watch_flag(self, flags: FeatureFlags) -> Callable[[], None]:
        """Follow the flag at each swap of ``flags``' tables (see "The flag");
        returns the idempotent remove. A stand-in without the hook is followed
        by the listener alone (``_on_flag_change``)."""
        watch = getattr(flags, "_watch_tables", None)
        if not callable(watch):
            return lambda: None
        unwatch: Callable[[], None] = watch(self._on_flags_swapped)
        self._unsubscribers.append(unwatch)  # close() drops it; finish() too
        return unwatch

    def _on_flags_swapped(self, flags: object) -> None:
        """``FeatureFlags`` swapped its tables (any flag), in the swapping thread:
        follow the flag now, whatever its listeners are doing."""
        self._refresh_flag(retry=False)

    def _refresh_flag(self, *, retry: bool = True) -> None:
        """Re-read the flag into the cache (boolean and reader), asking first
        for the retries a flip asks for (always if ``retry``).

        Re-read under a lock: the last call to run reads the newest committed
        state, so out-of-order swap hooks or notifications cannot leave a
        stale cache. No I/O and no facade lock here: the swap hook runs in a
        flag writer's thread (or the flag store's), and a writer holding the
        facade lock may be waiting on the network.
        """
        with self._flag_lock:
            if self._finished or self._closed:
                return
            try:
                on = bool(self._flags.enabled(self._flag))
            except Closed:
                # Race: the FeatureFlags closed after its swap, before its hook
                # ran (hooks run after its lock): the cache keeps its last value,
                # as it does once the flags are closed.
                return
            if retry or on != self._on:
                # Before the reader is picked again: a flip asks for the mirrors
                # the target refused while down to be retried, and those the
                # legacy side refused (rule 7: the first legacy read or write
                # after a flip back applies them, before it answers).
                self._request_retry()
                self._request_legacy_retry()
            self._on = on
            self._reader = self._pick_reader(on)
        if on:
            # Race: a death withheld while the flag was off (per-thread legacy)
            # is told now that the target answers; after ``_on`` is set, so a
            # report racing the flip is withheld before this runs, or told.
            # Outside the flag lock: it may deliver here (no courier thread).
            self._tell_withheld()

    def _on_flag_change(self, change: FlagChange) -> None:
        """The flag's listener: the flag's swap hook already followed the flip
        (a stand-in ``flags`` has none: this does); also asks for the retries
        on a change that is no flip, and warns of a change after ``finish()``."""
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

    # ------------------------------------------------------------------ divergences

    def divergences(self) -> list[Divergence]:
        """The unresolved divergences, each a ``Divergence(key, thread, reason)``.

        Applies the queued flag-off mirrors first, so a refusal among them is listed.
        """
        self._check_open()
        self._settle_and_retry()
        self._retry_legacy_now()
        with _Call(self), self._lock:  # catch-up: its events dropped
            return self._divergences()

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
        self._retry_legacy_now()
        with _Call(self), self._lock:  # catch-up: its events dropped
            return self._problems()

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
        ``TypeError`` if ``replace`` is not ``True`` or ``False``.
        """
        self._check_open()  # first, as every call: Closed, whatever the arguments
        check_bool(replace, "replace")  # both sides would refuse it: refused once, here
        key = validate_key(key)  # the one key rule (InvalidKey): both sides see one key
        metadata = freeze_metadata(metadata)  # and one frozen copy (InvalidMetadata)
        with _Call(self):  # events are delivered at exit, after the lock is released
            try:
                with self._writing() as on:
                    self._register(key, agent, metadata, replace, on)
            finally:
                self._after_write()  # the target mirror, outside the facade lock (rule 6)

    def _register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None,
        replace: bool,
        on: bool,
    ) -> None:
        self._check_open()
        self._drain_dead()
        if self._finished:
            with self._events_of(_TARGET):
                self._target.register(key, agent, metadata, replace=replace)
            return
        if len(self._told_in) >= self._sweep_at:  # (a per-thread legacy's, only)
            self._sweep_told()
        view = self._view()
        self._catch_up(view)
        if on:
            with self._events_of(_TARGET):
                self._target.register(key, agent, metadata, replace=replace)
            old = self._records.pop(key, None)
            if old is not None:
                self._tell(old.view, key, view)
            self._mirror_register_legacy(view, key, agent, metadata, old)
            self._retry_after_target_write()  # the target took a write: it is back
        else:
            with self._events_of(_LEGACY):
                self._legacy.register(key, agent, metadata, replace=replace)
            self._request_legacy_retry()  # rule 7: it is back (applied by _after_write)
            # The private copy it replaced is gone: resolved, no longer a mirror.
            view.divergent.pop(key, None)
            view.forget(key)
            # Race: a flag-on register's deferred legacy mirror is superseded by
            # this write (the legacy side said it was down, so the pass has not
            # run): applied later, it met this copy as "another registration".
            view.legacy_retry.pop(key, None)
            self._enqueue("register", view, key, agent, metadata)

    def _sweep_told(self) -> None:
        """``_drop_ended_told`` (under the facade lock): the target may hold a
        registration its record names (a death not applied yet included), or
        one of a key whose mirror is queued or in flight (rule 6); none while
        the target has reports not yet delivered."""
        # Race: a report of the target still queued (or being delivered) may
        # be the death of a copy it held whose record a flag-on write dropped
        # since (it took the key): swept first, that death was never told. So
        # nothing is swept until every report queued so far was delivered;
        # any later one is of a copy the target holds now: its record names it
        # (the facade lock, held, keeps the records as read here).
        delivery = self._tags[_TARGET].delivery  # (noted only for such a target)
        if delivery.pending or delivery.busy or delivery._rest is not None:
            return  # (the next write looks again)
        busy = {op.key for op in self._pending}
        if self._inflight is not None:
            busy.add(self._inflight.key)
        records = self._records

        def may_hold(key: Hashable, agent: Any) -> bool:
            rec = records.get(key)
            return key in busy or (rec is not None and _identity(rec.agent) == _identity(agent))

        self._drop_ended_told(may_hold)

    def _mirror_register_legacy(
        self,
        view: _View,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None,
        old: _Record | None,
    ) -> None:
        # Rule 2: a private view is the caller's own; in a shared view only
        # the mirror of the target entry just replaced may be replaced, or the
        # facade's own copy the target never took (a listed divergence): the
        # target has just accepted this write over it, and a copy left there
        # would come back, unlisted, at the next flip.
        if not view.private:
            self._defer_legacy_register(view, key, agent, old)
            return
        try:  # a private view: the caller's own, local store
            down = self._legacy_down()
            if down is not None:  # no I/O, no wait (a frozen Redis costs op_timeout)
                raise BackendUnavailable(down)
            with self._events_dropped(_LEGACY):
                self._legacy.register(key, agent, metadata, replace=True)
        except Exception as exc:  # best effort: a refused mirror is a divergence, not an error
            self._legacy_register_refused(view, key, agent, exc)
            return
        self._legacy_ok()
        view.divergent.pop(key, None)  # our private copy was replaced: resolved
        view.retry.pop(key, None)  # and its skipped target mirror is obsolete
        view.legacy_retry.pop(key, None)
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, agent)
        view.mirrors[key] = gen

    def _defer_legacy_register(
        self, view: _View, key: Hashable, agent: Any, old: _Record | None
    ) -> None:
        """``_mirror_register_legacy`` in the shared view (under the facade lock):
        decided here, applied by a pass outside the lock (rule 7), so a remote
        legacy backend never holds the lock. The copy it may replace (rule 2) is
        decided here too: the mirror of the entry just replaced, our own copy a
        register still to apply would have replaced, or the facade's own copy
        the target never took (a listed divergence)."""
        mine = self._replaceable_copy(view, key, old)
        if old is not None and old.view is view and mine is not None:
            # Race: the replaced entry's mirror stays in view.mirrors until the
            # pass; if its agent dies and another writer takes the key in the
            # legacy store, then this register is dropped (unregister, death),
            # catch-up removes that copy: marked, it checks the agent first (rule 2).
            view.mark_stale(key, mine)
        view.divergent.pop(key, None)  # superseded: booked again if the legacy side refuses
        view.retry.pop(key, None)  # the target took this write: its skipped mirror is obsolete
        view.legacy_retry[key] = (agent, mine, threading.get_ident())
        self._records[key] = _Record(None, self._next_gen(), agent)
        self._legacy_undecided.add(key)
        self._legacy_retry_requested = True  # applied by _after_write, outside the lock

    def _replaceable_copy(self, view: _View, key: Hashable, old: _Record | None) -> Any:
        """The agent of the facade's own legacy copy of ``key`` in the shared view
        that a flag-on register of ``key`` may replace (rule 2), or None (under
        the facade lock; no I/O). The pass replaces only a copy of this agent."""
        if old is not None and old.view is view:
            return _mirrored_copy(view, key, old)
        pending = view.legacy_retry.get(key)
        if old is not None and old.view is None and pending is not None:
            # Race: that register may be in flight now; if it lands, its booking
            # has the copy removed before this one is applied (the pass books
            # and plans in order), else our older copy is still there.
            return pending[1] if pending[0] is old.agent else None
        held = view.divergent.get(key)  # _own_divergent: a local lookup, no I/O
        return held.agent if held is not None and self._own_divergent(view, key) else None

    def _legacy_register_refused(
        self, view: _View, key: Hashable, agent: Any, exc: Exception
    ) -> None:
        """``_mirror_register_legacy`` when a private legacy view refused: a divergence."""
        view.mirrors.pop(key, None)
        if isinstance(exc, AlreadyRegistered) and key in view.divergent:
            return  # the refusing copy is already a listed divergence
        self._diverge(view, key, agent, f"the legacy backend refused the mirror: {exc}")
        self._records[key] = _Record(None, self._next_gen(), agent)

    def unregister(self, key: Hashable) -> bool:
        """Unregister on the authoritative backend (its answer), then mirror."""
        self._check_open()  # first, as every call: Closed, whatever the key
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
            self._mirror_unregister_legacy(view, key, rec)
            self._retry_after_target_write()  # the target took a write: it is back
            return removed
        with self._events_of(_LEGACY):
            removed = self._legacy.unregister(key)
        self._request_legacy_retry()  # rule 7: it is back (applied by _after_write)
        view.divergent.pop(key, None)
        view.forget(key)
        # Race: a flag-on register of the key whose legacy mirror is still to
        # apply (the legacy side's status() said down, a Redis node recovering,
        # so the pass has not run) is unregistered too: the pass found the
        # target entry still there (its removal queued after the pass, or
        # refused while the target was down) and registered it back, unlisted.
        view.legacy_retry.pop(key, None)
        if self._may_hold(view, key):
            self._enqueue("unregister", view, key, None, None)
        else:
            view.copy_op.pop(key, None)
            view.retry.pop(key, None)
        return removed

    def _mirror_unregister_legacy(self, view: _View, key: Hashable, rec: _Record | None) -> None:
        """Drop the legacy mirror of ``key`` after the target unregistered it (flag on).

        In a shared view, also the facade's own copy the target never took (a
        listed divergence): unregistered by the caller, it must not come back
        (by a retried mirror, or at the next flip)."""
        if not view.private:
            self._defer_legacy_unregister(view, key, rec)
            return
        try:  # a private view: the caller's own, local store
            down = self._legacy_down()
            if down is not None:  # no I/O, no wait
                raise BackendUnavailable(down)
            with self._events_dropped(_LEGACY):
                self._legacy.unregister(key)
        except Exception as exc:  # best effort: the next catch-up retries it
            self._legacy_failed("unregister", key, exc)
            view.mirrors.setdefault(key, 0)  # a copy to drop: catch-up drops it
            view.inbox.append(key)  # the record is gone: catch-up drops the copy
        else:
            self._legacy_ok()
            view.mirrors.pop(key, None)
        view.divergent.pop(key, None)
        view.retry.pop(key, None)

    def _defer_legacy_unregister(self, view: _View, key: Hashable, rec: _Record | None) -> None:
        """``_mirror_unregister_legacy`` in the shared view (under the facade
        lock): the copy to remove is marked a stale mirror and queued for the
        catch-up of a pass outside the lock (rule 7); a register still to
        apply is dropped (a copy it lands meanwhile is removed by its booking)."""
        mirrored = rec is not None and rec.view is view
        # _own_divergent reads the legacy side: RedisRegistry and MemoryRegistry
        # answer lookups locally (no I/O under the lock).
        if mirrored or self._own_divergent(view, key):
            # The copy's agent is kept: only that copy is ours to remove (rule 2).
            view.mark_stale(key, _stale_agent(view, key, rec))  # catch-up drops it
            view.inbox.append(key)  # the record is gone: catch-up drops the copy
            view.divergent.pop(key, None)
            view.retry.pop(key, None)
            view.legacy_retry.pop(key, None)
            self._legacy_retry_requested = True
        elif rec is not None and rec.view is None:
            # The legacy side never took this entry's mirror (refused, or still
            # to apply): now that the target dropped it too, nothing is left to
            # apply; our older copy, if one is left, is removed by catch-up.
            held = view.divergent.get(key)
            if held is not None and held.agent is rec.agent:
                del view.divergent[key]
            self._forget_legacy_register(view, key)
            if view.inbox:
                self._legacy_retry_requested = True

    def _own_divergent(self, view: _View, key: Hashable) -> bool:
        """``view``'s legacy copy of ``key`` is the one listed as divergent (same agent)."""
        held = view.divergent.get(key)
        if held is None:
            return False
        try:
            entry = self._legacy.lookup(key)
        except Exception:  # best effort: not provably ours, left alone
            return False
        return entry is not None and entry.agent is held.agent

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace metadata on the authoritative backend, then mirror.

        Raises:
            NotRegistered: the authoritative backend does not hold ``key``.
            InvalidMetadata: not a JSON-compatible mapping (nothing changes).
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
        """
        self._check_open()  # first, as every call: Closed, whatever the arguments
        key = validate_key(key)  # the one key rule (InvalidKey), before any lookup by key
        metadata = freeze_metadata(metadata)  # one frozen copy for both sides
        with _Call(self):  # events are delivered at exit, after the lock is released
            try:
                with self._writing(retried=True) as on:  # the skipped mirrors first
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
        if on and self._update_skipped_copy(view, key, metadata, rec):
            self._retry_after_target_write()  # the target took a write: it is back
            return
        if on:
            with self._events_of(_TARGET):
                self._target.update_metadata(key, metadata)
            self._retry_after_target_write()  # the target took a write: it is back
            if rec is None:
                return
            gen = self._next_gen()
            self._records[key] = rec._replace(gen=gen)
            if rec.view is view:
                self._mirror_update_legacy(view, key, metadata, gen)
            else:
                self._tell(rec.view, key, view)
            return
        self._update_metadata_off(view, key, metadata, rec)

    def _update_metadata_off(
        self, view: _View, key: Hashable, metadata: Mapping[str, Any], rec: _Record | None
    ) -> None:
        """``_update_metadata`` with the flag off (under the facade lock)."""
        if not self._update_deferred_copy(view, key, metadata, rec):
            self._update_legacy_copy(view, key, metadata, rec)
        self._request_legacy_retry()  # rule 7: it is back (applied by _after_write)
        if self._may_hold(view, key) or key in view.retry:
            self._enqueue("update", view, key, None, metadata)

    def _update_legacy_copy(
        self, view: _View, key: Hashable, metadata: Mapping[str, Any], rec: _Record | None
    ) -> None:
        """The legacy side's update of a flag-off ``update_metadata`` (under the
        facade lock). In the shared view, a copy of ours whose catch-up a pass
        still has to apply (rule 7: the legacy side said it was down) is
        settled here, as the pass would find it.

        Race: ``status()`` may still say down while the legacy side takes
        writes (a Redis node recovering), so the pass has not run. A copy whose
        target entry is gone (unregistered with the flag on, or dead) is stale:
        ``NotRegistered``, as a lookup says once the pass removed it (updated,
        the update was acknowledged and then dropped with the copy); while
        the legacy side still says it is down, ``BackendUnavailable``. A copy
        behind a flag-on update is made current by this one (its target
        mirror is queued next): left due, the pass copied the target's older
        metadata over it (before that mirror was applied, or while the target
        refused it), an acknowledged update lost.
        """
        due = not view.private and key in view.mirrors
        if due and (rec is None or rec.view is not view):
            # Race: while the legacy side says it is down the pass that removes
            # this stale copy cannot run, and lookup() still answers it (the
            # legacy side's local copy): NotRegistered then contradicted it.
            # Nothing definitive can be said until it is back: BackendUnavailable,
            # as any flag-off write meanwhile; NotRegistered once the pass can run.
            down = self._legacy_down()
            if down is not None:
                raise BackendUnavailable(down)
            raise NotRegistered(key)
        with self._events_of(_LEGACY):
            self._legacy.update_metadata(key, metadata)
        if due and rec is not None:
            view.mirror(key, rec.gen)

    def _update_deferred_copy(
        self, view: _View, key: Hashable, metadata: Mapping[str, Any], rec: _Record | None
    ) -> bool:
        """A flag-off update (under the facade lock) of a key whose flag-on register
        has its legacy mirror still to apply (``legacy_retry``, rule 7), the legacy
        side holding our older copy (the one that register may replace, that
        agent's, or a stale copy of ours whose removal is due: ``_deferred_over``): the
        authoritative call writes that mirror now, with the new
        metadata (the retry, done now), and books it. False if that is not the
        case (no copy of ours: the legacy side answers, and the pass books it).

        Race: ``status()`` may still say down while the legacy side takes writes
        (a Redis node recovering), so the pass has not run (nothing is tried
        while it says so): the update changed the older copy, and the pass then
        registered the target's older metadata over it, an acknowledged update
        lost and listed nowhere (the mirror of ``_update_skipped_copy``).
        """
        pending = view.legacy_retry.get(key)
        if pending is None:
            return False
        agent, mine = pending[0], pending[1]
        if not self._retry_current(view, key, agent, rec) or not is_alive(agent):
            return False  # superseded or dead: the pass drops it
        # Checked against the legacy backend's own view (a local lookup, see
        # _own_divergent: a RedisRegistry's local mirror, maybe stale after an
        # outage), then register(replace=True): best effort, not an atomic
        # compare-and-set. A key two processes race for on a shared backend
        # is the backend's business, as for any write (_call_legacy_retry).
        copy = self._legacy.lookup(key)
        if copy is None or not _deferred_over(view, key, copy, agent, mine):
            return False
        try:
            with self._events_of(_LEGACY):
                if copy.agent is agent:
                    self._legacy.update_metadata(key, metadata)
                else:
                    self._legacy.register(key, agent, metadata, replace=True)
        except NotAlive:  # died meanwhile: the register is void, as the pass finds
            raise self._deferred_void(key) from None
        del view.legacy_retry[key]
        view.divergent.pop(key, None)  # that agent's (_retry_current): resolved
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, agent)
        view.mirror(key, gen)  # the target's mirror of this update is queued next
        return True

    def _deferred_void(self, key: Hashable) -> Exception:
        """``_update_deferred_copy``'s answer when its agent died before the
        register: ``NotRegistered``, as the pass finds. Race: while the legacy
        side still says down, the stale copy there stays until the pass can
        run (a lookup still answers it): ``BackendUnavailable``, as
        ``_update_legacy_copy`` answers in that state."""
        down = self._legacy_down()
        return NotRegistered(key) if down is None else BackendUnavailable(down)

    def _update_skipped_copy(
        self, view: _View, key: Hashable, metadata: Mapping[str, Any], rec: _Record | None
    ) -> bool:
        """A flag-on update (under the facade lock) of a key whose current legacy
        copy in the caller's view is a flag-off write whose target mirror was
        skipped and is still to be retried, the target keeping our older entry
        (``rec``): the authoritative call registers that copy over it with the
        new metadata (the retry, done now). False if that is not the case.
        ``NotRegistered`` if the caller unregistered it and the target kept it
        (``BackendUnavailable`` while the target says it is down).

        Race: ``status()`` may still say down while the target takes writes (a
        Redis node recovering), so the retry has not run (nothing is tried
        while it says so): the update changed the older entry, and the retry
        then put back the copy's old metadata, an acknowledged update lost.
        """
        if key in view.retry:
            # Race: the skipped copy's agent died before its retry: the removal
            # of the target entry it replaced is the retry now (_dead_copy).
            self._purge()
        retry = _skipped_retry(view, key)
        if retry is None:
            return False
        agent, copy_metadata = retry
        if copy_metadata is REMOVED:
            if rec is not None and rec.agent is agent:
                # Likewise, the target keeps the entry the caller unregistered
                # (its removal still to be retried): not registered, as a
                # lookup after the retry says (updated, it was removed anyway);
                # while the target still says it is down (a lookup answers the
                # entry meanwhile), BackendUnavailable, as _update_legacy_copy.
                down = self._target_unavailable()
                if down is not None:
                    raise BackendUnavailable(down)
                raise NotRegistered(key)
            return False
        if not _ours(view, rec) or not is_alive(agent):
            return False  # not ours to replace (rule 2), or the copy is gone
        self._register_skipped_copy(view, key, agent, metadata)
        return True

    def _register_skipped_copy(
        self, view: _View, key: Hashable, agent: Any, metadata: Mapping[str, Any]
    ) -> None:
        """``_update_skipped_copy``'s authoritative call and its booking."""
        try:
            with self._events_of(_TARGET):
                self._target.register(key, agent, metadata, replace=True)
        except NotAlive:  # died meanwhile: its copy is gone, as the plain update says
            raise NotRegistered(key) from None
        del view.retry[key]
        del view.divergent[key]  # resolved: the target holds the copy
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, agent)
        if not view.private:
            view.mirror(key, 0)  # behind: the pass's catch-up copies the metadata
        self._mirror_update_legacy(view, key, metadata, gen)

    def _mirror_update_legacy(
        self, view: _View, key: Hashable, metadata: Mapping[str, Any], gen: int
    ) -> None:
        """Copy a flag-on metadata update to the caller's legacy mirror (best effort)."""
        if not view.private:
            # The record's newer generation is the decision: catch-up copies the
            # target's metadata in a pass outside the facade lock (rule 7).
            view.inbox.append(key)
            self._legacy_retry_requested = True
            return
        try:
            down = self._legacy_down()
            if down is not None:  # no I/O, no wait
                raise BackendUnavailable(down)
            with self._events_dropped(_LEGACY):
                self._legacy.update_metadata(key, metadata)
            view.mirrors[key] = gen
        except NotRegistered:  # the legacy copy's agent died
            view.mirrors.pop(key, None)
        except Exception as exc:  # best effort: its mirror keeps the old gen,
            self._legacy_failed("update", key, exc)  # so the next catch-up copies
            view.inbox.append(key)  # the new metadata
        else:
            self._legacy_ok()

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

        Events of the authoritative call of a facade write are delivered once
        the facade lock is released, in the writing thread before the call
        returns (unless another thread is delivering at that moment: that one
        delivers them, after the listener it is running returns); mirror and
        catch-up events are never delivered. Asynchronous events (deaths seen
        by a backend's monitors, remote changes) are forwarded when their
        backend is authoritative at delivery time, so a flip switches the
        event source with the answers; a short-lived courier thread delivers
        them. One event at a time, in the order the backends delivered them,
        never holding a lock of the facade or of a backend: a listener may
        call the facade back, or wait for another thread that does.

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
            if self._forked:
                raise _fork.forked_closed("MigratingRegistry")
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
            self._backfill_per_thread(snapshot)

    def _backfill_per_thread(self, snapshot: Callable[[], dict[Any, list[Entry]]]) -> None:
        """``_backfill`` of a per-thread legacy: each live thread's entries (under the lock)."""
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
        skipped = self._target_unavailable()
        if skipped is not None:
            # A target that reports itself down is not waited for, once per
            # entry (a frozen Redis would cost op_timeout each): the copy is a
            # divergence, retried once the target is back (rule 6).
            self._note_skip(skipped, None)
            self._backfill_failed(view, entry, skipped)
            return
        try:
            with self._events_dropped(_TARGET):
                self._target.register(key, agent, entry.metadata)
        except AlreadyRegistered as exc:
            held = exc.entry
            if held is None or held.agent is not agent:
                self._diverge(
                    view,
                    key,
                    agent,
                    f"the target already holds {short_repr(key)} ({short_repr(held)})",
                )
                return
            if held.metadata != entry.metadata:
                try:
                    with self._events_dropped(_TARGET):
                        self._target.update_metadata(key, entry.metadata)
                except Exception as exc:  # best effort: the adopted copy keeps its metadata
                    _log.warning(
                        "MigratingRegistry: backfill update %s failed: %s",
                        short_repr(key),
                        short_repr(exc),
                    )
        except NotAlive:
            return
        except BackendUnavailable as exc:
            self._backfill_failed(view, entry, repr(exc))
            return
        except Exception as exc:
            self._diverge(view, key, agent, f"the target refused the backfill: {exc!r}")
            return
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, agent)
        view.mirror(key, gen)

    def _backfill_failed(self, view: _View, entry: Entry, why: str) -> None:
        """A backfill copy the unavailable target could not take: a divergence, kept
        in ``view.retry`` so that it is copied once the target is back."""
        self._diverge(view, entry.key, entry.agent, f"the target refused the backfill: {why}")
        self._keep_for_retry(view, entry.key, entry.agent, entry.metadata)

    def finish(self) -> None:
        """Retire the legacy backend: stop writing to it, close it, stop reading the flag.

        Idempotent once it succeeded.

        Raises:
            MigrationError: the flag is off, or divergences remain (listed).
        """
        self._check_open()
        if not self._finished:
            # Mirrors refused while a backend was unavailable are retried
            # first, so a finish() after an outage needs no readiness() call.
            self._settle_and_retry()
            self._retry_legacy_now()
        with _Call(self), self._writing(settled=True):  # queued mirrors are applied first
            self._check_open()
            if not self._finished:
                self._mark_finished()
                # Race: the flip on that finish() found may not be followed yet
                # (its swap hook still to run): once _finished, _refresh_flag
                # returns at once, so the deaths withheld while the flag was
                # off are told here (was: never), delivered at this call's exit.
                self._tell_withheld()
            # Race: a Ctrl-C lands at any call in here. Once _finished was set,
            # the next finish() returned at once (and close() left the legacy
            # side alone): a finish() cut after it left the legacy backend
            # subscribed and open for good. So every finish() does what is left
            # of the retirement (each step is idempotent).
            if self._legacy_unsubscribe is not None:
                self._legacy_unsubscribe()
                self._legacy_unsubscribe = None
            # The flag is never read again; its listener stays (to warn of a change).
            self._unwatch_flag()
            self._records.clear()
            self._views.clear()
            self._shared_view = None
            self._dead.clear()
        # Outside the facade lock: closing a remote legacy backend may wait on
        # the network (a frozen Redis: a few op_timeouts), and no other call
        # needs it any more. Race: a legacy pass in flight may still be calling
        # it; its calls fail with Closed, and it books nothing once _finished.
        self._legacy.close()

    def _mark_finished(self) -> None:
        """finish(), under the facade lock: the target alone answers from now on.

        Raises:
            MigrationError: the flag is off, or divergences remain (listed).
        """
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
                    + bounded_list(problems)
                )
            self._finished = True
            self._on = True
            self._reader = self._target

    def close(self) -> None:
        """Stop listening to the flag and close both backends. Idempotent.

        Every later call raises ``errors.Closed`` (reads included).
        """
        # Race: a Ctrl-C is raised at any call in here (an unsubscribe, the
        # lock's exit, the backends' close()). Once _closed was set, a later
        # close() returned at once: both backends (a RedisRegistry's lease
        # thread and connections, a MemoryRegistry's monitors) and the
        # subscriptions stayed open for good. So the backends are closed in
        # `finally:` blocks, and every close() does what is left (each step is
        # idempotent).
        try:
            self._close_facade()
        finally:
            try:
                try:
                    self._close_async()
                finally:
                    # Also once finished: a finish() cut before its end left the
                    # legacy side open (closing it again is a no-op).
                    self._legacy.close()
            finally:
                self._target.close()

    def _close_facade(self) -> None:
        """close(): mark it closed, drop subscriptions and state (idempotent)."""
        with self._lock:
            if not self._closed:
                # Race: a flag listener may be refreshing the cached reader right
                # now; under the flag lock, _closed and the closed reader are set
                # together and _refresh_flag re-checks _closed, so it cannot put
                # a live reader back.
                with self._flag_lock:
                    self._closed = True
                    self._reader = _CLOSED_READER
            for unsub in self._unsubscribers:
                unsub()  # (idempotent: a cut loop is run again whole)
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

    def __repr__(self) -> str:
        mode = "finished" if self._finished else ("target" if self._on else "legacy")
        return (
            f"<MigratingRegistry {mode} legacy={type(self._legacy).__name__} "
            f"target={type(self._target).__name__} flag={self._flag!r}>"
        )
