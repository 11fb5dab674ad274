"""Adversarial review of the ``foundation`` command (issue 11, item 8): odd files,
odd bytes and odd numbers end in one line ``ErrorClass: message`` and exit 1
(or argparse's usage and exit 2), never a traceback, a hang or an unbounded read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from foundation._cli._common import key_from_text, value_from_text
from tests.cli._support import cli_env, one_line_error, run_cli

DEEP = "[" * 5000 + "]" * 5000


def _store(tmp_path: Path) -> str:
    """A SQLite flag store that exists (commands never create one)."""
    from foundation.flags import DEFAULT_FLAGS, FeatureFlags, SQLiteFlagStore

    path = tmp_path / "flags.db"
    store = SQLiteFlagStore(path)
    FeatureFlags(DEFAULT_FLAGS, store=store).close()
    store.close()
    return f"sqlite:///{path}"


# ------------------------------------------------------------ ./foundation.toml


def test_a_non_utf8_config_file_is_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "foundation.toml").write_bytes(b"\xff\xfe[cli]\n")
    line = one_line_error(run_cli("flags", "list", cwd=tmp_path))
    assert line.startswith("InvalidConfig: "), line
    assert "not UTF-8" in line


def test_a_deeply_nested_config_file_is_invalid_config(tmp_path: Path) -> None:
    (tmp_path / "foundation.toml").write_text("x = " + DEEP + "\n")
    line = one_line_error(run_cli("flags", "list", cwd=tmp_path))
    assert line.startswith("InvalidConfig: "), line  # was "RecursionError: ..."
    assert "nested too deeply" in line


def test_a_config_file_past_the_size_limit_is_refused(tmp_path: Path) -> None:
    (tmp_path / "foundation.toml").write_text("# " + "x" * (2 * 1024 * 1024) + "\n")
    line = one_line_error(run_cli("flags", "list", cwd=tmp_path))
    assert line.startswith("InvalidConfig: "), line
    assert "larger than" in line


def test_a_fifo_as_config_file_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    # open() on a FIFO blocked for ever before (the run timed out).
    os.mkfifo(tmp_path / "foundation.toml")
    line = one_line_error(run_cli("flags", "list", cwd=tmp_path, timeout=30))
    assert line.startswith("InvalidConfig: "), line
    assert "not a regular file" in line


def test_dev_zero_as_config_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    # Read to the end before: unbounded memory (the fuzz run saw 24 GB).
    (tmp_path / "foundation.toml").symlink_to("/dev/zero")
    line = one_line_error(run_cli("flags", "list", cwd=tmp_path, timeout=30))
    assert line.startswith("InvalidConfig: "), line
    assert "not a regular file" in line


def test_a_good_config_file_still_works(tmp_path: Path) -> None:
    url = _store(tmp_path)
    (tmp_path / "foundation.toml").write_text(f'[cli]\nstore = "{url}"\n')
    result = run_cli("flags", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------- command line


def _run_raw(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``run_cli`` for arguments holding non-UTF-8 bytes (as surrogate escapes)."""
    return subprocess.run(
        [sys.executable, "-m", "foundation.cli", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=60,
        check=False,
    )


def test_a_non_utf8_namespace_is_invalid_config_not_backend_unavailable(tmp_path: Path) -> None:
    # Was "BackendUnavailable: ... redis-py failed internally: UnicodeEncodeError".
    ns = os.fsdecode(b"\xff")
    result = _run_raw(
        "agents", "list", "--redis", "redis://127.0.0.1:1", "--namespace", ns, cwd=tmp_path
    )
    line = one_line_error(result)
    assert line.startswith("InvalidConfig: --namespace is not valid UTF-8"), line


def test_a_non_utf8_sqlite_path_is_still_a_path(tmp_path: Path) -> None:
    # Only what goes to Redis must be UTF-8: a POSIX file name may be any bytes.
    missing = os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff.db")
    line = one_line_error(
        _run_raw("flags", "list", "--store", f"sqlite:///{missing}", cwd=tmp_path)
    )
    assert line.startswith("InvalidConfig: no flag store at"), line


@pytest.mark.parametrize(
    "args",
    [
        ("agents", "list", "--limit", "0"),
        ("agents", "list", "--limit", "-1"),
        ("agents", "watch", "--count", "0"),
        ("migration", "rollback", "-1"),
        ("flags", "deny", "use_ets_agent_registry", ""),
        ("flags", "allow", "use_ets_agent_registry", ""),
        ("flags", "assign", "color", "", "red"),
    ],
)
def test_numbers_and_actors_that_cannot_apply_are_usage_errors(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = run_cli(*args, "--redis", "redis://127.0.0.1:1", cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "error: argument" in result.stderr


def test_deeply_nested_where_values_and_keys_are_plain_text() -> None:
    # Both were RecursionError ("RecursionError: maximum recursion depth ..." on exit 1).
    assert value_from_text(DEEP) == DEEP
    assert key_from_text(DEEP) == DEEP
    assert value_from_text("[1, 2]") == [1, 2]
    assert key_from_text('["job", 7]') == ("job", 7)


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", '["job", NaN]'])
def test_non_json_constants_are_plain_text_keys_as_in_the_admin_api(text: str) -> None:
    # Python's json reads them as floats (a NaN key: InvalidKey on exit 1), JSON
    # has no such values; GET /api/agents/NaN looks up the string "NaN" too.
    assert key_from_text(text) == text
    assert value_from_text(text) == text
