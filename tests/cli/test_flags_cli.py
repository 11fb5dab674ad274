"""``foundation flags ...`` as a subprocess against real SQLite files (and a real Redis store)."""

from __future__ import annotations

import getpass
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    RedisFlagStore,
    SQLiteFlagStore,
)
from tests.cli._support import cli_env, ok_json, one_line_error, run_cli
from tests.redis_support import RedisServer

DECLARED = (
    Flag("beta", description="the beta checkout"),
    Flag("dark_mode", default=True, description="dark theme"),
)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[str, FeatureFlags]]:
    """An application's FeatureFlags over a real SQLite file: (store URL, flags)."""
    path = tmp_path / "flags.db"
    store = SQLiteFlagStore(path, poll_interval=0.01)
    flags = FeatureFlags(DECLARED, store=store)
    yield f"sqlite:///{path}", flags
    flags.close()
    store.close()


def test_list_show_and_eval(app: tuple[str, FeatureFlags], tmp_path: Path) -> None:
    url, _ = app
    rows = ok_json(run_cli("flags", "list", "--store", url, cwd=tmp_path))
    assert [(r["name"], r["enabled"], r["source"], r["description"]) for r in rows] == [
        ("beta", False, "default", "the beta checkout"),
        ("dark_mode", True, "default", "dark theme"),
    ]
    shown = ok_json(run_cli("flags", "show", "dark_mode", "--store", url, cwd=tmp_path))
    assert shown["default"] is True
    assert shown["recent_changes"] == []
    ok_json(run_cli("flags", "percentage", "beta", "50", "--store", url, cwd=tmp_path))
    answers = {
        actor: ok_json(
            run_cli("flags", "eval", "beta", "--actor", actor, "--store", url, cwd=tmp_path)
        )["enabled"]
        for actor in ("user-1", "user-2", "user-3", "user-4", "user-5", "user-6")
    }
    # The CLI's answer is the library's (same hash), whatever it is for each actor.
    with SQLiteFlagStore(url.removeprefix("sqlite:///")) as store:
        expected = FeatureFlags.from_store(store)
        assert answers == {a: expected.enabled("beta", actor=a) for a in answers}
        expected.close()
    assert ok_json(run_cli("flags", "eval", "beta", "--store", url, cwd=tmp_path)) == {
        "flag": "beta",
        "actor": None,
        "enabled": False,
    }


def test_writes_are_audited_with_by_and_reason(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, flags = app
    seen = threading.Event()
    heard: list[FlagChange] = []

    def listener(change: FlagChange) -> None:
        heard.append(change)
        seen.set()

    flags.subscribe(listener)
    result = ok_json(
        run_cli("flags", "enable", "beta", "--reason", "launch", "--store", url, cwd=tmp_path)
    )
    assert result["changed"] is True
    assert result["change"]["by"] == getpass.getuser()  # --by defaults to the OS user
    assert result["state"]["switch"] is True
    # The running application hears the CLI's change through the store.
    assert seen.wait(30), "the application never heard the CLI's write"
    assert flags.enabled("beta") is True
    assert (heard[0].by, heard[0].reason) == (getpass.getuser(), "launch")

    ok_json(run_cli("flags", "allow", "beta", "qa-1", "--by", "ana", "--store", url, cwd=tmp_path))
    ok_json(run_cli("flags", "deny", "beta", "bot-9", "--by", "ana", "--store", url, cwd=tmp_path))
    ok_json(
        run_cli(
            "flags",
            "disable",
            "beta",
            "--by",
            "ops",
            "--reason",
            "spike",
            "--store",
            url,
            cwd=tmp_path,
        )
    )
    again = ok_json(run_cli("flags", "disable", "beta", "--store", url, cwd=tmp_path))
    assert again["changed"] is False
    assert again["change"] is None
    ok_json(run_cli("flags", "clear", "dark_mode", "--store", url, cwd=tmp_path))

    history = ok_json(run_cli("flags", "history", "beta", "--store", url, cwd=tmp_path))["changes"]
    assert [(h["by"], h["reason"]) for h in history] == [
        (getpass.getuser(), "launch"),
        ("ana", None),
        ("ana", None),
        ("ops", "spike"),
    ]
    assert history[1]["new"]["allow"] == ["qa-1"]
    assert history[2]["new"]["deny"] == ["bot-9"]
    last = ok_json(run_cli("flags", "history", "--limit", "1", "--store", url, cwd=tmp_path))
    assert [(h["flag"], h["by"]) for h in last["changes"]] == [("beta", "ops")]
    assert last["more"] == 3  # the earlier records (beta's), said

    text = run_cli("flags", "history", "beta", "--text", "--store", url, cwd=tmp_path)
    assert text.returncode == 0
    assert "spike" in text.stdout
    assert "ops" in text.stdout
    # An audit trail that is bounded says so (the store's default history_limit).
    assert "keeps the last 10,000 records of all flags" in text.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.stdout)


def test_typed_errors_are_one_line(app: tuple[str, FeatureFlags], tmp_path: Path) -> None:
    url, _ = app
    line = one_line_error(run_cli("flags", "enable", "btea", "--store", url, cwd=tmp_path))
    assert line == "UnknownFlag: unknown flag 'btea' (did you mean 'beta'?)"
    line = one_line_error(  # refused before anything is written: a usage error
        run_cli("flags", "percentage", "beta", "150", "--store", url, cwd=tmp_path), exit_code=2
    )
    assert line.startswith("InvalidFlagValue: ")
    line = one_line_error(run_cli("flags", "show", "nope", "--store", url, cwd=tmp_path))
    assert line.startswith("UnknownFlag: unknown flag 'nope'")
    line = one_line_error(run_cli("flags", "list", cwd=tmp_path))
    assert line.startswith("InvalidConfig: no flag store given")
    # --debug shows the traceback.
    debug = run_cli("flags", "enable", "btea", "--debug", "--store", url, cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr
    assert "UnknownFlag" in debug.stderr


def test_usage_errors_exit_2(app: tuple[str, FeatureFlags], tmp_path: Path) -> None:
    url, _ = app
    for args in (
        ("flags", "bogus"),
        ("flags",),
        ("flags", "percentage", "beta", "lots", "--store", url),
        ("flags", "history", "--limit", "0", "--store", url),
        ("nonsense",),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage:" in result.stderr


def test_a_missing_store_is_never_created(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    line = one_line_error(run_cli("flags", "list", "--store", f"sqlite:///{typo}", cwd=tmp_path))
    assert line.startswith("InvalidConfig: no flag store at ")
    assert sorted(os.listdir(tmp_path)) == []


def test_a_toml_file_given_as_store_is_a_one_line_error(tmp_path: Path) -> None:
    toml = tmp_path / "foundation.toml"
    toml.write_text('[flags]\nbeta = "on"\n')
    line = one_line_error(run_cli("flags", "list", "--store", str(toml), cwd=tmp_path))
    assert line.startswith("FlagError: ")
    assert "not a usable flag store" in line
    assert toml.read_text() == '[flags]\nbeta = "on"\n'
    assert sorted(os.listdir(tmp_path)) == ["foundation.toml"]  # no -wal/-shm beside it


def test_settings_from_env_and_foundation_toml(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, _ = app
    env_run = run_cli("flags", "list", cwd=tmp_path, env=cli_env(FOUNDATION_STORE=url))
    assert [r["name"] for r in ok_json(env_run)] == ["beta", "dark_mode"]

    project = tmp_path / "project"
    project.mkdir()
    (project / "foundation.toml").write_text(f'[cli]\nstore = "{url}"\n')
    assert [r["name"] for r in ok_json(run_cli("flags", "list", cwd=project))] == [
        "beta",
        "dark_mode",
    ]
    # The command line wins over the environment, which wins over the file.
    wrong = f"sqlite:///{tmp_path / 'absent.db'}"
    line = one_line_error(
        run_cli("flags", "list", cwd=project, env=cli_env(FOUNDATION_STORE=wrong))
    )
    assert "absent.db" in line
    ok_json(
        run_cli("flags", "list", "--store", url, cwd=project, env=cli_env(FOUNDATION_STORE=wrong))
    )

    (project / "foundation.toml").write_text("[cli]\nstor = 'x'\n")
    line = one_line_error(run_cli("flags", "list", cwd=project))
    assert line.startswith("InvalidConfig: ")
    assert "unknown [cli] keys ['stor']" in line
    (project / "foundation.toml").write_text("[cli\n")
    assert one_line_error(run_cli("flags", "list", cwd=project)).startswith("InvalidConfig: ")


def test_redis_flag_store_by_url(redis_server: RedisServer, tmp_path: Path) -> None:
    ns = f"cli-{tmp_path.name}"
    url = f"{redis_server.url}?namespace={ns}"
    line = one_line_error(run_cli("flags", "list", "--store", url, cwd=tmp_path))
    assert line.startswith("InvalidConfig: no flag store in namespace")
    with RedisFlagStore(redis_server.url, namespace=ns, cache_path=None) as store:
        flags = FeatureFlags(DECLARED, store=store)
        ok_json(run_cli("flags", "enable", "beta", "--by", "ops", "--store", url, cwd=tmp_path))
        rows = ok_json(run_cli("flags", "list", "--store", url, cwd=tmp_path))
        assert [(r["name"], r["switch"], r["source"]) for r in rows] == [
            ("beta", True, "runtime"),
            ("dark_mode", True, "default"),
        ]
        assert [c.by for c in store.history("beta")] == ["ops"]
        flags.close()
