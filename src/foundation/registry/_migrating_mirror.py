"""Queued target mirrors of a ``MigratingRegistry`` (rule 6), and the facade lock for writes.

With the flag off, a write does not mirror to the target under the facade
lock: it queues the mirror (an ``_Op``) in legacy-write order and returns.
One thread at a time (whoever takes the pump lock) applies the queue in
order: it plans each mirror and books its outcome (records, mirrors,
divergences) under the facade lock and calls the target outside it. Nothing
observes the target as authoritative while a mirror is queued or in flight
(``_acquire_for_write``, ``_settle``, the settling reader). Mirrors the target
could not take while unavailable are retried once it is back. See rule 6 in
the module documentation of ``foundation.registry._migrating``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from foundation import telemetry
from foundation._rlock import held_levels
from foundation.errors import AlreadyRegistered, BackendUnavailable, NotAlive, NotRegistered
from foundation.liveness import is_alive
from foundation.registry._migrating_events import _TARGET, _Call
from foundation.registry._migrating_legacy import _LegacyRetries, _take
from foundation.registry._migrating_views import _Divergent, _Record, _View, reported_state
from foundation.registry._types import Registry
from foundation.registry._validation import short_repr

if TYPE_CHECKING:
    from foundation.registry._migrating_readers import (
        _ClosedReader,
        _LegacyReader,
        _SettlingReader,
    )

_log = logging.getLogger("foundation.registry")


class _Op(NamedTuple):
    """A flag-off write's target mirror, queued in legacy-write order (rule 6)."""

    kind: Literal["register", "unregister", "update"]
    view: _View
    key: Hashable
    agent: Any
    metadata: Mapping[str, Any] | None
    seq: int
    writer: int  # the ident of the thread whose write it mirrors (a divergence names it)


class _Writing:
    """``with _Writing(owner, settled, retried) as on:`` the facade lock for one write."""

    __slots__ = ("_owner", "_retried", "_settled")

    def __init__(self, owner: _TargetMirrors, settled: bool, retried: bool) -> None:
        self._owner = owner
        self._settled = settled
        self._retried = retried

    def __enter__(self) -> bool:
        return self._owner._acquire_for_write(self._settled, self._retried)

    def __exit__(self, *exc: object) -> None:
        # Replaced by the facade lock's own __exit__ in each facade's subclass
        # (see _writing_class).
        self._owner._lock.release()


def _writing_class(lock: threading.RLock) -> type[_Writing]:
    """The ``_Writing`` of one facade, whose ``__exit__`` is ``lock``'s own.

    Race: a Ctrl-C is raised at the first instruction of a Python function: a
    Python ``__exit__`` could be cut before it released the facade lock, and
    the with statement does not call it again: the lock stayed held for ever
    (the unwinding thread's close(), every other writer, waited for it). The
    lock's own ``__exit__`` is C: nothing runs before the release."""
    return type("_Writing", (_Writing,), {"__slots__": (), "__exit__": staticmethod(lock.__exit__)})


# Queued mirrors behind a busy pump earn one WARNING per backlog (until the
# queue is empty again), saying which of two things is true:
_LAG_WARNING: Final = 64  # this many queued behind a call in flight for _SLOW_CALL s
_SLOW_CALL: Final = 1.0  # seconds: a target call in flight this long is slow
_BACKLOG_WARNING: Final = 1024  # this many queued while every call is quick: the
# writes simply come faster than one thread mirrors them (8 threads writing to an
# in-memory target do); it drains once they slow down


def _bind_register(target: Registry, op: _Op, mine: bool, own: Any = None) -> Callable[[], Any]:
    # Rule 2: replace only the target entry that mirrors our own copy;
    # otherwise a live entry refuses (a dead one is simply replaced).
    if own is None:
        return lambda: target.register(op.key, op.agent, op.metadata, replace=mine)

    def call() -> None:
        # ``own``: the facade's own unmirrored entry (``_unmirrored_own``),
        # replaced only if the target still shows that agent. Best effort, not
        # an atomic compare-and-set: ``lookup()`` is the backend's own view (a
        # RedisRegistry answers from its local mirror, which may be stale
        # after an outage), then ``register(replace=...)``. A key two
        # processes race for on a shared backend is the backend's business,
        # as for any write (see ``_call_legacy_retry``).
        entry = target.lookup(op.key)
        replace = entry is not None and entry.agent is own
        target.register(op.key, op.agent, op.metadata, replace=replace)

    return call


def _bind_unregister(target: Registry, key: Hashable, agent: Any) -> Callable[[], Any]:
    def call() -> None:
        entry = target.lookup(key)
        if entry is not None and entry.agent is agent:  # rule 2: only our own mirror
            target.unregister(key)

    return call


def _bind_update(target: Registry, op: _Op) -> Callable[[], Any]:
    metadata = op.metadata if op.metadata is not None else {}
    return lambda: target.update_metadata(op.key, metadata)


REMOVED: Final[Mapping[str, Any]] = MappingProxyType({})
"""In ``view.retry``: the mirror to retry is an unregister (not a register)."""


def _retryable(exc: BaseException | None, skipped: str | None) -> bool:
    """A refused mirror worth retrying once the target is back: skipped while it
    reported itself down, or failed with ``BackendUnavailable``."""
    return skipped is not None or isinstance(exc, BackendUnavailable)


def _unmirrored_own(view: _View, rec: _Record | None) -> bool:
    """The target entry of ``rec`` is one the facade wrote with the flag on whose
    mirror the shared legacy ``view`` has not taken (still to apply, refused
    while unavailable, or refused for good: a foreign copy there, listed):
    that view's own, so a later legacy write of the key replaces or removes
    it (rule 2). In a shared legacy every record naming no view is such an
    entry (a private view's refused mirror is another thread's entry)."""
    return rec is not None and rec.view is None and not view.private


def _mirror_pending(op: _Op, rec: _Record) -> bool:
    """``_unmirrored_own``, and the shared view's register of its mirror is
    still to apply (``legacy_retry``): replaced without a look (rule 7)."""
    retry = op.view.legacy_retry.get(op.key)
    return retry is not None and retry[0] is rec.agent


def _held_elsewhere(key: Hashable, rec: _Record | None, exc: AlreadyRegistered) -> str:
    """Why a register mirror diverged: the target holds ``key`` for someone else."""
    holder = rec.view.ident() if rec is not None and rec.view is not None else None
    who = f"thread {holder}" if holder is not None else "another registration"
    return f"the target holds {short_repr(key)} for {who} ({short_repr(exc.entry)})"


class _TargetMirrors(_LegacyRetries):
    """The queued-mirror layer of ``MigratingRegistry``.

    The state of the queue is set by ``_init_mirror_queue``; the attributes
    below are set by ``MigratingRegistry.__init__``.
    """

    _lock: threading.RLock  # the facade lock
    _flag_lock: threading.Lock  # guards the cached flag and reader (see "The flag")
    _finished: bool
    _closed: bool
    _legacy_reader: _LegacyReader
    _settling_reader: _SettlingReader
    _reader: Registry | _LegacyReader | _SettlingReader | _ClosedReader

    def _init_mirror_queue(self, target: Registry) -> None:
        """Set the queue's state (called once, by ``MigratingRegistry.__init__``)."""
        # Rule 6: flag-off target mirrors, applied in order by one pumping thread
        # at a time (whoever holds _pump_lock) outside the facade lock. Lock
        # order: _pump_lock, then _lock; nobody waits for _pump_lock while
        # holding _lock (the facade writes only try it).
        self._pending: deque[_Op] = deque()
        self._inflight: _Op | None = None  # popped, target call made, not yet booked
        # time.monotonic() when the target call in flight began; None between calls
        self._call_since: float | None = None
        self._pump_lock = threading.RLock()  # never re-entered: an RLock for _take's owner check
        self._writing_type = _writing_class(self._lock)
        self._pump_owner: int | None = None  # thread ident holding _pump_lock
        self._target_status: Callable[[], Any] | None = getattr(target, "status", None)
        self._op_seq = 0
        # The lag WARNING out for this backlog: "slow" (behind a slow target call),
        # "backlog" (behind the write rate), or None; reset once the queue is empty.
        self._lag_warned: Literal["slow", "backlog"] | None = None
        self._skip_warned = False  # a "target unavailable, mirrors skipped" warning is out
        self._skipped = 0
        # Some view.retry holds a mirror the unavailable target refused (set under
        # the facade lock by _keep_for_retry, cleared by _retry_skipped): the
        # write path checks this one attribute, so nothing is due costs nothing.
        self._retry_due = False
        # Those retries are asked for (by a flip, or by a target write that met a
        # status() saying down): the next read (flag on, through the settling
        # reader) or write queues them once status() says the target is back.
        self._retry_requested = False

    def _pick_reader(self, on: bool) -> Registry | _LegacyReader | _SettlingReader:
        """The authoritative reader (under ``_flag_lock``): with the flag on, the
        target itself once no flag-off mirror is queued or in flight, and no
        retry of refused mirrors is asked for (rule 6)."""
        if not on:
            return self._legacy_reader
        if self._pending or self._inflight is not None or self._retry_requested:
            return self._settling_reader
        return self._target

    def _writing(self, *, settled: bool = False, retried: bool = False) -> _Writing:
        """``with self._writing() as on:`` hold the facade lock for one write;
        ``on`` is the flag value the call uses (see ``_acquire_for_write``)."""
        return self._writing_type(self, settled, retried)

    def _acquire_for_write(self, settled: bool, retried: bool = False) -> bool:
        """Take the facade lock for one write; return the flag value the call uses.

        A write that will touch the target as authoritative (flag on, or
        ``settled``) first waits, with the lock released, until no flag-off
        mirror is queued or in flight: those describe older legacy writes and
        must reach the target before it (rule 6). A flag-off write likewise
        first lets the legacy retries asked for, or in flight, finish (rule 7).
        """
        lock = self._lock
        # Race: a Ctrl-C is raised at any check point in here (as acquire()
        # returns, at a call) and __enter__ raising means no __exit__: the level
        # this call took is given back, else the lock stayed held for ever (the
        # unwinding thread's close(), and every other write, waited for it).
        # The RLock's count says whether it was taken (it may be held already:
        # a write re-entered from a listener).
        levels = held_levels(lock)  # (older 3.11: owned or not; see foundation._rlock)
        before = levels()
        try:
            return self._acquire_for_write_loop(lock, settled, retried)
        except BaseException:
            if levels() > before:
                lock.release()
            raise

    def _acquire_for_write_loop(self, lock: threading.RLock, settled: bool, retried: bool) -> bool:
        """``_acquire_for_write``'s loop: returns holding one more level of ``lock``.
        ``retried``: a flag-on write first queues the retries a flip asked for."""
        legacy_settled = False
        while True:
            lock.acquire()
            on = self._on  # the call reads the flag once
            if not (on or settled) and (
                (self._legacy_retry_requested and not legacy_settled)
                or self._legacy_retry_owner not in (None, threading.get_ident())
            ):
                # Rule 7: a flag-off write waits (lock released) for the legacy
                # retries asked for: they describe older flag-on writes, and must
                # reach the legacy side before it. Race: a pass in flight (its
                # calls are made outside this lock) is always waited for, so no
                # flag-off legacy write overlaps a retried register; a retry asked
                # for after ours ran (or kept while the legacy side is down) is
                # not waited for again.
                lock.release()
                self._settle_legacy()
                legacy_settled = True
                continue
            if not (on or settled) or self._finished:
                break
            if self._retry_before_write(retried):
                # Race: a flip asked for the mirrors skipped while the target was
                # down; a flag-on update that went first met the target without
                # them: it changed the older entry the target kept, and the retry
                # then put back the skipped copy's old metadata (an acknowledged
                # update lost). Queued first, as a read does, and applied below
                # (lock released: _take_retry_request takes it), so the update
                # changes the registration a lookup shows. (A register or an
                # unregister supersedes the skipped copy: the retry is dropped.)
                lock.release()
                self._take_retry_request()
                continue
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

    def _retry_before_write(self, retried: bool) -> bool:
        """A flag-on write (``retried``: an update) must first queue the retries
        a flip asked for: asked, not re-entered from our own pump, and the
        target says it is available (else nothing is tried: no I/O, the
        request is kept)."""
        return (
            retried
            and self._retry_requested
            and self._pump_owner != threading.get_ident()
            and self._target_unavailable() is None
        )

    def _enqueue(
        self,
        kind: Literal["register", "unregister", "update"],
        view: _View,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None,
        *,
        writer: int | None = None,
        first: bool = False,
    ) -> None:
        """Queue a flag-off write's target mirror (under the facade lock: in write
        order). ``writer``: the thread whose write it is (default: the caller).
        ``first``: in place of the mirror just applied (booked by the pump)."""
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
        if writer is None:
            writer = threading.get_ident()
        op = _Op(kind, view, key, agent, metadata, seq, writer)
        if first:
            self._pending.appendleft(op)
        else:
            self._pending.append(op)
        if self._on:
            # Race: the flag was turned on after this call read it. A reader
            # picked after the append sees it queued (_pick_reader); one picked
            # before is replaced here, so no read answers from a target that
            # lacks a write whose call has returned.
            with self._flag_lock:
                if self._on and not self._finished and not self._closed:
                    self._reader = self._settling_reader

    def _keep_for_retry(
        self, view: _View, key: Hashable, agent: Any, metadata: Mapping[str, Any] | None
    ) -> None:
        """Keep a mirror the unavailable target refused, to queue it again once
        it is back (``_retry_skipped``; under the facade lock)."""
        view.retry[key] = (agent, metadata)
        self._retry_due = True

    def _superseded(self, view: _View, key: Hashable, agent: Any) -> _Record | None:
        """The record of the target entry that ``agent``'s flag-off copy of ``key``
        replaced on ``view``'s legacy side, the target not having taken that
        replace (its mirror skipped, refused or in flight): ours (rule 2), not
        ``agent``'s. None if there is none (under the facade lock)."""
        rec = self._records.get(key)
        if rec is None or rec.agent is agent:
            return None
        return rec if rec.view is view or _unmirrored_own(view, rec) else None

    def _dead_copy(self, view: _View, key: Hashable, held: _Divergent) -> None:
        """``held``, a divergent copy in ``view``, died (``_purge``, under the
        facade lock): its kept retry is obsolete. If it was a register (a
        flag-off replace whose target mirror was skipped), the retry becomes
        the removal of the target entry it replaced, listed until then.

        Race: the replacing agent died before the target was back. There is
        nothing to register any more, but the target still holds the entry
        the replace superseded, which the legacy side no longer has: dropped,
        the retry left it there, unlisted, for the next flip to bring back (a
        replaced registration returned by ``lookup()``). Kept as the retry of
        an unregister (``REMOVED``), removed only if the target's own view
        still shows that agent (``_bind_unregister``: its ``lookup()``, best
        effort), never another registration.
        """
        retry = view.retry.get(key)
        if retry is None or retry[0] is not held.agent:
            return
        del view.retry[key]
        rec = None if retry[1] is REMOVED else self._superseded(view, key, held.agent)
        if rec is None:
            return
        why = (
            f"the target kept {short_repr(key)}, replaced on the legacy side by an agent "
            "that died before its mirror was retried"
        )
        self._diverge(view, key, rec.agent, why, held.divergence.thread)
        self._keep_for_retry(view, key, rec.agent, REMOVED)

    def _retry_skipped(self) -> bool:
        """Queue again the mirrors the target could not take while it was
        unavailable (target available; under the facade lock). True if any was
        queued. Each is a register of the view's current copy, so it books like
        the original (rule 2 decides replace). With the flag on too: the target
        answers then, and a live legacy copy it lacks would be lost to it."""
        if self._closed or self._finished or self._target_unavailable() is not None:
            return False
        self._purge()  # a dead copy's retry becomes the removal of what it replaced
        # Every view.retry is emptied below (queued or dropped as resolved); a
        # queued retry the target refuses again is kept again, and sets it again.
        self._retry_due = False
        queued = False
        for view in self._all_views():
            if self._retry_view(view):
                queued = True
        # Race: the request is dropped only now that the retries are queued, so
        # a reader picked meanwhile sees one or the other (_pick_reader), and
        # none answers from a target that lacks them.
        self._retry_requested = False
        return queued

    def _retry_view(self, view: _View) -> bool:
        """``_retry_skipped`` for one view: queue its still-current skipped copies."""
        if not view.retry or view.ended():
            view.retry.clear()
            return False
        items = list(view.retry.items())
        view.retry.clear()
        queued = False
        for key, (agent, metadata) in items:
            held = view.divergent.get(key)
            if held is None or held.agent is not agent or not is_alive(agent):
                continue  # resolved meanwhile (unregistered, replaced or dead)
            writer = held.divergence.thread  # the original write's thread
            if metadata is REMOVED:
                self._enqueue("unregister", view, key, None, None, writer=writer)
            else:
                self._enqueue("register", view, key, agent, metadata, writer=writer)
            queued = True
        return queued

    def _may_hold(self, view: _View, key: Hashable) -> bool:
        """False only if the target surely holds no mirror of ``view``'s ``key``
        and none can appear: nothing queued or in flight, and no record of it
        (under the facade lock). Saves queueing mirrors that would do nothing."""
        if self._pending or self._inflight is not None:
            return True
        rec = self._records.get(key)
        return rec is not None and (rec.view is view or _unmirrored_own(view, rec))

    def _retry_after_target_write(self) -> None:
        """A flag-on write the target just took (under the facade lock): it is
        back, so queue the mirrors it refused while unavailable, as a successful
        flag-off mirror does (``_note_skip``). Queued only: the writer applies
        them after releasing the lock (``_after_write``), and ``_enqueue`` makes
        reads settle first, so a lookup that follows finds them."""
        if not self._retry_due:  # the hot path: one attribute load
            return
        if self._target_unavailable() is not None:
            # Race: status() flapped to down right after the target took the
            # write (a connection dropped as Redis came back): ask for the
            # retries, so the next read or write runs them once it says connected.
            self._retry_requested = True
            self._repick_reader_if_on()
            return
        self._retry_skipped()

    def _request_retry(self) -> None:
        """The flag changed (``_refresh_flag``, under the flag lock, before it
        picks the reader again): ask for the refused mirrors to be retried,
        whichever way it points. No I/O and no facade lock here: it runs in a
        flag writer's thread or the flag store's, and a writer holding ours
        may be waiting on the network. With the flag on, ``_pick_reader``
        keeps the settling reader while this is asked, so the first read after
        the flip (or once the target is back) runs it (``_take_retry_request``)."""
        # Race: a mirror kept for retry just after this read (by a pump in
        # another thread) is not asked for here; its target is taking writes,
        # so the next one that succeeds retries it (_note_skip).
        if self._retry_due:
            self._retry_requested = True

    def _take_retry_request(self) -> None:
        """Queue the retries asked for (``_request_retry``) if the target says it
        is available; the caller's pump applies them. Called by reads
        (``_settle``) and writes (``_after_write``) outside the facade lock, or
        re-entered under it (the lock is reentrant)."""
        if self._target_unavailable() is not None:
            return  # still down: kept, no I/O and no wait (status() reads no socket)
        with self._lock:
            # Race: another reader or writer may have taken it meanwhile.
            if self._retry_requested and (self._closed or self._finished):
                self._retry_requested = False  # nothing left to retry
            elif self._retry_requested:
                self._retry_skipped()  # drops the request once queued (kept if down again)
        self._repick_reader_if_on()

    def _after_write(self) -> None:
        """Queue the retries asked for, if any; then apply queued mirrors unless
        another thread is already doing so (never waits for it). Then apply the
        legacy retries asked for (rule 7), also outside the facade lock."""
        if self._legacy_retry_requested:
            # Never waits for a pass in another thread (it may be waiting on a
            # frozen legacy backend): that pass takes our request (rule 7).
            self._settle_legacy(block=False)
        if self._retry_requested:
            self._take_retry_request()
        if not self._pending:
            return
        if self._pump(block=False):
            return
        # Another thread is pumping (maybe waiting on a slow or frozen target):
        # it applies our mirror after its own; this call returns now.
        if self._lag_warned != "slow" and len(self._pending) >= _LAG_WARNING:
            self._warn_lag()

    def _warn_lag(self) -> None:
        """Tell the operator, once per backlog, that mirrors wait behind a busy
        pump, and why: a target call in flight for long, or only the write rate
        (every call quick). A backlog first put down to the write rate is
        reported again if a call then turns slow (a target freezing under load)."""
        n = len(self._pending)
        # Race: read once, with no lock. The pump sets it before a call and
        # clears it after, so a value read was the start of a call in flight at
        # the time of the read (or of a later call, which only understates it):
        # a call is never called slow for longer than it was in flight.
        since = self._call_since
        running = 0.0 if since is None else time.monotonic() - since
        if running >= _SLOW_CALL:
            self._lag_warned = "slow"
            _log.warning(
                "MigratingRegistry: %d mirrors to the target are queued behind a target "
                "call in flight for %.1f s; the legacy side answers meanwhile",
                n,
                running,
            )
        elif self._lag_warned is None and n >= _BACKLOG_WARNING:
            self._lag_warned = "backlog"
            _log.warning(
                "MigratingRegistry: mirroring to the target is behind by %d writes "
                "(they come faster than one thread mirrors them; no target call is "
                "slow); the legacy side answers meanwhile; after a flip, reads and "
                "writes wait for them",
                n,
            )
        else:
            return
        telemetry.emit(
            "registry.mirror_deferred",
            {
                "registry": self,
                "pending": n,
                "reason": self._lag_warned,
                "call_seconds": running,
                "level": "warning",
            },
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
            if not _take(self._pump_lock, block):  # (see _take's race)
                return False
            self._pump_owner = me  # no check point from _take's return to the try
            try:
                while self._pending and self._apply_next():
                    pass
            finally:
                self._pump_owner = None
                self._pump_lock.release()
                self._flush_out()  # events and telemetry decided meanwhile, lock released
            # Race: an op queued after our last look, whose writer's try failed
            # because we still held the pump, would be stranded: look again.
            if not self._pending:
                break
        if self._lag_warned is not None and not self._pending:
            self._lag_warned = None
            _log.info("MigratingRegistry: queued mirrors to the target are applied")
        self._repick_reader_if_on()
        return True

    def _repick_reader_if_on(self) -> None:
        """With the flag on (and open, not finished), pick the reader again (``_pick_reader``)."""
        if self._on:
            with self._flag_lock:
                if self._on and not self._finished and not self._closed:
                    self._reader = self._pick_reader(True)

    def _settle(self) -> None:
        """Wait until no flag-off mirror is queued or in flight (not under the facade lock)."""
        if self._pump_owner == threading.get_ident():
            return  # re-entered from our own booking: the outer pump finishes the queue
        if self._retry_requested:
            self._take_retry_request()  # a flip asked for retries: queued, applied below
        while (self._pending or self._inflight is not None) and not self._closed:
            self._pump(block=True)
        self._repick_reader_if_on()

    def _target_unavailable(self) -> str | None:
        """The target's own report that it cannot be written now (no I/O), or None.

        ``RedisRegistry.status()`` reads its connection state without touching
        Redis; a backend without ``status()`` is always tried.
        """
        state = reported_state(self._target_status)
        return None if state is None else f"the target is {state}"

    def _plan(self, op: _Op, rec: _Record | None) -> Callable[[], Any] | None:
        """The target call that mirrors ``op`` now (under the facade lock), or None."""
        if op.kind == "register":
            return self._plan_register(op, rec)
        if rec is None:
            return None  # the target holds no mirror of this view's copy
        if op.kind == "unregister":
            if rec.view is op.view or _unmirrored_own(op.view, rec):  # ours (rule 2)
                # Removed only if the target's lookup() still shows that agent
                # (best effort, as in _bind_register).
                return _bind_unregister(self._target, op.key, rec.agent)
            return None
        if rec.view is op.view and op.key in op.view.mirrors:
            return _bind_update(self._target, op)
        return None

    def _plan_register(self, op: _Op, rec: _Record | None) -> Callable[[], Any]:
        """``_plan`` of a register: it replaces only the caller's own entry (rule 2)."""
        if rec is None or not (rec.view is op.view or _unmirrored_own(op.view, rec)):
            return _bind_register(self._target, op, False)
        if rec.view is None and not _mirror_pending(op, rec):
            # Race: its legacy mirror was refused for good (a foreign copy there,
            # which this flag-off write has just replaced), so the target entry
            # is the facade's own, not "another registration": refused, it
            # stayed, and an unregister of the key left it there, unlisted, to
            # come back at the next flip. Replaced only if the target's own
            # view (its lookup(), best effort: see _bind_register) still shows it.
            return _bind_register(self._target, op, False, rec.agent)
        return _bind_register(self._target, op, True)

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
                self._drop_unmirrored(op)
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
            self._call_since = time.monotonic()  # (see _warn_lag's race)
        outcome: BaseException | None = None
        try:
            with _Call(self) as ctx, self._events_muted(ctx, op.key, _TARGET):
                call()
        except Exception as exc:  # best effort: booked as a divergence below
            outcome = exc
        except BaseException:  # KeyboardInterrupt and the like: never leave it in flight
            self._call_since = None
            with self._lock:
                self._inflight = None
            raise
        self._call_since = None
        with self._lock:
            try:
                if not self._closed:
                    self._book(op, rec, outcome, None)
            finally:
                self._inflight = None
        return True

    def _drop_unmirrored(self, op: _Op) -> None:
        """Pop ``op``, the oldest queued mirror, which has nothing to mirror (under the lock)."""
        self._pending.popleft()
        retry = op.view.retry.get(op.key)
        if op.kind == "update" and retry is not None and retry[1] is not REMOVED:
            # Race: the register of this copy was skipped and booked for a
            # retry after this update was written; the retry must carry it.
            # (Not a removal: the copy's agent died since, and the retry is
            # now the unregister of the entry it replaced, _dead_copy.)
            op.view.retry[op.key] = (retry[0], op.metadata)

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
                self._emit_later(  # once the facade lock is released
                    "registry.mirror_skipped",
                    {"registry": self, "reason": skipped, "level": "warning"},
                )
        elif exc is None:
            if self._skip_warned:
                self._skip_warned = False
                _log.info(
                    "MigratingRegistry: mirroring to the target resumed (%d skipped so far)",
                    self._skipped,
                )
            if self._retry_due:  # the target took a write: it is back (queued, this pump applies)
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
            self._book_register_refused(op, rec, exc, skipped, current)
            return
        old = self._records.get(key)
        if old is not None:
            self._tell(old.view, key, view)
        gen = self._next_gen()
        self._records[key] = _Record(view, gen, op.agent)
        if current:
            view.mirror(key, gen)
            view.divergent.pop(key, None)  # a retried copy is resolved

    def _book_register_refused(
        self,
        op: _Op,
        rec: _Record | None,
        exc: BaseException | None,
        skipped: str | None,
        current: bool,
    ) -> None:
        """``_book_register`` for a mirror the target refused or that was skipped."""
        if not current:
            return  # a later write of this view's copy books it
        view, key = op.view, op.key
        if isinstance(exc, NotAlive):
            # Race: the agent died between the two writes (or before its
            # retry landed): nothing to register, but the target entry this
            # write replaced on the legacy side is stale; left, a flip brought
            # it back. Its removal takes this mirror's place in the queue
            # (write order), only if the target still shows that agent.
            if self._superseded(view, key, op.agent) is not None:
                self._enqueue("unregister", view, key, None, None, writer=op.writer, first=True)
            return
        if isinstance(exc, AlreadyRegistered):
            why = _held_elsewhere(key, rec, exc)
        else:
            why = f"the target refused the mirror: {skipped or repr(exc)}"
            if _retryable(exc, skipped):
                self._keep_for_retry(view, key, op.agent, op.metadata)  # retried when back
        self._diverge(view, key, op.agent, why, op.writer)

    def _book_unregister(
        self, op: _Op, rec: _Record, exc: BaseException | None, skipped: str | None
    ) -> None:
        view, key = op.view, op.key
        if skipped is not None or exc is not None:
            # The target still holds the mirror of a copy the legacy side no
            # longer has: listed, and the record stays so a later unregister
            # of the key retries the removal; so does the target's return
            # (retried as this unregister), else a flip would bring it back.
            why = f"the target kept {short_repr(key)}: {skipped or repr(exc)}"
            self._diverge(view, key, rec.agent, why, op.writer)
            if _retryable(exc, skipped):
                self._keep_for_retry(view, key, rec.agent, REMOVED)
            return
        if self._records.get(key) is rec:
            del self._records[key]
        self._resolved(view, key, rec.agent)

    def _book_update(
        self, op: _Op, rec: _Record, exc: BaseException | None, skipped: str | None
    ) -> None:
        view, key = op.view, op.key
        if isinstance(exc, NotRegistered):
            return  # died in the target; the queued down event drops the record
        if skipped is not None or exc is not None:
            why = f"the target refused an update: {skipped or repr(exc)}"
            self._diverge(view, key, rec.agent, why, op.writer)
            if _retryable(exc, skipped):
                # Retried once the target is back, as a register (replace) of
                # the copy with this metadata: else the target keeps the old.
                self._keep_for_retry(view, key, rec.agent, op.metadata)
            return
        now = self._records.get(key)
        if now is not None and now.view is view and key in view.mirrors:
            gen = self._next_gen()
            self._records[key] = now._replace(gen=gen)
            view.mirror(key, gen)
            self._resolved(view, key, rec.agent)  # a later update supersedes a refused one

    def _resolved(self, view: _View, key: Hashable, agent: Any) -> None:
        """A mirror of ``agent``'s copy of ``key`` reached the target after an
        earlier one was refused: that divergence and its retry are obsolete."""
        held = view.divergent.get(key)
        if held is not None and held.agent is agent:
            del view.divergent[key]
        retry = view.retry.get(key)
        if retry is not None and retry[0] is agent:
            del view.retry[key]

    def _settle_and_retry(self) -> None:
        """Apply queued mirrors; then retry the ones skipped while the target was
        unavailable, if it is available now, and apply those too."""
        self._settle()
        with self._lock:
            queued = self._retry_skipped()
        if queued:
            self._settle()
