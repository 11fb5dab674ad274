"""Staged migrations: cumulative stages, rollbacks, readiness, persistence, auto-rollback."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from foundation import errors, telemetry
from foundation.flags import (
    DEFAULT_FLAGS,
    AutoRollback,
    FeatureFlags,
    Flag,
    HealthSample,
    HealthThresholds,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
    Stage,
)
from tests.flags._support import wait_until

STAGE_FLAGS = (Flag("s1a"), Flag("s1b"), Flag("s2"), Flag("s3"))
PLAN = MigrationPlan(
    [
        Stage(1, "shadow", ["s1a", "s1b"]),
        Stage(2, "read", ["s2"], risk="medium"),
        Stage(3, "write", ["s3"], risk="high"),
    ],
    name="three",
)


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    f = FeatureFlags((*STAGE_FLAGS, Flag("other")))
    yield f
    f.close()


def on(flags: FeatureFlags) -> list[str]:
    return [f.name for f in STAGE_FLAGS if flags.enabled(f.name)]


def test_the_default_plan_is_the_registry_stage() -> None:
    plan = MigrationPlan.default()
    assert [(s.number, s.name) for s in plan.stages] == [(1, "registry")]
    assert plan.stages[0].flags == ("use_ets_agent_registry", "enable_migration_monitoring")
    with FeatureFlags(DEFAULT_FLAGS) as flags:
        migration = Migration(flags, plan)
        migration.advance()
        assert flags.enabled("use_ets_agent_registry") is True
        assert flags.enabled("enable_migration_monitoring") is True


def test_stages_are_cumulative(flags: FeatureFlags) -> None:
    migration = Migration(flags, PLAN)
    assert migration.status().stage == 0
    migration.advance()
    assert on(flags) == ["s1a", "s1b"]
    migration.advance()
    assert on(flags) == ["s1a", "s1b", "s2"]
    status = migration.status()
    assert (status.stage, status.stage_name, status.total) == (2, "read", 3)
    assert status.flags == {"s1a": True, "s1b": True, "s2": True, "s3": False}


def test_advance_past_the_last_stage_is_refused(flags: FeatureFlags) -> None:
    migration = Migration(flags, PLAN)
    for _ in range(3):
        migration.advance()
    history = migration.history()
    with pytest.raises(errors.MigrationError, match="last stage"):
        migration.advance()
    assert migration.status().stage == 3
    assert migration.history() == history


def test_rollback_to_any_lower_stage_including_zero(flags: FeatureFlags) -> None:
    migration = Migration(flags, PLAN)
    for _ in range(3):
        migration.advance()
    migration.rollback_to(1, by="ops", reason="read path slow")
    assert migration.status().stage == 1
    assert on(flags) == ["s1a", "s1b"]
    migration.rollback_to(0)
    assert migration.status().stage == 0
    assert on(flags) == []


@pytest.mark.parametrize("target", [2, 3, -1, "1", True])
def test_rollback_to_a_stage_not_below_the_current_one_is_refused(
    flags: FeatureFlags, target: object
) -> None:
    migration = Migration(flags, PLAN)
    migration.advance()
    migration.advance()
    with pytest.raises(errors.MigrationError):
        migration.rollback_to(target)  # type: ignore[arg-type]
    assert migration.status().stage == 2
    assert on(flags) == ["s1a", "s1b", "s2"]


def test_rollback_at_stage_zero_is_refused(flags: FeatureFlags) -> None:
    with pytest.raises(errors.MigrationError, match="stage 0"):
        Migration(flags, PLAN).rollback_to(0)


def test_emergency_rollback_turns_every_plan_flag_off(flags: FeatureFlags) -> None:
    migration = Migration(flags, PLAN)
    migration.advance()
    migration.advance()
    flags.enable("s3")  # turned on by hand, outside the plan's order
    flags.enable("other")
    migration.emergency_rollback("error spike", by="oncall")
    assert migration.status().stage == 0
    assert on(flags) == []
    assert flags.enabled("other") is True  # not a plan flag
    last = migration.history()[-1]
    assert (last.action, last.from_stage, last.to_stage) == ("emergency_rollback", 2, 0)
    assert (last.by, last.reason) == ("oncall", "error spike")
    with pytest.raises(errors.MigrationError):
        migration.emergency_rollback("")


def test_a_stage_flag_kept_its_rollout_through_a_rollback(flags: FeatureFlags) -> None:
    migration = Migration(flags, PLAN)
    flags.set_percentage("s2", 30)
    migration.advance()
    migration.advance()
    migration.rollback_to(1)
    assert flags.enabled("s2", actor="x") is False
    migration.advance()
    assert flags.state("s2").percentage == 30.0


def test_history_records_every_step_and_the_flag_changes(flags: FeatureFlags) -> None:
    migration = Migration(flags, PLAN)
    migration.advance(by="ana", reason="go")
    migration.rollback_to(0, by="bo", reason="stop")
    steps = [(e.action, e.from_stage, e.to_stage, e.by, e.reason) for e in migration.history()]
    assert steps == [("advance", 0, 1, "ana", "go"), ("rollback", 1, 0, "bo", "stop")]
    assert [(c.flag, c.new.switch, c.by) for c in flags.history("s1a")] == [
        ("s1a", True, "ana"),
        ("s1a", False, "bo"),
    ]


def test_readiness_problems_refuse_the_advance(flags: FeatureFlags) -> None:
    problems = ["replica lag 30s"]

    def broken_check() -> list[str]:
        raise RuntimeError("probe down")

    migration = Migration(flags, PLAN, readiness=[lambda: problems])
    with pytest.raises(errors.MigrationError, match="replica lag 30s"):
        migration.advance()
    assert migration.status().stage == 0
    assert on(flags) == []
    problems.clear()
    migration.advance()
    assert migration.status().stage == 1
    failing = Migration(flags, PLAN, readiness=[broken_check])
    with pytest.raises(errors.MigrationError, match="probe down"):
        failing.advance()
    assert migration.status().stage == 1


def test_stage_and_history_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(STAGE_FLAGS, store=store) as flags:
        migration = Migration(flags, PLAN)
        migration.advance(by="ana")
        migration.advance(by="ana")
        migration.rollback_to(1, by="bo", reason="slow")
    with SQLiteFlagStore(path) as store, FeatureFlags(STAGE_FLAGS, store=store) as flags:
        migration = Migration(flags, PLAN)
        assert migration.status().stage == 1
        assert on(flags) == ["s1a", "s1b"]
        assert [e.action for e in migration.history()] == ["advance", "advance", "rollback"]
        migration.advance()
        assert migration.status().stage == 2


def test_plans_are_validated() -> None:
    with pytest.raises(errors.MigrationError, match="numbered"):
        MigrationPlan([Stage(1, "a", ["x"]), Stage(3, "c", ["y"])])
    with pytest.raises(errors.MigrationError, match="stages 1 and 2"):
        MigrationPlan([Stage(1, "a", ["x"]), Stage(2, "b", ["x"])])
    with pytest.raises(errors.MigrationError):
        MigrationPlan([])
    with pytest.raises(errors.MigrationError):
        Stage(0, "a", ["x"])
    with pytest.raises(errors.MigrationError):
        Stage(1, "a", "x")
    with pytest.raises(errors.MigrationError):
        Stage(1, "a", ["x"], risk="yolo")
    with FeatureFlags([Flag("s1a")]) as flags, pytest.raises(errors.UnknownFlag) as info:
        Migration(flags, PLAN)
    assert info.value.names == ("s1b", "s2", "s3")


def test_an_undeclared_plan_flag_names_the_stage_it_comes_from() -> None:
    # A user who declares only their own flags meets names they never wrote:
    # the message says they come from the plan, so they know what to declare.
    with FeatureFlags([Flag("mine")]) as flags, pytest.raises(errors.UnknownFlag) as info:
        Migration(flags, MigrationPlan.default())
    assert info.value.names == ("use_ets_agent_registry", "enable_migration_monitoring")
    assert "'use_ets_agent_registry' (from stage 1 of migration plan 'default')" in str(info.value)


def test_a_plan_naming_a_typed_flag_is_refused_up_front() -> None:
    plan = MigrationPlan([Stage(1, "colour", ["colour"])])
    declared = [Flag("colour", variants={"red": "#f00", "blue": "#00f"}, default="red")]
    with FeatureFlags(declared) as flags, pytest.raises(errors.InvalidFlagValue, match="typed"):
        Migration(flags, plan)


def test_migration_steps_are_telemetry_events(flags: FeatureFlags) -> None:
    seen: list[tuple[str, Mapping[str, Any]]] = []
    names = ["migration.advanced", "migration.rolled_back", "migration.emergency_rollback"]
    detach = [telemetry.attach(n, lambda name, data: seen.append((name, data))) for n in names]
    try:
        migration = Migration(flags, PLAN)
        migration.advance()
        migration.advance()
        migration.rollback_to(1)
        migration.emergency_rollback("drill")
    finally:
        for d in detach:
            d()
    assert [n for n, _ in seen] == [names[0], names[0], names[1], names[2]]
    assert seen[2][1]["event"].to_stage == 1


# ----------------------------------------------------------- automatic rollback


class Health:
    """A health source whose readings the test sets, as a monitoring system would."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sample = HealthSample(
            error_rate=0.0, restarts_per_minute=0.0, latency=10.0, baseline_latency=10.0
        )
        self.reads = 0

    def set(self, **values: float) -> None:
        with self._lock:
            current = {
                "error_rate": self.sample.error_rate,
                "restarts_per_minute": self.sample.restarts_per_minute,
                "latency": self.sample.latency,
                "baseline_latency": self.sample.baseline_latency,
            }
            current.update(values)
            self.sample = HealthSample(**current)

    def __call__(self) -> HealthSample:
        with self._lock:
            self.reads += 1
            return self.sample


LIMITS = HealthThresholds(max_error_rate=0.05, max_restarts_per_minute=3, max_latency_ratio=2.0)


def test_healthy_readings_change_nothing(flags: FeatureFlags) -> None:
    health = Health()
    migration = Migration(flags, PLAN, health=health, thresholds=LIMITS)
    migration.advance()
    report = migration.check_health()
    assert report.breaches == ()
    assert report.rolled_back_to is None
    assert migration.status().stage == 1


@pytest.mark.parametrize(
    ("reading", "why"),
    [
        ({"error_rate": 0.2}, "error rate 0.2 > 0.05"),
        ({"restarts_per_minute": 7.0}, "restarts per minute 7 > 3"),
        ({"latency": 35.0}, "latency ratio 3.5 > 2"),
    ],
)
def test_a_crossed_threshold_rolls_back_one_stage_and_says_why(
    flags: FeatureFlags, reading: dict[str, float], why: str
) -> None:
    health = Health()
    migration = Migration(flags, PLAN, health=health, thresholds=LIMITS)
    migration.advance()
    migration.advance()
    health.set(**reading)
    report = migration.check_health()
    assert (report.rolled_back_from, report.rolled_back_to) == (2, 1)
    assert migration.status().stage == 1
    assert on(flags) == ["s1a", "s1b"]
    last = migration.history()[-1]
    assert last.action == "auto_rollback"
    assert why in (last.reason or "")


def test_a_crossing_at_stage_zero_is_reported_without_a_rollback(flags: FeatureFlags) -> None:
    health = Health()
    health.set(error_rate=1.0)
    migration = Migration(flags, PLAN, health=health, thresholds=LIMITS)
    report = migration.check_health()
    assert report.breaches
    assert report.rolled_back_to is None
    assert migration.history() == []


def test_missing_signals_are_not_checked(flags: FeatureFlags) -> None:
    migration = Migration(
        flags,
        PLAN,
        health=lambda: HealthSample(latency=50.0),  # no baseline: no ratio
        thresholds=HealthThresholds(max_latency_ratio=1.5, max_error_rate=0.1),
    )
    migration.advance()
    assert migration.check_health().breaches == ()


def test_health_configuration_is_validated(flags: FeatureFlags) -> None:
    with pytest.raises(errors.MigrationError):
        Migration(flags, PLAN, health=Health())
    with pytest.raises(errors.MigrationError):
        Migration(flags, PLAN).check_health()
    with pytest.raises(errors.InvalidFlagValue):
        HealthThresholds()
    with pytest.raises(errors.InvalidFlagValue):
        HealthSample(error_rate=-1)
    with pytest.raises(errors.InvalidFlagValue):
        HealthThresholds(max_error_rate=float("nan"))
    bad = Migration(flags, PLAN, health=lambda: 0.5, thresholds=LIMITS)  # type: ignore[arg-type]
    with pytest.raises(errors.MigrationError, match="not a HealthSample"):
        bad.check_health()


def test_the_watcher_steps_back_one_stage_per_unhealthy_check(flags: FeatureFlags) -> None:
    health = Health()
    events: list[Mapping[str, Any]] = []
    detach = telemetry.attach("migration.auto_rollback", lambda name, data: events.append(data))
    migration = Migration(flags, PLAN, health=health, thresholds=LIMITS)
    migration.advance()
    migration.advance()
    try:
        with AutoRollback(migration, interval=0.01) as watcher:
            reads = health.reads
            wait_until(lambda: health.reads > reads + 2)  # watching a healthy system
            assert migration.status().stage == 2
            health.set(restarts_per_minute=10.0)
            wait_until(lambda: migration.status().stage == 0)
        assert not watcher.running
    finally:
        detach()
    steps = [(e.action, e.from_stage, e.to_stage) for e in migration.history()]
    assert steps[2:] == [("auto_rollback", 2, 1), ("auto_rollback", 1, 0)]
    assert all(e.reason == "restarts per minute 10 > 3" for e in migration.history()[2:])
    assert [r.rolled_back_to for r in watcher.rollbacks] == [1, 0]
    assert [e["breaches"] for e in events] == [("restarts per minute 10 > 3",)] * 2
    assert on(flags) == []


def test_the_watcher_survives_a_failing_source(
    flags: FeatureFlags, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: reported.append(u.exc_value))
    calls = 0

    def flaky() -> HealthSample:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("metrics down")
        return HealthSample(error_rate=0.9)

    migration = Migration(flags, PLAN, health=flaky, thresholds=LIMITS)
    migration.advance()
    with AutoRollback(migration, interval=0.01) as watcher:
        wait_until(lambda: migration.status().stage == 0)
    assert isinstance(watcher.last_error, ConnectionError)
    assert [str(e) for e in reported] == ["metrics down"]
