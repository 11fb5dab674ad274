"""What the signal reports say matches what happened: the exit status in the
"could not stop" WARNING is the one returned, a forced stop says a task was
cancelled (it may run on) and only a process was killed, and the operator's
Ctrl-C during ``Application.start()`` is one INFO line, not an ERROR with a
traceback.

Real programs in subprocesses, signals sent with ``os.kill``; every wait is
on an output line or a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0

PROGRAM = """
import asyncio, logging, sys, threading
from foundation import Application
from foundation.supervision import ChildSpec, Supervisor, run

logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(levelname)s:%(name)s:%(message)s")
MODE = sys.argv[1]
SERVICES = ("flags", "monitors", "registry")

async def swallows(ctx):
    ctx.ready()
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            print("task swallowed its cancellation", flush=True)

def stuck(ctx):
    ctx.ready()
    threading.Event().wait()   # never looks at ctx.stopping

async def never_ready(ctx):
    print("worker starting", flush=True)
    await asyncio.Event().wait()

SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]  # sleep-ok: the child's work
# Stopped in reverse: t first, which swallows its cancellation for its long
# timeout; the test forces the stop meanwhile, with th and p still running.
STUBBORN = [ChildSpec("p", SLEEPER, shutdown_timeout=120),
            ChildSpec("th", stuck, kind="thread", shutdown_timeout=120),
            ChildSpec("t", swallows, shutdown_timeout=120)]
up = lambda *_: print("up", flush=True)

if MODE == "run-forced":
    status = run(Supervisor(STUBBORN, name="app"), on_started=up)
elif MODE == "app-forced":
    with Application.start(services=SERVICES, workers=STUBBORN) as app:
        status = app.wait_for_signal(on_installed=up)
elif MODE == "app-thread":
    workers = [ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=0.3)]
    with Application.start(services=SERVICES, workers=workers) as app:
        status = app.wait_for_signal(on_installed=up)
elif MODE == "app-ctrl-c":
    workers = [ChildSpec("proc", SLEEPER), ChildSpec("w", never_ready, ready_timeout=None)]
    try:
        Application.start(services=SERVICES, workers=workers)
    except KeyboardInterrupt:
        print("KeyboardInterrupt reached the caller", flush=True)
        status = 130
    else:
        status = 3
print("returned", status, flush=True)
"""


@contextmanager
def program(tmp: Path, mode: str, ready_line: str) -> Iterator[subprocess.Popen[str]]:
    script = tmp / "prog.py"
    script.write_text(PROGRAM)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == ready_line, (line, proc.communicate(timeout=DEADLINE))
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_thread_left_running_is_logged_with_the_status_wait_for_signal_returns(
    tmp_path: Path,
) -> None:
    # Was: "... could not stop ['workers/stuck']: ...; exit status 0" while
    # wait_for_signal() returned 15.
    with program(tmp_path, "app-thread", "up") as proc:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    assert f"returned {int(signal.SIGTERM)}" in out.splitlines(), (out, err)
    [line] = [x for x in err.splitlines() if "could not stop ['workers/stuck']" in x]
    assert line.startswith("WARNING:foundation.supervision.runner:"), line
    assert line.endswith(f"; exit status {int(signal.SIGTERM)}"), line


@pytest.mark.parametrize(
    ("mode", "path"), [("run-forced", "app"), ("app-forced", "foundation-workers")]
)
def test_a_forced_stop_says_cancelled_for_a_task_and_killed_only_for_a_process(
    tmp_path: Path, mode: str, path: str
) -> None:
    # Was: "killed task app/t, process app/p (pid N); threads left running",
    # though the task was only cancelled (and swallowed it, running on).
    with program(tmp_path, mode, "up") as proc:
        assert proc.stdout is not None
        os.kill(proc.pid, signal.SIGTERM)
        # The orderly stop has reached t (it swallowed its cancellation): force it.
        assert proc.stdout.readline().strip() == "task swallowed its cancellation"
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    assert f"returned {128 + signal.SIGTERM}" in out.splitlines(), (out, err)
    [line] = [x for x in err.splitlines() if "forcing the stop of supervisor" in x]
    assert f"cancelled task {path}/t, " in line, line
    assert f"asked thread {path}/th to stop, " in line, line
    assert f"killed process {path}/p (pid " in line, line
    assert "killed task" not in line, line
    assert line.endswith(f"; exit status {128 + signal.SIGTERM}"), line


def test_ctrl_c_during_the_start_is_one_info_line_without_a_traceback(tmp_path: Path) -> None:
    # Was: ERROR "Application foundation failed to start: KeyboardInterrupt()"
    # with a traceback, for the operator's own Ctrl-C.
    with program(tmp_path, "app-ctrl-c", "worker starting") as proc:
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
    lines = out.splitlines()
    assert "KeyboardInterrupt reached the caller" in lines, (out, err)  # still re-raised
    assert "returned 130" in lines, (out, err)
    assert "INFO:foundation.application:Application foundation interrupted during start" in (
        err.splitlines()
    ), err
    assert "failed to start" not in err, err
    assert "Traceback" not in err, err
    assert not [x for x in err.splitlines() if x.startswith("ERROR:")], err
