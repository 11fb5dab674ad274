"""``foundation demo``'s options, checked before anything runs.

Run as a user runs the command (the real console script, in a subprocess): a
value out of bounds or malformed is argparse's usage error (exit 2); a Redis
that does not answer or an admin address in use is one line on stderr (exit
1). Either way nothing of the demo ran (stdout is empty) and no traceback.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.cli._support import one_line_error, run_demo
from tests.redis_support import free_port


def _usage_error(result: subprocess.CompletedProcess[str], option: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("usage: foundation demo"), result.stderr
    assert f"argument {option}" in result.stderr, result.stderr


def test_numbers_out_of_bounds_are_usage_errors(tmp_path: Path) -> None:
    for option, value in [
        ("--agents", "-5"),  # ran, then failed its invariants
        ("--agents", "0"),  # "all 18 invariants held", vacuously
        ("--seconds", "0"),
        ("--seconds", "nan"),
        ("--workers", "0"),
        ("--fault-seconds", "-1"),
    ]:
        _usage_error(run_demo(option, value, cwd=tmp_path), option)


def test_redis_is_checked_before_the_demo_runs(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    line = one_line_error(run_demo("--redis", closed, cwd=tmp_path), 69)
    assert line.startswith("BackendUnavailable: "), line
    _usage_error(run_demo("--redis", "nonsense", cwd=tmp_path), "--redis")


def test_admin_is_checked_before_the_demo_runs(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        host, port = taken.getsockname()
        line = one_line_error(run_demo("--admin", f"{host}:{port}", cwd=tmp_path))
    assert line.startswith("InvalidConfig: cannot listen on"), line
    _usage_error(run_demo("--admin", "nonsense", cwd=tmp_path), "--admin")


def test_help_is_plain_text(tmp_path: Path) -> None:
    result = run_demo("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: foundation demo")
    assert "``" not in result.stdout, result.stdout  # no reStructuredText markup
    assert "make demo" in result.stdout
