"""Staged migrations over feature flags: advance, roll back, emergency, auto-rollback.

Stages are cumulative: at stage n the switches of the flags of stages 1..n are
on (and a rollback to n turns every later stage's switches off). The stage
and every step are stored in the flag store in the same transaction as the
flag changes they cause, so a restart (or another process on the same store)
sees exactly the stage and flags that were committed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from foundation import telemetry
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FlagError,
    InvalidFlagValue,
    MigrationError,
    StartError,
    UnknownFlag,
    bounded_list,
    bounded_repr,
    escape_controls,
)
from foundation.flags._config import check_audit_text, nearest
from foundation.flags._declared import Flag
from foundation.flags._flags import FeatureFlags, _Writer
from foundation.flags._store import MAX_STAGE, MigrationEvent, report_callback_error
from foundation.flags._typed import is_valid_unicode

__all__ = [
    "DEFAULT_FLAGS",
    "AutoRollback",
    "HealthReport",
    "HealthSample",
    "HealthThresholds",
    "Migration",
    "MigrationPlan",
    "MigrationStatus",
    "ReadinessCheck",
    "Stage",
]

RISKS = ("low", "medium", "high")

_log = logging.getLogger("foundation.flags")
_step_log = logging.getLogger("foundation.flags.migration")
_FROM_STORE: ContextVar[bool] = ContextVar("foundation_migration_from_store", default=False)
"""Set while ``Migration.from_store`` constructs: a tool does not record the plan again."""

ReadinessCheck = Callable[[], Iterable[str] | str]
"""A readiness check returns its problems; an empty result means ready (a
non-empty ``str`` is one problem)."""

DEFAULT_FLAGS = (
    Flag(
        "use_ets_agent_registry",
        default=False,
        description="serve the registry from the shared table instead of the legacy store",
    ),
    Flag(
        "enable_migration_monitoring",
        default=False,
        description="compare both registry backends and report divergences",
    ),
)


@dataclass(frozen=True, slots=True)
class Stage:
    """One migration stage: its number (1-based), name, flags and risk.

    Example:
        >>> Stage(1, "registry", ["use_ets_agent_registry"]).flags
        ('use_ets_agent_registry',)
    """

    number: int
    name: str
    flags: Sequence[str]  # stored as a tuple
    risk: str = "low"

    def __post_init__(self) -> None:
        # Messages use bounded_repr: a name or number of any size gives a short message.
        number = self.number
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_STAGE:
            raise MigrationError(
                f"a stage number is an int in 1..2**63-1, not {bounded_repr(number)}"
            )
        if not isinstance(self.name, str) or not self.name or not is_valid_unicode(self.name):
            raise MigrationError(
                f"stage {number} needs a name (valid Unicode), not {bounded_repr(self.name)}"
            )
        object.__setattr__(self, "flags", _stage_flags(number, self.flags))
        if not isinstance(self.risk, str) or self.risk not in RISKS:
            raise MigrationError(
                f"stage {number}: risk is one of {RISKS}, not {bounded_repr(self.risk)}"
            )


def _stage_flags(number: int, given: object) -> tuple[str, ...]:
    """A stage's flag names as a tuple; MigrationError unless one or more valid names."""
    if isinstance(given, str | bytes) or not isinstance(given, Iterable):
        raise MigrationError(f"stage {number}: flags is a list of names, not a string")
    flags = tuple(given)
    if not flags or not all(isinstance(f, str) and is_valid_unicode(f) for f in flags):
        raise MigrationError(f"stage {number} needs one or more flag names (valid Unicode)")
    return flags


class MigrationPlan:
    """Ordered stages numbered 1..n, each flag in at most one stage.

    ``name`` keys the plan's stage and history in the flag store.

    Example:
        >>> plan = MigrationPlan.default()
        >>> [(s.number, s.name, s.flags) for s in plan.stages]
        [(1, 'registry', ('use_ets_agent_registry', 'enable_migration_monitoring'))]
    """

    def __init__(self, stages: Iterable[Stage], *, name: str = "default") -> None:
        ordered = _ordered_stages(stages)
        seen = _stage_of_each_flag(ordered)
        if not isinstance(name, str) or not name or not is_valid_unicode(name):
            raise MigrationError(
                f"a plan name is a non-empty string (valid Unicode), not {bounded_repr(name)}"
            )
        self.name = name
        self.stages = ordered
        self.flags = tuple(seen)

    @classmethod
    def default(cls) -> MigrationPlan:
        """The original's plan: stage 1 "registry" (declare ``DEFAULT_FLAGS``)."""
        return cls([Stage(1, "registry", tuple(f.name for f in DEFAULT_FLAGS))])

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form: ``{"name": ..., "stages": [{number, name, flags, risk}]}``."""
        return {
            "name": self.name,
            "stages": [
                {"number": s.number, "name": s.name, "flags": list(s.flags), "risk": s.risk}
                for s in self.stages
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MigrationPlan:
        """Inverse of ``to_dict``; MigrationError on a malformed record.

        Example:
            >>> plan = MigrationPlan.default()
            >>> MigrationPlan.from_dict(plan.to_dict()).to_dict() == plan.to_dict()
            True
        """
        try:
            stages = [
                Stage(int(s["number"]), s["name"], tuple(s["flags"]), s.get("risk", "low"))
                for s in data["stages"]
            ]
            return cls(stages, name=data["name"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MigrationError(f"malformed migration plan record {bounded_repr(data)}") from exc

    def flags_of(self, first: int, last: int) -> tuple[str, ...]:
        """The flags of stages ``first``..``last`` (inclusive)."""
        return tuple(f for s in self.stages if first <= s.number <= last for f in s.flags)

    def __repr__(self) -> str:
        return f"MigrationPlan({list(self.stages)!r}, name={self.name!r})"


def _ordered_stages(stages: object) -> tuple[Stage, ...]:
    """A plan's stages sorted by number; MigrationError unless Stages numbered 1..n."""
    raw: object = stages
    if isinstance(raw, str | bytes) or not isinstance(raw, Iterable):
        raise MigrationError(f"a plan's stages are Stage objects, not {bounded_repr(raw)}")
    given = tuple(raw)
    if not all(isinstance(s, Stage) for s in given):
        raise MigrationError(f"a plan's stages are Stage objects, not {bounded_repr(given)}")
    ordered = tuple(sorted(given, key=lambda s: s.number))
    if not ordered:
        raise MigrationError("a migration plan needs at least one stage")
    numbers = [s.number for s in ordered]
    if numbers != list(range(1, len(ordered) + 1)):
        raise MigrationError(
            f"stages must be numbered 1..{len(ordered)}, got {bounded_repr(numbers)}"
        )
    return ordered


def _stage_of_each_flag(ordered: tuple[Stage, ...]) -> dict[str, int]:
    """Flag name -> its stage number, in plan order; MigrationError for a flag in two."""
    seen: dict[str, int] = {}
    for stage in ordered:
        for flag in stage.flags:
            if flag in seen:
                raise MigrationError(
                    f"flag {bounded_repr(flag)} is in stages {seen[flag]} and {stage.number}; "
                    "a flag belongs to one stage, or rollbacks would contradict"
                )
            seen[flag] = stage.number
    return seen


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Where a migration stands: ``stage`` is 0 before the first stage."""

    plan: str
    stage: int
    stage_name: str | None
    total: int
    flags: Mapping[str, bool] = field(default_factory=dict)
    skew: str | None = None
    """Set when another version of the plan (a rolling deploy) is in play: the stage
    is beyond this plan's stages, or the store records another version of it."""


@dataclass(frozen=True, slots=True)
class HealthSample:
    """Real measurements from a health source; None means "no such signal".

    ``latency`` and ``baseline_latency`` are in any one unit (their ratio counts).
    """

    error_rate: float | None = None
    restarts_per_minute: float | None = None
    latency: float | None = None
    baseline_latency: float | None = None

    def __post_init__(self) -> None:
        for name in ("error_rate", "restarts_per_minute", "latency", "baseline_latency"):
            _check_measure(name, getattr(self, name))


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Limits that trigger an automatic rollback when exceeded (None: not checked).

    Example:
        >>> limits = HealthThresholds(max_error_rate=0.05, max_latency_ratio=2.0)
        >>> limits.breaches(HealthSample(error_rate=0.2, latency=30.0, baseline_latency=10.0))
        ['error rate 0.2 > 0.05', 'latency ratio 3 > 2 (30 vs baseline 10)']
    """

    max_error_rate: float | None = None
    max_restarts_per_minute: float | None = None
    max_latency_ratio: float | None = None

    def __post_init__(self) -> None:
        names = ("max_error_rate", "max_restarts_per_minute", "max_latency_ratio")
        for name in names:
            _check_measure(name, getattr(self, name))
        if all(getattr(self, n) is None for n in names):
            raise InvalidFlagValue("HealthThresholds needs at least one limit")

    def breaches(self, sample: HealthSample) -> list[str]:
        """Each limit ``sample`` exceeds, as a sentence (empty: healthy)."""
        out: list[str] = []
        rate = sample.error_rate
        if self.max_error_rate is not None and rate is not None and rate > self.max_error_rate:
            out.append(f"error rate {sample.error_rate:g} > {self.max_error_rate:g}")
        limit = self.max_restarts_per_minute
        restarts = sample.restarts_per_minute
        if limit is not None and restarts is not None and restarts > limit:
            out.append(f"restarts per minute {restarts:g} > {limit:g}")
        latency_breach = self._latency_breach(sample)
        if latency_breach is not None:
            out.append(latency_breach)
        return out

    def _latency_breach(self, sample: HealthSample) -> str | None:
        """The latency-ratio limit ``sample`` exceeds, as a sentence, or None."""
        ratio_limit = self.max_latency_ratio
        latency, baseline = sample.latency, sample.baseline_latency
        # Without a positive baseline there is no ratio, so nothing to compare.
        if ratio_limit is not None and latency is not None and baseline:
            ratio = latency / baseline
            if ratio > ratio_limit:
                return (
                    f"latency ratio {ratio:g} > {ratio_limit:g} "
                    f"({latency:g} vs baseline {baseline:g})"
                )
        return None


def _check_measure(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFlagValue(f"{name} must be a number, not {bounded_repr(value)}")
    try:
        number = float(value)  # an int too large for a float is no measure either
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise InvalidFlagValue(f"{name} must be finite and >= 0, not {bounded_repr(value)}")


class HealthSource(Protocol):
    def __call__(self) -> HealthSample: ...


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The result of one ``check_health``: the sample, breaches, and any rollback."""

    sample: HealthSample
    breaches: tuple[str, ...]
    rolled_back_from: int | None = None
    rolled_back_to: int | None = None


def _readiness_checks(given: object) -> tuple[ReadinessCheck, ...]:
    """The readiness checks as a tuple; MigrationError unless an iterable of callables."""
    if isinstance(given, str) or not isinstance(given, Iterable):
        raise MigrationError(f"readiness is a list of callables, not {bounded_repr(given)}")
    checks = tuple(given)
    if not all(callable(c) for c in checks):
        raise MigrationError(f"readiness is a list of callables, not {bounded_repr(checks)}")
    return checks


def _check_plan_flags(flags: FeatureFlags, plan: MigrationPlan) -> None:
    """Refuse a plan naming a flag ``flags`` does not declare, or a typed one."""
    unknown = [f for f in plan.flags if f not in flags.names]
    if unknown:
        # The names are the plan's, not the caller's: say where each comes from.
        where = {f: s.number for s in reversed(plan.stages) for f in s.flags}
        plan_name = bounded_repr(plan.name)
        raise UnknownFlag(
            unknown,
            suggestions={f: nearest(f, flags.names) for f in unknown},
            origins={f: f"stage {where[f]} of migration plan {plan_name}" for f in unknown},
        )
    typed = [f for f in plan.flags if flags.flag(f).kind != "boolean"]
    if typed:  # a stage switches flags on and off; a typed flag has no "on" to advance to
        raise InvalidFlagValue(
            f"migration stages switch boolean flags; {bounded_repr(typed)} are typed"
        )


def _record_plan(flags: FeatureFlags, plan: MigrationPlan) -> None:
    """Record ``plan`` so tools can drive it from the store alone. A backend that
    cannot take the write (unreachable, or a file on a full disk or read-only)
    only logs a WARNING, as ``FeatureFlags`` does for its catalogue: an
    application must start meanwhile, and it records the plan at its next start."""
    try:
        flags.store.record_plan(plan.name, plan)
    except BackendUnavailable as exc:  # FlagStoreUnavailable included: first
        _log.warning("migration plan %r not recorded in %r: %s", plan.name, flags.store, exc)
    except FlagError as exc:
        if type(exc) is not FlagError:  # MigrationError, say: the caller's to fix
            raise
        _log.warning("migration plan %r not recorded in %r: %s", plan.name, flags.store, exc)


def _entries_of(plan: MigrationPlan | None) -> list[tuple[str, int]]:
    """(flag, stage) of every flag ``plan`` names (none for no plan)."""
    return [] if plan is None else [(f, st.number) for st in plan.stages for f in st.flags]


class Migration:
    """Drive a ``MigrationPlan`` over ``flags``, persisting stage and history in its store.

    ``readiness``: checks run before each ``advance``; each returns a list of
    problems (empty when ready). ``health`` and ``thresholds`` (both or neither)
    enable ``check_health`` and ``AutoRollback``.

    The constructor records ``plan`` in the store (for tools); a store that
    cannot take that write (Redis unreachable, a file on a full disk or
    read-only) logs a WARNING and the ``Migration`` starts all the same.

    A ``Migration`` holds nothing to close: it acts through ``flags``, so once
    that ``FeatureFlags`` is closed every call that reads or writes the flags
    (all but ``problems()``, which only runs the readiness checks) raises
    ``errors.Closed``.

    Example:
        >>> from foundation.flags import FeatureFlags
        >>> flags = FeatureFlags(DEFAULT_FLAGS)
        >>> migration = Migration(flags, MigrationPlan.default())
        >>> migration.advance(by="ops", reason="canary is green").to_stage
        1
        >>> migration.status().stage, flags.enabled("use_ets_agent_registry")
        (1, True)
        >>> migration.emergency_rollback("error spike").from_stage
        1
        >>> migration.status().stage, flags.enabled("use_ets_agent_registry")
        (0, False)
        >>> [e.action for e in migration.history()]
        ['advance', 'emergency_rollback']
        >>> flags.close()
    """

    def __init__(
        self,
        flags: FeatureFlags,
        plan: MigrationPlan,
        *,
        readiness: Iterable[ReadinessCheck] = (),
        health: HealthSource | None = None,
        thresholds: HealthThresholds | None = None,
    ) -> None:
        if not isinstance(flags, FeatureFlags):
            raise InvalidFlagValue(f"Migration needs a FeatureFlags, not {bounded_repr(flags)}")
        if not isinstance(plan, MigrationPlan):
            raise MigrationError(f"Migration needs a MigrationPlan, not {bounded_repr(plan)}")
        checks = _readiness_checks(readiness)
        if health is not None and not callable(health):
            raise MigrationError(f"health must be a callable, not {bounded_repr(health)}")
        _check_plan_flags(flags, plan)
        if (health is None) != (thresholds is None):
            raise MigrationError("automatic rollback needs both a health source and thresholds")
        self.flags = flags
        self.plan = plan
        self.readiness = checks
        self.health = health
        self.thresholds = thresholds
        # WARNINGs logged once (status().skew; the automatic rollback's notes on
        # other versions' flags: a breach is checked every interval).
        self._logged: set[str] = set()
        if not _FROM_STORE.get():
            _record_plan(flags, plan)

    @classmethod
    def from_store(cls, flags: FeatureFlags, plan: str | None = None) -> Migration:
        """A ``Migration`` of a plan recorded in ``flags.store`` (for tools).

        ``plan``: the plan's name; None picks the only recorded plan. The
        application's readiness checks and health source are code, not data:
        the result has none (``advance`` runs no readiness check).

        Raises:
            MigrationError: no plan recorded, several and ``plan`` is None, or
                no plan of that name (with the nearest recorded name).

        Example:
            >>> from foundation.flags import FeatureFlags
            >>> flags = FeatureFlags(DEFAULT_FLAGS)
            >>> _ = Migration(flags, MigrationPlan.default())
            >>> Migration.from_store(flags).plan.name
            'default'
            >>> flags.close()
        """
        if plan is not None and not isinstance(plan, str):
            raise MigrationError(f"a plan is named by a str, not {bounded_repr(plan)}")
        plans = flags.store.plans()
        if plan is None:
            if len(plans) != 1:
                raise MigrationError(
                    "no migration plan is recorded in this store (an application records "
                    "one when it constructs Migration(flags, plan) on it)"
                    if not plans
                    else f"several migration plans are recorded ({', '.join(sorted(plans))}): "
                    "name one"
                )
            (chosen,) = plans.values()
        elif plan in plans:
            chosen = plans[plan]
        else:
            near = nearest(plan, tuple(plans)) if len(plan) <= 200 else None
            hint = f" (did you mean {bounded_repr(near)}?)" if near else ""
            raise MigrationError(f"no migration plan {bounded_repr(plan)} is recorded{hint}")
        token = _FROM_STORE.set(True)
        try:
            return cls(flags, chosen)
        finally:
            _FROM_STORE.reset(token)

    # ------------------------------------------------------------------ reads

    def status(self) -> MigrationStatus:
        """The committed stage (read from the store) and the plan flags' current answers.

        Those answers are not counted as evaluations (``foundation.metrics``).

        ``skew`` is set (and logged once at WARNING) when another version of the
        plan is in play: the stage is beyond this plan's stages, or the store
        records another version of it (a rolling deploy)."""
        self.flags._check_open()  # a store you passed outlives the flags: Closed all the same
        stage = self.flags.store.migration_stage(self.plan.name)
        total = len(self.plan.stages)
        name = self.plan.stages[stage - 1].name if 0 < stage <= total else None
        # Not evaluations: a status read (the admin page polls it) counts none.
        answers = {f: self.flags._uncounted(f) for f in self.plan.flags}
        skew = self._skew(stage)
        return MigrationStatus(self.plan.name, stage, name, total, answers, skew)

    def _skew(self, stage: int) -> str | None:
        """What ``status().skew`` says (logged once at WARNING), or None."""
        total = len(self.plan.stages)
        try:  # the store's record now (one read); else as the store knows it locally
            recorded = self.flags.store.plans().get(self.plan.name)
            known = True
        except Exception:
            recorded, known = None, False
        others = self._other_flags(0, warn=False, recorded=(lambda: recorded) if known else None)
        if stage > total:
            skew = f"stage {stage} is beyond this plan's {total} (another version advanced it)"
        elif recorded is not None and recorded.to_dict() != self.plan.to_dict():
            skew = f"the store records another version of it ({len(recorded.stages)} stages)"
        else:
            return None
        on = [f for f in others if self.flags._uncounted(f)]
        skew = (
            f"migration {self.plan.name!r} ({total} stages here): {skew}; flags only other "
            f"versions name, on now: {bounded_list(on) if on else 'none'}; a rollback "
            "turns those off too"
        )
        self._warn(skew, once=True)
        return skew

    def _warn(self, message: str, *, once: bool) -> None:
        """A WARNING under ``foundation.flags``; with ``once``, only the first time
        this ``Migration`` has ``message`` to say."""
        if once:
            if message in self._logged:
                return
            self._logged.add(message)
        _log.warning("%s", message, extra={"plan": self.plan.name})

    def history(self) -> list[MigrationEvent]:
        """Every advance and rollback of this plan, oldest first, with who, when and why."""
        self.flags._check_open()  # a store you passed outlives the flags: Closed all the same
        return self.flags.store.migration_history(self.plan.name)

    def problems(self) -> list[str]:
        """What the readiness checks report now (a check that raises is a problem)."""
        found: list[str] = []
        for check in self.readiness:
            try:
                result = check()
                if isinstance(result, str):  # one problem, not one per character
                    found.extend([result] if result else [])
                else:
                    found.extend(str(p) for p in result)
            except Exception as exc:
                name = bounded_repr(getattr(check, "__name__", check))
                found.append(f"readiness check {name} failed: {bounded_repr(exc)}")
        return found

    # ---------------------------------------------------------------- changes

    def advance(self, *, by: str | None = None, reason: str | None = None) -> MigrationEvent:
        """Move to the next stage, turning its flags (and earlier stages') on.

        Returns the ``MigrationEvent`` this call recorded (the plan's last
        ``history()`` entry may already be another writer's).

        Raises:
            MigrationError: already at the last stage, or a readiness check reports problems.
            InvalidFlagValue: ``by`` empty or blank, or ``by``/``reason`` not storable
                (``check_audit_text``); so for every step.
        """
        # Readiness runs outside the store transaction (checks may be slow and
        # a transaction body may be retried); the stage itself is read inside.
        problems = self.problems()
        if problems:
            raise MigrationError("not ready to advance: " + bounded_list(problems))

        def body(w: _Writer) -> MigrationEvent:
            current = w.txn.migration_stage(self.plan.name)
            if current >= len(self.plan.stages):
                raise MigrationError(
                    f"migration {self.plan.name!r} is at its last stage ({current}); "
                    "there is nothing to advance to"
                )
            return self._move(w, "advance", current, current + 1, by=by, reason=reason)

        event = self.flags._transact(body)
        self._emit("migration.advanced", event)
        return event

    def rollback_to(
        self, stage: int, *, by: str | None = None, reason: str | None = None
    ) -> MigrationEvent:
        """Go back to ``stage`` (any 0 <= stage < current): later stages' flags off,
        and the flags only other recorded versions of the plan put above ``stage``.

        Returns the ``MigrationEvent`` this call recorded.

        Raises:
            MigrationError: ``stage`` is not below the current stage, or not an int >= 0.
            InvalidFlagValue: ``by`` empty or blank (see ``advance``).
        """
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
            raise MigrationError(f"rollback target must be an int >= 0, not {bounded_repr(stage)}")
        others = self._other_flags(stage)

        def body(w: _Writer) -> MigrationEvent:
            current = w.txn.migration_stage(self.plan.name)
            if not stage < current:
                raise MigrationError(
                    f"cannot roll back migration {self.plan.name!r} to stage "
                    f"{bounded_repr(stage)}: "
                    f"it is at stage {current} (targets are 0..{current - 1})"
                    if current
                    else f"migration {self.plan.name!r} is at stage 0; nothing to roll back"
                )
            return self._move(w, "rollback", current, stage, by=by, reason=reason, off=others)

        event = self.flags._transact(body)
        self._emit("migration.rolled_back", event)
        return event

    def emergency_rollback(self, reason: str, *, by: str | None = None) -> MigrationEvent:
        """Turn every plan flag off and return to stage 0, from any stage, now.

        Every flag any recorded version of this plan named
        (``store.plan_flags``: during a rolling deploy another version may have
        turned on a stage this one does not have), whichever deploy calls it.

        Works during a backend outage on a store that keeps kill switches
        (``RedisFlagStore``): applied locally at once, committed on its return.

        Returns the ``MigrationEvent`` this call recorded. When the store kept
        it through an outage, that is the event as kept: not committed yet
        (``store.pending()`` lists it; its commit, or its supersession by a newer
        committed change, is logged when the backend returns).

        Raises:
            MigrationError: ``reason`` is not a string, or is blank ("", "   ").
            InvalidFlagValue: ``by`` empty or blank (see ``advance``).
        """
        # Blank ("   ", "\n") is no reason: the history would record nothing.
        if not isinstance(reason, str) or not reason.strip():
            raise MigrationError("an emergency rollback needs a reason")
        others = self._other_flags(0)

        def body(w: _Writer) -> MigrationEvent:
            current = w.txn.migration_stage(self.plan.name)
            return self._move(w, "emergency_rollback", current, 0, by=by, reason=reason, off=others)

        # A kill switch: on a store that keeps it through an outage it applies here
        # at once and is committed when the backend returns (FlagStore.kill_switch).
        event = self.flags._transact(body, kill_switch=True)
        self._emit("migration.emergency_rollback", event)
        return event

    def check_health(self) -> HealthReport:
        """Sample the health source; if any threshold is crossed, roll back ONE stage.

        At stage 0 a crossing is reported but there is nothing to roll back.

        Raises:
            MigrationError: no health source configured, or it returned no HealthSample.
            BackendUnavailable: the store could not take the rollback (nothing changed;
                a one-stage rollback is not a kill switch, it is not kept for later).
        """
        return self._respond(self._sample())

    def _sample(self) -> HealthSample:
        """What the health source says now (``check_health``'s first half)."""
        if self.health is None or self.thresholds is None:
            raise MigrationError("check_health needs Migration(..., health=, thresholds=)")
        sample = self.health()
        if not isinstance(sample, HealthSample):
            raise MigrationError(
                f"the health source returned {bounded_repr(sample)}, not a HealthSample"
            )
        return sample

    def _respond(self, sample: HealthSample) -> HealthReport:
        """Roll back one stage if ``sample`` crosses a threshold (``check_health``'s second
        half: only this part writes to the store)."""
        assert self.thresholds is not None  # _sample checked it
        breaches = tuple(self.thresholds.breaches(sample))
        if not breaches:
            return HealthReport(sample, breaches)
        why = "; ".join(breaches)
        others = self._other_flags(0, once=True)

        def body(w: _Writer) -> MigrationEvent | None:
            # The stage is read inside the transaction: if someone else rolled
            # back meanwhile, we step back from where it really is.
            current = w.txn.migration_stage(self.plan.name)
            if current == 0:
                return None
            target = current - 1
            return self._move(
                w,
                "auto_rollback",
                current,
                target,
                by="auto-rollback",
                reason=why,
                off=tuple(f for f in others if others[f] > target),
            )

        event = self.flags._transact(body)
        if event is None:
            return HealthReport(sample, breaches)
        self._emit("migration.auto_rollback", event, breaches=breaches, sample=sample)
        return HealthReport(sample, breaches, event.from_stage, event.to_stage)

    # --------------------------------------------------------------- internals

    def _other_flags(
        self,
        beyond: int,
        *,
        warn: bool = True,
        once: bool = False,
        recorded: Callable[[], MigrationPlan | None] | None = None,
    ) -> dict[str, int]:
        """The flags other recorded versions of this plan put in a stage above ``beyond``
        (and this plan names nowhere) -> the highest such stage: a rollback to
        ``beyond`` turns them off too, whichever deploy's plan it runs. A flag not
        declared here cannot be written here: logged at WARNING (a ``FeatureFlags``
        of the catalogue, as the CLI's, declares every flag recorded)."""
        ever = self._version_flags(recorded)
        mine = set(self.plan.flags)
        found = {f: n for f, n in ever.items() if n > beyond and f not in mine}
        usable = self._switchable(found)
        unknown = [f for f in found if f not in usable]
        if unknown and warn:
            self._warn(
                f"migration {self.plan.name!r}: flags {bounded_list(unknown)} of another "
                "version of the plan are not declared here (as boolean flags) and stay as "
                "they are; roll back from a deploy that declares them, or with the CLI",
                once=once,
            )
        return usable

    def _switchable(self, found: dict[str, int]) -> dict[str, int]:
        """The entries of ``found`` whose flag ``self.flags`` declares, as a boolean flag."""
        declared = set(self.flags.names)
        return {
            f: n for f, n in found.items() if f in declared and self.flags.flag(f).kind == "boolean"
        }

    def _version_flags(
        self, recorded: Callable[[], MigrationPlan | None] | None = None
    ) -> dict[str, int]:
        """``store.plan_flags`` and the flags of the plan recorded now (an older library
        records plans without adding to ``plan_flags``), as the store knows them
        without waiting (its copy, if it keeps one; ``recorded``: how to read the
        recorded plan instead). What cannot be read (the backend, a corrupt entry:
        any error) is logged at WARNING, once per message, and left out: a rollback
        goes on with this plan's flags, as a kill switch must."""
        store, name = self.flags.store, self.plan.name
        found: dict[str, int] = {}
        plan = recorded or (lambda: store._known_plan(name))
        reads: tuple[tuple[str, Callable[[], Iterable[tuple[str, int]]]], ...] = (
            ("plan flags", lambda: store._known_plan_flags(name).items()),
            ("recorded plan", lambda: _entries_of(plan())),
        )
        for what, read in reads:
            try:
                entries = list(read())
            except Exception as exc:  # anything: the kill switch must not depend on it
                self._warn(
                    f"migration {name!r}: the {what} of other versions of the plan are "
                    f"unknown ({type(exc).__name__}: {bounded_repr(str(exc))}); rolling "
                    "back without them",
                    once=True,
                )
                continue
            for flag, stage in entries:
                found[flag] = max(stage, found.get(flag, 0))
        return found

    def _move(
        self,
        w: _Writer,
        action: str,
        current: int,
        target: int,
        *,
        by: str | None,
        reason: str | None,
        off: Iterable[str] = (),
    ) -> MigrationEvent:
        """Record the step to ``target``: the flags of stages 1..target on, the later
        ones off, and ``off`` (flags only other versions of the plan name) off too."""
        check_audit_text(by, "by")  # as every flag write (a step could change no flag)
        total = len(self.plan.stages)
        why = reason or f"migration {self.plan.name!r} {action} {current} -> {target}"
        for name in self.plan.flags_of(1, target):  # cumulative: stages 1..target on
            w.update(name, lambda s: replace(s, switch=True), by, why)
        for name in (*self.plan.flags_of(target + 1, total), *off):  # everything later off
            w.update(name, lambda s: replace(s, switch=False), by, why)
        event = MigrationEvent(self.plan.name, action, current, target, by, reason, time.time())
        w.txn.put_migration(self.plan.name, target, event)
        return event

    def _emit(self, name: str, event: MigrationEvent, **extra: object) -> None:
        # Emergency and automatic rollbacks are incidents: WARNING; planned steps: INFO.
        level = logging.INFO if event.action in ("advance", "rollback") else logging.WARNING
        if _step_log.isEnabledFor(level):
            # "by WHO" and "(WHY)" only when given: never "by None" or "(None)".
            who = f" by {escape_controls(event.by)}" if event.by else ""
            why = f" ({escape_controls(event.reason)})" if event.reason else ""
            _step_log.log(
                level,
                "migration %r: %s from stage %d to %d%s%s",
                event.plan,
                event.action,
                event.from_stage,
                event.to_stage,
                who,  # user text, escaped: a newline must not forge a line
                why,
                extra={
                    "plan": event.plan,
                    "action": event.action,
                    "from_stage": event.from_stage,
                    "to_stage": event.to_stage,
                    "by": event.by,
                    "reason": event.reason,
                },
            )
        if telemetry.has_listeners(name):
            telemetry.emit(name, {"plan": event.plan, "event": event, **extra})

    def __repr__(self) -> str:
        return f"<Migration {self.plan.name!r} over {len(self.plan.stages)} stages>"


class AutoRollback:
    """A background thread calling ``migration.check_health()`` every ``interval`` seconds.

    Each check that crosses a threshold rolls back one stage, so a system that
    stays unhealthy steps back one stage per interval until stage 0. A health
    source that raises (any exception, ``SystemExit`` too) is logged under
    ``foundation.flags`` and passed to ``sys.unraisablehook`` if one is
    installed (and kept in ``last_error``); the watcher keeps going. Once the
    migration's ``FeatureFlags`` is closed no rollback can be written: the
    watcher ends with one WARNING (``running`` turns False). ``stop()`` (or leaving the
    ``with`` block) ends the thread and waits for it. Without a thread to start
    (the process's thread limit) the constructor raises ``StartError``, as
    ``spawn_thread`` does; nothing was started.

    Example:
        >>> from foundation.flags import FeatureFlags
        >>> flags = FeatureFlags(DEFAULT_FLAGS)
        >>> source = lambda: HealthSample(error_rate=0.0)
        >>> m = Migration(flags, MigrationPlan.default(), health=source,
        ...               thresholds=HealthThresholds(max_error_rate=0.05))
        >>> with AutoRollback(m, interval=0.01) as watcher:
        ...     watcher.running
        True
        >>> flags.close()
    """

    def __init__(self, migration: Migration, *, interval: float) -> None:
        if not isinstance(migration, Migration):  # else an AttributeError on .health
            raise MigrationError(f"AutoRollback needs a Migration, not {bounded_repr(migration)}")
        if migration.health is None:
            raise MigrationError("AutoRollback needs Migration(..., health=, thresholds=)")
        if (
            isinstance(interval, bool)
            or not isinstance(interval, int | float)
            or not 0 < interval < math.inf
        ):
            raise InvalidFlagValue(
                f"interval must be a positive number of seconds: {bounded_repr(interval)}"
            )
        self.migration = migration
        self.interval = float(interval)
        self.last_report: HealthReport | None = None
        self.last_error: BaseException | None = None
        self.rollbacks: list[HealthReport] = []
        self._unwritten = False  # a rollback the store refused was logged (see _not_written)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"foundation-auto-rollback:{migration.plan.name}", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread": the thread limit (EAGAIN)
            # As spawn_thread: nothing ran, nothing holds a resource; retry later.
            raise StartError(
                self._thread.name, f"cannot start thread {self._thread.name!r}: {exc}"
            ) from exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval) and self._check_once():
            pass

    def _check_once(self) -> bool:
        """One health check (and rollback); False when the watcher must end: its
        ``FeatureFlags`` is closed, so no rollback can ever be written again."""
        if self.migration.flags._closed:
            return self._flags_closed()
        try:
            sample = self.migration._sample()
        except BaseException as exc:  # SystemExit too: it would end the watcher thread
            self.last_error = exc
            report_callback_error(exc, self.migration.health, "auto-rollback health source")
            return True
        try:
            report = self.migration._respond(sample)
        except Closed as exc:  # its flags were closed during this check
            self.last_error = exc
            return self._flags_closed()
        except (BackendUnavailable, FlagError) as exc:  # the store: not the health source
            self.last_error = exc
            self._not_written(sample, exc)
            return True
        except BaseException as exc:  # SystemExit too: it would end the watcher thread
            self.last_error = exc
            report_callback_error(exc, self.migration, "auto-rollback")
            return True
        self._unwritten = False
        self.last_report = report
        if report.rolled_back_to is not None:
            self.rollbacks.append(report)
        return True

    def _flags_closed(self) -> bool:
        """One WARNING: the watcher ends (``running`` turns False), it cannot act any more."""
        _log.warning(
            "migration %r: automatic rollback stopped: its FeatureFlags is closed",
            self.migration.plan.name,
        )
        return False

    def _not_written(self, sample: HealthSample, exc: BaseException) -> None:
        """One WARNING per episode: a breach seen, its rollback refused by the store
        (an outage: a one-stage rollback is not a kill switch, it waits for the store)."""
        if self._unwritten:
            return
        self._unwritten = True  # until a check goes through (only this thread sets it)
        assert self.migration.thresholds is not None
        _log.warning(
            "migration %r: health check failed (%s) but the automatic rollback could not "
            "be written, nothing changed: %s; checking again every %g s",
            self.migration.plan.name,
            "; ".join(self.migration.thresholds.breaches(sample)),
            exc,
            self.interval,
        )

    def stop(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> AutoRollback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
