"""A node copy whose last commits Redis lost while others went past them (a fork)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundation.flags._history import Replay
from foundation.flags._node_cache import Entry, PendingKillSwitch, Snapshot, stream_key
from foundation.flags._store import FlagChange, FlagState, MigrationEvent


class _Lost:
    """One commit of the copy that Redis lost: its changes (with the runtime state
    each left) and events, in commit order."""

    __slots__ = ("changes", "events", "version")

    def __init__(self, version: int) -> None:
        self.version = version
        self.changes: list[tuple[FlagChange, FlagState | None]] = []
        self.events: list[MigrationEvent] = []

    @property
    def at(self) -> float:
        return min([c.at for c, _ in self.changes] + [e.at for e in self.events])

    def _only_switches_off(self) -> bool:
        """Whether it only switched flags off and rolled plans back in an emergency."""
        return not any(s is None or s.switch for _, s in self.changes) and all(
            e.action == "emergency_rollback" and e.to_stage == 0 for e in self.events
        )

    def kill_switch(self) -> PendingKillSwitch | None:
        """This commit as a pending kill switch if it only switched flags off and
        rolled plans back in an emergency (the rule of ``_kill_switch_states``)."""
        if not self._only_switches_off():
            return None
        stored = {c.flag: s for c, s in self.changes if s is not None}
        first: FlagChange | MigrationEvent = self.changes[0][0] if self.changes else self.events[0]
        changes = tuple(c for c, _ in self.changes)
        return PendingKillSwitch(
            0, changes, stored, tuple(self.events), self.at, first.by, first.reason
        )


def _held(entries: list[Entry]) -> set[tuple[str, str]]:
    return {(i, f.get("txn", "")) for i, f in entries}


def _after_cut(entry_id: str, cut: Any) -> bool:
    """Whether a copy's entry is not before Redis' cut (Redis would hold it)."""
    return not (isinstance(cut, str) and stream_key(entry_id) < stream_key(cut))


def _key(record: FlagChange | MigrationEvent) -> tuple[Any, ...]:
    """What identifies a change or event across Redis and a copy (as ``committed_since``)."""
    if isinstance(record, FlagChange):
        return (record.flag, record.at, record.by, record.reason)
    return (record.plan, record.action, record.at, record.by, record.reason)


class RedisLast:
    """What Redis holds as the last word per flag and per plan (its latest change or
    event: the last kept entry, else its ``last`` hash of trimmed ones), with its
    current states and stages: what tells a copy's entry before Redis' cut lost."""

    __slots__ = ("changes", "events", "stages", "states")

    def __init__(
        self,
        changes: dict[str, FlagChange],
        events: dict[str, MigrationEvent],
        states: dict[str, FlagState],
        stages: dict[str, int],
    ) -> None:
        self.changes = changes
        self.events = events
        self.states = states
        self.stages = stages

    def lost(self, record: FlagChange | MigrationEvent, left: FlagState | int | None) -> bool:
        """Whether Redis lost ``record``, the copy's last change of its flag (or event of
        its plan), which left the flag in state ``left`` (the plan at stage ``left``).

        Held: Redis' last word is that record. Lost: Redis' last word is older (or
        none) and Redis' state differs from what the record left. Unknown (False):
        Redis has a later change, which a legitimate successor (the history merely
        trimmed past the copy) and a fork's writer leave alike.
        """
        if isinstance(record, FlagChange):
            last: FlagChange | MigrationEvent | None = self.changes.get(record.flag)
            now: FlagState | int | None = self.states.get(record.flag)
        else:
            last, now = self.events.get(record.plan), self.stages.get(record.plan, 0)
        if last is not None and (_key(last) == _key(record) or last.at > record.at):
            return False
        return now != left


def lost_commits(
    base: dict[str, FlagState],
    history: list[Entry],
    migrations: list[Entry],
    redis: Snapshot,
    last: RedisLast,
    *,
    decode_change: Callable[[dict[str, str], Replay], FlagChange | None],
    decode_event: Callable[[dict[str, str]], MigrationEvent],
) -> tuple[list[PendingKillSwitch], list[FlagChange | MigrationEvent]]:
    """(the copy's kill switches Redis lost, every other change or event it lost).

    ``base``, ``history``, ``migrations``: the copy's; ``redis``: a whole read of
    Redis at the copy's epoch that no longer holds the copy's last entries;
    ``last``: Redis' last word per flag and plan. An entry Redis does not hold
    after Redis' cut is lost. One before the cut may have been trimmed, or
    lost with Redis' own trim point far past it (the fork's writer made more
    than ``history_limit`` commits): the cut is of Redis' branch, not the copy's.
    So the copy's last change of each flag (event of each plan) is checked
    against Redis' last word (``RedisLast.lost``), and what a fork lost is a
    suffix of the copy (its commits from the fork's version on): every entry
    from the lowest version found lost is lost too, unless Redis holds it.
    A lost kill switch followed by a later lost change of one of its flags (or
    event of its plan) in the copy, other than a kill switch, is not returned:
    that later decision was the last word (it is reported with the other lost
    changes). A kill switch whose flag Redis changed later stays a candidate:
    the replay's superseding rule drops it with its WARNING.
    """
    held, mheld = _held(redis.history), _held(redis.migrations)
    replay = Replay(base)  # every entry fed: each is the delta of the one before
    changes: list[tuple[str, dict[str, str], FlagChange, FlagState | None]] = []
    for entry_id, fields in history:
        change = decode_change(fields, replay)
        if change is not None:
            changes.append((entry_id, fields, change, replay.states.get(change.flag)))
    events = [(i, f, decode_event(f)) for i, f in migrations]
    # The copy's last change per flag and event per plan (later ones overwrite).
    flag_last = {c.flag: (i, f, c, s) for i, f, c, s in changes}
    plan_last = {e.plan: (i, f, e) for i, f, e in events}
    found = {
        (i, f.get("txn", ""))
        for i, f, c, s in flag_last.values()
        if (i, f.get("txn", "")) not in held and last.lost(c, s)
    } | {
        (i, f.get("txn", ""))
        for i, f, e in plan_last.values()
        if (i, f.get("txn", "")) not in mheld and last.lost(e, e.to_stage)
    }
    versions = [_v(f) for i, f in history + migrations if (i, f.get("txn", "")) in found]
    since = min((v for v in versions if v > 0), default=None)  # (0: an entry without `v`)

    def lost_here(i: str, fields: dict[str, str], hold: set[tuple[str, str]], cut: Any) -> bool:
        key = (i, fields.get("txn", ""))
        if key in hold:
            return False
        late = since is not None and _v(fields) >= since
        return _after_cut(i, cut) or key in found or late

    commits: dict[str, _Lost] = {}
    for entry_id, fields, change, state in changes:
        if lost_here(entry_id, fields, held, redis.trimmed):
            lost = commits.setdefault(fields.get("txn", entry_id), _Lost(_v(fields)))
            lost.changes.append((change, state))
    for entry_id, fields, event in events:
        if lost_here(entry_id, fields, mheld, redis.mtrimmed):
            lost = commits.setdefault(fields.get("txn", entry_id), _Lost(_v(fields)))
            lost.events.append(event)
    ordered = sorted(commits.values(), key=lambda c: c.version)  # (stable: stream order)
    ops: list[PendingKillSwitch] = []
    others: list[FlagChange | MigrationEvent] = []
    for n, lost in enumerate(ordered):
        op = lost.kill_switch()
        if op is not None and not _overruled(op, ordered[n + 1 :]):
            ops.append(op)
        else:
            others.extend(c for c, _ in lost.changes)
            others.extend(lost.events)
    return ops, others


def _v(fields: dict[str, str]) -> int:
    v = fields.get("v", "")
    return int(v) if v.isdigit() else 0


def _overruled(op: PendingKillSwitch, later: list[_Lost]) -> bool:
    """Whether a later lost commit, not a kill switch itself, changed a flag or moved
    a plan of ``op`` (a later kill switch of the same flag overrules nothing)."""
    flags, plans = set(op.flags), set(op.plans)
    return any(
        lost.kill_switch() is None
        and (
            any(c.flag in flags for c, _ in lost.changes)
            or any(e.plan in plans for e in lost.events)
        )
        for lost in later
    )
