"""Run the ``foundation`` command as a real subprocess (``sys.executable -m foundation.cli``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SETTINGS_ENV = ("FOUNDATION_STORE", "FOUNDATION_REDIS", "FOUNDATION_NAMESPACE")


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without CLI settings (a test passes its own), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``foundation ARGS`` in ``cwd`` with stdout a pipe (so JSON by default)."""
    return subprocess.run(
        [sys.executable, "-m", "foundation.cli", *args],
        cwd=cwd,
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful run printed (asserting exit 0 and a clean stderr)."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int = 1) -> str:
    """The one-line ``ErrorClass: message`` a failed run printed (nothing on stdout)."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``foundation demo --plain ARGS`` as a user runs it (the installed script,
    else ``python -m foundation.cli``), in a subprocess."""
    import shutil

    script = shutil.which("foundation", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "foundation.cli"]
    return subprocess.run(
        [*command, "demo", "--plain", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
