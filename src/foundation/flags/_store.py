"""Flag stores: where runtime flag state, its audit trail and migration stages live.

STABLE INTERFACE. Other stores (``RedisFlagStore``) implement exactly this; change
it only with every implementation in view.

Records (all frozen, all JSON round-trippable through ``to_dict``/``from_dict``
and ``to_json``/``from_json``, so any store or language can persist them):

``FlagState(switch, percentage=None, allow=frozenset(), deny=frozenset(), assign={}, split=None)``
    The whole state of one flag. ``percentage`` is None or a float in
    ``[0, 100]``. Actors in ``allow``/``deny`` are strings (``FeatureFlags``
    normalises an ``int`` actor with ``str()``). Typed flags use ``assign``
    (read-only mapping actor -> variant name) and ``split`` (None, or a
    read-only mapping variant name -> share in percent, shares summing to 100).
    JSON form::

        {"switch": true, "percentage": 25.0, "allow": ["a"], "deny": []}

    with ``allow``/``deny`` sorted, so equal states serialise to equal text;
    the keys ``"assign"`` (an object sorted by actor) and ``"split"`` (an
    object sorted by variant) are present only when non-empty / not None, so
    boolean flags and records written before typed flags look exactly as they
    did, and such old records load unchanged.

``FlagChange(flag, old, new, by, reason, at)``
    One audit record. ``old``/``new`` are the flag's *effective* state before
    and after the change, as seen by the writer (runtime state, else the
    config layer, else the declared default), so they are never None.
    ``by``/``reason`` are free text or None; ``at`` is Unix time in seconds.
    ``no_op`` (derived, not stored) is True when ``old == new``: the write
    changed the runtime layer only (pinned what config or the default already
    gave, or cleared a runtime state equal to it). It is recorded all the same:
    the runtime layer overrides config in every process sharing the store
    (whose config may differ), survives restarts, and its record is what tells
    other processes to reload. A write that changes no runtime state records
    nothing and notifies nobody (``FeatureFlags``).

``MigrationEvent(plan, action, from_stage, to_stage, by, reason, at)``
    One migration step. ``action`` is one of ``MIGRATION_ACTIONS``. Events are
    self-contained (no deltas), and a plan's stage is stored apart from them:
    trimming events never changes a stage.

Store contract (``FlagStore``):

``load_states() -> dict[str, FlagState]``
    Every persisted runtime state, by flag name (flags without runtime state
    are absent). A consistent snapshot: never half of a transaction.

``transaction(fn) -> T``
    Runs ``fn(txn)`` with exclusive write access to the store and commits
    everything ``fn`` put through ``txn`` atomically (all state writes, their
    history records and the migration stage, or nothing). If ``fn`` raises,
    nothing is written and the exception propagates unchanged. A store may
    call ``fn`` more than once (optimistic stores retry on conflict), so ``fn``
    must not have side effects other than ``txn`` calls. Inside it:

    - ``txn.get(name) -> FlagState | None``: the committed runtime state (None:
      none), reflecting this transaction's own earlier ``put``.
    - ``txn.put(name, state | None, change)``: set (None: delete) the runtime
      state of ``name`` and append ``change`` to the history.
    - ``txn.migration_stage(plan) -> int``: the committed stage (0 if none).
    - ``txn.put_migration(plan, stage, event)``: set the stage and append
      ``event`` to the plan's history.

    Transactions are serialised across every thread, process and node sharing
    the store: a read inside ``fn`` is never stale at commit. Failure to reach
    the backend raises ``errors.BackendUnavailable``; a backend that is
    corrupt or unreadable raises ``errors.FlagError``; in both cases nothing
    was written.

``history(flag=None) -> list[FlagChange]``
    Committed changes, oldest first, of one flag or of all, each with whole
    ``old``/``new`` states. The built-in stores keep a record as the change
    only (a delta of the runtime state it replaced, ``foundation.flags._history``),
    so history grows with the size of the changes, not of the states. They keep
    the last ``history_limit`` records of all flags together (a constructor
    option, default ``DEFAULT_HISTORY_LIMIT``; None: all): see "Retention" in
    ``_history``.

``migration_stage(plan) -> int`` and ``migration_history(plan) -> list[MigrationEvent]``
    Committed stage of ``plan`` (0 if never written) and its events, oldest first.
    The built-in stores keep the last ``history_limit`` events of all plans
    together, trimmed as the flag history is but counted apart from it (a
    plan stepped in a loop by automation would otherwise grow the store
    without bound); the stage is kept apart and never read from events.

``subscribe(callback) -> unsubscribe``
    ``callback(changes: list[FlagChange])`` is called after a transaction
    committed through ANOTHER store object (another process, node, or store
    instance on the same file) changed flag state, so the subscriber reloads
    with ``load_states()``. ``changes`` are that transaction's history records
    when the store knows them; an empty list means "something changed, reload"
    (for example after a lost notification). Changes made through this store
    object are reported too, to every subscriber but the one that wrote them:
    several ``FeatureFlags`` (an application's and an admin tool's
    ``from_store``) may share one store object, and each must see the others'
    writes. The writer names itself with ``writing_as(callback)`` around
    ``transaction``/``kill_switch`` (``FeatureFlags`` does): that subscription
    is skipped, since the writer already knows its change. Callbacks run on
    a store-owned thread, must be quick, and must not raise (an exception is
    logged under ``foundation.flags`` and passed to ``sys.unraisablehook`` if
    one is installed; the thread carries on). Delivery is at least once and in
    commit order per subscriber. A store that ignores ``writing_as`` (a
    third-party one written before it) reports only other objects' changes.

``record_catalogue(flags)`` / ``catalogue() -> dict[str, FlagInfo]``
    The flag catalogue: every flag some application declared on this store
    (``FeatureFlags`` records its declarations at construction), so tools can
    list and change flags without the application's code. ``record_catalogue``
    adds or replaces entries by name (the catalogue is the union of what every
    application version declared; nothing is ever removed) and writes nothing
    when every entry is already recorded as given. Not in the history.

``record_plan(name, plan)`` / ``plans() -> dict[str, MigrationPlan]``
    The migration plans recorded by ``Migration`` (by plan name; the last
    record of a name wins), so tools can drive a migration from the store alone.

``plan_flags(name) -> dict[str, int]``
    Every flag any recorded version of plan ``name`` named, with the highest
    stage a version put it in: the union over every ``record_plan`` of that
    name, which never shrinks (a rolling deploy's older node records its
    shorter plan again; the flags a newer version's later stage turned on are
    still listed, so an emergency rollback from any deploy turns them off).
    ``record_plan`` adds to it, besides the plan's flags, those of the plan
    recorded under that name until then (an older library's record adds
    none), in the same write as the plan record (a store that cannot do both
    atomically adds to it first). A rollback also turns off the flags of the
    plan recorded now (an older node may record after this one). Stored apart from the
    plan records, add-only, so a version that knows nothing of it (an older
    library overwriting the plan record) does not shrink it.

    These five are not abstract: a store that does not implement them keeps
    nothing (``catalogue()`` and ``plans()`` answer empty, ``plan_flags`` the
    flags of the recorded plan).

``kill_switch(fn) -> T``
    Like ``transaction(fn)``, for a write that only turns switches off
    (``FeatureFlags.disable``, ``Migration.emergency_rollback``). The default
    is ``transaction(fn)``. A store that can keep a kill switch through an
    outage (``RedisFlagStore``) may instead apply it to its local view and
    commit it when the backend returns, rather than raise
    ``errors.BackendUnavailable``. Not abstract: existing stores need nothing.

``close()``
    Stops background threads and releases connections; idempotent. Any other
    call after ``close()`` (reads, ``transaction``, ``kill_switch`` and
    ``subscribe`` included) raises ``errors.Closed`` (a ``RuntimeError``).

Thread-safety: every method may be called from any thread concurrently.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from foundation import _fork
from foundation._listeners import check_listener
from foundation._unraisable import report_unraisable
from foundation.errors import Closed, InvalidConfig, InvalidFlagValue, bounded_repr
from foundation.flags._typed import (
    EMPTY,
    SHARE_TOLERANCE,
    FrozenDict,
    check_flag,
    declaration_repr,
    is_valid_unicode,
    kind_of,
)

if TYPE_CHECKING:
    from foundation.flags._migration import MigrationPlan

__all__ = [
    "MIGRATION_ACTIONS",
    "FlagChange",
    "FlagInfo",
    "FlagState",
    "FlagStore",
    "MemoryFlagStore",
    "MigrationEvent",
    "StoreTransaction",
]

T = TypeVar("T")

log = logging.getLogger("foundation.flags")

MIGRATION_ACTIONS = ("advance", "rollback", "emergency_rollback", "auto_rollback")


def _actors(value: Iterable[Any], what: str) -> frozenset[str]:
    if isinstance(value, str | bytes):
        raise InvalidFlagValue(
            f"{what} must be a collection of actor strings, not {bounded_repr(value)}"
        )
    try:
        out = frozenset(value)
    except TypeError:  # not iterable, or an unhashable member
        raise InvalidFlagValue(
            f"{what} must be a collection of actor strings, not {bounded_repr(value)}"
        ) from None
    for actor in out:
        if not isinstance(actor, str):
            raise InvalidFlagValue(f"{what} holds a non-string actor {bounded_repr(actor)}")
    return out


MAX_STAGE = 2**63 - 1
"""The largest migration stage a store keeps (a signed 64-bit integer, as SQLite's)."""


DEFAULT_HISTORY_LIMIT = 10_000
"""Records (all flags together) a flag store keeps by default; see the module docs."""


def check_history_limit(value: object) -> int | None:
    """``history_limit`` as a store keeps it: None, or an int of at least 1 (else InvalidConfig).

    Example:
        >>> check_history_limit(500), check_history_limit(None)
        (500, None)
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfig(
            f"history_limit must be None or an int of at least 1, not {bounded_repr(value)}"
        )
    return value


def trim_slack(limit: int) -> int:
    """Records a store may hold beyond ``limit`` before it trims (10 %, at least 1): a
    trim of ``trim_slack`` records every ``trim_slack`` commits keeps commits O(change).

    Example:
        >>> trim_slack(10_000), trim_slack(5)
        (1000, 1)
    """
    return max(1, limit // 10)


def check_key(name: object, what: str) -> str:
    """A flag or plan name as a store keeps it: a non-empty, valid-Unicode ``str``.

    One rule on every store (the memory store would keep anything, SQLite and
    Redis would fail on a lone surrogate), for writes and reads alike.
    """
    if not isinstance(name, str) or not name:
        raise InvalidFlagValue(f"{what} must be a non-empty string, not {bounded_repr(name)}")
    if not is_valid_unicode(name):
        raise InvalidFlagValue(
            f"{what} must be valid Unicode (no lone surrogates), not {bounded_repr(name)}"
        )
    return name


def check_put(name: object, state: object, change: object) -> None:
    """The arguments of ``StoreTransaction.put``, checked alike by every store."""
    check_key(name, "flag name")
    if state is not None and not isinstance(state, FlagState):
        raise InvalidFlagValue(f"state must be a FlagState or None, not {bounded_repr(state)}")
    if not isinstance(change, FlagChange):
        raise InvalidFlagValue(f"change must be a FlagChange, not {bounded_repr(change)}")
    if change.flag != name:  # else the stores file it under different flags
        raise InvalidFlagValue(
            f"the change of flag {bounded_repr(change.flag)} is put under {bounded_repr(name)}"
        )


def check_put_migration(plan: object, stage: object, event: object) -> None:
    """The arguments of ``StoreTransaction.put_migration``, checked alike by every store."""
    check_key(plan, "plan name")
    if isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage <= MAX_STAGE:
        raise InvalidFlagValue(f"stage must be an int in 0..2**63-1, not {bounded_repr(stage)}")
    if not isinstance(event, MigrationEvent):
        raise InvalidFlagValue(f"event must be a MigrationEvent, not {bounded_repr(event)}")
    if event.plan != plan:  # else the stores file it under different plans
        raise InvalidFlagValue(
            f"the event of plan {bounded_repr(event.plan)} is put under plan {bounded_repr(plan)}"
        )


def check_percentage(p: object) -> float:
    """Return ``p`` as a float if it is a real number in [0, 100], else raise InvalidFlagValue."""
    if isinstance(p, bool) or not isinstance(p, int | float):
        raise InvalidFlagValue(f"percentage must be a number in 0..100, not {type(p).__name__}")
    if isinstance(p, int) and not 0 <= p <= 100:  # before float(): 10**400 overflows it
        raise InvalidFlagValue("percentage must be within 0..100")
    value = float(p)
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise InvalidFlagValue(f"percentage must be within 0..100, not {value!r}")
    return value


def _assignments(value: object) -> FrozenDict:
    if value is EMPTY:
        return EMPTY
    if not isinstance(value, Mapping):
        raise InvalidFlagValue(
            f"assign must be a mapping actor -> variant, not {bounded_repr(value)}"
        )
    for actor, variant in value.items():
        if not isinstance(actor, str):
            raise InvalidFlagValue(f"assign holds a non-string actor {bounded_repr(actor)}")
        if not isinstance(variant, str) or not variant:
            raise InvalidFlagValue(
                f"assign maps {bounded_repr(actor)} to {bounded_repr(variant)}, not a variant name"
            )
    if isinstance(value, FrozenDict):
        return value
    return FrozenDict(sorted(value.items())) if value else EMPTY


def _split(value: object) -> FrozenDict | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidFlagValue(
            f"split must be a mapping variant -> percent, not {bounded_repr(value)}"
        )
    out: dict[str, float] = {}
    for variant, share in value.items():
        if not isinstance(variant, str) or not variant:
            raise InvalidFlagValue(f"split names a variant {bounded_repr(variant)}, not a name")
        out[variant] = check_percentage(share)
    total = math.fsum(out.values())
    if abs(total - 100.0) > SHARE_TOLERANCE:
        raise InvalidFlagValue(f"the shares of a split must sum to 100, not {total!r}")
    return value if isinstance(value, FrozenDict) and value == out else FrozenDict(out)


@dataclass(frozen=True, slots=True)
class FlagState:
    """The state of one flag: a switch, an optional percentage, allow and deny sets,
    and for typed flags per-actor assignments and a split across variants.

    Example:
        >>> s = FlagState(True, 25.0, frozenset({"alice"}))
        >>> FlagState.from_json(s.to_json()) == s
        True
        >>> s.to_json()
        '{"switch": true, "percentage": 25.0, "allow": ["alice"], "deny": []}'
        >>> t = FlagState(True, assign={"bob": "blue"}, split={"red": 60, "blue": 40})
        >>> t.to_json()
        '{"switch": true, "percentage": null, "allow": [], "deny": [], "assign": {"bob": "blue"}, "split": {"blue": 40.0, "red": 60.0}}'
        >>> FlagState.from_json(t.to_json()) == t
        True
    """  # noqa: E501

    switch: bool
    percentage: float | None = None
    allow: frozenset[str] = field(default_factory=frozenset)
    deny: frozenset[str] = field(default_factory=frozenset)
    assign: Mapping[str, str] = field(default=EMPTY)
    split: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.switch, bool):
            raise InvalidFlagValue(f"switch must be a bool, not {bounded_repr(self.switch)}")
        if self.percentage is not None:
            object.__setattr__(self, "percentage", check_percentage(self.percentage))
        object.__setattr__(self, "allow", _actors(self.allow, "allow"))
        object.__setattr__(self, "deny", _actors(self.deny, "deny"))
        object.__setattr__(self, "assign", _assignments(self.assign))
        object.__setattr__(self, "split", _split(self.split))

    def __repr__(self) -> str:
        # The typed fields only when set: boolean states read as they always did.
        text = (
            f"FlagState(switch={self.switch!r}, percentage={self.percentage!r}, "
            f"allow={self.allow!r}, deny={self.deny!r}"
        )
        if self.assign:
            text += f", assign={dict(self.assign)!r}"
        if self.split is not None:
            text += f", split={dict(self.split)!r}"
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (sorted actor lists; typed keys only when set)."""
        out: dict[str, Any] = {
            "switch": self.switch,
            "percentage": self.percentage,
            "allow": sorted(self.allow),
            "deny": sorted(self.deny),
        }
        if self.assign:
            out["assign"] = dict(sorted(self.assign.items()))
        if self.split is not None:
            out["split"] = dict(sorted(self.split.items()))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlagState:
        """Inverse of ``to_dict``; raises InvalidFlagValue on a malformed record."""
        try:
            return cls(
                data["switch"],
                data.get("percentage"),
                _actors(data.get("allow", ()), "allow"),
                _actors(data.get("deny", ()), "deny"),
                _assignments(data.get("assign", EMPTY)),
                _split(data.get("split")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidFlagValue(f"malformed flag state {bounded_repr(data)}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> FlagState:
        return cls.from_dict(_loads(text))


def unchecked_state(  # noqa: PLR0917 - one per field
    switch: bool,
    percentage: float | None,
    allow: frozenset[str],
    deny: frozenset[str],
    assign: Mapping[str, str],
    split: Mapping[str, float] | None,
) -> FlagState:
    """A ``FlagState`` from parts ALREADY in checked form (as ``FlagState`` holds them),
    without checking every actor again: the history replay builds each record's
    state from the previous one and checks only what a delta adds (see _history)."""
    state = object.__new__(FlagState)
    for name, value in (
        ("switch", switch),
        ("percentage", percentage),
        ("allow", allow),
        ("deny", deny),
        ("assign", assign),
        ("split", split),
    ):
        object.__setattr__(state, name, value)
    return state


@dataclass(frozen=True, slots=True)
class FlagChange:
    """One audited flag change: effective state ``old`` -> ``new``, who, why, when.

    Example:
        >>> c = FlagChange("beta", FlagState(False), FlagState(True), "ana", "launch", 1.5)
        >>> FlagChange.from_json(c.to_json()) == c
        True
    """

    flag: str
    old: FlagState
    new: FlagState
    by: str | None = None
    reason: str | None = None
    at: float = 0.0

    @property
    def no_op(self) -> bool:
        """True when the effective state did not change as the writer saw it
        (``old == new``): the write only set or removed the runtime state (see
        the module docs: it is recorded, since the runtime layer overrides other
        processes' config)."""
        return self.old == self.new

    def to_dict(self) -> dict[str, Any]:
        return {
            "flag": self.flag,
            "old": self.old.to_dict(),
            "new": self.new.to_dict(),
            "by": self.by,
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlagChange:
        try:
            return cls(
                str(data["flag"]),
                FlagState.from_dict(data["old"]),
                FlagState.from_dict(data["new"]),
                data.get("by"),
                data.get("reason"),
                float(data["at"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidFlagValue(f"malformed flag change {bounded_repr(data)}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> FlagChange:
        return cls.from_dict(_loads(text))


@dataclass(frozen=True, slots=True)
class MigrationEvent:
    """One migration step of plan ``plan``: ``action`` from one stage to another.

    Example:
        >>> e = MigrationEvent("default", "advance", 0, 1, "ops", "go", 2.0)
        >>> MigrationEvent.from_json(e.to_json()) == e
        True
    """

    plan: str
    action: str
    from_stage: int
    to_stage: int
    by: str | None = None
    reason: str | None = None
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "action": self.action,
            "from_stage": self.from_stage,
            "to_stage": self.to_stage,
            "by": self.by,
            "reason": self.reason,
            "at": self.at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MigrationEvent:
        try:
            return cls(
                str(data["plan"]),
                str(data["action"]),
                int(data["from_stage"]),
                int(data["to_stage"]),
                data.get("by"),
                data.get("reason"),
                float(data["at"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InvalidFlagValue(f"malformed migration event {bounded_repr(data)}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> MigrationEvent:
        return cls.from_dict(_loads(text))


@dataclass(frozen=True, slots=True)
class FlagInfo:
    """One entry of the flag catalogue kept in a store: a declared flag's name, default,
    description and, for a typed flag, its variants (see ``FlagStore.catalogue``).

    A typed flag's ``default`` is its default variant's name; the JSON key
    ``"variants"`` is written only for typed flags.

    Example:
        >>> info = FlagInfo("beta", False, "the beta checkout")
        >>> FlagInfo.from_json(info.to_json()) == info
        True
        >>> info.to_json()
        '{"name": "beta", "default": false, "description": "the beta checkout"}'
        >>> typed = FlagInfo("color", "red", "", {"red": "#f00", "blue": "#00f"})
        >>> typed.kind, FlagInfo.from_json(typed.to_json()) == typed
        ('string', True)
    """

    name: str
    default: bool | str = False
    description: str = ""
    variants: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        # The rules of Flag: a stored record is served as JSON by every tool.
        variants = check_flag(self.name, self.default, self.description, self.variants)
        object.__setattr__(self, "variants", variants)

    def __repr__(self) -> str:
        return declaration_repr(
            "FlagInfo", self.name, self.default, self.description, self.variants
        )

    @property
    def kind(self) -> str:
        """``"boolean"``, or the typed flag's kind (``"string"``, ``"integer"``, ...)."""
        return kind_of(self.variants)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "default": self.default,
            "description": self.description,
        }
        if self.variants is not None:
            out["variants"] = dict(self.variants)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlagInfo:
        """Inverse of ``to_dict``; raises InvalidFlagValue on a malformed record."""
        try:
            return cls(
                data["name"],
                data.get("default", False),
                data.get("description", ""),
                data.get("variants"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidFlagValue(f"malformed flag catalogue entry {bounded_repr(data)}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | bytes) -> FlagInfo:
        return cls.from_dict(_loads(text))


def catalogue_entries(flags: Iterable[Any]) -> dict[str, FlagInfo]:
    """``FlagInfo`` by name from ``FlagInfo`` or ``Flag`` objects (anything with the
    attributes name, default, description and optionally variants); InvalidFlagValue
    for anything else."""
    out: dict[str, FlagInfo] = {}
    if isinstance(flags, str | bytes | Mapping) or not isinstance(flags, Iterable):
        raise InvalidFlagValue(
            f"a catalogue is an iterable of flag declarations, not {bounded_repr(flags)}"
        )
    for flag in flags:
        if isinstance(flag, FlagInfo):
            info = flag
        else:
            try:
                info = FlagInfo(
                    flag.name, flag.default, flag.description, getattr(flag, "variants", None)
                )
            except AttributeError as exc:
                raise InvalidFlagValue(f"not a flag declaration: {bounded_repr(flag)}") from exc
        out[info.name] = info
    return out


def plan_to_json(plan: MigrationPlan) -> str:
    """A ``MigrationPlan`` as JSON text (sorted keys: equal plans give equal text)."""
    from foundation.flags._migration import MigrationPlan  # _migration imports this module

    if not isinstance(plan, MigrationPlan):
        raise InvalidFlagValue(f"not a MigrationPlan: {bounded_repr(plan)}")
    return json.dumps(plan.to_dict(), sort_keys=True)


def plan_from_json(text: str | bytes) -> MigrationPlan:
    """Inverse of ``plan_to_json``; FlagError on a malformed record."""
    from foundation.flags._migration import MigrationPlan  # _migration imports this module

    return MigrationPlan.from_dict(_loads(text))


def plan_flag_entries(name: str, plan: MigrationPlan) -> list[tuple[str, int]]:
    """The (flag, stage) pairs ``record_plan(name, plan)`` adds to ``plan_flags(name)``."""
    return [(flag, stage.number) for stage in plan.stages for flag in stage.flags]


def plan_flag_field(name: str, flag: str, stage: int) -> str:
    """One (plan, flag, stage) entry of the plan flags as a key (Redis' hash field)."""
    return json.dumps([name, flag, stage])


def plan_flags_of(name: str, fields: Iterable[str]) -> dict[str, int]:
    """``plan_flags(name)`` from ``plan_flag_field`` keys (other plans' are skipped;
    a malformed one too, with a WARNING: the others still count)."""
    found: dict[str, int] = {}
    for entry in fields:
        try:
            plan, flag, stage = json.loads(entry)
            if plan != name:
                continue
            if not isinstance(flag, str) or isinstance(stage, bool) or not isinstance(stage, int):
                raise TypeError("not [plan, flag, stage]")
        except Exception as exc:  # also a record of the wrong length, or nested too deep
            log.warning(
                "malformed migration plan flag record %s: %s",
                bounded_repr(entry),
                bounded_repr(exc),
            )
            continue
        found[flag] = max(stage, found.get(flag, 0))
    return found


def _loads(text: str | bytes) -> Any:
    """Decode one stored record; corrupt data is InvalidFlagValue (a FlagError), whatever
    the failure: bad JSON, bad UTF-8, or nesting too deep for the decoder (RecursionError)."""
    try:
        return json.loads(text)
    except Exception as exc:  # RecursionError, ValueError, TypeError, MemoryError...
        raise InvalidFlagValue(
            f"malformed record ({type(exc).__name__}): {bounded_repr(text)}"
        ) from exc


class StoreTransaction(ABC):
    """The view of a store inside ``FlagStore.transaction`` (see the module docs)."""

    @abstractmethod
    def get(self, name: str) -> FlagState | None: ...

    @abstractmethod
    def put(self, name: str, state: FlagState | None, change: FlagChange) -> None: ...

    @abstractmethod
    def migration_stage(self, plan: str) -> int: ...

    @abstractmethod
    def put_migration(self, plan: str, stage: int, event: MigrationEvent) -> None: ...


class FlagStore(ABC):
    """Persistence of runtime flag state, history and migration stages (see module docs)."""

    @abstractmethod
    def load_states(self) -> dict[str, FlagState]: ...

    @abstractmethod
    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T: ...

    @abstractmethod
    def history(self, flag: str | None = None) -> list[FlagChange]: ...

    @abstractmethod
    def migration_stage(self, plan: str) -> int: ...

    @abstractmethod
    def migration_history(self, plan: str) -> list[MigrationEvent]: ...

    @abstractmethod
    def subscribe(self, callback: Callable[[list[FlagChange]], None]) -> Callable[[], None]: ...

    @abstractmethod
    def close(self) -> None: ...

    def kill_switch(self, fn: Callable[[StoreTransaction], T]) -> T:
        """Commit a switch-off write (see the module docs); by default ``transaction(fn)``."""
        return self.transaction(fn)

    def record_catalogue(self, flags: Iterable[FlagInfo]) -> None:
        """Add or replace these catalogue entries (see the module docs); by default nothing."""
        catalogue_entries(flags)

    def catalogue(self) -> dict[str, FlagInfo]:
        """Every recorded flag declaration by name; by default none."""
        return {}

    def record_plan(self, name: str, plan: MigrationPlan) -> None:
        """Record ``plan`` under ``name`` (see the module docs); by default nothing."""
        check_key(name, "plan name")
        plan_to_json(plan)  # still refuses what is not a plan

    def plans(self) -> dict[str, MigrationPlan]:
        """Every recorded migration plan by name; by default none."""
        return {}

    def plan_flags(self, name: str) -> dict[str, int]:
        """Every flag any recorded version of plan ``name`` named -> the highest stage one
        put it in (see the module docs); by default the recorded plan's flags."""
        check_key(name, "plan name")
        plan = self.plans().get(name)
        return {} if plan is None else dict(plan_flag_entries(name, plan))

    def _known_plan_flags(self, name: str) -> dict[str, int]:
        """``plan_flags(name)`` for a rollback: a store with a local copy answers from it
        when it holds them (no wait on a backend that does not answer)."""
        return self.plan_flags(name)

    def _known_plan(self, name: str) -> MigrationPlan | None:
        """The plan recorded as ``name`` (or None), as ``_known_plan_flags`` answers."""
        return self.plans().get(name)

    def __enter__(self) -> FlagStore:
        """``self``; ``Closed`` if closed (a closed store is not reused)."""
        if getattr(self, "_closed", False):  # each store's flag, set by its close()
            # The Closed its other calls raise (naming fork() for a store it closed).
            check = getattr(self, "_check_open", None) or getattr(self, "_check", None)
            if callable(check):
                check()
            raise Closed(f"this {type(self).__name__} is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_trim(
    store: object, dropped: int, limit: int, trims: int, what: str = "flag history"
) -> None:
    """The log line of a history trim: INFO for a store's first, DEBUG after (``what``:
    ``"flag history"`` or ``"migration history"``, each counted on its own)."""
    level = logging.INFO if trims == 1 else logging.DEBUG
    log.log(
        level,
        "%r: %s trimmed by %d records to the last %d (history_limit)",
        store, what, dropped, limit,
    )  # fmt: skip


def events_to_keep(count: int, limit: int | None) -> int | None:
    """How many of ``count`` migration events to keep (the last ones), or None: no
    trim due. The rule of the flag history: over ``limit + trim_slack`` -> ``limit``.

    Example:
        >>> events_to_keep(1101, 1000), events_to_keep(1100, 1000), events_to_keep(5, None)
        (1000, None, None)
    """
    if limit is None or count <= limit + trim_slack(limit):
        return None
    return limit


_WRITER: ContextVar[object] = ContextVar("foundation_flags_writer", default=None)


@contextmanager
def writing_as(callback: object) -> Iterator[None]:
    """The transactions run in this block are written by the subscriber ``callback``
    (the very object passed to ``subscribe``): the store does not tell it about them
    (see ``subscribe`` in the module docs)."""
    token = _WRITER.set(callback)
    try:
        yield
    finally:
        _WRITER.reset(token)


def current_writer(callbacks: Iterable[object]) -> object:
    """The subscriber among ``callbacks`` writing in this context (``writing_as``), or None."""
    writer = _WRITER.get()
    if writer is None:
        return None
    return writer if any(c is writer for c in callbacks) else None


class SubscriberMarks:
    """A store's mark of each live subscription: text never reused, so a record of
    a change can name its writer (``writing_as``) and the store skip only that one.

    Not ``id()`` alone: a subscriber freed before its change was delivered could
    share it with a newer one, which would then miss the change. The caller
    holds the store's lock for ``add``/``remove``; ``of`` is one dict lookup.
    """

    __slots__ = ("_next", "_of")

    def __init__(self) -> None:
        self._next = 0
        self._of: dict[int, str] = {}  # id(callback) -> mark; the store holds the callback

    def add(self, callback: object) -> None:
        if id(callback) not in self._of:  # subscribed twice: one mark
            self._next += 1
            self._of[id(callback)] = str(self._next)

    def remove(self, callback: object, remaining: Iterable[object]) -> None:
        """Forget ``callback``'s mark unless it is still subscribed (``remaining``)."""
        if not any(c is callback for c in remaining):
            self._of.pop(id(callback), None)

    def of(self, callback: object) -> str:
        """``callback``'s mark; "" for None or a callback not subscribed."""
        return "" if callback is None else self._of.get(id(callback), "")


_Subscriber = Callable[[list[FlagChange]], None]


class Courier:
    """A store's outbox of deliveries to its subscribers, and the thread that
    delivers them: it runs only while there is something to deliver.

    Used where a commit made through one subscriber must reach the others
    (several ``FeatureFlags`` sharing one store object) and the committing
    thread must not call them: the writer (``FeatureFlags``) holds its own lock
    around the commit, and a subscriber's callback takes its own, so two of
    them writing at once would each wait for the other.

    ``live()`` (called on the courier thread, never under the courier's lock:
    the owner may hold its own lock around ``post``) gives the current
    subscribers; one unsubscribed since ``post`` is skipped. Races: items are
    delivered one at a time in ``post`` order, so a caller that posts under its
    own lock in commit order has every subscriber hear those commits in order.
    """

    __slots__ = ("_closed", "_live", "_lock", "_name", "_outbox", "_owner", "_thread")

    CLOSE_WAIT: ClassVar[float] = 5.0  # seconds close() waits for a running callback

    def __init__(self, name: str, owner: object, live: Callable[[], Iterable[_Subscriber]]) -> None:
        self._name = name
        self._owner = owner  # named in a report of a failure to start the thread
        self._live = live
        self._lock = threading.Lock()
        self._outbox: deque[tuple[tuple[_Subscriber, ...], list[FlagChange]]] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def post(self, targets: tuple[_Subscriber, ...], changes: list[FlagChange]) -> None:
        """Queue ``changes`` for ``targets``; start the thread if none runs."""
        with self._lock:
            if self._closed or not targets:
                return
            self._outbox.append((targets, list(changes)))
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                # The thread limit. The commit stands (nothing half-changed): the
                # item stays queued and the next post tries again.
                report_callback_error(exc, self._owner, f"{self._name} courier")
                return
            self._thread = thread

    def _run(self) -> None:
        """Deliver the outbox, then exit.

        Race: a ``post`` while this thread decides to exit. Both happen under
        ``_lock``: the post either sees ``_thread`` still set (this thread then
        finds its item) or None (it starts a new thread).
        """
        # Python >= 3.14 (thread_inherit_context): a thread started inside a
        # writer's ``writing_as`` block inherits it. No commit made from a
        # callback here is that writer's: its own subscription would skip it.
        _WRITER.set(None)
        while True:
            with self._lock:
                if not self._outbox or self._closed:
                    self._outbox.clear()
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                targets, changes = self._outbox.popleft()
            live = tuple(self._live())
            for callback in targets:
                if any(c is callback for c in live):  # not unsubscribed meanwhile
                    try:
                        callback(list(changes))
                    except BaseException as exc:  # SystemExit too: it would end the courier
                        report_callback_error(exc, callback)

    def close(self) -> None:
        """Drop what is queued and wait for the thread (not from a callback: that
        one exits once the callback returns), at most ``CLOSE_WAIT`` s: a
        subscriber stuck in its callback must not hold ``close()`` for ever (the
        daemon thread then ends when that callback returns; a WARNING says so)."""
        with self._lock:
            self._closed = True
            self._outbox.clear()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.CLOSE_WAIT)
            if thread.is_alive():
                log.warning(
                    "%s: a subscriber's callback still runs %.0f s after close(); "
                    "left to end on its daemon thread", self._name, self.CLOSE_WAIT,
                )  # fmt: skip


def report_callback_error(
    exc: BaseException, callback: object, what: str = "flag store subscriber"
) -> None:
    """Log a callback's exception under ``foundation.flags`` (and pass it to an installed
    ``sys.unraisablehook``); it must never escape."""

    report_unraisable(exc, what, callback)


class _MemoryTransaction(StoreTransaction):
    def __init__(self, store: MemoryFlagStore) -> None:
        self._store = store
        self.states: dict[str, FlagState | None] = {}
        self.changes: list[dict[str, Any]] = []  # records as _history.encode makes them
        self.originals: list[FlagChange] = []  # ... and as put: what subscribers are told
        self.stages: dict[str, int] = {}
        self.events: list[MigrationEvent] = []

    def get(self, name: str) -> FlagState | None:
        check_key(name, "flag name")
        if name in self.states:
            return self.states[name]
        return self._store._states.get(name)

    def put(self, name: str, state: FlagState | None, change: FlagChange) -> None:
        from foundation.flags._history import encode  # _history imports this module

        check_put(name, state, change)
        # Kept as a delta of the runtime state it replaces (see _history): O(change);
        # whole when the history holds no record of the flag (all trimmed): a delta's
        # base would be in no record.
        before = self.get(name) if self._has_records(name) else None
        self.changes.append(encode(change, before, state))
        self.originals.append(change)
        self.states[name] = state

    def _has_records(self, name: str) -> bool:
        # O(1): a flag put earlier in this transaction (in ``states``) has a record
        # in it; a scan of ``changes`` made a commit of n new flags O(n^2).
        return name in self.states or name in self._store._changes_of

    def migration_stage(self, plan: str) -> int:
        check_key(plan, "plan name")
        if plan in self.stages:
            return self.stages[plan]
        return self._store._stages.get(plan, 0)

    def put_migration(self, plan: str, stage: int, event: MigrationEvent) -> None:
        check_put_migration(plan, stage, event)
        self.stages[plan] = stage
        self.events.append(event)


class MemoryFlagStore(FlagStore):
    """The default store: state and history in this process only, lost at exit.

    ``history_limit``: the history keeps the last that many records of all flags
    together (at most 10 % more between trims; None: all; see ``history``), and
    the migration history as many events of all plans together.

    Example:
        >>> store = MemoryFlagStore()
        >>> change = FlagChange("beta", FlagState(False), FlagState(True))
        >>> store.transaction(lambda txn: txn.put("beta", FlagState(True), change))
        >>> store.load_states()
        {'beta': FlagState(switch=True, percentage=None, allow=frozenset(), deny=frozenset())}
        >>> store.close()
    """

    def __init__(self, *, history_limit: int | None = DEFAULT_HISTORY_LIMIT) -> None:
        self.history_limit = check_history_limit(history_limit)
        self._trims = 0  # trims done (the first one is logged at INFO)
        self._event_trims = 0  # ... of the migration history
        self._lock = threading.RLock()
        self._states: dict[str, FlagState] = {}
        # History records (deltas, see _history), all in commit order and by flag.
        # Never changed in place, and a trim builds new lists: history() copies the
        # lists' references under the lock and replays them outside it.
        self._changes: list[dict[str, Any]] = []
        self._changes_of: dict[str, list[dict[str, Any]]] = {}
        self._stages: dict[str, int] = {}
        self._events: list[MigrationEvent] = []
        self._catalogue: dict[str, FlagInfo] = {}
        self._plans: dict[str, str] = {}  # name -> plan JSON (a snapshot, never the object)
        self._plan_flags: dict[str, dict[str, int]] = {}  # see plan_flags: only grows
        self._closed = False
        self._forked = False  # closed in a forked child: a parent thread held the lock
        # Subscribers (several FeatureFlags may share this store), and what they are
        # owed, delivered in commit order by a courier thread (see _fan_out).
        self._callbacks: tuple[Callable[[list[FlagChange]], None], ...] = ()
        self._courier = Courier("foundation-memory-flags", self, lambda: self._callbacks)
        self._commits = 0  # transactions that changed flag state (see subscribe)
        self._load_marks = threading.local()  # per thread: _commits at its last load_states
        _fork.track(self)  # new locks in a forked child (see _inherited_by_fork)

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): the child's private copy, still
        usable, unless a parent thread held its lock at the fork.

        That thread may have been inside a commit (states applied, stages not
        yet: a migration's flags off at its new stage), which the child would
        keep half-applied for ever: the store is then closed in the child
        (every call raises ``Closed`` naming fork(); ``close()`` works). Race:
        none; the old lock is only tried (the child has one thread, and the
        forking thread, if it held it, is the one that goes on here). Either
        way the lock and courier are new (the courier's thread is the parent's:
        one "running" there left every later hand-over undelivered), and the
        parent's subscribers (its ``FeatureFlags``, closed in the child) are
        dropped.
        """
        old = self._lock
        if old.acquire(blocking=False):
            old.release()
        else:
            self._closed = self._forked = True
        self._lock = threading.RLock()
        self._callbacks = ()
        self._courier = Courier("foundation-memory-flags", self, lambda: self._callbacks)
        self._load_marks = threading.local()

    def _check(self) -> None:
        if self._closed:
            if self._forked:
                raise _fork.forked_closed(
                    "MemoryFlagStore",
                    why="a thread of the parent was using it at the fork: a commit may be "
                    "half-applied in this copy",
                )
            raise Closed("this MemoryFlagStore is closed")

    def load_states(self) -> dict[str, FlagState]:
        with self._lock:
            self._check()
            self._load_marks.commits = self._commits
            return dict(self._states)

    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        with self._lock:
            self._check()
            txn = _MemoryTransaction(self)
            result = fn(txn)  # raises -> the staged writes are simply dropped
            for name, state in txn.states.items():
                if state is None:
                    self._states.pop(name, None)
                else:
                    self._states[name] = state
            self._changes.extend(txn.changes)
            for record in txn.changes:
                self._changes_of.setdefault(record["flag"], []).append(record)
            self._stages.update(txn.stages)
            self._events.extend(txn.events)
            if txn.changes:
                self._trim_history()
                self._commits += 1
                self._fan_out(txn.originals)
            if txn.events:
                self._trim_events()
            return result

    def _fan_out(self, changes: list[FlagChange]) -> None:
        """Queue a committed transaction's ``changes`` for every subscriber but its
        writer (``writing_as``); the caller holds the lock.

        Never called back in the writer's thread: the writer (``FeatureFlags``)
        holds its own lock around the commit, and a subscriber's callback takes
        its own: two of them writing at once would each wait for the other.
        Races: queued under the store lock, so the queue order is the commit
        order, and a courier delivers one item at a time, so every subscriber
        hears commits in commit order. The subscribers are those at commit: one
        subscribing later is owed a reload instead (``subscribe``); one that
        unsubscribed before the delivery is skipped then.
        """
        writer = current_writer(self._callbacks)
        targets = tuple(c for c in self._callbacks if c is not writer)
        if targets:
            self._courier.post(targets, list(changes))

    def _trim_events(self) -> None:
        """Keep the last ``history_limit`` migration events once over it by
        ``trim_slack`` (caller holds the lock); stages are kept apart, untouched."""
        keep = events_to_keep(len(self._events), self.history_limit)
        if keep is None:
            return
        dropped = len(self._events) - keep
        self._events = self._events[dropped:]  # a new list: readers copy under the lock
        self._event_trims += 1
        log_trim(self, dropped, keep, self._event_trims, "migration history")

    def _trim_history(self) -> None:
        """Drop the oldest records down to ``history_limit`` once over it by
        ``trim_slack`` (caller holds the lock): in the committing transaction, as
        every store does (see ``_history``)."""
        from foundation.flags._history import rebase  # _history imports this module

        limit = self.history_limit
        if limit is None or len(self._changes) <= limit + trim_slack(limit):
            return
        cut = len(self._changes) - limit
        dropped, kept = self._changes[:cut], self._changes[cut:]
        lost: dict[str, int] = {}
        for record in dropped:
            lost[record["flag"]] = lost.get(record["flag"], 0) + 1
        first_kept = {
            flag: self._changes_of[flag][n]
            for flag, n in lost.items()
            if len(self._changes_of[flag]) > n
        }
        # Each flag's first kept record becomes a whole one: it replays on its own.
        fixes = rebase(dropped, first_kept, exact=True)
        for flag, n in lost.items():
            rest = self._changes_of[flag][n:]
            if rest:
                rest[0] = fixes.get(flag, rest[0])
                self._changes_of[flag] = rest
            else:
                del self._changes_of[flag]
        if fixes:
            swap = {id(first_kept[flag]): fixed for flag, fixed in fixes.items()}
            kept = [swap.get(id(record), record) for record in kept]
        self._changes = kept
        self._trims += 1
        log_trim(self, cut, limit, self._trims)

    def history(self, flag: str | None = None) -> list[FlagChange]:
        from foundation.flags._history import Replay  # _history imports this module

        with self._lock:
            self._check()
            if flag is not None:
                check_key(flag, "flag name")
            # Lists are replaced, never changed, by a trim: a copy of the references
            # taken under the lock is a snapshot.
            records = list(self._changes if flag is None else self._changes_of.get(flag, ()))
        replay = Replay()
        return [c for c in map(replay.feed, records) if c is not None]

    def migration_stage(self, plan: str) -> int:
        with self._lock:
            self._check()
            return self._stages.get(check_key(plan, "plan name"), 0)

    def migration_history(self, plan: str) -> list[MigrationEvent]:
        with self._lock:
            self._check()
            check_key(plan, "plan name")
            return [e for e in self._events if e.plan == plan]

    def record_catalogue(self, flags: Iterable[FlagInfo]) -> None:
        self._check()
        entries = catalogue_entries(flags)
        with self._lock:
            self._check()
            self._catalogue.update(entries)

    def catalogue(self) -> dict[str, FlagInfo]:
        with self._lock:
            self._check()
            return dict(self._catalogue)

    def record_plan(self, name: str, plan: MigrationPlan) -> None:
        self._check()
        check_key(name, "plan name")
        text = plan_to_json(plan)
        with self._lock:
            self._check()
            ever = self._plan_flags.setdefault(name, {})
            for flag, stage in plan_flag_entries(name, plan):
                ever[flag] = max(stage, ever.get(flag, 0))
            self._plans[name] = text

    def plans(self) -> dict[str, MigrationPlan]:
        with self._lock:
            self._check()
            texts = dict(self._plans)
        return {name: plan_from_json(text) for name, text in texts.items()}

    def plan_flags(self, name: str) -> dict[str, int]:
        check_key(name, "plan name")
        with self._lock:
            self._check()
            return dict(self._plan_flags.get(name, {}))

    def subscribe(self, callback: Callable[[list[FlagChange]], None]) -> Callable[[], None]:
        """``callback(changes)`` after each commit made through this store by anyone
        but ``callback`` itself (see ``writing_as``), on a courier thread."""
        try:
            check_listener(callback)
        except TypeError:  # Closed first, before the argument is judged
            self._check()
            raise
        with self._lock:
            self._check()
            self._callbacks = (*self._callbacks, callback)
            # Race: a caller loads, then subscribes (as FeatureFlags does); a commit
            # in between was fanned out before this subscription. If one happened
            # since this thread's last load_states(), the newcomer is told to reload.
            mark = getattr(self._load_marks, "commits", None)
            if mark is not None and mark != self._commits:
                self._courier.post((callback,), [])

        def unsubscribe() -> None:
            with self._lock:
                for i, c in enumerate(self._callbacks):
                    if c is callback:  # one subscription, as everywhere
                        self._callbacks = self._callbacks[:i] + self._callbacks[i + 1 :]
                        break

        return unsubscribe

    def __repr__(self) -> str:
        return f"MemoryFlagStore(history_limit={self.history_limit!r})"

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._callbacks = ()
        # Called from a subscriber, this runs on the courier: it cannot join
        # itself, and it exits once the callback returns (closed).
        self._courier.close()
