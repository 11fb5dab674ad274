"""Run a fault scenario the way production runs: a plain interpreter, default hooks.

Under pytest, ``sys.unraisablehook`` and ``threading.excepthook`` are pytest's;
a scenario that only passes there proves nothing about ``python -m app``. So
each scenario is a script run with ``sys.executable`` (no pytest, nothing
installed on top of the interpreter's defaults unless the script does it),
and the test asserts on what a user would see: the exit code, the scenario's
own ``OK`` marker, the log lines, and no stray error in stderr (a dead thread,
a raw traceback, an unraisable report, a lost asyncio error).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from tests._stderr import Expected, stray_errors

__all__ = ["PRELUDE", "Expected", "Result", "run_scenario"]

_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 90.0

# Common to every scenario: log records go to stderr with the logger's name;
# `wait_for` polls with a deadline (never a bare sleep as synchronisation).
PRELUDE = """
import logging, sys, threading, time

class _MarkedLines(logging.Formatter):
    # Every line of a record is marked ("LOG| " after the first), so that a
    # traceback a record carries is told apart from one printed raw.
    def format(self, record):
        first, *rest = super().format(record).split("\\n")
        return "\\n".join([first, *(f"LOG| {line}" for line in rest)])

_log_handler = logging.StreamHandler(sys.stderr)
_log_handler.setFormatter(_MarkedLines("LOG %(levelname)s %(name)s [%(threadName)s] %(message)s"))
logging.basicConfig(level=logging.DEBUG, handlers=[_log_handler])

class ListenerBug(Exception):
    pass

def wait_for(predicate, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # sleep-ok: polling with a deadline

def typed(fn):
    # "ok", or the library error fn() raised as "ErrorClass: message".
    from foundation import errors
    try:
        fn()
    except errors.FoundationError as exc:
        return type(exc).__name__ + ": " + str(exc)
    return "ok"

def keys(view):
    return sorted(e.key for e in view.list_all())

def library_threads():
    # The long-lived library threads. Event couriers ("foundation-*events")
    # come and go by design, one per batch of events handed off; one that died
    # of an exception leaves "Exception in thread" in stderr (a death sign).
    return sorted(
        t.name for t in threading.enumerate()
        if t.name.startswith("foundation") and not t.name.endswith("events")
    )
"""


def _log_line(line: str) -> tuple[str, str] | None:
    """(logger, level) for the first line of a PRELUDE log record, ("", "") for
    the lines after it, None for a line that is no part of a record."""
    if line.startswith("LOG| "):
        return "", ""
    if line.startswith("LOG "):
        fields = line.split(" ", 3)
        return (fields[2] if len(fields) > 2 else ""), fields[1]
    return None


@dataclass(frozen=True)
class Result:
    """What the scenario process left behind."""

    returncode: int
    stdout: str
    stderr: str

    def lines(self, marker: str) -> list[str]:
        """Stdout lines starting with ``marker``."""
        return [line for line in self.stdout.splitlines() if line.startswith(marker)]


def run_scenario(
    script: str, *, ok: str = "OK", timeout: float = TIMEOUT, expect: tuple[Expected, ...] = ()
) -> Result:
    """Run ``PRELUDE + script`` in a fresh interpreter and check it survived.

    Asserts: exit code 0, ``ok`` printed on a line of its own, and no stray
    error in stderr outside the library's log records (``tests._stderr``): no
    dead thread, raw traceback, unraisable report, lost asyncio error, or hook
    or handler rejecting its argument. ``expect`` names the reports the
    scenario provokes on purpose. Returns the result.
    """
    code = PRELUDE + textwrap.dedent(script)
    env = dict(os.environ)
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_ROOT / "src"), str(_ROOT), env.get("PYTHONPATH", "")) if p
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=_ROOT,
        env=env,
        check=False,
    )
    result = Result(proc.returncode, proc.stdout, proc.stderr)
    report = f"\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    stray = stray_errors(proc.stderr, _log_line, expect)
    assert not stray, f"stray errors in the scenario's stderr: {stray}{report}"
    assert proc.returncode == 0, f"scenario exited with {proc.returncode}{report}"
    assert ok in proc.stdout.splitlines(), f"scenario did not print {ok!r}{report}"
    return result
