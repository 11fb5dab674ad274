"""The node copy: refreshed from Redis, Redis restored from it, consistent reads."""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from foundation.errors import BackendUnavailable, FlagError, escape_controls
from foundation.flags._history import Replay
from foundation.flags._node_cache import PendingKillSwitch, Snapshot, stream_key
from foundation.flags._redis_store._health import _Health
from foundation.flags._redis_store._lost_commits import RedisLast, lost_commits
from foundation.flags._redis_store._shared import (
    _MAX_ATTEMPTS,
    _META,
    _check_version,
    _other_history,
    _short_of,
    log,
)
from foundation.flags._store import FlagChange, FlagState, MigrationEvent

T = TypeVar("T")

_DIVERGED = Snapshot(0, None, {}, {}, [], [], full=True)
"""``_read_snapshot``'s answer when Redis no longer holds the copy's last entries."""


def _flat(fields: dict[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        out += [key, value]
    return out


def _tail_id(reply: Any) -> str | None:
    """The id of an ``XREVRANGE ... COUNT 1`` reply's entry (None: an empty stream)."""
    return str(reply[0][0]) if reply else None


def _starts_at(entries: list[tuple[str, dict[str, str]]], last: str | None) -> bool:
    """Whether ``entries`` (read from ``last`` inclusive) begin with the copy's ``last``."""
    return last is None or (bool(entries) and entries[0][0] == last)


def _stream_entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """An XRANGE reply as (entry id, fields) pairs, as a ``Snapshot`` keeps them."""
    return [(str(i), dict(f)) for i, f in raw]


def _named(record: FlagChange | MigrationEvent) -> str:
    """A lost change or event as the fork's WARNING names it (user text escaped:
    a newline in a reason cannot forge another log line)."""
    who = f"by {escape_controls(record.by)} ({escape_controls(record.reason)})"
    if isinstance(record, FlagChange):
        return f"{escape_controls(record.flag)} {who}"
    return f"migration {escape_controls(record.plan)} {escape_controls(record.action)} {who}"


def _kept_named(op: PendingKillSwitch) -> str:
    """A kill switch kept pending as the fork's WARNING names it (user text escaped)."""
    where = ", ".join(escape_controls(name) for name in op.flags + op.plans)
    return f"; {escape_controls(op.by)} ({escape_controls(op.reason)}) on {where}"


_OLDER_SNAPSHOT = (
    "it came back from an older snapshot (or a node restored an older copy into it) "
    "and others wrote past it"
)
_OTHER_EPOCH = (
    "it lost them (restarted empty, flushed) and, before this node restored it, a node "
    "without this copy's history wrote another one (a new epoch) up to this version or past it"
)


def _uncut(snap: Snapshot) -> Snapshot:
    """``snap`` without its trim points: Redis' cut of another epoch's history tells
    nothing of the copy's entries before it (none of them is Redis' to trim)."""
    return Snapshot(
        snap.version, snap.epoch, snap.states, snap.stages, snap.history, snap.migrations,
        snap.full, base=snap.base, trimmed=None, mtrimmed=None, hlast=snap.hlast, mlast=snap.mlast,
    )  # fmt: skip


def _listed(names: list[str], most: int = 20) -> str:
    """``names`` joined, the first ``most`` of them (a long lost history: one line)."""
    if not names:
        return "none"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


class _NodeCopy(_Health):
    """Keeps this node's copy in step with Redis, and Redis restored from it."""

    def _restore_if_behind(self) -> bool:
        """Restore Redis from this node's copy if Redis holds an older version, or
        lost keys of the copy's own version (evicted: see ``_lost_keys``). Atomic."""
        import uuid

        client = self._ensure_clients()
        with self._copy_lock, self._translated("restoring flags from the node copy"):
            raw_version, lost = self._lost_keys(client)
            if not lost and not self._copy_behind_check(raw_version):
                return False
            cache = self._cache
            version = cache.version
            base, trimmed, history = cache.history_with_base()
            # Race: another process sharing the file mirroring a later cut between
            # the two reads: its `last` records are the same or later ones, each of a
            # change or event the stream held before, so a check reads no less.
            hlast, mlast = cache.lasts()
            # What this node's application recorded (catalogue, plans), written with
            # the restore: a reader (the `foundation` command's FeatureFlags.from_store)
            # finding the restored flags finds their catalogue; the copy's kept hashes
            # are never restored (another version's entries may be in them).
            records = (self._k_catalogue, self._k_plans, self._k_plan_flags)
            with self._lock:
                recorded = {key: dict(self._recorded.get(key, {})) for key in records}
            payload = {
                "version": str(version),
                "epoch": cache.epoch or uuid.uuid4().hex,
                "restored": uuid.uuid4().hex,  # a new meta, even at the same version
                "states": cache.states(),
                "stages": {p: str(s) for p, s in cache.stages().items()},
                "history": [[i, _flat(f)] for i, f in history],
                "migrations": [[i, _flat(f)] for i, f in cache.migrations()],
                "base": base,
                "hlast": hlast,
                "mlast": mlast,
                "trimmed": trimmed or "",
                "mtrimmed": cache.mtrimmed or "",
                "records": [recorded.get(key, {}) for key in records],
            }
            # The script re-checks the version itself: of nodes restoring at
            # once, only the first (or the one with the newest copy) writes.
            done = int(
                self._restore_script(
                    keys=[*self._keys(), *records],
                    args=[json.dumps(payload), "lost" if lost else ""],
                )
            )
        if done and lost:
            self._restores += 1
            log.warning(
                "flag store %r: Redis at %s lost keys of version %s (%s: evicted? its "
                "maxmemory-policy must be noeviction); restored %d flag states and %d "
                "history entries from this node's copy",
                self.namespace, self._url, raw_version, ", ".join(lost),
                len(payload["states"]), len(payload["history"]),
            )  # fmt: skip
            self._event(
                "restored",
                version=version,
                previous=int(raw_version or 0),
                flags=sorted(payload["states"]),
                changes=len(payload["history"]),
            )
        elif done:
            self._restores += 1
            log.warning(
                "flag store %r: Redis at %s held an older version (%s) than this node's "
                "copy (%d); restored %d flag states and %d history entries from it",
                self.namespace, self._url, raw_version or "none", version,
                len(payload["states"]), len(payload["history"]),
            )  # fmt: skip
            self._event(
                "restored",
                version=version,
                previous=None if raw_version is None else int(raw_version),
                flags=sorted(payload["states"]),
                changes=len(payload["history"]),
            )
        return bool(done)

    def _lost_keys(self, client: Any) -> tuple[str | None, list[str]]:
        """(Redis' version, the keys Redis lost of the copy's version: evicted).

        At the copy's own version and epoch, Redis holds what the copy holds:
        only a commit changes the flag states and stages, and every commit moves
        the version; a trim shortens a stream, never empties it. So fewer states
        or stages than the copy, or a stream gone that the copy has entries of,
        means Redis deleted keys (eviction under an ``allkeys-*`` policy, a manual
        ``DEL``). One round trip, read in the restore's place (``_RESTORE``
        checks again, atomically, before it writes).
        """
        cache = self._cache
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k_meta, "version", "epoch")
            pipe.hlen(self._k_state)
            pipe.hlen(self._k_stages)
            pipe.exists(self._k_history)
            pipe.exists(self._k_migrations)
            pipe.xrevrange(self._k_history, count=1)
            pipe.xrevrange(self._k_migrations, count=1)
            (raw_version, epoch), states, stages, history, migrations, *tails = pipe.execute()
        version, copy_epoch = cache.version, cache.epoch
        if (
            raw_version is None
            or _check_version(raw_version, self._k_meta) != version
            or epoch != copy_epoch
        ):
            return raw_version, []
        # Race (the resync check holds no _copy_lock): this node's commit confirmed
        # into the copy between these reads, so the copy's states are of a later
        # version than Redis was read at. Read its version again: moved, no verdict
        # (the next check compares again).
        ids = cache.last_ids()
        held = (len(cache.states()), len(cache.stages()))
        if cache.version != version or cache.epoch != copy_epoch:
            return raw_version, []
        if _other_history((tails[0], tails[1]), ids):
            # Race: Redis lost everything, a node with an older copy restored it
            # first and wrote up to this copy's version: fewer states or stages,
            # but not an eviction. Restored over, that node's acknowledged write
            # would be lost instead, by another rule than a fork's; the refresh
            # tells the fork (Redis' state wins, the copy's kill switches kept,
            # its other lost changes named in the WARNING).
            return raw_version, []
        lost = self._gone_keys((states, stages, history, migrations), held, ids)
        return raw_version, lost

    def _gone_keys(
        self,
        redis: tuple[int, int, int, int],
        held: tuple[int, int],
        ids: tuple[str | None, str | None],
    ) -> list[str]:
        """The keys Redis lost (see ``_lost_keys``): ``redis``, its counts of states
        and stages and whether each stream exists; ``held``, ``ids``: the copy's."""
        states, stages, history, migrations = redis
        return [
            key
            for key, gone in (
                (self._k_state, states < held[0]),
                (self._k_stages, stages < held[1]),
                (self._k_history, not history and ids[0] is not None),
                (self._k_migrations, not migrations and ids[1] is not None),
            )
            if gone
        ]

    def _pull(self) -> bool:
        """Refresh the copy from one consistent read of Redis; False if Redis is older
        (or lost a stream of the copy's version: a resync is asked for, it restores).

        No MULTI: Redis 7 refuses commands queued in MULTI while it is out of
        memory (``maxmemory``, ``noeviction``) although it still serves plain
        reads. Race: a commit landing amid the reads. Every commit (EXEC, or the
        restore script) changes ``meta`` atomically with its data, so the
        reads sit between two reads of ``meta`` in one pipeline: equal ``meta``
        means no commit landed in between; otherwise read again.

        The copy's history stays a run of Redis' (each entry is a delta of
        the one before, see ``_history``), from the same cut with the same base
        once Redis trimmed it (the base and ``trimmed`` are read with the rest,
        see ``NodeCache.apply``): a refresh appends only what follows
        the copy's last entries, and only while Redis still holds those (read
        inclusively). Redis back from an older snapshot (same epoch) with other
        commits past the copy's version does not: the refresh then takes all
        of Redis' history instead of chaining it onto entries Redis lost.
        """
        reports: list[Callable[[], None]] = []
        current = self._pull_locked(reports)
        # What a fork kept is reported once _copy_lock is released: a telemetry
        # listener waiting on a thread that needs the lock (a write mirroring its
        # commit, a refresh) would otherwise wait for ever. Race: this refresh nested
        # in a holder of the lock (the listener's catch-up, a commit's mirror): the
        # report waits for the next refresh that is not, such as the replay's of
        # the kept kill switch (before its "committed" event: the order holds).
        # (Nor under _replay_lock: a write waiting for it would wait for ever too;
        # the replay flushes them once it released it, before its op's event.)
        self._kept_reports().extend(reports)
        if not self._copy_lock._is_owned() and not self._replay_lock._is_owned():  # type: ignore[attr-defined]  # (RLock's own)
            self._flush_reports()
        return current

    def _flush_reports(self) -> None:
        """Report what forks kept (see ``_pull``); no store lock held."""
        queue = self._kept_reports()
        while True:
            try:
                report = queue.popleft()  # (atomic: another thread may flush too)
            except IndexError:
                break
            report()

    def _kept_reports(self) -> deque[Callable[[], None]]:
        """Reports of what forks kept, waiting for ``_copy_lock`` (made on first use)."""
        queue: deque[Callable[[], None]] | None = self.__dict__.get("_fork_reports")
        if queue is None:  # (setdefault: one queue if two threads get here at once)
            queue = self.__dict__.setdefault("_fork_reports", deque())
        return queue

    def _pull_locked(self, reports: list[Callable[[], None]]) -> bool:
        """``_pull``'s work under ``_copy_lock``; what a fork kept is reported (appended
        to ``reports``) only once the copy's refresh succeeded."""
        client = self._ensure_clients()
        with self._copy_lock, self._translated("refreshing the node copy"):
            whole = False  # the copy's tails are not in Redis: read everything
            for _ in range(_MAX_ATTEMPTS):
                meta, tails = self._copy_meta(client)
                if self._copy_behind_check(meta[0]):
                    return False  # the caller restores (or the listener will)
                since = None if whole else self._copy_since(meta, tails)
                if (
                    since is not None
                    and ((since[0] and not tails[0]) or (since[1] and not tails[1]))
                    and self._lost_keys(client)[1]  # (a round trip only then)
                ):
                    # Race: Redis lost (evicted) a stream the copy holds entries
                    # of, at the copy's own version and epoch, and this refresh
                    # (the listener's after a reply it read before the loss, a
                    # write's, a read's) comes before any check. Taken whole, as
                    # a divergence, it would empty the copy's history too: then
                    # nothing could restore it. It is a loss (see _lost_keys):
                    # the resync restores it from the copy.
                    self._resync_wanted.set()
                    return False
                if (
                    since == tails
                    and self._cache.version == int(meta[0] or 0)
                    and self._cache.trimmed == meta[3]
                    and self._cache.mtrimmed == meta[4]
                ):
                    return True  # nothing new (the copy's tails and trims included)
                snap = self._read_snapshot(client, meta, since)
                if snap is None:
                    continue  # a commit landed meanwhile: read again
                if snap is _DIVERGED:
                    whole = True
                    continue
                report, kept = None, False
                if self._lets_go_of_commits(snap, whole):
                    # (before the copy lets go of them; reported once it did)
                    report, kept = self._keep_lost_kill_switches(snap)
                self._cache.apply(snap)  # (a failure raises: nothing reported)
                if report is not None and kept:
                    reports.append(report)  # events, a wake: after the lock
                elif report is not None:
                    report()  # a log line only: at once
                return True
        return True  # pragma: no cover - a thousand commits in a row

    def _lets_go_of_commits(self, snap: Snapshot, whole: bool) -> bool:
        """Whether taking ``snap`` (Redis not older than the copy) lets go of commits
        of the copy that Redis does not hold: a fork, told as one (see
        ``_keep_lost_kill_switches``).

        ``whole``: Redis, at the copy's epoch, no longer holds the copy's last
        entries. Another epoch, read whole, over a copy that mirrored one: Redis
        lost everything (restarted empty, flushed) and, before a node with this
        copy restored it, a node with an older copy (or none: a new epoch)
        restored it and committed, up to this copy's version or past it. Race:
        at an equal version the version alone looked in sync, and the copy took
        Redis' state without a word (an acknowledged ``advance()`` lost
        silently); the epoch tells the two histories apart.
        """
        epoch = self._cache.epoch
        if whole:
            return snap.epoch == epoch
        return snap.full and epoch is not None and snap.epoch != epoch

    def _keep_lost_kill_switches(self, snap: Snapshot) -> tuple[Callable[[], None], bool]:
        """Keep the copy's kill switches that Redis lost (``snap``: a whole read of it
        at the copy's epoch, not holding the copy's last entries) as pending ones;
        returns (what reports it, whether any was kept): the report (events,
        WARNING, listener woken) is for once the copy took ``snap`` and, if any
        was kept, ``_copy_lock`` is released (else it only logs).

        A fork: Redis came back from an older snapshot and, before any node
        restored it, a process without a copy of this version (the CLI on another
        machine, a new node) committed on top, up to this copy's version or past
        it. Redis is then not older than the copy: no restore, and the refresh
        takes Redis' state whole. A kill switch or emergency rollback among the
        lost commits would be undone on every node without a word; so each is
        recorded pending with its original ``at``, ``by`` and ``reason`` (applied
        here at once), and committed by the replay under the superseding rule (a
        later change of its flag or plan in Redis wins). Every node holding it
        does the same; the first commits it, the others find it committed
        ("already"). Other lost commits are named in the WARNING: Redis' newer
        history wins over them, as documented. What was lost is told even when
        Redis trimmed past the fork (see ``lost_commits``). Caller holds
        ``_copy_lock``.
        """
        cache = self._cache
        version = cache.version
        other_epoch = snap.epoch != cache.epoch
        try:
            base, _trimmed, history = cache.history_with_base()
            ops, others = lost_commits(
                self._feed_states(base),
                history,
                cache.migrations(),
                _uncut(snap) if other_epoch else snap,
                self._redis_last(snap),
                decode_change=self._decode_change,
                decode_event=self._decode_event,
            )
        except FlagError as exc:  # a corrupt entry in the copy: cannot tell what was lost
            error = exc
            return lambda: log.warning(
                "flag store %r: Redis at %s no longer holds this node's last commits "
                "(restarted from an older snapshot?) and they cannot be read (%s); "
                "taking Redis' state",
                self.namespace, self._url, error,
            ), False  # fmt: skip
        if not ops and not others:
            # Trimmed past the copy's tail while this node was away (or a fork that
            # lost nothing Redis does not hold): said, never silent.
            return lambda: log.info(
                "flag store %r: Redis at %s (version %d) no longer holds this node's last "
                "history entries (copy at version %d): trimmed past them, or back from an "
                "older snapshot; taking Redis' state (no change of this copy found lost)",
                self.namespace, self._url, snap.version, version,
            ), False  # fmt: skip
        # Race: a read between this and the copy's refresh (the caller's apply)
        # reads the pending list first, so it sees the kill switch pending or, after
        # the replay, committed: never neither. Another process sharing the file
        # may keep the same kill switch at once: one row (``keep_pending``: checked
        # in the write's transaction); each replay finds it "already" committed
        # after the first. A refresh that failed after keeping it (its apply) finds
        # it pending again next time: kept once, reported once the refresh succeeds.
        kept: list[PendingKillSwitch] = []
        for op in ops:
            try:
                op_id = cache.keep_pending(op)
            except FlagError as exc:  # the copy is unusable: say so, nowhere to keep it
                log.warning(
                    "flag store %r: cannot keep a lost kill switch: %s", self.namespace, exc
                )
                continue
            kept.append(replace(op, id=op_id))
        if kept:
            self._replay_wanted.set()  # the listener commits them at its next turn

        def report() -> None:
            for op in kept:
                self._event(
                    "pending_recorded",
                    id=op.id, flags=list(op.flags), plans=list(op.plans),
                    by=op.by, reason=op.reason, at=op.at,
                )  # fmt: skip
            if kept:
                self._restores += 1
                self._wake_listener()
            log.warning(
                "flag store %r: Redis at %s (version %d) no longer holds this node's last "
                "commits (copy at version %d): %s; taking Redis' state, with %d kill "
                "switch(es) of this copy kept pending and committed again unless a newer "
                "change supersedes them%s; other changes lost: %s",
                self.namespace, self._url, snap.version, version,
                _OTHER_EPOCH if other_epoch else _OLDER_SNAPSHOT, len(kept),
                "".join(_kept_named(op) for op in kept),
                _listed([_named(c) for c in others]),
            )  # fmt: skip

        return report, bool(kept)

    def _redis_last(self, snap: Snapshot) -> RedisLast:
        """Redis' last word per flag and plan in ``snap`` (a whole read: its base and
        ``last`` hashes read with it), with its states and stages. A record of Redis
        that does not decode is left out (its flag then looks unchanged in Redis:
        a kill switch of it is rather kept, and the replay decides)."""

        def decoded(decode: Callable[[], T]) -> T | None:
            try:
                return decode()
            except FlagError:
                return None

        replay = Replay(self._feed_states(snap.base or {}))
        changes: dict[str, FlagChange] = {}
        for text in (snap.hlast or {}).values():
            last = decoded(functools.partial(self._decode_last, text))
            if last is not None:
                changes[last.flag] = last
        for _id, fields in snap.history:  # kept entries: later than every trimmed one
            change = decoded(functools.partial(self._decode_change, fields, replay))
            if change is not None:
                changes[change.flag] = change
        events: dict[str, MigrationEvent] = {}
        raw = [{"event": t} for t in (snap.mlast or {}).values()] + [f for _, f in snap.migrations]
        for fields in raw:
            event = decoded(functools.partial(self._decode_event, fields))
            if event is not None:
                events[event.plan] = event
        return RedisLast(changes, events, self._feed_states(snap.states), snap.stages)

    def _copy_meta(self, client: Any) -> tuple[list[Any], tuple[str | None, str | None]]:
        """(Redis' meta, the ids of its two streams' last entries: None when empty)."""
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k_meta, *_META)
            pipe.xrevrange(self._k_history, count=1)
            pipe.xrevrange(self._k_migrations, count=1)
            meta, history, migrations = pipe.execute()
        return list(meta), (_tail_id(history), _tail_id(migrations))

    def _copy_since(
        self, meta: list[Any], tails: tuple[str | None, str | None]
    ) -> tuple[str | None, str | None] | None:
        """The copy's last stream ids if the copy is of this deployment (None: read all)."""
        cache = self._cache
        if meta[0] is None or cache.epoch != meta[1] or not cache.has_data():
            return None
        kept = cache.trimmed
        if kept is not None and (meta[3] is None or stream_key(meta[3]) < stream_key(kept)):
            # Redis' stream goes back further than the copy's (restored from an
            # untrimmed copy): the copy's base is not the base of Redis' entries.
            return None
        cut = cache.mtrimmed
        if cut is not None and (meta[4] is None or stream_key(meta[4]) < stream_key(cut)):
            return None  # likewise Redis' migrations stream: take it whole
        return cache.last_ids()

    def _read_snapshot(
        self, client: Any, meta: list[Any], since: tuple[str | None, str | None] | None
    ) -> Snapshot | None:
        """Redis at ``meta`` (None: it moved), entries after ``since`` (None: all);
        ``_DIVERGED`` when Redis no longer holds the copy's last entries.

        The base (a state per flag ever trimmed) and the ``last`` hashes are read
        only when the copy needs them: a whole read, or a cut (of that stream) the
        copy does not hold yet. At the copy's cut
        it is the copy's base already (a base is what the entries before the cut
        left), so a refresh after each commit costs O(its change), not O(flags).
        """
        new_cut = since is None or self._cache.trimmed != meta[3]
        new_mcut = since is None or self._cache.mtrimmed != meta[4]
        with client.pipeline(transaction=False) as pipe:
            self._queue_copy_reads(pipe, since)
            if new_cut:
                pipe.hgetall(self._k_base)
                pipe.hgetall(self._k_hlast)  # moves with the base (see _trim)
            if new_mcut:
                pipe.hgetall(self._k_mlast)  # moves with `mtrimmed` (see _TRIM_EVENTS)
            # (nstates, nstages: see _states_rebuilt, _stages_rebuilt)
            pipe.hmget(self._k_meta, *_META, "nstates", "nstages")
            replies = pipe.execute()
        states, stages, history, migrations = replies[:4]
        rest = iter(replies[4:])
        base, hlast = (next(rest), next(rest)) if new_cut else (None, None)
        mlast = next(rest) if new_mcut else None
        *after, counted, staged = next(rest)
        if after != meta:
            return None
        history, migrations = _stream_entries(history), _stream_entries(migrations)
        if since is not None:
            if not (_starts_at(history, since[0]) and _starts_at(migrations, since[1])):
                return _DIVERGED
            history, migrations = history[bool(since[0]) :], migrations[bool(since[1]) :]
        stage_map = self._decode_stages(stages)
        version = int(meta[0] or 0)
        if since is not None:
            states = self._states_rebuilt(dict(states), counted, meta, history)
            stage_map = self._stages_rebuilt(stage_map, staged, meta, migrations)
        return Snapshot(
            version,
            meta[1],
            dict(states),
            stage_map,
            history,
            migrations,
            full=since is None,
            base=None if base is None else dict(base),
            trimmed=meta[3],
            mtrimmed=meta[4],
            hlast=None if hlast is None else dict(hlast),
            mlast=None if mlast is None else dict(mlast),
        )

    def _states_rebuilt(
        self,
        states: dict[str, str],
        counted: str | None,
        meta: list[Any],
        history: list[tuple[str, dict[str, str]]],
    ) -> dict[str, str]:
        """``states`` (Redis' state hash, read for a refresh that follows the copy's
        entries with ``history``), or the states the copy's own plus ``history``
        replay to if Redis holds fewer than meta's ``nstates`` says its version left.

        Race: Redis evicted the state hash (allkeys-* policy) between a commit
        and this refresh (the writer's own, or any node's listener catching up
        from an older version). Taken as read, every copy would hold the loss
        at Redis' version: none could restore it, and every write would be
        refused for good (``_check_states_kept``). The entries since the copy's
        version record each change's runtime state: replayed onto the copy's
        states (its version, same epoch), they give exactly what that commit
        left; the resync check then finds Redis short of the copy and restores
        it. Kept as read if the replay does not give that count (or fails).
        """
        cache = self._cache
        count = _short_of(counted, meta[0], len(states))
        if count is None or meta[1] != cache.epoch:
            return states
        try:
            replay = Replay({n: self._decode_state(s) for n, s in cache.states().items()})
            for _id, fields in history:
                replay.feed_json(fields["change"])
        except (FlagError, ValueError, KeyError) as exc:  # (InvalidFlagValue: a ValueError)
            log.debug("flag store %r: lost states not rebuilt: %s", self.namespace, exc)
            return states
        if len(replay.states) != count:
            return states
        log.warning(
            "flag store %r: Redis at %s holds %d of the %s flag states of version %s "
            "(%s evicted? set maxmemory-policy noeviction): the node copy keeps them, "
            "replayed from its version %d, to restore them",
            self.namespace, self._url, len(states), count, meta[0], self._k_state, cache.version,
        )  # fmt: skip
        self._resync_wanted.set()
        return {n: state.to_json() for n, state in replay.states.items()}

    def _stages_rebuilt(
        self,
        stages: dict[str, int],
        counted: str | None,
        meta: list[Any],
        migrations: list[tuple[str, dict[str, str]]],
    ) -> dict[str, int]:
        """``stages`` (Redis' stages hash), or the copy's own stages with the steps of
        ``migrations`` (the entries since the copy's) applied if Redis holds fewer
        plans than meta's ``nstages`` says its version left: as ``_states_rebuilt``,
        for the stages hash evicted between a commit and this refresh. Each event
        records its step's target stage (``to_stage``, what ``put_migration`` set).
        Kept as read if that does not give the count (or an event does not read).
        """
        cache = self._cache
        count = _short_of(counted, meta[0], len(stages))
        if count is None or meta[1] != cache.epoch:
            return stages
        rebuilt = cache.stages()
        try:
            for _id, fields in migrations:
                event = MigrationEvent.from_json(fields["event"])
                rebuilt[event.plan] = event.to_stage
        except (FlagError, ValueError, KeyError) as exc:  # (InvalidFlagValue: a ValueError)
            log.debug("flag store %r: lost stages not rebuilt: %s", self.namespace, exc)
            return stages
        if len(rebuilt) != count:
            return stages
        log.warning(
            "flag store %r: Redis at %s holds %d of the %s migration stages of version %s "
            "(%s evicted? set maxmemory-policy noeviction): the node copy keeps them, "
            "rebuilt from its version %d, to restore them",
            self.namespace, self._url, len(stages), count, meta[0], self._k_stages, cache.version,
        )  # fmt: skip
        self._resync_wanted.set()
        return rebuilt

    def _queue_copy_reads(self, pipe: Any, since: tuple[str | None, str | None] | None) -> None:
        """The reads of a refresh: streams FROM the copy's last ids (inclusive) if ``since``."""
        last_h, last_m = since or (None, None)
        pipe.hgetall(self._k_state)
        pipe.hgetall(self._k_stages)
        pipe.xrange(self._k_history, last_h or "-", "+")
        pipe.xrange(self._k_migrations, last_m or "-", "+")

    def _local_states(self) -> dict[str, FlagState]:
        """The copy's states with pending kill switches applied."""
        pending = self._cache.pending()
        states = {n: self._decode_state(s) for n, s in self._cache.states().items()}
        for op in pending:
            op.overlay(states)
        return states

    def _local_stage(self, plan: str) -> int:
        if any(plan in op.plans for op in self._cache.pending()):
            return 0
        return self._cache.stages().get(plan, 0)

    def _read(
        self,
        doing: str,
        queue: Callable[[Any], None],
        lost: Callable[[Any], bool] | None = None,
    ) -> Any:
        """One Redis read (consistent with meta, see ``_consistent_read``), or None:
        answer from the copy.

        None when the listener is not following Redis (stale), when Redis is
        unreachable, when Redis holds an older version than the copy (it
        restarted empty: the listener is poked to restore it), or when ``lost``
        (given the result) says it misses what the copy holds at the copy's own
        version and epoch (evicted keys, see ``_lost_read``).
        """
        if not self._synced.is_set():
            return None
        try:
            raw_version, epoch, result = self._consistent_read(doing, queue)
        except BackendUnavailable as exc:
            log.debug("flag store %r: %s; answering from the node copy", self.namespace, exc)
            return None
        self._redis_answered()
        if self._copy_behind_check(raw_version) or (
            lost is not None and self._lost_read(raw_version, epoch, result, lost)
        ):
            self._resync_wanted.set()
            self._wake_listener()
            return None
        # Race: Redis restarting empty while this node's copy lags what it has
        # served. The listener delivers a change (subscribers reload: this read)
        # BEFORE it refreshes the copy, and any other node's commit may land
        # between a refresh and a read. Were this answer, newer than the copy,
        # returned and Redis then killed, this node would restore Redis from its
        # OLDER copy (first come, first restored) and reload from it: flags the
        # callers already saw changed would revert until a node with a newer copy
        # restored over it (seen in bench_chaos' flags row). So the copy catches
        # up (same version and epoch, or newer) before a newer answer leaves: a
        # node never serves what its copy does not hold, whichever node restores.
        cache = self._cache
        if raw_version is not None and (int(raw_version) > cache.version or epoch != cache.epoch):
            return self._once_copied(result)
        return result

    def _lost_read(
        self, raw_version: str | None, epoch: str | None, result: Any, lost: Callable[[Any], bool]
    ) -> bool:
        """True if ``result``, read at the copy's own version and epoch, misses what
        the copy holds (``lost``): Redis lost keys (evicted: see ``_lost_keys``).

        An empty HGETALL of an evicted state hash is no answer: served, a kill
        switch would read its default until the next resync. Local (the copy's
        counts), no round trip. Race: this node's commit confirmed into the copy
        between the read and the count: its version is read again, moved, no
        verdict (the answer stands, as without the check). Race: Redis lost
        everything and a node with an older copy restored it up to this version
        (see ``_lost_keys``): the copy answers until the resync's refresh takes
        Redis' state (a divergence), then counts agree.
        """
        cache = self._cache
        version, copy_epoch = cache.version, cache.epoch
        if raw_version is None or epoch != copy_epoch:
            return False
        if _check_version(raw_version, self._k_meta) != version:
            return False
        gone = lost(result)
        return gone and cache.version == version and cache.epoch == copy_epoch

    def _consistent_read(
        self, doing: str, queue: Callable[[Any], None]
    ) -> tuple[str | None, str | None, Any]:
        """(version, epoch, the read ``queue`` queues) at one version, without MULTI.

        Race: a commit between the reads; see ``_pull`` (meta read before and
        after in one pipeline, read again if it moved). Every commit bumps
        ``version`` and every restore sets a new ``restored`` token, so a
        FLUSHALL then a restore back to the same version and epoch in between
        also reads again. No MULTI: an out-of-memory Redis 7 refuses queued
        commands but serves plain reads. ``queue`` may queue several reads
        (their replies as a list).
        """
        client = self._ensure_clients()
        with self._translated(doing):
            for _ in range(_MAX_ATTEMPTS):
                with client.pipeline(transaction=False) as pipe:
                    pipe.hmget(self._k_meta, *_META)
                    queue(pipe)
                    pipe.hmget(self._k_meta, *_META)
                    before, *result, after = pipe.execute()
                if list(before) == list(after):
                    return before[0], before[1], result[0] if len(result) == 1 else result
        raise FlagError(  # pragma: no cover - a thousand commits in a row
            f"{doing}: gave up after {_MAX_ATTEMPTS} concurrent commits"
        )

    def _once_copied(self, result: Any) -> Any:
        """``result`` (newer than the copy) once the copy caught up, or None (see ``_read``)."""
        try:
            current = self._pull()
        except BackendUnavailable as exc:  # Redis went away meanwhile
            log.debug("flag store %r: %s; answering from the node copy", self.namespace, exc)
            return None
        except FlagError as exc:  # corrupt data in Redis: not a reason to fail the read
            log.warning("flag store %r: node copy not refreshed: %s", self.namespace, exc)
            return result
        if not current:  # Redis went back meanwhile: restore it first
            self._resync_wanted.set()
            self._wake_listener()
            return None
        return result
