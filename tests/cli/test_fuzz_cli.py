"""Fuzzing the ``foundation`` command's arguments, in process (``foundation.cli.main``).

Hypothesis builds argument lists for every subcommand that acts on a store
(``flags ...``, ``migration ...``, ``agents ...`` against a Redis that does not
answer, ``version``) from words a user could type: flag names that exist and
that do not, hostile numbers (``nan``, ``1e999``, 400 digits), shares such as
``red=nan`` and ``=``, empty words, options with missing values, a lone
surrogate (what a non-UTF-8 byte in argv becomes on POSIX) and invisible
characters (U+202E, U+200B). The contract (docs/cli.md): the run ends with a
documented exit code, a failure prints one line ``ErrorClass: message`` naming
a ``foundation.errors`` type (or argparse's usage, exit 2), never a traceback
or a Python builtin error; and text output shows invisible characters escaped.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from foundation import errors
from foundation.cli import main
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
)
from tests.cli._support import SETTINGS_ENV

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

LIBRARY_ERRORS = {n for n in errors.__all__ if isinstance(getattr(errors, n), type)}
DOCUMENTED_CODES = {0, 1, 2, 69}
HIDDEN = ("\u202e", "\u200b", "\u2066", "\x1b", "\ud800")

HOSTILE_WORDS = [
    "",
    "-",
    "--",
    "-1",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "9" * 400,
    "=",
    "a=b=c",
    "x\u202egnp.exe",
    "ana\u200b",
    "\u2066beta\u2069",
    "\ud800",
    "\udcff",  # a non-UTF-8 byte of argv, as POSIX Python decodes it
    "a\nb\x1b[2J",
    "[/]",
    "--by",
]
hostile_word = st.one_of(st.sampled_from(HOSTILE_WORDS), st.text(max_size=6))
NAME = st.one_of(st.sampled_from(["beta", "color", "use_ets_agent_registry", "nope"]), hostile_word)
ACTOR = st.one_of(st.sampled_from(["ana", "user-1", "x\u202egnp.exe"]), hostile_word)
NUMBER = st.one_of(st.sampled_from(["0", "1", "50", "100", "100.5", "2.5", "-0"]), hostile_word)
SHARE = st.one_of(
    st.sampled_from(["red=50", "blue=50", "red=100", "red=nan", "red=-1", "red=", "=50"]),
    hostile_word,
)
VARIANT = st.one_of(st.sampled_from(["red", "blue", "green"]), hostile_word)
TEXT = st.one_of(st.sampled_from(["ops", "because", "x\u202eevil"]), hostile_word)

# Each subcommand with strategies for its positional arguments, as typed in order.
COMMANDS: dict[str, tuple[list[str], list[st.SearchStrategy[str]]]] = {
    "flags list": (["flags", "list"], []),
    "flags show": (["flags", "show"], [NAME]),
    "flags history": (["flags", "history"], [NAME]),
    "flags eval": (["flags", "eval"], [NAME]),
    "flags value": (["flags", "value"], [NAME]),
    "flags enable": (["flags", "enable"], [NAME]),
    "flags disable": (["flags", "disable"], [NAME]),
    "flags clear": (["flags", "clear"], [NAME]),
    "flags percentage": (["flags", "percentage"], [NAME, NUMBER]),
    "flags allow": (["flags", "allow"], [NAME, ACTOR]),
    "flags deny": (["flags", "deny"], [NAME, ACTOR]),
    "flags split": (["flags", "split"], [NAME, SHARE, SHARE]),
    "flags assign": (["flags", "assign"], [NAME, ACTOR, VARIANT]),
    "flags unassign": (["flags", "unassign"], [NAME, ACTOR]),
    "migration status": (["migration", "status"], []),
    "migration advance": (["migration", "advance"], []),
    "migration rollback": (["migration", "rollback"], [NUMBER]),
    "migration emergency": (["migration", "emergency"], [TEXT]),
    "agents list": (["agents", "list"], []),
    "version": (["version"], []),
}
# Options a command may or may not take (argparse refuses the others: exit 2).
OPTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("--by"), TEXT),
        st.tuples(st.just("--reason"), TEXT),
        st.tuples(st.just("--actor"), ACTOR),
        st.tuples(st.just("--limit"), NUMBER),
        st.tuples(st.just("--plan"), st.one_of(st.just("default"), hostile_word)),
        st.tuples(st.just("--json")),
        st.tuples(st.just("--text")),
    ),
    max_size=2,
)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite store with the default flags, a typed flag and a recorded plan;
    the working directory has no foundation.toml and the environment no settings."""
    path = tmp_path / "flags.db"
    st_ = SQLiteFlagStore(path)
    flags = FeatureFlags([*DEFAULT_FLAGS, Flag("beta"), _color()], store=st_)
    Migration(flags, MigrationPlan.default())
    flags.allow("beta", "x\u202egnp.exe", by="ana\u200b", reason="\u2066hidden\u2069")
    flags.close()
    st_.close()
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{path}"


def _color() -> Flag:
    return Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red")


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _check(argv: list[str], code: int, out: str, err: str) -> None:
    where = f"foundation {argv!r} -> {code}\nstdout: {out[:500]!r}\nstderr: {err[:500]!r}"
    assert code in DOCUMENTED_CODES, where
    assert "Traceback" not in err, where
    if code == 1 or (code == 2 and "usage:" not in err) or code == 69:
        lines = err.strip().splitlines()
        assert len(lines) == 1, where
        label = lines[0].split(":", 1)[0]
        # A usage line names the command ("foundation flags split: ...") or is the
        # command's own UsageError (an empty option, --json with --text); a failure
        # names a library error, never a Python builtin (AttributeError, ...).
        usage = label.startswith("foundation") or (code == 2 and label == "UsageError")
        assert label in LIBRARY_ERRORS or usage, where
    if "--text" in argv and "--json" not in argv:  # text (a pipe is JSON unless --text)
        assert not any(ch in out for ch in HIDDEN), where


def test_every_subcommand_ends_cleanly_whatever_its_arguments(store: str) -> None:
    @FUZZ
    @given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)), where=st.integers(0, 3))
    def run(data: st.DataObject, command: str, where: int) -> None:
        words, slots = COMMANDS[command]
        positional = [data.draw(slot) for slot in slots]
        if data.draw(st.booleans()):  # now and then a word too few or too many
            positional = positional[:-1] if data.draw(st.booleans()) else [*positional, "x"]
        options = [w for option in data.draw(OPTIONS) for w in option]
        settings_ = [
            ["--store", store],
            ["--store", store, "--redis", "redis://127.0.0.1:1/0"],  # nothing listens
            [],  # no store given
            ["--store", "sqlite:///nowhere/\ud800.db", "--redis", "http://x"],
        ][where]
        argv = [*words, *settings_, *options, *positional]
        _check(argv, *_run(argv))

    run()


def test_text_output_escapes_invisible_characters(store: str) -> None:
    code, out, err = _run(["flags", "show", "beta", "--text", "--store", store])
    assert code == 0, err
    assert "x\\u202egnp.exe" in out, out  # the actor, as written, made visible
    assert not any(ch in out for ch in HIDDEN), out
    code, out, err = _run(["flags", "history", "beta", "--text", "--store", store])
    assert code == 0, err
    assert "ana\\u200b" in out, out
    assert "\\u2066hidden\\u2069" in out, out
    assert not any(ch in out for ch in HIDDEN), out
