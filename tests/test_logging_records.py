"""Log records of flag changes, migration steps and registry outages, with their extra fields.

Real FeatureFlags and Migration over a SQLite store; the Redis outage runs as a
subprocess scenario (plain interpreter, default hooks) against a real redis-server.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags import (
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
    Stage,
)
from tests._logs import Records, captured
from tests.faults._subprocess import run_scenario


@pytest.fixture
def records() -> Iterator[Records]:
    """Every record under ``foundation``, DEBUG and up."""
    with captured("foundation") as kept:
        yield kept


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "flags.sqlite3"


PLAN = MigrationPlan(
    [Stage(1, "registry", ("use_ets",)), Stage(2, "monitoring", ("monitoring",))],
    name="registry-move",
)
FLAGS = (Flag("beta"), Flag("use_ets"), Flag("monitoring"))


def test_a_flag_change_is_one_info_record_with_flag_old_new_by_reason(
    records: Records, store_path: Path
) -> None:
    with SQLiteFlagStore(store_path) as store, FeatureFlags(FLAGS, store=store) as flags:
        records.clear()
        flags.set_percentage("beta", 25, by="ana", reason="canary")
        (record,) = records.named("foundation.flags")
    assert record.levelno == logging.INFO
    assert record.flag == "beta"  # type: ignore[attr-defined]
    assert record.old == {"switch": False, "percentage": None, "allow": [], "deny": []}  # type: ignore[attr-defined]
    assert record.new["percentage"] == 25.0  # type: ignore[attr-defined]
    assert record.by == "ana"  # type: ignore[attr-defined]
    assert record.reason == "canary"  # type: ignore[attr-defined]
    assert "'beta'" in record.getMessage()
    assert "ana" in record.getMessage()
    json.dumps({k: getattr(record, k) for k in ("flag", "old", "new", "by", "reason")})


def test_a_change_without_by_or_reason_says_neither(records: Records, store_path: Path) -> None:
    # Once "flag 'beta' changed by None (None): ...", which reads as a user named None.
    with SQLiteFlagStore(store_path) as store, FeatureFlags(FLAGS, store=store) as flags:
        records.clear()
        flags.enable("beta")
        flags.set_percentage("beta", 25, by="ana")
        plain, by_only = records.named("foundation.flags")
    assert plain.getMessage().startswith("flag 'beta' changed: "), plain.getMessage()
    assert "by None" not in plain.getMessage()
    assert "(None)" not in plain.getMessage()
    assert by_only.getMessage().startswith("flag 'beta' changed by ana: "), by_only.getMessage()


def test_reads_log_nothing_and_a_failed_write_logs_no_change(
    records: Records, store_path: Path
) -> None:
    with SQLiteFlagStore(store_path) as store, FeatureFlags(FLAGS, store=store) as flags:
        records.clear()
        for _ in range(100):
            flags.enabled("beta")
            flags.enabled("beta", actor="user-1")
        with pytest.raises(ValueError):
            flags.set_percentage("beta", 250, by="ana")
        assert records == []


def test_a_change_from_another_process_is_not_logged_again_here(
    records: Records, store_path: Path
) -> None:
    with (
        SQLiteFlagStore(store_path) as store_a,
        SQLiteFlagStore(store_path) as store_b,
        FeatureFlags(FLAGS, store=store_a) as writer,
        FeatureFlags(FLAGS, store=store_b) as reader,
    ):
        seen = threading.Event()
        reader.subscribe(lambda change: seen.set())
        records.clear()
        writer.enable("beta", by="ana", reason="launch")
        assert seen.wait(10), "the other instance never saw the change"
        infos = [r for r in records.named("foundation.flags") if r.levelno >= logging.INFO]
        assert len(infos) == 1  # the writer's record only: one audit line per change


def test_migration_steps_log_advance_rollback_info_and_emergency_warning(
    records: Records, store_path: Path
) -> None:
    with SQLiteFlagStore(store_path) as store, FeatureFlags(FLAGS, store=store) as flags:
        migration = Migration(flags, PLAN)
        records.clear()
        migration.advance(by="ops", reason="staging ok")
        migration.advance(by="ops", reason="prod")
        migration.rollback_to(1, by="ops", reason="slow")
        migration.emergency_rollback("errors spiking", by="oncall")
        steps = records.named("foundation.flags.migration")
    assert [(r.action, r.levelno) for r in steps] == [  # type: ignore[attr-defined]
        ("advance", logging.INFO),
        ("advance", logging.INFO),
        ("rollback", logging.INFO),
        ("emergency_rollback", logging.WARNING),
    ]
    last = steps[-1]
    fields = {k: getattr(last, k) for k in ("plan", "from_stage", "to_stage", "by", "reason")}
    assert fields == {
        "plan": "registry-move",
        "from_stage": 1,
        "to_stage": 0,
        "by": "oncall",
        "reason": "errors spiking",
    }
    assert "registry-move" in last.getMessage()


def test_a_refused_migration_step_logs_nothing(records: Records, store_path: Path) -> None:
    with SQLiteFlagStore(store_path) as store, FeatureFlags(FLAGS, store=store) as flags:
        migration = Migration(flags, PLAN)
        records.clear()
        with pytest.raises(RuntimeError):
            migration.rollback_to(0, by="ops")
        assert records.named("foundation.flags.migration") == []


REDIS_OUTAGE = """
import json
from foundation.registry import RedisRegistry
from tests._logs import keep_records
from tests.redis_support import RedisServer

keep = keep_records("foundation.registry.redis")

def transitions():
    return [r for r in keep if " -> " in r.getMessage() and r.levelno >= logging.INFO]

with RedisServer() as server:
    reg = RedisRegistry(server.url, namespace="logs", lease_ttl=2.0, op_timeout=0.5)
    stop = threading.Event()
    from foundation import spawn_thread
    reg.register("a", spawn_thread(stop.wait))
    server.kill()
    wait_for(lambda: any(r.levelno == logging.WARNING for r in transitions()), "outage record")
    server.restart()
    wait_for(lambda: transitions() and transitions()[-1].getMessage().split(" -> ")[1]
             .startswith("connected"), "recovery record")
    for r in transitions():
        print("REC", json.dumps({
            "level": r.levelname, "msg": r.getMessage(),
            "state": getattr(r, "state", None), "error": getattr(r, "error", None),
        }))
    stop.set()
    reg.close()
print("OK")
"""


@pytest.fixture(scope="module")
def outage_records() -> list[dict[str, object]]:
    """The transition records of one Redis kill and restart (the scenario runs once)."""
    result = run_scenario(REDIS_OUTAGE)
    return [json.loads(line[4:]) for line in result.lines("REC ")]


def test_registry_redis_outage_and_recovery_are_logged(
    outage_records: list[dict[str, object]],
) -> None:
    recs = outage_records
    assert any(r["level"] == "WARNING" for r in recs), recs
    assert recs[-1]["level"] == "INFO", recs
    assert "-> connected" in str(recs[-1]["msg"]), recs


def test_registry_redis_state_records_carry_state_and_error_fields(
    outage_records: list[dict[str, object]],
) -> None:
    recs = outage_records
    outage = next(r for r in recs if r["level"] == "WARNING")
    assert outage["state"]
    assert outage["error"]
    assert recs[-1]["state"] == "connected"
