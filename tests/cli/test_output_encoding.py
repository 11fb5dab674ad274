"""stdout's encoding (``PYTHONIOENCODING``) against the command's output, in a real
subprocess: one byte order mark at most, and a result stdout cannot encode after
a committed write still says "done"."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import cli_env

DECLARED = (Flag("beta"), Flag("gamma"), Flag("delta"))


def _store(tmp_path: Path) -> Path:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(DECLARED, store=store):
        pass
    return path


def _run(args: list[str], encoding: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "foundation.cli", *args],
        cwd=cwd,
        env=cli_env(PYTHONIOENCODING=encoding),
        capture_output=True,
        timeout=60,
        check=False,
    )


def _history(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM flag_history").fetchone()[0])


def test_utf16_output_has_one_byte_order_mark(tmp_path: Path) -> None:
    store = ["--store", f"sqlite:///{_store(tmp_path)}"]
    for args in (["flags", "list", "--text"], ["flags", "list", "--json"]):
        result = _run([*args, *store], "utf-16", tmp_path)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert out.count(b"\xff\xfe") + out.count(b"\xfe\xff") == 1, out[:200]
        text = out.decode("utf-16")  # the mark read once, at the start
        assert "\ufeff" not in text
        assert "beta" in text
        assert "delta" in text
        assert len(text.splitlines()) > 3  # several lines, so several writes


def test_a_result_stdout_cannot_encode_after_the_write_exits_0_and_says_so(
    tmp_path: Path,
) -> None:
    path = _store(tmp_path)
    args = ["flags", "enable", "beta", "--text", "--by", "ops", "--reason", "café ☕"]
    result = _run([*args, "--store", f"sqlite:///{path}"], "ascii", tmp_path)
    assert _history(path) == 1  # the write was done
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode("ascii")
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "foundation flags enable: the result could not be printed in stdout's encoding "
        "(ascii) after the write, which was done"
    ]


def test_a_read_stdout_cannot_encode_still_fails(tmp_path: Path) -> None:
    """No write began: the error stands (exit 1), as before."""
    path = _store(tmp_path)
    with SQLiteFlagStore(path) as store, FeatureFlags(DECLARED, store=store) as flags:
        flags.enable("beta", by="ops", reason="café ☕")
    result = _run(["flags", "history", "--text", "--store", f"sqlite:///{path}"], "ascii", tmp_path)
    assert result.returncode == 1, result.stdout
    assert result.stderr.decode("ascii").startswith("UnicodeEncodeError: ")
