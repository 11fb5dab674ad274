"""Kill switches held in the node copy while Redis is away, and their replay."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import replace as _replace
from typing import Any, NamedTuple

from foundation.errors import BackendUnavailable, FlagError, bounded_list, escape_controls
from foundation.flags._node_cache import PendingKillSwitch
from foundation.flags._redis_store._commit import _Commits
from foundation.flags._redis_store._errors import _FailedFast, _KeptInOrder, _Unconfirmed
from foundation.flags._redis_store._shared import T, log
from foundation.flags._redis_store._txn import _LocalTransaction, _RedisTransaction, _Unreadable
from foundation.flags._store import (
    FlagChange,
    FlagInfo,
    FlagState,
    MigrationEvent,
    StoreTransaction,
    current_writer,
    plan_flag_entries,
    plan_from_json,
    writing_as,
)


def _who(op: PendingKillSwitch) -> str:
    """``by <by> (<reason>)`` of a kill switch's log lines, user text escaped: a
    newline in a reason cannot forge another log line."""
    return f"by {escape_controls(op.by)} ({escape_controls(op.reason)})"


def _where(op: PendingKillSwitch) -> str:
    """The flags and plans a kill switch's log lines name, escaped as ``_who``."""
    return ", ".join(escape_controls(name) for name in op.flags + op.plans)


def _off(state: FlagState) -> FlagState:
    return _replace(state, switch=False)


def _kill_switch_states(txn: _LocalTransaction, cause: BackendUnavailable) -> dict[str, FlagState]:
    """The states ``txn`` puts; raise ``cause`` unless it only switches off / rolls back."""
    stored: dict[str, FlagState] = {}
    for name, state in txn.puts.items():
        if state is None or state.switch:
            raise cause  # not a kill switch: it must reach Redis or fail
        stored[name] = state
    if any(s != 0 for s in txn.stage_puts.values()) or any(
        e.action != "emergency_rollback" for e in txn.events
    ):
        raise cause
    return stored


def _pending_op(txn: _LocalTransaction, stored: dict[str, FlagState]) -> PendingKillSwitch:
    """The pending kill switch recording ``txn`` (not yet numbered: id 0)."""
    first: FlagChange | MigrationEvent = (txn.changes or txn.events)[0]
    at = min([c.at for c in txn.changes] + [e.at for e in txn.events])
    return PendingKillSwitch(
        0, tuple(txn.changes), stored, tuple(txn.events), at, first.by, first.reason
    )


def _sent_times(op: PendingKillSwitch, sent: _Unconfirmed) -> PendingKillSwitch:
    """``op`` with the times of ``sent``, the unconfirmed commit of the same call.

    Race: a kill switch whose commit landed but could not be confirmed (its
    EXEC's reply lost, Redis gone before the read-back) is kept and replayed.
    Its body ran again on the copy and took new times; ``committed_since`` knows
    a kill switch by its records' times, so with those it would not find the
    landed commit and would write it again (an emergency rollback recorded
    twice, the second "from stage 0"). A record of the same flag (plan and
    action), ``by`` and ``reason`` takes the time ``sent`` carried.
    """
    flag_at = {(c.flag, c.by, c.reason): c.at for c in sent.changes}
    plan_at = {(e.plan, e.action, e.by, e.reason): e.at for e in sent.events}
    changes = tuple(_replace(c, at=flag_at.get((c.flag, c.by, c.reason), c.at)) for c in op.changes)
    events = tuple(
        _replace(e, at=plan_at.get((e.plan, e.action, e.by, e.reason), e.at)) for e in op.events
    )
    at = min([c.at for c in changes] + [e.at for e in events])
    return _replace(op, changes=changes, events=events, at=at)


def _replay_switch_off(
    txn: StoreTransaction, op: PendingKillSwitch, name: str, stored: FlagState
) -> None:
    """Put ``name`` of a pending kill switch: off from its current state (no-op if it is)."""
    current = txn.get(name)
    new = stored if current is None else _off(current)
    if new == current:
        return
    change = next(c for c in op.changes if c.flag == name)
    old = change.old if current is None else current
    txn.put(name, new, _replace(change, old=old, new=new))


class _Replayed(NamedTuple):
    """One pending kill switch's replay (``_replay_one``): the newer changes of its
    flags and plans, whether it was committed already, ``op`` as committed (with
    the plan flags ``_with_plan_flags`` added), the flags it left on (changed
    after it) and why other versions' plan flags were not read (None: read)."""

    newer: list[FlagChange | MigrationEvent]
    already: bool
    op: PendingKillSwitch
    left: tuple[str, ...] = ()
    unread: str | None = None


def _with_plan_flags(
    txn: _RedisTransaction,
    op: PendingKillSwitch,
    own: dict[str, dict[str, int]],
    booleans: frozenset[str],
) -> _Replayed:
    """``op`` with, for each of its emergency rollbacks, the flags the online rollback
    switches off that Redis holds on now (its own flags aside), to switch off: the
    plan's flags as this process recorded the plan (``own``: plan -> flag ->
    stage; as Redis' plans hash records it if this process recorded none) and the
    flags Redis records for other versions of it (``plan_flags``) that this
    process declared as boolean flags (``booleans``); the others stay,
    as the online rollback's WARNING says. An added flag changed after ``op``
    (its ``at``) is left as it is (``left``): a newer decision, as the
    superseding rule's, for that flag only (``op`` is judged on its own flags).

    Race: the node copy may lag behind Redis (cut off while another node advanced
    the plan, or its listener not yet past this node's own advance). A kill
    switch made then names only the flags the copy showed on: one whose copy
    state was already off is no change there. Replayed, it moved the plan to
    stage 0 and left those flags on in Redis (and on this node once it took
    Redis' state). Such a flag is now switched off as the rollback's (its
    ``by``, ``reason`` and time). Redis' error reply to the plan flags read
    (the key no hash, an ACL) adds this plan's flags only (``unread``: logged).
    """
    stored, changes = dict(op.stored), list(op.changes)
    unread: str | None = None
    for event in op.events:
        # A process that did not record the plan (restarted, its Migration not
        # made yet; the `foundation` command; another process of the node sharing
        # the copy file) takes the plan as Redis records it.
        flags = dict(own[event.plan]) if event.plan in own else None
        try:
            if flags is None:
                flags = txn.recorded_plan(event.plan)
        except _Unreadable as exc:
            unread, flags = str(exc), {}
        try:
            recorded = txn.plan_flags(event.plan)
        except _Unreadable as exc:
            unread, recorded = str(exc), {}
        flags.update((f, n) for f, n in recorded.items() if f in booleans and f not in flags)
        for name, stage in flags.items():
            state = None if name in stored or stage <= event.to_stage else txn.get(name)
            if state is not None and state.switch:
                stored[name] = _off(state)
                changes.append(
                    FlagChange(name, state, _off(state), event.by, event.reason, event.at)
                )
    added = {name: state for name, state in stored.items() if name not in op.stored}
    changed = txn.changed_since(added, op.at) if added else set()
    left = tuple(name for name in added if name in changed)
    if len(left) == len(added):
        return _Replayed([], False, op, left, unread)
    kept = {name: state for name, state in stored.items() if name not in changed}
    changes = [c for c in changes if c.flag not in changed]
    return _Replayed([], False, _replace(op, changes=tuple(changes), stored=kept), left, unread)


class _RedisBehind(Exception):
    """``_commit_pending``: committed, but the node copy could not take it (Redis
    is behind the copy: restore, then replay)."""


class _KillSwitches(_Commits):
    """Kill switches applied locally while Redis is away, committed when it returns."""

    def _defer(
        self, fn: Callable[[StoreTransaction], T], cause: BackendUnavailable, refused: bool = False
    ) -> T:
        """Apply ``fn`` to this node's view and keep it pending (see ``kill_switch``);
        ``refused``: its commit just failed (``cause``), the store still in sync."""
        with self._txn_lock:
            self._check_open()
            txn = _LocalTransaction(self)
            result = fn(txn)
            if not txn.changes and not txn.events:
                return result
            stored = _kill_switch_states(txn, cause)
            if not self._cache.has_data():
                raise cause  # no copy of the deployment to apply it to
            op = _pending_op(txn, stored)
            if isinstance(cause, _Unconfirmed):
                op = _sent_times(op, cause)
            try:
                op_id = self._cache.add_pending(op)
            except FlagError as exc:  # the copy is unusable: nowhere to keep it
                raise cause from exc
            with self._lock:
                writer = current_writer(self._callbacks)
                if writer is not None:
                    self._op_writers[op_id] = writer
        if isinstance(cause, _KeptInOrder):  # Redis may answer: not "unavailable"
            why, when = str(cause), "after them"
        else:
            why, when = f"Redis unavailable ({cause})", "when Redis returns"
        log.warning(
            "flag store %r: %s; kill switch %s applied locally "
            "to %s and recorded; it will be committed %s",
            self.namespace, why, _who(op), _where(op), when,
        )  # fmt: skip
        self._event("pending_recorded", **self._op_data(_replace(op, id=op_id)))
        if refused and not self._read_only:
            # This node now serves what Redis lacks: stale at once, as the listener
            # would say only once its next turn's replay fails (up to its XREAD
            # block later). Its resync commits the switch and brings it in sync.
            # (A read-only replica stays in sync: the switch waits for writable.)
            # (Failed fast: the timeout behind it is the error, as the listener's.)
            timed_out = BackendUnavailable(self._no_answer.error)
            error = timed_out if isinstance(cause, _FailedFast) else cause
            self._went_stale(error, "cannot commit a kill switch to")
            if isinstance(cause, _FailedFast):  # (its text is the timeout's: say so)
                self._note_failure(error, timed_out=True)
            self._resync_wanted.set()
        # The listener commits it at its next turn (within its XREAD block time
        # if connected). No CLIENT UNBLOCK here: on a frozen Redis that call would
        # itself wait for the timeout, and the kill switch must return at once.
        self._replay_wanted.set()
        return result

    def _op_data(self, op: PendingKillSwitch) -> dict[str, Any]:
        return {
            "id": op.id,
            "flags": list(op.flags),
            "plans": list(op.plans),
            "by": op.by,
            "reason": op.reason,
            "at": op.at,
        }

    def _replay_pending(self, on_listener: bool = True) -> None:
        """Commit (or drop as superseded) every pending kill switch, oldest first.

        Run by the listener (its resync, or its turn after a kill switch was
        kept) and by a write of this node before its own commit (``transaction``,
        ``on_listener`` False). Race: both at once. Each kill switch is committed,
        mirrored into the copy and dropped under ``_replay_lock``, and only if it
        is still pending then: committed once, by one of them, in order (one
        read pending before the other dropped it was otherwise committed twice,
        the second "already", with a second event). Its log line and event come
        after the lock (a telemetry listener waiting on a write to this store
        would wait for ever), and so do subscribers' reloads. A write's replay
        hands both to the listener thread (``_announce_later``): the write's
        thread holds its FeatureFlags' lock, so a telemetry handler waiting for
        another thread's write to that FeatureFlags (or for a lock such a
        writer holds) waited for ever, and another FeatureFlags sharing this
        store, its lock held by a writer waiting for _replay_lock, would
        deadlock with it. (So such events may come after the write's own.)

        Race: Redis lost again mid-replay (a later kill switch's commit raises
        ``BackendUnavailable``). The ones committed before it were dropped from
        the copy's pending list, and their announcements went with the error:
        committed, or superseded, and never told (found with Redis restarted
        empty three times under several nodes: dozens per run). They are
        announced all the same, then the error goes on; a write's are handed
        to the listener without waking it (Redis just failed: a CLIENT UNBLOCK
        could wait for a timeout of its own).
        """
        self._replay_wanted.clear()
        done: list[Callable[[], None]] = []  # their announcements, in order
        superseded = [False]
        try:
            self._replay_each(done, superseded)
        except BaseException:
            self._announce(done, superseded=superseded[0], on_listener=on_listener, wake=False)
            raise
        self._announce(done, superseded=superseded[0], on_listener=on_listener)

    def _replay_each(self, done: list[Callable[[], None]], superseded: list[bool]) -> None:
        """``_replay_pending``'s loop: each kill switch committed (or dropped), its
        announcement appended to ``done`` at once; ``superseded[0]`` set if one
        was followed by newer changes (subscribers reload)."""
        for op in self._cache.pending():
            try:
                committed = self._commit_pending(op)
            except _RedisBehind:
                self._replay_wanted.set()  # Redis is behind the copy: restore, then replay
                break  # (what was committed so far is still announced)
            if committed is not None:  # (None: committed or dropped by the other replayer)
                # Newer changes of its flags or plans: the copy served its
                # switch-off, Redis has moved past it (superseded, or committed
                # and followed by them): subscribers reload, as ever.
                superseded[0] = superseded[0] or bool(committed.newer)
                done.append(functools.partial(self._announce_replayed, committed))

    def _announce(
        self,
        done: list[Callable[[], None]],
        *,
        superseded: bool,
        on_listener: bool,
        wake: bool = True,
    ) -> None:
        """The replay's announcements, then subscribers' reload if a kill switch was
        superseded (the local switch-off is lifted): now on the listener thread, else
        handed to it (``_announce_on_listener``; ``wake``: end its XREAD now)."""
        if not on_listener:
            if done or superseded:
                self._announce_on_listener(done, superseded=superseded, wake=wake)
            return
        for announce in done:
            announce()
        if superseded:
            self._deliver([])

    def _commit_pending(self, op: PendingKillSwitch) -> _Replayed | None:
        """Commit ``op`` (or find it superseded) and drop it, under ``_replay_lock``:
        how (``_Replayed``); None if no longer pending.

        Raises:
            _RedisBehind: the node copy could not take the commit (Redis behind it).
        """
        with self._replay_lock:
            if op not in self._cache.pending():
                return None
            # Committed for the subscriber that deferred it (it applied it then):
            # the others hear it now. (An op renumbered by a write-back is not
            # found: its writer hears it again, at least once as ever.)
            with writing_as(self._op_writers.get(op.id)):
                replayed = self._transaction(functools.partial(self._replay_one, op=op))
            self._op_writers.pop(op.id, None)
            # Committed (or superseded) first, dropped second: a crash in between
            # replays it, and committed_since() then sees it is already there.
            # Race: Redis may go away again right after the commit. The pending
            # record goes only once the node copy holds the commit (a failed
            # refresh raises and leaves it pending; the next replay finds it
            # "already" committed): otherwise a read served from the copy would
            # show the killed flag on again.
            if not self._pull():
                raise _RedisBehind
            # By id and content: a write-back during this replay may have renumbered
            # op (its id clashed with another process's kill switch); see NodeCache.
            self._cache.remove_pending(op)
            return replayed

    def _announce_on_listener(
        self, later: list[Callable[[], None]], *, superseded: bool, wake: bool = True
    ) -> None:
        """A write's replay: the listener announces it and tells subscribers to
        reload at its next turn (``_send_welcomes``; the announcements also after
        a turn that failed, and as it stops: ``_send_announcements``), in that order."""
        with self._lock:
            self._announce_later.extend(later)
            if superseded:
                self._deliveries += 1  # (a delivery: see subscribe's welcome)
                self._welcome.extend(c for c in self._callbacks if c not in self._welcome)
            gone = self._listener_gone
        if gone:
            # Race: the store closed while this write replayed; the listener's
            # last step has run (it told what was handed over before): told here.
            self._send_announcements()
        elif wake:
            self._wake_listener()

    def _announce_replayed(self, replayed: _Replayed) -> None:
        """The log line and event of one replayed kill switch (no store lock held):
        committed if ``already`` (whatever ``newer`` changes followed it), else
        superseded if ``newer`` changes exist, else committed by this replay (the
        plan flags it left on named; an unread plan flags hash first a WARNING)."""
        op, newer, already = replayed.op, replayed.newer, replayed.already
        self._flush_reports()  # what a fork kept: before its "committed" event
        if replayed.unread is not None:
            log.warning(
                "flag store %r: the kill switch %s on %s switches off the flags of its "
                "plan as recorded here only: Redis' record of other versions' flags "
                "is unreadable (%s); those stay as they are",
                self.namespace, _who(op), _where(op), escape_controls(replayed.unread),
            )  # fmt: skip
        if already:
            # Committed before (its reply lost, or a crash before its record was
            # dropped, or another node holding it was first): it landed, whatever
            # was committed after it. Those later changes are no supersession of
            # it: they are named (``followed_by``), not a "not applied" WARNING.
            log.info(
                "flag store %r: kill switch %s on %s committed (it already was%s)",
                self.namespace, _who(op), _where(op),
                f"; newer committed changes followed it: {_changes(newer)}" if newer else "",
            )  # fmt: skip
            self._event("pending_committed", **self._op_data(op), already=True, followed_by=newer)
        elif newer:
            log.warning(
                "flag store %r: the kill switch %s on %s, recorded during the "
                "outage at %s, was SUPERSEDED by newer committed changes and not applied: %s",
                self.namespace, _who(op), _where(op),
                time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(op.at)), _changes(newer),
            )  # fmt: skip
            self._event("pending_superseded", **self._op_data(op), superseded_by=newer)
        else:
            left = ", ".join(escape_controls(name) for name in replayed.left)
            log.info(
                "flag store %r: kill switch %s on %s committed%s",
                self.namespace, _who(op), _where(op),
                f"; left on: {left} (changed after it)" if left else "",
            )  # fmt: skip
            self._event("pending_committed", **self._op_data(op), already=False, followed_by=[])

    def _replay_one(self, txn: StoreTransaction, op: PendingKillSwitch) -> _Replayed:
        """The body of a pending kill switch's commit. Superseded or already committed
        is judged on ``op`` as kept; committed, it also switches off the plan flags
        ``_with_plan_flags`` adds."""
        if not isinstance(txn, _RedisTransaction):  # pragma: no cover
            raise TypeError("a pending kill switch replays on Redis only")
        newer, already = txn.committed_since(op)
        if newer or already:
            return _Replayed(newer, already, op)  # write nothing
        if op.events:
            replayed = _with_plan_flags(txn, op, *self._declared_here())
            op = replayed.op
        else:
            replayed = _Replayed(newer, already, op)
        for name, stored in op.stored.items():
            _replay_switch_off(txn, op, name, stored)
        for event in op.events:
            stage = txn.migration_stage(event.plan)
            txn.put_migration(event.plan, 0, _replace(event, from_stage=stage))
        return replayed

    def _declared_here(self) -> tuple[dict[str, dict[str, int]], frozenset[str]]:
        """(plan -> flag -> stage of each plan this process recorded, the flags it
        recorded in the catalogue as boolean flags): what the replay of an emergency
        rollback knows of this node's declarations, with no read of Redis (an entry
        that does not decode is left out)."""
        with self._lock:
            plans = dict(self._recorded.get(self._k_plans, {}))
            catalogue = dict(self._recorded.get(self._k_catalogue, {}))
        own: dict[str, dict[str, int]] = {}
        for name, text in plans.items():
            with contextlib.suppress(Exception):  # (this process's own record)
                entries = plan_flag_entries(name, plan_from_json(text))
                own[name] = dict(entries)
        booleans: set[str] = set()
        for name, text in catalogue.items():
            with contextlib.suppress(Exception):
                if FlagInfo.from_json(text).kind == "boolean":
                    booleans.add(name)
        return own, frozenset(booleans)


def _changes(newer: list[FlagChange | MigrationEvent]) -> str:
    """The later changes a kill switch's log line names, bounded (``bounded_list``:
    a busy flag may have thousands; the event carries them all), each its repr
    (its text escaped: a newline in a reason cannot forge a log line)."""
    return bounded_list([repr(change) for change in newer])
