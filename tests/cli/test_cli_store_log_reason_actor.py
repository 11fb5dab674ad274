"""The CLI never writes into a file that is not a flag store; ``admin`` logs at
INFO, one-shot commands stay quiet (``--log-level`` says otherwise); a blank
emergency reason is refused; ``--actor ""`` is no actor; ``-0`` is 0%.

Each runs ``foundation`` as a real subprocess over a real SQLite file.
"""

from __future__ import annotations

import hashlib
import math
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest

from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
)
from tests.cli._support import Running, ok_json, one_line_error, run_cli
from tests.redis_support import free_port


def _app(path: Path) -> None:
    """What an application does at start: its flags, the default plan at stage 1."""
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(
            [
                Flag("new_parser"),
                Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red"),
                *DEFAULT_FLAGS,
            ],
            store=store,
        )
        migration = Migration(flags, MigrationPlan.default())
        migration.advance(by="ana")
        flags.set_percentage("new_parser", 50, by="ana")
        flags.set_split("color", {"red": 50, "blue": 50}, by="ana")
        flags.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _foreign(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.db"
    if kind == "empty":
        path.write_bytes(b"")
    else:  # another application's database
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO users (name) VALUES ('ana')")
        conn.commit()
        conn.close()
    return path


@pytest.mark.parametrize("kind", ["other-app", "empty"])
@pytest.mark.parametrize(
    "command",
    [("flags", "list"), ("flags", "enable", "x"), ("migration", "status")],
    ids=" ".join,
)
def test_a_file_that_is_not_a_flag_store_is_refused_and_left_as_it_was(
    tmp_path: Path, kind: str, command: tuple[str, ...]
) -> None:
    path = _foreign(tmp_path, kind)
    before = _digest(path)
    error = one_line_error(run_cli("--store", f"sqlite:///{path}", *command, cwd=tmp_path))
    assert error.startswith("FlagError: "), error
    assert "is not a usable flag store: not a Foundation flag store" in error, error
    assert _digest(path) == before  # not a byte written: no schema, no WAL switch
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_admin_refuses_a_file_that_is_not_a_flag_store(tmp_path: Path) -> None:
    path = _foreign(tmp_path, "other-app")
    before = _digest(path)
    bind = f"127.0.0.1:{free_port()}"
    result = run_cli("admin", "--store", f"sqlite:///{path}", "--bind", bind, cwd=tmp_path)
    error = one_line_error(result)
    assert error.startswith("FlagError: "), error
    assert "not a Foundation flag store" in error, error
    assert _digest(path) == before


def test_a_flag_store_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    names = [
        f["name"]
        for f in ok_json(run_cli("--store", f"sqlite:///{path}", "flags", "list", cwd=tmp_path))
    ]
    assert "new_parser" in names


@pytest.mark.parametrize("reason", ["   ", "\n", "\t "])
def test_a_blank_emergency_reason_is_refused_as_an_empty_one(tmp_path: Path, reason: str) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    store = ("--store", f"sqlite:///{path}")
    empty = one_line_error(run_cli("migration", "emergency", "", *store, cwd=tmp_path))
    blank = one_line_error(run_cli("migration", "emergency", reason, *store, cwd=tmp_path))
    assert blank == empty == "MigrationError: an emergency rollback needs a reason"
    status = ok_json(run_cli("migration", "status", *store, cwd=tmp_path))
    assert status["stage"] == 1  # nothing rolled back
    assert [e["action"] for e in status["history"]] == ["advance"]


def test_an_empty_actor_is_no_actor(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    store = ("--store", f"sqlite:///{path}")
    for flag, action in (("new_parser", "eval"), ("color", "value"), ("new_parser", "value")):
        none = ok_json(run_cli("flags", action, flag, *store, cwd=tmp_path))
        empty = ok_json(run_cli("flags", action, flag, "--actor", "", *store, cwd=tmp_path))
        assert empty == none, (flag, action)
        assert empty["actor"] is None
    # "" buckets "on" for 50% (what the CLI answered before); no actor is "off".
    assert (
        ok_json(run_cli("flags", "eval", "new_parser", "--actor", "", *store, cwd=tmp_path))[
            "enabled"
        ]
        is False
    )
    value = ok_json(run_cli("flags", "value", "color", "--actor", "", *store, cwd=tmp_path))
    assert value["reason"] != "SPLIT", value


def test_minus_zero_percent_is_stored_as_zero(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    store = ("--store", f"sqlite:///{path}")
    result = run_cli("flags", "percentage", "new_parser", *store, "--", "-0", cwd=tmp_path)
    assert "-0.0" not in result.stdout, result.stdout
    p = ok_json(result)["state"]["percentage"]
    assert p == 0.0
    assert math.copysign(1.0, p) == 1.0
    text = run_cli("--text", "flags", "show", "new_parser", *store, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "-0%" not in text.stdout, text.stdout
    assert "on 0%" in text.stdout, text.stdout


def test_one_shot_commands_stay_quiet_unless_a_log_level_is_given(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    store = ("--store", f"sqlite:///{path}")
    quiet = run_cli("flags", "disable", "new_parser", *store, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    told = run_cli("flags", "enable", "new_parser", "--log-level", "info", *store, cwd=tmp_path)
    assert told.returncode == 0, told.stderr
    assert told.stderr.startswith("INFO foundation.flags: flag 'new_parser' changed"), told.stderr
    bad = run_cli("flags", "list", "--log-level", "loud", *store, cwd=tmp_path)
    assert bad.returncode == 2, bad.stderr
    assert "not a log level" in bad.stderr, bad.stderr


def _serve(tmp_path: Path, path: Path, *extra: str) -> tuple[Running, httpx.Client]:
    bind = f"127.0.0.1:{free_port()}"
    admin = Running(
        "admin", "--store", f"sqlite:///{path}", "--token", "ana:tok", "--bind", bind, *extra,
        cwd=tmp_path,
    )  # fmt: skip
    admin.wait_for("admin page: ")
    client = httpx.Client(
        base_url=f"http://{bind}/", headers={"Authorization": "Bearer tok"}, timeout=30.0
    )
    return admin, client


def test_admin_logs_flag_changes_and_emergency_rollbacks_by_default(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    admin, client = _serve(tmp_path, path)
    try:
        r = client.post("api/flags/new_parser/disable", json={"confirm": "new_parser"})
        assert r.status_code == 200, r.text
        change = admin.wait_for("INFO foundation.flags: flag 'new_parser' changed by ana")
        assert change.endswith(": switch on -> off"), change  # what changed, not whole states
        r = client.post("api/migration/emergency", json={"confirm": "1", "reason": "fire"})
        assert r.status_code == 200, r.text
        line = admin.wait_for("WARNING foundation.flags.migration:")
        assert "emergency_rollback from stage 1 to 0 by ana (fire)" in line
        admin.send(signal.SIGTERM)
        assert admin.finish() == 0
        # Read paths and uvicorn's own start lines are not logged at INFO.
        assert not [x for x in admin.stderr if x.startswith("INFO uvicorn")], admin.stderr
    finally:
        client.close()
        admin.close()


def test_admin_log_level_error_drops_the_info_lines(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    _app(path)
    admin, client = _serve(tmp_path, path, "--log-level", "ERROR")
    try:
        r = client.post("api/flags/new_parser/disable", json={"confirm": "new_parser"})
        assert r.status_code == 200, r.text  # logged (or not) before the answer
        admin.send(signal.SIGTERM)
        assert admin.finish() == 0
        assert not [x for x in admin.stderr if "foundation.flags" in x], admin.stderr
    finally:
        client.close()
        admin.close()
