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

    def kill_switch(self) -> PendingKillSwitch | None:
        """This commit as a pending kill switch if it only switched flags off and
        rolled plans back in an emergency (the rule of ``_kill_switch_states``)."""
        if any(s is None or s.switch for _, s in self.changes) or any(
            e.action != "emergency_rollback" or e.to_stage != 0 for e in self.events
        ):
            return None
        stored = {c.flag: s for c, s in self.changes if s is not None}
        first: FlagChange | MigrationEvent = self.changes[0][0] if self.changes else self.events[0]
        changes = tuple(c for c, _ in self.changes)
        return PendingKillSwitch(
            0, changes, stored, tuple(self.events), self.at, first.by, first.reason
        )


def _held(entries: list[Entry]) -> set[tuple[str, str]]:
    return {(i, f.get("txn", "")) for i, f in entries}


def _lost_here(entry_id: str, fields: dict[str, str], held: set[tuple[str, str]], cut: Any) -> bool:
    """Whether Redis lost this entry of the copy: not held, and not before its cut."""
    if (entry_id, fields.get("txn", "")) in held:
        return False
    return not (isinstance(cut, str) and stream_key(entry_id) < stream_key(cut))


def lost_commits(
    base: dict[str, FlagState],
    history: list[Entry],
    migrations: list[Entry],
    redis: Snapshot,
    *,
    decode_change: Callable[[dict[str, str], Replay], FlagChange | None],
    decode_event: Callable[[dict[str, str]], MigrationEvent],
) -> tuple[list[PendingKillSwitch], list[FlagChange | MigrationEvent]]:
    """(the copy's kill switches Redis lost, every other change or event it lost).

    ``base``, ``history``, ``migrations``: the copy's; ``redis``: a whole read of
    Redis at the copy's epoch that no longer holds the copy's last entries. An
    entry before Redis' cut (``trimmed``) was trimmed, not lost. A lost kill
    switch followed by a later lost change of one of its flags (or event of its
    plan) in the copy, other than a kill switch, is not returned: that later
    decision was the last word (it is reported with the other lost changes).
    """
    held, mheld = _held(redis.history), _held(redis.migrations)
    commits: dict[str, _Lost] = {}
    replay = Replay(base)  # every entry fed: each is the delta of the one before
    for entry_id, fields in history:
        change = decode_change(fields, replay)
        if change is None or not _lost_here(entry_id, fields, held, redis.trimmed):
            continue
        lost = commits.setdefault(fields.get("txn", entry_id), _Lost(_v(fields)))
        lost.changes.append((change, replay.states.get(change.flag)))
    for entry_id, fields in migrations:
        if _lost_here(entry_id, fields, mheld, redis.mtrimmed):
            lost = commits.setdefault(fields.get("txn", entry_id), _Lost(_v(fields)))
            lost.events.append(decode_event(fields))
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
