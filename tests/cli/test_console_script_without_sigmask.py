"""The ``foundation`` console script on a platform without ``signal.pthread_sigmask``.

The entry point (``_foundation_cli.main``) holds SIGINT and SIGTERM while the
library imports, with ``pthread_sigmask``; Windows has no such call (the
library's other signal holds check for it: ``foundation._demo._interrupts``).
Without it the script must still run, only without the hold (as before it),
rather than fail every command with an ``AttributeError`` traceback.

Simulated (this suite runs on Linux): a child interpreter drops the attribute
before it imports the entry point, then runs it as the console script does.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.cli._support import cli_env

_RUN = textwrap.dedent(
    """
    import signal, sys
    del signal.pthread_sigmask                    # a platform without it (Windows)
    import _foundation_cli
    sys.argv = ["foundation", *sys.argv[1:]]
    sys.exit(_foundation_cli.main())
    """
)


def test_the_console_script_runs_where_signals_cannot_be_held(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _RUN, "--version"],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.strip(), result.stdout
