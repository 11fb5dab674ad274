"""A SIGINT or SIGTERM landing once the command has ended, while the interpreter
exits (0.1 to 0.7 s after the demo's last line), leaves the command's exit code
and a clean stderr (it killed the process silently: -2 or -15, no line)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.cli._support import cli_env, default_sigint

# The console script's entry, then a signal as the interpreter goes on to exit
# (its handlers then are the ones the command left).
SCRIPT = """
import os, signal, sys
from _foundation_cli import main
sys.argv = ["foundation", "version"]
code = main()
os.kill(os.getpid(), signal.SIG{name})
sys.exit(code)
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")
@pytest.mark.parametrize("name", ["INT", "TERM"])
def test_a_signal_once_the_command_ended_leaves_its_exit_code(name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(name=name)],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=default_sigint,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr[-2000:]
    assert result.stdout.strip()  # the version
