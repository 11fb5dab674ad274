"""The stored form of flag history: each record holds the CHANGE, not two whole states.

Why: a record used to hold ``old`` and ``new`` in full, so a flag with n pinned
actors cost O(n) per record and n ``allow()`` calls O(n^2) in every store. A
record of format 2 (JSON object, ``"fmt": 2``) holds instead:

``flag``, ``by``, ``reason``, ``at``
    as in ``FlagChange.to_dict``;
``old`` (a whole ``FlagState`` dict) or ``od`` (a delta, absent when empty)
    ``old`` relative to the flag's *runtime* state just before the write (the
    state the writer's transaction read). ``old`` is written in full only when
    there was no runtime state (a new flag, or after ``clear``): then the
    effective state is config or the declared default, which pins nobody;
``nd``
    ``new`` as a delta of ``old``;
``st`` (absent: the runtime state written is ``new``; ``null``: it was
    deleted, i.e. ``clear``; else a delta of ``new``).

A delta is an object holding only what differs: ``s`` (switch), ``p``
(percentage or null), per actor set ``a``/``d`` (allow/deny) either ``a+``/
``a-`` (added / removed actors, sorted) or ``a`` (the whole set, when that is
shorter), per assignment map ``g+`` (set entries) / ``g-`` (removed actors) or
``g``, and ``x`` (the whole split or null). So a record costs O(size of the
change) and stays at most about the size of a full record.

Reading (``Replay``): records of one flag are replayed in commit order, keeping
the runtime state each one leaves; a record's ``od`` applies to the state the
previous record of that flag left. This holds because every store writes a
flag's runtime state and its history record in one transaction, and nothing
else writes runtime state: ``clear``/``reset_all`` put ``None`` with a record,
config loads never write the store, migrations and kill-switch replays go
through ``txn.put``, and a Redis restore puts back the states together with
the history they came from (a node copy's history is kept an exact run of
the stream with the stream's base, never spliced, see ``_redis_store._copy._pull``).
Not covered: a runtime state written behind the stores' back (the sqlite3
shell, redis-cli): the next delta of that flag is then based on a state no
record holds, so its ``old`` is rebuilt from the previous record (or, with no
previous record, ``history()`` raises ``FlagError``). Records in the previous
(full) format still read: ``old``/``new`` as written, and the runtime state
after one is taken to be its ``new`` -- true of every write ``FeatureFlags``
makes except ``clear``, after which the next writer finds no runtime state and
writes ``old`` in full, so nothing later depends on that guess.

Retention (``history_limit``, the same rule on every store): a store keeps the
last ``history_limit`` records of all flags together (default
``DEFAULT_HISTORY_LIMIT``; None: every record, as before). Trimming is
amortised: once a store holds more than ``history_limit + trim_slack(limit)``
records, the oldest are dropped down to ``history_limit`` by the commit that
found it over (so ``history()`` answers between ``history_limit`` and
``history_limit + trim_slack`` records): in its transaction in memory; right
after it, in a transaction of its own, in SQLite (a trim rewrites rows, so it
may need room the commit did not: on a full disk it fails alone, logged, and
the commit stands); in a Lua script after the EXEC on Redis. Replay stays
exact: the SQLite and memory stores rewrite the first kept record of each flag
that lost records as a whole record (``self_contained``), so their history
still starts with whole records, as older versions read it; a Redis stream
cannot rewrite an entry, so the Redis store keeps beside it the runtime state
of each flag after the last trimmed entry (the *base*, see ``_redis_store``),
written atomically with the trim, and replays from it. Migration events are
kept by the same rule, counted apart (``_store.events_to_keep``); they are whole
records, so their trim rewrites nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from foundation.errors import InvalidFlagValue, bounded_repr
from foundation.flags._store import (
    DEFAULT_HISTORY_LIMIT,
    FlagChange,
    FlagState,
    _loads,
    check_history_limit,
    check_percentage,
    trim_slack,
    unchecked_state,
)
from foundation.flags._typed import EMPTY, FrozenDict

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "FORMAT",
    "Replay",
    "check_history_limit",
    "diff",
    "encode",
    "encode_json",
    "patch",
    "rebase",
    "self_contained",
    "trim_slack",
]

FORMAT = 2
"""The ``fmt`` of a delta record (records without ``fmt`` are whole ``FlagChange`` dicts)."""

_SETS = (("a", "allow"), ("d", "deny"))


def self_contained(record: dict[str, Any], change: FlagChange) -> dict[str, Any]:
    """``record`` (a stored record whose whole change is ``change``) holding ``old`` in
    full, so it replays without the records before it (a new dict; ``record`` as is when
    it already does)."""
    if record.get("fmt") is None or "old" in record:
        return record
    out = {k: v for k, v in record.items() if k != "od"}
    out["old"] = change.old.to_dict()
    return out


def _set_delta(out: dict[str, Any], key: str, base: frozenset[str], target: frozenset[str]) -> None:
    if base == target:
        return
    added, removed = target - base, base - target
    if len(added) + len(removed) < len(target):
        if added:
            out[key + "+"] = sorted(added)
        if removed:
            out[key + "-"] = sorted(removed)
    else:
        out[key] = sorted(target)


def _assign_delta(out: dict[str, Any], base: Mapping[str, str], target: Mapping[str, str]) -> None:
    if base == target:
        return
    changed = {k: v for k, v in target.items() if base.get(k) != v}
    removed = [k for k in base if k not in target]
    if len(changed) + len(removed) < len(target):
        if changed:
            out["g+"] = dict(sorted(changed.items()))
        if removed:
            out["g-"] = sorted(removed)
    else:
        out["g"] = dict(sorted(target.items()))


def diff(base: FlagState, target: FlagState) -> dict[str, Any]:
    """The delta turning ``base`` into ``target`` (``{}`` when equal); JSON-compatible.

    Example:
        >>> diff(FlagState(True, allow={"a"}), FlagState(True, 5, allow={"a", "b"}))
        {'p': 5.0, 'a+': ['b']}
        >>> patch(FlagState(True, allow={"a"}), {'p': 5.0, 'a+': ['b']}) == FlagState(
        ...     True, 5, allow={"a", "b"})
        True
    """
    out: dict[str, Any] = {}
    if base.switch != target.switch:
        out["s"] = target.switch
    if base.percentage != target.percentage:
        out["p"] = target.percentage
    for key, attr in _SETS:
        _set_delta(out, key, getattr(base, attr), getattr(target, attr))
    _assign_delta(out, base.assign, target.assign)
    if base.split != target.split:
        out["x"] = None if target.split is None else dict(sorted(target.split.items()))
    return out


def _actors(value: Any) -> list[str]:
    """The actors a delta adds or names: a list of strings (InvalidFlagValue otherwise)."""
    if not isinstance(value, list):  # a string would spell actors one letter each
        raise InvalidFlagValue(f"malformed flag state delta: actors as {bounded_repr(value)}")
    for actor in value:
        if not isinstance(actor, str):
            raise InvalidFlagValue(
                f"malformed flag state delta: a non-string actor {bounded_repr(actor)}"
            )
    return value


def _patched_set(base: frozenset[str], delta: Mapping[str, Any], key: str) -> frozenset[str]:
    if key in delta:
        return frozenset(_actors(delta[key]))
    added = _actors(delta.get(key + "+", []))
    removed = _actors(delta.get(key + "-", []))
    if removed:
        base = base.difference(removed)
    return base.union(added) if added else base


def _patched_assign(base: Mapping[str, str], delta: Mapping[str, Any]) -> Mapping[str, str]:
    if "g" in delta:
        return _checked_assign(delta["g"])
    changed = delta.get("g+", {})
    removed = _actors(delta.get("g-", []))
    if not changed and not removed:
        return base
    out = dict(base)
    for actor in removed:
        out.pop(actor, None)
    out.update(_checked_assign(changed))
    return FrozenDict(sorted(out.items())) if out else EMPTY


def _checked_assign(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        raise InvalidFlagValue(f"malformed flag state delta: assignments as {bounded_repr(value)}")
    return FlagState(True, assign=value).assign  # the checks of FlagState, on these only


def _percentage(delta: Mapping[str, Any], base: FlagState) -> float | None:
    if "p" not in delta:
        return base.percentage
    return None if delta["p"] is None else check_percentage(delta["p"])


def patch(base: FlagState, delta: Mapping[str, Any]) -> FlagState:
    """``base`` with ``delta`` (from ``diff``) applied; InvalidFlagValue on a malformed delta.

    Only what the delta holds is checked: ``base`` is a checked state, so a
    replay costs O(size of the changes) in checks (plus the set copies).
    """
    if not isinstance(delta, Mapping):
        raise InvalidFlagValue(f"malformed flag state delta {bounded_repr(delta)}")
    if not delta:
        return base
    switch = delta.get("s", base.switch)
    if not isinstance(switch, bool):
        raise InvalidFlagValue(f"malformed flag state delta {bounded_repr(delta)}")
    try:
        split = FlagState(True, split=delta["x"]).split if "x" in delta else base.split
        return unchecked_state(
            switch,
            _percentage(delta, base),
            _patched_set(base.allow, delta, "a"),
            _patched_set(base.deny, delta, "d"),
            _patched_assign(base.assign, delta),
            split,
        )
    except (TypeError, AttributeError) as exc:  # an unhashable actor, say
        raise InvalidFlagValue(f"malformed flag state delta {bounded_repr(delta)}") from exc


def encode(
    change: FlagChange, before: FlagState | None, stored: FlagState | None
) -> dict[str, Any]:
    """The record of ``change``: ``before`` is the flag's runtime state the write replaced
    (None: none), ``stored`` the runtime state it wrote (None: deleted)."""
    record: dict[str, Any] = {
        "fmt": FORMAT,
        "flag": change.flag,
        "by": change.by,
        "reason": change.reason,
        "at": change.at,
    }
    if before is None:
        record["old"] = change.old.to_dict()
    else:
        od = diff(before, change.old)
        if od:
            record["od"] = od
    record["nd"] = diff(change.old, change.new)
    if stored is None:
        record["st"] = None
    elif stored != change.new:
        record["st"] = diff(change.new, stored)
    return record


def encode_json(change: FlagChange, before: FlagState | None, stored: FlagState | None) -> str:
    """``encode`` as JSON text (what the SQLite and Redis stores keep)."""
    return json.dumps(encode(change, before, stored))


class Replay:
    """Rebuilds whole ``FlagChange`` records from stored ones fed in commit order.

    ``states`` (optional) is the runtime state of each flag before the first
    record fed (a flag absent: none); it is kept up to date as records are fed.
    ``flags`` (optional) limits the work to those flags: ``feed`` answers None
    for the records of any other flag.

    Example:
        >>> c = FlagChange("beta", FlagState(False), FlagState(True, allow={"a"}))
        >>> replay = Replay()
        >>> replay.feed_json(encode_json(c, None, c.new)) == c
        True
        >>> c2 = FlagChange("beta", c.new, FlagState(True, allow={"a", "b"}))
        >>> text = encode_json(c2, c.new, c2.new)
        >>> json.loads(text)["nd"], replay.feed_json(text) == c2
        ({'a+': ['b']}, True)
    """

    __slots__ = ("_flags", "states")

    def __init__(
        self,
        states: Mapping[str, FlagState] | None = None,
        flags: frozenset[str] | None = None,
    ) -> None:
        self.states: dict[str, FlagState] = dict(states or {})
        self._flags = flags

    def feed_json(self, text: str | bytes) -> FlagChange | None:
        """``feed`` of one JSON record (InvalidFlagValue if it is malformed)."""
        return self.feed(_loads(text), exact=False)

    def feed(self, data: Any, *, exact: bool = True) -> FlagChange | None:
        """The whole change of record ``data`` (None: a flag not asked for).

        ``exact`` keeps ``flag``/``at`` as given (the memory store's own
        records); otherwise they are converted as ``FlagChange.from_dict`` does.
        Raises InvalidFlagValue for a malformed record, or a delta record whose
        flag has no earlier runtime state here (its base is missing).
        """
        if not isinstance(data, dict):
            raise InvalidFlagValue(f"malformed flag change {bounded_repr(data)}")
        flag = data.get("flag")
        if self._flags is not None and flag not in self._flags:
            return None
        if data.get("fmt") is None:  # the previous, whole format
            change = FlagChange.from_dict(data)
            self.states[change.flag] = change.new
            return change
        try:
            return self._feed_delta(data, exact)
        except InvalidFlagValue:
            raise  # (a ValueError too) already says what is wrong
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise InvalidFlagValue(f"malformed flag change {bounded_repr(data)}") from exc

    def _feed_delta(self, data: dict[str, Any], exact: bool) -> FlagChange:
        if data["fmt"] != FORMAT:
            raise InvalidFlagValue(
                f"flag history record format {bounded_repr(data['fmt'])} is newer than this "
                f"version of Foundation reads ({FORMAT})"
            )
        flag = data["flag"] if exact else str(data["flag"])
        if "old" in data:
            old = FlagState.from_dict(data["old"])
        else:
            before = self.states.get(flag)
            if before is None:
                raise InvalidFlagValue(
                    f"the history record of {bounded_repr(flag)} at {bounded_repr(data['at'])} "
                    "is a delta, but no earlier state of that flag was read"
                )
            old = patch(before, data.get("od", {}))
        new = patch(old, data["nd"])
        self._store(flag, new, data)
        at = data["at"] if exact else float(data["at"])
        return FlagChange(flag, old, new, data.get("by"), data.get("reason"), at)

    def _store(self, flag: str, new: FlagState, data: dict[str, Any]) -> None:
        if "st" not in data:
            self.states[flag] = new
        elif data["st"] is None:
            self.states.pop(flag, None)
        else:
            self.states[flag] = patch(new, data["st"])


def rebase(
    dropped: Iterable[dict[str, Any]], first_kept: Mapping[str, dict[str, Any]], *, exact: bool
) -> dict[str, dict[str, Any]]:
    """The rewrites that let a history lose its records ``dropped`` (its oldest, in commit
    order) and still replay: by flag, its first kept record (``first_kept``) made
    ``self_contained`` where it is a delta. ``exact`` as for ``Replay.feed``.

    Relies on the first record of each flag in a history being self-contained (true of
    every store's history: its first record of a flag was written with no runtime
    state before it, and each trim keeps it so); InvalidFlagValue otherwise.
    """
    replay = Replay()
    for record in dropped:
        replay.feed(record, exact=exact)
    out: dict[str, dict[str, Any]] = {}
    for flag, record in first_kept.items():
        change = replay.feed(record, exact=exact)
        if change is None:  # pragma: no cover - no flag filter: never None
            continue
        fixed = self_contained(record, change)
        if fixed is not record:
            out[flag] = fixed
    return out
