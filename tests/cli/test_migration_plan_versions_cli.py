"""``foundation migration`` when two versions of a plan were recorded (a rolling
deploy): the status reports the skew, and the emergency rollback turns off the
flag only the newer version names, although the recorded plan is the older one."""

from __future__ import annotations

from pathlib import Path

from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore, Stage
from tests.cli._support import ok_json, run_cli

DECLARED = (Flag("a"), Flag("b"))
NEW = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",), "high")], name="p")
OLD = MigrationPlan([Stage(1, "one", ("a",))], name="p")


def _rolling_deploy(path: Path) -> None:
    """The new version advances to stage 2, then an old node (re)starts."""
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(DECLARED, store=store)
        new = Migration(flags, NEW)
        new.advance(by="deploy")
        new.advance(by="deploy")
        flags.close()
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(DECLARED, store=store)
        Migration(flags, OLD)
        flags.close()


def _served(path: Path) -> tuple[bool, bool]:
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(DECLARED, store=store)
        served = (flags.enabled("a"), flags.enabled("b"))
        flags.close()
    return served


def test_the_cli_reports_the_skew_and_its_emergency_turns_off_every_version_s_flags(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.db"
    _rolling_deploy(path)
    store = ("--store", f"sqlite:///{path}")
    status = ok_json(run_cli("migration", "status", *store, cwd=tmp_path))
    assert (status["stage"], status["total"]) == (2, 1)
    assert "stage 2 is beyond this plan's 1" in status["skew"]
    assert "on now: b;" in status["skew"]
    text = run_cli("migration", "status", "--text", *store, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "WARNING: migration 'p' (1 stages here): stage 2 is beyond" in text.stdout

    em = ok_json(run_cli("migration", "emergency", "error spike", "--by", "oncall", *store,
                         cwd=tmp_path))  # fmt: skip
    assert (em["event"]["from_stage"], em["status"]["stage"]) == (2, 0)
    assert _served(path) == (False, False)  # before the fix: b (stage 2) stayed on
