"""The INFO record of each flag change this process writes (``foundation.flags``).

Bounded whatever the flag holds: the message says what changed and ``extra``
carries the delta, never whole actor sets.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from foundation.errors import escape_controls
from foundation.flags._config import short_repr
from foundation.flags._store import FlagChange, FlagState

__all__ = ["log_change"]

_log = logging.getLogger("foundation.flags")

_LOGGED_NAMES: Final = 3
"""Actors a flag-change log message names per set (added, removed); the rest counted."""
_EXTRA_NAMES: Final = 10
"""Actors a flag-change record's ``extra`` fields list per set; the rest counted."""


def log_change(change: FlagChange) -> None:
    """One INFO record per flag change written by this process (not on the read path).

    Bounded whatever the flag holds: the message says what changed (a few actor
    names, the rest counted) and ``extra`` carries the delta (``changes``) and the
    states cut to ``_EXTRA_NAMES`` actors per set. Whole states once made the
    3,000th ``allow()`` on a flag a 90 KB line (135 MB for the 3,000 of them).
    """
    if _log.isEnabledFor(logging.INFO):
        # "by ana (canary)"; no "by None (None)" for a change made without them.
        # Escaped: a newline in a reason (an admin body, --reason) must not forge a line.
        who = f" by {escape_controls(change.by)}" if change.by is not None else ""
        why = f" ({escape_controls(change.reason)})" if change.reason else ""
        changes = _changes(change.old, change.new)
        _log.info(
            "flag %r changed%s%s: %s",
            change.flag,
            who,
            why,
            _describe(changes),
            extra={
                "flag": change.flag,
                "changes": changes,
                "old": _bounded_state(change.old),
                "new": _bounded_state(change.new),
                "by": change.by,
                "reason": change.reason,
            },
        )


def _changes(old: FlagState, new: FlagState) -> dict[str, Any]:
    """What a change did, JSON-compatible and bounded (see ``log_change``): only the
    fields that differ, ``switch``/``percentage``/``split`` as ``[old, new]``, an
    actor set or the assignments as what was added (or reassigned) and removed."""
    out: dict[str, Any] = {
        key: [before, after]
        for key, before, after in (
            ("switch", old.switch, new.switch),
            ("percentage", old.percentage, new.percentage),
            ("split", _split_dict(old.split), _split_dict(new.split)),
        )
        if before != after
    }
    for key, was, now in (("allow", old.allow, new.allow), ("deny", old.deny, new.deny)):
        if was != now:
            out[key] = _set_change(now - was, was - now, len(now))
    if old.assign != new.assign:
        out["assign"] = _assign_change(old.assign, new.assign)
    return out


def _assign_change(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, Any]:
    """``_set_change`` of the assignments; ``added`` maps each listed actor to its variant."""
    assigned = [a for a, variant in new.items() if old.get(a) != variant]
    change = _set_change(assigned, [a for a in old if a not in new], len(new))
    change["added"] = {a: new[a] for a in change["added"]}
    return change


def _set_change(added: Iterable[str], removed: Iterable[str], size: int) -> dict[str, Any]:
    """The first ``_EXTRA_NAMES`` (sorted) of ``added`` and ``removed``, their counts,
    and the ``size`` of the set after (heapq: O(n), no sort of a big set)."""
    added, removed = list(added), list(removed)
    return {
        "added": heapq.nsmallest(_EXTRA_NAMES, added),
        "added_count": len(added),
        "removed": heapq.nsmallest(_EXTRA_NAMES, removed),
        "removed_count": len(removed),
        "size": size,
    }


def _split_dict(split: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if split is None else dict(sorted(split.items()))


def _describe(changes: dict[str, Any]) -> str:
    """``changes`` as the log message says it: "switch off -> on; allow added 'u1' (3 now)"."""
    parts = [f"{key} {_describe_field(key, value)}" for key, value in changes.items()]
    return "; ".join(parts) or "no effective change (the runtime state was written or cleared)"


def _describe_field(key: str, value: Any) -> str:
    if key in ("allow", "deny", "assign"):
        return _describe_set(value)
    if key == "switch":
        return "{} -> {}".format(*("on" if switch else "off" for switch in value))
    return "{} -> {}".format(*(short_repr(v) for v in value))


def _describe_set(change: dict[str, Any]) -> str:
    """ "added 'a', 'b', 'c' +7 more, removed 'x' (12 now)"."""
    added = change["added"]
    if isinstance(added, dict):  # assignments: 'ana'='blue'
        added = [f"{short_repr(a)}={short_repr(v)}" for a, v in added.items()]
    else:
        added = [short_repr(a) for a in added]
    removed = [short_repr(a) for a in change["removed"]]
    parts = [
        f"{verb} {_first_few(names, count)}"
        for verb, names, count in (
            ("added", added, change["added_count"]),
            ("removed", removed, change["removed_count"]),
        )
        if count
    ]
    return f"{', '.join(parts)} ({change['size']} now)"


def _first_few(names: list[str], count: int) -> str:
    shown = ", ".join(names[:_LOGGED_NAMES])
    return shown if count <= _LOGGED_NAMES else f"{shown} +{count - _LOGGED_NAMES} more"


def _bounded_state(state: FlagState) -> dict[str, Any]:
    """``state.to_dict()`` with each actor set and the assignments cut to their first
    ``_EXTRA_NAMES`` (sorted); a cut one's whole size under ``"truncated"``."""
    out: dict[str, Any] = {
        "switch": state.switch,
        "percentage": state.percentage,
        "allow": heapq.nsmallest(_EXTRA_NAMES, state.allow),
        "deny": heapq.nsmallest(_EXTRA_NAMES, state.deny),
    }
    if state.assign:
        out["assign"] = {a: state.assign[a] for a in heapq.nsmallest(_EXTRA_NAMES, state.assign)}
    if state.split is not None:
        out["split"] = _split_dict(state.split)
    sizes = {"allow": len(state.allow), "deny": len(state.deny), "assign": len(state.assign)}
    truncated = {key: size for key, size in sizes.items() if size > _EXTRA_NAMES}
    if truncated:
        out["truncated"] = truncated
    return out
