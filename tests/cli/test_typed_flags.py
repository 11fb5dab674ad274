"""``foundation flags ...`` on typed flags (string, integer, float, object variants).

Every test runs the command as a subprocess against a real SQLite file (or a
real redis-server), with the flags declared by an "application" in this process.
"""

from __future__ import annotations

import getpass
import json
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    RedisFlagStore,
    SQLiteFlagStore,
)
from tests.cli._support import ok_json, one_line_error, run_cli
from tests.redis_support import RedisServer

DECLARED = (
    Flag("beta", description="the beta checkout"),
    Flag(
        "color",
        variants={"red": "#f00", "blue": "#00f", "green": "#0f0"},
        default="red",
        description="theme colour",
    ),
    Flag("limit", variants={"low": 10, "high": 100}, default="low"),
    Flag("ratio", variants={"small": 0.25, "large": 1}, default="large"),
    Flag(
        "layout",
        variants={"grid": {"cols": 3, "tags": ["a", "b"]}, "list": {"cols": 1, "tags": []}},
        default="grid",
    ),
)

ACTORS = [f"user-{i}" for i in range(40)]


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[str, FeatureFlags]]:
    """An application's FeatureFlags over a real SQLite file: (store URL, flags)."""
    path = tmp_path / "flags.db"
    store = SQLiteFlagStore(path, poll_interval=0.01)
    flags = FeatureFlags(DECLARED, store=store)
    yield f"sqlite:///{path}", flags
    flags.close()
    store.close()


def cli(url: str, cwd: Path, *args: str) -> Any:
    """``foundation flags ARGS --store URL``: its JSON (asserting exit 0)."""
    return ok_json(run_cli("flags", *args, "--store", url, cwd=cwd))


def library_answers(url: str, name: str, actors: list[str]) -> dict[str, tuple[Any, str, str]]:
    """What a fresh FeatureFlags over the store answers: actor -> (value, variant, reason)."""
    with SQLiteFlagStore(url.removeprefix("sqlite:///")) as store:
        flags = FeatureFlags.from_store(store)
        try:
            out = {}
            for actor in actors:
                e = flags.evaluate(name, actor)
                out[actor] = (e.value, e.variant, e.reason)
            return out
        finally:
            flags.close()


def test_list_and_show_give_kind_variants_default_and_value(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, _ = app
    rows = {r["name"]: r for r in cli(url, tmp_path, "list")}
    assert list(rows) == ["beta", "color", "layout", "limit", "ratio"]  # catalogue order
    assert {n: r["kind"] for n, r in rows.items()} == {
        "beta": "boolean",
        "color": "string",
        "layout": "object",
        "limit": "integer",
        "ratio": "float",
    }
    beta = rows["beta"]
    assert (beta["default"], beta["variants"], beta["enabled"]) == (False, None, False)
    assert (beta["value"], beta["variant"], beta["split"], beta["assign"]) == (
        False,
        "off",
        None,
        {},
    )
    color = rows["color"]
    assert color["variants"] == {"red": "#f00", "blue": "#00f", "green": "#0f0"}
    assert color["default"] == "red"
    assert color["enabled"] is None  # not a boolean: read value/variant instead
    assert (color["value"], color["variant"], color["source"]) == ("#f00", "red", "default")
    assert (color["split"], color["assign"], color["description"]) == (None, {}, "theme colour")
    assert rows["ratio"]["variants"] == {"small": 0.25, "large": 1.0}
    assert rows["ratio"]["value"] == 1.0
    assert rows["limit"]["value"] == 10
    assert rows["layout"]["value"] == {"cols": 3, "tags": ["a", "b"]}  # objects as JSON

    shown = cli(url, tmp_path, "show", "layout")
    assert shown["variants"]["list"] == {"cols": 1, "tags": []}
    assert shown["recent_changes"] == []

    text = run_cli("flags", "show", "color", "--text", "--store", url, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "kind: string" in text.stdout
    assert 'red="#f00" (default)' in text.stdout
    assert '"#f00" (variant red, ' in text.stdout
    listed = run_cli("flags", "list", "--text", "--store", url, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert 'red="#f00"' in listed.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(listed.stdout)


def test_split_assign_unassign_are_audited_and_heard_by_the_application(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, flags = app
    heard: list[FlagChange] = []
    got = threading.Condition()

    def listener(change: FlagChange) -> None:
        with got:
            heard.append(change)
            got.notify_all()

    flags.subscribe(listener)
    split = cli(
        url, tmp_path, "split", "color", "red=50", "blue=50%", "--by", "ana", "--reason", "a/b"
    )
    assert split["changed"] is True
    assert split["state"]["switch"] is True  # a split turns the switch on
    assert split["state"]["split"] == {"red": 50.0, "blue": 50.0}
    assert split["change"]["new"]["split"] == {"red": 50.0, "blue": 50.0}

    assigned = cli(url, tmp_path, "assign", "color", "qa-1", "green", "--reason", "qa")
    assert assigned["state"]["assign"] == {"qa-1": "green"}
    assert assigned["change"]["by"] == getpass.getuser()  # --by defaults to the OS user
    cli(url, tmp_path, "assign", "color", "qa-2", "blue", "--by", "ana")
    removed = cli(url, tmp_path, "unassign", "color", "qa-2", "--by", "ana")
    assert removed["changed"] is True
    assert removed["state"]["assign"] == {"qa-1": "green"}
    again = cli(url, tmp_path, "unassign", "color", "qa-2", "--by", "ana")
    assert (again["changed"], again["change"]) == (False, None)

    # The running application hears every CLI write through the store.
    with got:
        assert got.wait_for(lambda: len(heard) >= 4, timeout=30), heard
    assert [(c.by, c.reason) for c in heard] == [
        ("ana", "a/b"),
        (getpass.getuser(), "qa"),
        ("ana", None),
        ("ana", None),
    ]
    assert flags.evaluate("color", "qa-1").variant == "green"

    history = cli(url, tmp_path, "history", "color")["changes"]
    assert [h["new"]["assign"] for h in history] == [
        {},
        {"qa-1": "green"},
        {"qa-1": "green", "qa-2": "blue"},
        {"qa-1": "green"},
    ]
    # Every record has every key, a boolean flag's too (the store's form leaves them out).
    cli(url, tmp_path, "enable", "beta")
    assert cli(url, tmp_path, "history", "beta")["changes"][0]["new"] == {
        "switch": True,
        "percentage": None,
        "allow": [],
        "deny": [],
        "split": None,
        "assign": {},
    }
    text = run_cli("flags", "history", "color", "--text", "--store", url, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "split blue=50,red=50" in text.stdout  # sorted, as stored
    assert "assign=qa-1:green" in text.stdout


def test_value_reports_what_the_library_evaluates(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, _ = app
    before = cli(url, tmp_path, "value", "color")
    assert before == {
        "flag": "color",
        "actor": None,
        "kind": "string",
        "value": "#f00",
        "variant": "red",
        "reason": "STATIC",
    }
    cli(url, tmp_path, "split", "color", "red=50", "blue=25", "green=25")
    cli(url, tmp_path, "assign", "color", "qa-1", "green")
    cli(url, tmp_path, "deny", "color", "bot-9")
    answers = {
        actor: cli(url, tmp_path, "value", "color", "--actor", actor)
        for actor in [*ACTORS[:5], "qa-1", "bot-9"]
    }
    expected = library_answers(url, "color", list(answers))
    assert {a: (r["value"], r["variant"], r["reason"]) for a, r in answers.items()} == expected
    assert expected["qa-1"] == ("#0f0", "green", "TARGETING_MATCH")
    assert expected["bot-9"] == ("#f00", "red", "TARGETING_MATCH")
    assert {expected[a][2] for a in ACTORS[:5]} == {"SPLIT"}
    assert cli(url, tmp_path, "value", "color")["reason"] == "DEFAULT"  # no 100% variant

    # The kill switch: every actor gets the default variant, assigned ones too.
    cli(url, tmp_path, "disable", "color", "--reason", "incident")
    off = cli(url, tmp_path, "value", "color", "--actor", "qa-1")
    assert (off["value"], off["variant"], off["reason"]) == ("#f00", "red", "DISABLED")
    # enable resumes the split and the assignment as they were.
    state = cli(url, tmp_path, "enable", "color")["state"]
    assert state["split"] == {"red": 50.0, "blue": 25.0, "green": 25.0}
    assert cli(url, tmp_path, "value", "color", "--actor", "qa-1")["variant"] == "green"
    text = run_cli(
        "flags", "value", "color", "--actor", "qa-1", "--text", "--store", url, cwd=tmp_path
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout == "color for 'qa-1': \"#0f0\" (variant green, TARGETING_MATCH)\n"

    # Every kind answers its own JSON type; a boolean flag answers too.
    cli(url, tmp_path, "split", "limit", "high=100")
    assert cli(url, tmp_path, "value", "limit")["value"] == 100
    assert cli(url, tmp_path, "value", "limit")["reason"] == "SPLIT"
    assert cli(url, tmp_path, "value", "layout", "--actor", "a")["value"]["tags"] == ["a", "b"]
    assert cli(url, tmp_path, "value", "ratio")["value"] == 1.0
    # clear drops split, assignments and deny: the declared default applies again.
    cleared = cli(url, tmp_path, "clear", "color")["state"]
    assert (cleared["split"], cleared["assign"], cleared["deny"]) == (None, {}, [])
    shown = cli(url, tmp_path, "show", "color")
    assert (shown["source"], shown["variant"], shown["reason"]) == ("default", "red", "STATIC")
    beta = cli(url, tmp_path, "value", "beta", "--actor", "x")
    assert (beta["kind"], beta["value"], beta["variant"]) == ("boolean", False, "off")


def test_a_split_moves_actors_as_the_library_does(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, _ = app
    cli(url, tmp_path, "split", "color", "red=80", "blue=20")
    first = library_answers(url, "color", ACTORS)
    cli(url, tmp_path, "split", "color", "red=40", "blue=60")
    second = library_answers(url, "color", ACTORS)
    # Monotonic: raising blue's share never moves an actor out of blue.
    assert all(second[a][1] == "blue" for a in ACTORS if first[a][1] == "blue")
    via_cli = {a: cli(url, tmp_path, "value", "color", "--actor", a)["variant"] for a in ACTORS[:6]}
    assert via_cli == {a: second[a][1] for a in ACTORS[:6]}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("percentage", "color", "50"), "'color' is a string flag: split its actors with"),
        (("allow", "color", "qa-1"), "'color' is a string flag: give ACTOR a variant with"),
        (("eval", "color"), "'color' is a string flag: read it with 'foundation flags value"),
        (("percentage", "layout", "10"), "'layout' is an object flag"),
        (("split", "beta", "on=100"), "'beta' is a boolean flag: roll it out with"),
        (("assign", "beta", "qa-1", "on"), "'beta' is a boolean flag: use"),
        (("unassign", "beta", "qa-1"), "'beta' is a boolean flag: use"),
    ],
)
def test_a_command_for_the_other_kind_exits_2_in_one_line(
    app: tuple[str, FeatureFlags], tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    url, _ = app
    line = one_line_error(run_cli("flags", *args, "--store", url, cwd=tmp_path), exit_code=2)
    assert line.startswith(f"InvalidFlagValue: {says}"), line
    assert cli(url, tmp_path, "history")["changes"] == []  # nothing written


def test_bad_values_are_typed_one_line_errors(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, _ = app
    # Refused before anything is written: usage errors (exit 2).
    line = one_line_error(
        run_cli("flags", "assign", "color", "qa-1", "bleu", "--store", url, cwd=tmp_path),
        exit_code=2,
    )
    assert line.startswith("InvalidFlagValue: "), line
    assert "'blue'" in line  # the nearest variant name
    line = one_line_error(
        run_cli("flags", "split", "color", "red=50", "blue=40", "--store", url, cwd=tmp_path),
        exit_code=2,
    )
    assert line.startswith("InvalidFlagValue: "), line
    line = one_line_error(
        run_cli("flags", "split", "color", "rde=100", "--store", url, cwd=tmp_path), exit_code=2
    )
    assert line.startswith("InvalidFlagValue: "), line
    line = one_line_error(
        run_cli("flags", "split", "colour", "red=100", "--store", url, cwd=tmp_path)
    )
    assert line == "UnknownFlag: unknown flag 'colour' (did you mean 'color'?)"
    line = one_line_error(
        run_cli("flags", "split", "color", "red=50", "red=50", "--store", url, cwd=tmp_path),
        exit_code=2,
    )
    assert line == "InvalidFlagValue: variant 'red' given twice"
    debug = run_cli("flags", "allow", "color", "x", "--debug", "--store", url, cwd=tmp_path)
    assert debug.returncode == 2
    assert "Traceback" in debug.stderr  # --debug shows where, for this error too
    assert cli(url, tmp_path, "history")["changes"] == []  # all or nothing: no half-written split


def test_malformed_arguments_are_usage_errors(
    app: tuple[str, FeatureFlags], tmp_path: Path
) -> None:
    url, _ = app
    for args in (
        ("flags", "split", "color", "--store", url),
        ("flags", "split", "color", "red", "--store", url),
        ("flags", "split", "color", "red=lots", "--store", url),
        ("flags", "split", "color", "=100", "--store", url),
        ("flags", "assign", "color", "qa-1", "--store", url),
        ("flags", "unassign", "color", "--store", url),
        ("flags", "value", "--store", url),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage:" in result.stderr


def test_redis_store_from_the_catalogue_alone(redis_server: RedisServer, tmp_path: Path) -> None:
    ns = f"cli-typed-{tmp_path.name}"
    url = f"{redis_server.url}?namespace={ns}"
    with RedisFlagStore(redis_server.url, namespace=ns, cache_path=None) as store:
        app_flags = FeatureFlags(DECLARED, store=store)
        try:
            rows = {r["name"]: r for r in cli(url, tmp_path, "list")}
            assert rows["color"]["variants"] == {"red": "#f00", "blue": "#00f", "green": "#0f0"}
            assert rows["layout"]["kind"] == "object"
            cli(url, tmp_path, "split", "color", "blue=100", "--by", "ops")
            cli(url, tmp_path, "assign", "color", "qa-1", "green", "--by", "ops")
            assert cli(url, tmp_path, "value", "color") == {
                "flag": "color",
                "actor": None,
                "kind": "string",
                "value": "#00f",
                "variant": "blue",
                "reason": "SPLIT",
            }
            shown = cli(url, tmp_path, "show", "color")
            assert (shown["split"], shown["assign"]) == ({"blue": 100.0}, {"qa-1": "green"})
            assert [c.by for c in store.history("color")] == ["ops", "ops"]
            line = one_line_error(
                run_cli("flags", "percentage", "color", "5", "--store", url, cwd=tmp_path),
                exit_code=2,
            )
            assert line.startswith("InvalidFlagValue: 'color' is a string flag")
        finally:
            app_flags.close()


def test_the_readme_session_prints_what_it_shows(tmp_path: Path) -> None:
    """The ``$ foundation ...`` session in README's typed-flag paragraph, replayed."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    start = readme.index("$ foundation flags percentage color 50")
    session = readme[start : readme.index("```", start)].splitlines()
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        declared = Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red")
        FeatureFlags([declared], store=store).close()
    commands: list[tuple[list[str], list[str]]] = []
    for line in session:
        if line.startswith("$ "):
            commands.append((shlex.split(line[2:]), []))
        else:
            commands[-1][1].append(line)
    assert len(commands) == 4
    for argv, shown in commands:
        assert argv[0] == "foundation"
        # --text: the README shows a terminal; the test's stdout is a pipe.
        result = run_cli(*argv[1:], "--text", "--store", f"sqlite:///{path}", cwd=tmp_path)
        assert (result.stdout + result.stderr).splitlines() == shown, argv
        assert result.returncode == (2 if argv[2] == "percentage" else 0)
