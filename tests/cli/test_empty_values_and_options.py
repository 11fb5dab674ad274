"""One rule for empty values and option clashes on the command line (exit 2).

Was: an empty ``FOUNDATION_ADMIN_TOKEN`` exited 1 with ``InvalidConfig: a token
needs a non-empty operator name...`` (the variable not named), ``admin --token ""``
exited 1 while an empty ``--store`` exited 2; ``--json --text`` was taken silently
(JSON won); ``demo --fault-seconds 5`` without ``--chaos`` was silently ignored.
The rule: an empty option, or an empty variable a command reads, is a
``UsageError`` naming it, exit 2; a command that reads no settings (``version``,
``demo``, ``--help``) is not stopped by an empty variable it never reads.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import cli_env, one_line_error, run_cli, run_demo


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as s, FeatureFlags([Flag("beta")], store=s):
        pass
    return f"sqlite:///{path}"


def test_an_empty_admin_token_variable_is_a_usage_error_naming_it(
    store: str, tmp_path: Path
) -> None:
    env = cli_env(FOUNDATION_ADMIN_TOKEN="")
    result = run_cli("admin", "--store", store, "--bind", "127.0.0.1:0", cwd=tmp_path, env=env)
    line = one_line_error(result, exit_code=2)
    assert line == (
        "UsageError: FOUNDATION_ADMIN_TOKEN is set but empty: give it a value, or unset it"
    )


def test_an_empty_token_option_is_a_usage_error_as_an_empty_store(
    store: str, tmp_path: Path
) -> None:
    token = run_cli("admin", "--token", "", "--store", store, cwd=tmp_path)
    assert one_line_error(token, exit_code=2) == (
        "UsageError: --token is empty: give it a value, or leave the option out"
    )
    empty_store = run_cli("admin", "--store", "", cwd=tmp_path)
    assert one_line_error(empty_store, exit_code=2) == (
        "UsageError: --store is empty: give it a value, or leave the option out"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("migration", "status", "--plan", ""),
        ("flags", "list", "--namespace", ""),
        ("version", "--store", ""),
    ],
    ids=" ".join,
)
def test_an_empty_option_is_a_usage_error_whatever_the_command(
    store: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = run_cli(*args, *(("--store", store) if "--store" not in args else ()), cwd=tmp_path)
    option = args[args.index("") - 1]
    assert one_line_error(result, exit_code=2) == (
        f"UsageError: {option} is empty: give it a value, or leave the option out"
    )


@pytest.mark.parametrize(
    "args", [("version",), ("demo", "--help"), ("--help",), ("flags", "--help")], ids=" ".join
)
def test_a_command_that_reads_no_settings_ignores_an_empty_variable(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    env = cli_env(FOUNDATION_STORE="", FOUNDATION_ADMIN_TOKEN="")
    result = run_cli(*args, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_a_command_that_reads_the_settings_refuses_an_empty_variable(tmp_path: Path) -> None:
    # Even one that does not use it: agents count reads no store.
    env = cli_env(FOUNDATION_STORE="", FOUNDATION_REDIS="redis://127.0.0.1:1/0")
    result = run_cli("agents", "count", cwd=tmp_path, env=env)
    assert one_line_error(result, exit_code=2) == (
        "UsageError: FOUNDATION_STORE is set but empty: give it a value, or unset it"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--json", "--text", "version"),
        ("flags", "list", "--text", "--json"),
        ("--text", "flags", "--json", "list"),
    ],
    ids=" ".join,
)
def test_json_and_text_together_are_a_usage_error(
    store: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = run_cli(*args, "--store", store, cwd=tmp_path)
    assert one_line_error(result, exit_code=2) == (
        "UsageError: --json and --text exclude each other: give one"
    )


def test_fault_seconds_without_chaos_is_a_usage_error(tmp_path: Path) -> None:
    result = run_demo("--fault-seconds", "5", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "--fault-seconds is the length of --chaos's faults" in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--agents", "5", "--agents sizes parts 1-3, which --chaos does not run: drop one"),
        ("--seconds", "1", "--seconds times part 2, which --chaos does not run: drop one"),
    ],
)
def test_a_plain_demo_option_with_chaos_is_a_usage_error(
    tmp_path: Path, option: str, value: str, said: str
) -> None:
    # Was: --chaos ran its own fixed load and ignored them (exit 0 after the run).
    result = run_demo("--chaos", option, value, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert result.stderr.rstrip().endswith(f"error: {said}"), result.stderr


@pytest.mark.parametrize("option", ["--redis", "--admin"])
def test_an_empty_demo_option_is_a_usage_error(tmp_path: Path, option: str) -> None:
    result = run_demo(option, "", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert f"argument {option}: empty: give it a value" in result.stderr
