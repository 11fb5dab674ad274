"""The transactions handed to ``fn`` (on Redis under WATCH, or the node copy), their commit."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from foundation.flags._history import Replay
from foundation.flags._node_cache import PendingKillSwitch
from foundation.flags._redis_store._errors import _Retry
from foundation.flags._redis_store._shared import _check_name
from foundation.flags._store import (
    FlagChange,
    FlagState,
    MigrationEvent,
    StoreTransaction,
    check_put,
    check_put_migration,
    plan_flag_entries,
    plan_flags_of,
    plan_from_json,
)

if TYPE_CHECKING:
    from foundation.flags._redis_store._copy import _NodeCopy
    from foundation.flags._redis_store._core import _StoreCore


class _Unreadable(Exception):
    """``_RedisTransaction.plan_flags`` / ``recorded_plan``: Redis' error reply to the
    read, or a plan record that does not decode (its text)."""


class _Staged(StoreTransaction):
    """Validation and staging shared by the Redis and the local transaction."""

    def __init__(self) -> None:
        self.puts: dict[str, FlagState | None] = {}
        self.changes: list[FlagChange] = []
        # Per change: (the runtime state it replaces, the one it writes): its record
        # is a delta of the first (see _history).
        self.bases: list[tuple[FlagState | None, FlagState | None]] = []
        self.stage_puts: dict[str, int] = {}
        self.events: list[MigrationEvent] = []

    def put(self, name: str, state: FlagState | None, change: FlagChange) -> None:
        # Validate before staging: bad input raises and nothing is written.
        check_put(name, state, change)
        before = self.get(name)  # under WATCH in Redis: still the state at EXEC
        self.puts[name] = state
        self.changes.append(change)
        self.bases.append((before, state))

    def put_migration(self, plan: str, stage: int, event: MigrationEvent) -> None:
        # A stage the node copies (SQLite) cannot hold would poison every node.
        check_put_migration(plan, stage, event)
        self.stage_puts[plan] = stage
        self.events.append(event)


class _RedisTransaction(_Staged):
    """Reads go to Redis under WATCH (cached per transaction); writes are staged."""

    def __init__(self, store: _StoreCore, pipe: Any) -> None:
        super().__init__()
        self._store = store
        self._pipe = pipe
        self._states: dict[str, str] | None = None
        self._decoded: dict[str, FlagState | None] = {}
        self._stages: dict[str, str] | None = None
        self._plan_fields: list[str] | None = None  # the plan flags hash's fields, read
        self.trimmed: str | None = None  # meta's `trimmed` read under WATCH
        self.mtrimmed: str | None = None  # ... and `mtrimmed`
        # Reads of Redis made by ``fn`` (each one a consistent view): more than one
        # and nothing written, the commit checks its WATCH all the same (see
        # ``_run_and_queue``).
        self.reads = 0

    @property
    def read_states(self) -> dict[str, str] | None:
        """The state hash as read under WATCH (None: not read)."""
        return self._states

    @property
    def read_stages(self) -> dict[str, str] | None:
        """The stages hash as read under WATCH (None: not read)."""
        return self._stages

    def get(self, name: str) -> FlagState | None:
        _check_name(name, "flag name")
        if name in self.puts:
            return self.puts[name]
        if name in self._decoded:
            return self._decoded[name]
        if self._states is None:
            # One HGETALL under WATCH: later commits anywhere abort our EXEC.
            self._states = self._pipe.hgetall(self._store._k_state)
            self.reads += 1
        raw = self._states.get(name)
        state = None if raw is None else self._store._decode_state(raw)
        self._decoded[name] = state  # put() reads it again: the base of its record
        return state

    def migration_stage(self, plan: str) -> int:
        _check_name(plan, "plan name")
        if plan in self.stage_puts:
            return self.stage_puts[plan]
        if self._stages is None:
            self._stages = self._pipe.hgetall(self._store._k_stages)
            self.reads += 1
        return self._store._decode_stage(self._stages.get(plan))

    def plan_flags(self, plan: str) -> dict[str, int]:
        """``plan_flags(plan)`` as Redis records it (every version's flags), read now
        (the hash once per transaction).

        Raises:
            _Unreadable: Redis answered with an error (the key is no hash:
                WRONGTYPE; an ACL denies it). Redis out of reach raises as any read.
        """
        if self._plan_fields is None:
            try:
                fields = self._pipe.hgetall(self._store._k_plan_flags)
            except self._store._redis.ResponseError as exc:
                raise _Unreadable(f"{self._store._k_plan_flags}: {exc}") from exc
            self._plan_fields = [str(k) for k in fields]
            self.reads += 1
        return plan_flags_of(plan, self._plan_fields)

    def recorded_plan(self, plan: str) -> dict[str, int]:
        """The flags (flag -> stage) of ``plan`` as Redis' plans hash records it (the
        version recorded last), read now; ``{}`` if it records none.

        Raises:
            _Unreadable: an error reply (WRONGTYPE, an ACL) or a record that does
                not decode. Redis out of reach raises as any read.
        """
        try:
            text = self._pipe.hget(self._store._k_plans, plan)
        except self._store._redis.ResponseError as exc:
            raise _Unreadable(f"{self._store._k_plans}: {exc}") from exc
        self.reads += 1
        if text is None:
            return {}
        try:
            return dict(plan_flag_entries(plan, plan_from_json(text)))
        except Exception as exc:  # another program's record, say
            raise _Unreadable(f"{self._store._k_plans} {plan!r}: {exc}") from exc

    def changed_since(self, states: dict[str, FlagState], at: float) -> set[str]:
        """Those of the flags ``states`` names with a change committed later than ``at``
        (read as ``committed_since`` reads a kill switch's flags)."""
        newer, _ = self.committed_since(PendingKillSwitch(0, (), states, (), at, None, None))
        return {change.flag for change in newer if isinstance(change, FlagChange)}

    def committed_since(
        self, op: PendingKillSwitch
    ) -> tuple[list[FlagChange | MigrationEvent], bool]:
        """(changes/events of ``op``'s flags and plans committed LATER than ``op.at``,
        whether ``op`` itself is already committed). Read under WATCH: every
        commit bumps the watched version, so a commit landing meanwhile retries us.

        The streams may have been trimmed since ``op`` was recorded (more than
        ``history_limit`` commits during this node's outage): each trim kept, per
        flag and per plan, its latest change/event among those it dropped (the
        ``last`` hashes, see ``_trim`` and ``_TRIM_EVENTS``), and that one is checked
        too. Any change later than ``op.at`` trimmed away implies that a change at
        least as late is in the ``last`` hash, so the decision is the one an
        untrimmed stream gives. (``superseded_by`` then names, per flag or plan,
        the latest of the trimmed ones only.)
        """
        store, pipe = self._store, self._pipe
        # One view: the streams only grow between trims (checked below), and its
        # answer ("newer", "already") stays true once true.
        self.reads += 1
        flags, plans = list(op.stored), list(op.plans)
        # Deltas: replayed from the base of the last trim (see _trim).
        base = pipe.hgetall(store._k_base)
        entries = pipe.xrange(store._k_history)
        hlast = pipe.hmget(store._k_hlast, flags) if flags else []
        events = pipe.xrange(store._k_migrations) if plans else []
        mlast = pipe.hmget(store._k_mlast, plans) if plans else []
        # Race: a trim between these reads (a base of one cut with the entries of
        # another, or entries dropped after we read the stream and before we read
        # the `last` hash: in neither). A trim moves meta's `trimmed` / `mtrimmed`;
        # meta is watched, so EXEC would fail anyway, but a superseded kill switch
        # writes nothing (no EXEC): retry now, before deciding on a mismatched read.
        if list(pipe.hmget(store._k_meta, "trimmed", "mtrimmed")) != [self.trimmed, self.mtrimmed]:
            raise _Retry
        newer: list[FlagChange | MigrationEvent] = []
        seen_changes = self._changes_since(
            op, newer, base, entries, dict(zip(flags, hlast, strict=True))
        )
        seen_events = self._events_since(op, newer, events, dict(zip(plans, mlast, strict=True)))
        # A commit is atomic: seeing any part of op means all of it was committed
        # (a crash between the commit and dropping the pending record).
        return newer, bool(seen_changes or seen_events)

    def _changes_since(
        self,
        op: PendingKillSwitch,
        newer: list[FlagChange | MigrationEvent],
        base: dict[str, str],
        entries: list[tuple[str, dict[str, str]]],
        lasts: dict[str, str | None],
    ) -> set[tuple[str, float, str | None, str | None]]:
        """Append to ``newer`` the changes of ``op``'s flags later than it; return its own seen."""
        store = self._store
        own = {(c.flag, c.at, c.by, c.reason) for c in op.changes}
        seen_changes: set[tuple[str, float, str | None, str | None]] = set()
        # The latest trimmed change of each flag first: it precedes every kept entry.
        trimmed = [store._decode_last(text) for text in lasts.values() if text is not None]
        replay = Replay(store._feed_states(base), flags=frozenset(op.stored))
        # A kept entry whose base was lost (evicted) is left out, as a trimmed one.
        lost: set[str] = set()
        kept = (store._decode_kept(fields, replay, self.trimmed, lost) for _id, fields in entries)
        for change in itertools.chain(trimmed, kept):
            if change is None:
                continue
            key = (change.flag, change.at, change.by, change.reason)
            if key in own:
                seen_changes.add(key)
            elif change.at > op.at:
                newer.append(change)
        return seen_changes

    def _events_since(
        self,
        op: PendingKillSwitch,
        newer: list[FlagChange | MigrationEvent],
        entries: list[tuple[str, dict[str, str]]],
        lasts: dict[str, str | None],
    ) -> set[tuple[str, str, float, str | None, str | None]]:
        """Append to ``newer`` the events of ``op``'s plans later than it; return its own seen."""
        store = self._store
        own_events = {(e.plan, e.action, e.at, e.by, e.reason) for e in op.events}
        seen_events: set[tuple[str, str, float, str | None, str | None]] = set()
        # The latest trimmed event of each plan first: it precedes every kept entry.
        trimmed = [store._decode_event({"event": text}) for text in lasts.values() if text]
        kept = (store._decode_event(fields) for _id, fields in entries)
        for event in itertools.chain(trimmed, kept):
            if event.plan not in op.plans:
                continue
            ekey = (event.plan, event.action, event.at, event.by, event.reason)
            if ekey in own_events:
                seen_events.add(ekey)
            elif event.at > op.at:
                newer.append(event)
        return seen_events


class _LocalTransaction(_Staged):
    """A transaction over the node copy (plus pending kill switches), for ``kill_switch``."""

    def __init__(self, store: _NodeCopy) -> None:
        super().__init__()
        self._store = store
        self._states: dict[str, FlagState] | None = None

    def get(self, name: str) -> FlagState | None:
        _check_name(name, "flag name")
        if name in self.puts:
            return self.puts[name]
        if self._states is None:
            self._states = self._store._local_states()
        return self._states.get(name)

    def migration_stage(self, plan: str) -> int:
        _check_name(plan, "plan name")
        if plan in self.stage_puts:
            return self.stage_puts[plan]
        return self._store._local_stage(plan)


class _Commit:
    """What one transaction's EXEC commits (``_queue_writes``), to mirror into the copy.

    ``epoch`` is the deployment's epoch after the commit, ``base_epoch`` the one
    read under WATCH (None: a new deployment). The stream ids are EXEC's
    replies at ``history_at`` / ``migrations_at``.
    """

    __slots__ = (
        "base_epoch",
        "changes",
        "epoch",
        "events",
        "history",
        "history_at",
        "length_at",
        "migrations",
        "migrations_at",
        "mlength_at",
        "puts",
        "stage_puts",
        "token",
        "version",
    )

    def __init__(self, version: int, epoch: str | None, base_epoch: str | None, token: str) -> None:
        self.version = version
        self.epoch = epoch
        self.base_epoch = base_epoch
        # The commit's id: every entry it appends (both streams) carries it as `txn`,
        # so a commit whose EXEC reply was lost can be looked up (``_landed``).
        self.token = token
        self.changes: list[FlagChange] = []  # what the body staged (see _Unconfirmed)
        self.events: list[MigrationEvent] = []
        self.puts: dict[str, str | None] = {}
        self.stage_puts: dict[str, int] = {}
        self.history: list[dict[str, str]] = []
        self.migrations: list[dict[str, str]] = []
        self.history_at = 0
        self.migrations_at = 0
        self.length_at: int | None = None  # EXEC's reply to XLEN of the history, if queued
        self.mlength_at: int | None = None  # ... and of the migrations stream

    @staticmethod
    def entries(
        replies: list[Any], at: int, fields: list[dict[str, str]]
    ) -> list[tuple[str, dict[str, str]]]:
        ids = replies[at : at + len(fields)]
        if len(ids) != len(fields):
            raise IndexError("EXEC returned fewer replies than commands queued")
        return [(str(i), f) for i, f in zip(ids, fields, strict=True)]
