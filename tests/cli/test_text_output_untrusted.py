"""Text output of what anyone may write (a reason, an actor): shown, never obeyed.

Before the fix:

- ``foundation flags history`` on a terminal (rich tables, the ``cli`` extra)
  read each cell as rich markup, so a reason such as ``see [/]`` ended the
  command with exit 1 and ``MarkupError: closing tag '[/]' ...``, a
  third-party exception, and the history could not be read at all from a
  terminal; ``[bold]`` in a reason was rendered, not shown.
- Text output printed control characters as they were: a reason with a
  newline forged extra rows in ``flags history`` and in the one-line summary of
  a write, and an escape sequence (``ESC [2J``) drove the operator's terminal.

JSON output escaped them already. Every run is a real subprocess on a real
SQLite store; the terminal is a real pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import cli_env, run_cli

MARKUP = "see [/] [b]x[/b]"
FORGED = "line one\n2026-01-01 00:00:00  beta  on  off  admin  forged\x1b[2J"


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = tmp_path / "flags.db"
    st = SQLiteFlagStore(path)
    flags = FeatureFlags([Flag("beta")], store=st)
    flags.enable("beta", by="ana", reason=MARKUP)
    flags.disable("beta", by="eve\x1b[31m", reason=FORGED)
    flags.close()
    st.close()
    return f"sqlite:///{path}"


def _on_a_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """``foundation ARGS`` with stdout a pseudo-terminal: (exit code, what it printed)."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "foundation.cli", *args],
            stdout=follower,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=cli_env(COLUMNS="200", TERM="dumb"),
            start_new_session=True,
        )
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err.decode(), err
        return proc.returncode, b"".join(chunks).decode(errors="replace") + err.decode()
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)


def test_history_on_a_terminal_shows_markup_as_written(store: str, tmp_path: Path) -> None:
    code, printed = _on_a_terminal("flags", "history", "beta", "--store", store, cwd=tmp_path)
    assert code == 0, printed
    assert "MarkupError" not in printed, printed
    assert "[/]" in printed, printed
    assert "[b]x[/b]" in printed, printed


def test_text_history_shows_control_characters_as_escapes(store: str, tmp_path: Path) -> None:
    result = run_cli("flags", "history", "beta", "--text", "--store", store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout, result.stdout
    assert "forged" in result.stdout, result.stdout
    assert not any(line.startswith("2026-01-01") for line in result.stdout.splitlines())
    assert "line one\\n2026-01-01" in result.stdout, result.stdout
    assert "\\x1b[2J" in result.stdout, result.stdout
    assert "eve\\x1b[31m" in result.stdout, result.stdout


def test_a_write_summary_shows_control_characters_as_escapes(store: str, tmp_path: Path) -> None:
    result = run_cli(
        "flags", "enable", "beta", "--text", "--reason", "a\nb\x1b[2J", "--store", store,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    assert "a\\nb\\x1b[2J" in result.stdout, result.stdout


def test_json_keeps_the_text_as_written(store: str, tmp_path: Path) -> None:
    result = run_cli("flags", "history", "beta", "--json", "--store", store, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    reasons = [record["reason"] for record in json.loads(result.stdout)["changes"]]
    assert reasons == [MARKUP, FORGED], reasons
