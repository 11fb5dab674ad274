"""AutoRollback under default hooks: a health source raising SystemExit or
GeneratorExit does not end the watcher (reported, kept in ``last_error``, the
next breach still rolled back); a closed FeatureFlags ends it with one WARNING,
not an ERROR per interval."""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation.flags import (
    DEFAULT_FLAGS, AutoRollback, FeatureFlags, HealthSample, HealthThresholds, Migration,
    MigrationPlan,
)

calls = [0]
def health():
    calls[0] += 1
    if calls[0] == 2:
        raise {exc}
    return HealthSample(error_rate=0.0 if calls[0] < 5 else 0.9)

flags = FeatureFlags(DEFAULT_FLAGS)
m = Migration(flags, MigrationPlan.default(), health=health,
              thresholds=HealthThresholds(max_error_rate=0.05))
m.advance(by="test")
watcher = AutoRollback(m, interval=0.01)
wait_for(lambda: watcher.rollbacks or not watcher.running, "a rollback or the watcher's end")
print("running", watcher.running)
print("last_error", type(watcher.last_error).__name__)
print("stage", m.status().stage)
watcher.stop()
flags.close()
print("OK")
"""


@pytest.mark.parametrize("exc", ["SystemExit(1)", "GeneratorExit()", "KeyboardInterrupt()"])
def test_a_health_source_raising_a_base_exception_does_not_end_the_watcher(exc: str) -> None:
    result = run_scenario(_SCENARIO.format(exc=exc))
    name = exc.split("(", maxsplit=1)[0]
    assert "running True" in result.stdout
    assert f"last_error {name}" in result.stdout
    assert "stage 0" in result.stdout  # the later breach was still rolled back
    reported = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG ERROR foundation.flags") and "auto-rollback health source" in line
    ]
    assert len(reported) == 1, result.stderr
    assert f"LOG| {name}" in result.stderr  # the traceback rides on the log record


_CLOSED = """
from foundation.flags import (
    DEFAULT_FLAGS, AutoRollback, FeatureFlags, HealthSample, HealthThresholds, Migration,
    MigrationPlan,
)
calls = [0]
def health():
    calls[0] += 1
    return HealthSample(error_rate=0.9)

flags = FeatureFlags(DEFAULT_FLAGS)
m = Migration(flags, MigrationPlan.default(), health=health,
              thresholds=HealthThresholds(max_error_rate=0.05))
watcher = AutoRollback(m, interval=0.01)
wait_for(lambda: calls[0] >= 3, "a few checks at stage 0")
flags.close()
wait_for(lambda: not watcher.running, "the watcher's end")
print("running", watcher.running)
print("threads", [t for t in library_threads() if "auto-rollback" in t])
watcher.stop()
print("OK")
"""


def test_a_closed_feature_flags_ends_the_watcher_with_one_warning() -> None:
    result = run_scenario(_CLOSED)
    assert "running False" in result.stdout
    assert "threads []" in result.stdout
    lines = result.stderr.splitlines()
    assert not [line for line in lines if line.startswith("LOG ERROR")], result.stderr
    stopped = [line for line in lines if "automatic rollback stopped" in line]
    assert len(stopped) == 1, result.stderr
    assert stopped[0].startswith("LOG WARNING foundation.flags"), stopped


_CLOSED_MID_CHECK = """
import threading
from foundation.flags import (
    DEFAULT_FLAGS, AutoRollback, FeatureFlags, HealthSample, HealthThresholds, Migration,
    MigrationPlan,
)
sampled, closed = threading.Event(), threading.Event()
def health():
    if not sampled.is_set():
        sampled.set()
        closed.wait(20)  # the flags close while this check runs
    return HealthSample(error_rate=0.9)

flags = FeatureFlags(DEFAULT_FLAGS)
m = Migration(flags, MigrationPlan.default(), health=health,
              thresholds=HealthThresholds(max_error_rate=0.05))
m.advance(by="test")
watcher = AutoRollback(m, interval=0.01)
wait_for(sampled.is_set, "the first check")
flags.close()
closed.set()
wait_for(lambda: not watcher.running, "the watcher's end")
print("last_error", type(watcher.last_error).__name__)
watcher.stop()
print("OK")
"""


def test_flags_closed_during_a_check_end_the_watcher_with_one_warning() -> None:
    result = run_scenario(_CLOSED_MID_CHECK)
    assert "last_error Closed" in result.stdout
    lines = result.stderr.splitlines()
    assert not [line for line in lines if line.startswith("LOG ERROR")], result.stderr
    assert len([line for line in lines if "automatic rollback stopped" in line]) == 1
