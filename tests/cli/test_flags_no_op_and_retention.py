"""What the command line says about no-op records and the bounded migration history.

A tool has no config layer: ``foundation flags disable`` of a flag that is off by
default is a no-op *for it*, recorded (it overrides the applications' config), and
both its JSON and its text say so. ``foundation migration status`` says that the
steps it lists are bounded by ``history_limit``.
"""

from __future__ import annotations

from pathlib import Path

from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore, Stage
from tests.cli._support import ok_json, run_cli

DECLARED = (Flag("beta"), Flag("gamma"))
PLAN = MigrationPlan([Stage(1, "one", ["beta"]), Stage(2, "two", ["gamma"])], name="p")


def test_a_tool_s_no_op_kill_switch_says_so(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(DECLARED, store=store):
        pass  # records the catalogue, as an application does
    url = f"sqlite:///{path}"
    done = ok_json(
        run_cli("flags", "disable", "beta", "--by", "oncall", "--store", url, cwd=tmp_path)
    )
    assert done["changed"] is True
    assert done["change"]["no_op"] is True
    text = run_cli(
        "flags", "disable", "gamma", "--by", "oncall", "--text", "--store", url, cwd=tmp_path
    )
    assert text.returncode == 0, text.stderr
    assert "no-op here: only the runtime state was set" in text.stdout
    rows = ok_json(run_cli("flags", "history", "--store", url, cwd=tmp_path))["changes"]
    assert [(r["flag"], r["no_op"]) for r in rows] == [("beta", True), ("gamma", True)]
    table = run_cli("flags", "history", "--text", "--store", url, cwd=tmp_path)
    assert table.stdout.count("(no-op)") == 2, table.stdout


def test_migration_status_says_the_steps_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path, history_limit=3) as store, FeatureFlags(DECLARED, store=store) as f:
        migration = Migration(f, PLAN)
        for _ in range(5):
            migration.advance(by="bot")
            migration.rollback_to(0, by="bot")
        assert len(migration.history()) <= 4
    out = run_cli("migration", "status", "--text", "--store", f"sqlite:///{path}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "recent steps:" in out.stdout
    assert "keeps the last 10,000 steps of all plans" in out.stdout  # the CLI's own store
