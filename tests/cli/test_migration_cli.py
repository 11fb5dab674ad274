"""``foundation migration ...`` as a subprocess against a real SQLite file."""

from __future__ import annotations

import getpass
from pathlib import Path

from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
    Stage,
)
from tests.cli._support import ok_json, one_line_error, run_cli

PLAN = MigrationPlan(
    [Stage(1, "search", ["search_v2"]), Stage(2, "checkout", ["beta"], risk="high")],
    name="rollout",
)


def _app(path: Path, *plans: MigrationPlan) -> None:
    """What an application does at start: declare its flags, construct its migrations."""
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags([Flag("search_v2"), Flag("beta"), *DEFAULT_FLAGS], store=store)
        for plan in plans:
            Migration(flags, plan)
        flags.close()


def test_status_advance_rollback_emergency(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path, PLAN)
    store = ("--store", f"sqlite:///{path}")
    status = ok_json(run_cli("migration", "status", *store, cwd=tmp_path))
    assert (status["plan"], status["stage"], status["total"]) == ("rollout", 0, 2)
    assert [s["risk"] for s in status["stages"]] == ["low", "high"]

    step = ok_json(run_cli("migration", "advance", "--reason", "green", *store, cwd=tmp_path))
    assert step["event"]["action"] == "advance"
    assert (step["event"]["by"], step["event"]["reason"]) == (getpass.getuser(), "green")
    assert step["status"]["flags"] == {"search_v2": True, "beta": False}
    ok_json(run_cli("migration", "advance", "--by", "ana", *store, cwd=tmp_path))
    line = one_line_error(run_cli("migration", "advance", *store, cwd=tmp_path))
    assert line.startswith("MigrationError: ")
    assert "last stage" in line

    back = ok_json(run_cli("migration", "rollback", "1", "--by", "ana", *store, cwd=tmp_path))
    assert (back["status"]["stage"], back["status"]["flags"]["beta"]) == (1, False)
    line = one_line_error(run_cli("migration", "rollback", "1", *store, cwd=tmp_path))
    assert line.startswith("MigrationError: cannot roll back")

    em = ok_json(
        run_cli("migration", "emergency", "error spike", "--by", "ops", *store, cwd=tmp_path)
    )
    assert em["event"]["action"] == "emergency_rollback"
    assert em["status"]["stage"] == 0
    assert em["status"]["flags"] == {"search_v2": False, "beta": False}

    # The store holds what the CLI did, with who and why, for the application too.
    with SQLiteFlagStore(path) as s:
        events = s.migration_history("rollout")
        assert [(e.action, e.by, e.reason) for e in events] == [
            ("advance", getpass.getuser(), "green"),
            ("advance", "ana", None),
            ("rollback", "ana", None),
            ("emergency_rollback", "ops", "error spike"),
        ]
        flag_history = s.history("search_v2")
        assert flag_history[-1].by == "ops"
        assert not flag_history[-1].new.switch

    text = run_cli("migration", "status", "--text", *store, cwd=tmp_path)
    assert text.returncode == 0
    assert "migration 'rollout': stage 0/2" in text.stdout
    assert "error spike" in text.stdout


def test_several_plans_need_plan(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path, PLAN, MigrationPlan.default())
    store = ("--store", f"sqlite:///{path}")
    line = one_line_error(run_cli("migration", "status", *store, cwd=tmp_path), exit_code=2)
    assert line == (
        "MigrationError: several migration plans are recorded (default, rollout): "
        "name one with --plan NAME"
    )
    before = ok_json(run_cli("migration", "--plan", "default", "status", *store, cwd=tmp_path))
    assert before["plan"] == "default"
    after = ok_json(run_cli("migration", "advance", "--plan", "default", *store, cwd=tmp_path))
    assert after["status"]["stage"] == 1
    line = one_line_error(run_cli("migration", "status", "--plan", "rolout", *store, cwd=tmp_path))
    assert "did you mean 'rollout'" in line


def test_no_plan_recorded(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    line = one_line_error(
        run_cli("migration", "status", "--store", f"sqlite:///{path}", cwd=tmp_path)
    )
    assert line == (
        "MigrationError: no migration plan is recorded in this store (an application "
        "records one when it constructs Migration(flags, plan) on it)"
    )
    assert run_cli("migration", "rollback", "x", cwd=tmp_path).returncode == 2
