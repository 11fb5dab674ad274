"""``wait_for_signal()``: a second signal while a child blocks the tree's event
loop forces the stop once the loop is free, as ``supervision.run()`` does:
the process children are SIGKILLed and the report says so.

Was: one second after the second signal, WARNING "forcing the stop ...:
nothing left to force; exit status 130", and wait_for_signal() returned with
the tree still running and its argv child alive.

A real program in a subprocess, signals sent with ``os.kill``; every wait is
on an output line, a file, or a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.supervision._support import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0

PROGRAM = """
import asyncio, logging, os, sys, time
from foundation import Application, ChildSpec

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
DIR = sys.argv[1]

STUBBORN = '''
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    signal.pause()
'''

async def blocker(ctx):
    ctx.ready()
    try:
        await asyncio.Event().wait()
    finally:
        open(os.path.join(DIR, "blocking"), "w").close()
        time.sleep(4)  # sleep-ok: the scenario, a cleanup that blocks the event loop

stubborn = ChildSpec("stubborn", [sys.executable, "-c", STUBBORN], shutdown_timeout=120)
with Application.start(services=("flags", "monitors", "registry"),
                       workers=[stubborn, ChildSpec("b", blocker)]) as app:
    status = app.wait_for_signal(on_installed=lambda: print("serving", flush=True))
    print("returned", status, flush=True)
    print("children", sorted({c.status for c in app.which_children()}), flush=True)
print("ended", flush=True)
"""


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_a_child_blocks_the_loop_kills_the_process_children(
    tmp_path: Path, signo: int
) -> None:
    script = tmp_path / "app.py"
    script.write_text(PROGRAM)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "serving", proc.communicate(timeout=DEADLINE)
        os.kill(proc.pid, signo)
        # The orderly stop reached the blocker: the tree's loop is blocked now.
        wait_until((tmp_path / "blocking").exists, DEADLINE)
        os.kill(proc.pid, signo)
        out, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    name = signal.Signals(signo).name
    assert proc.returncode == 0, err
    lines = out.split("\n")
    assert f"returned {128 + signo}" in lines, out
    assert "children ['stopped']" in lines, out
    assert f"received {name} again: forcing the stop of supervisor foundation" in err
    assert "killed process foundation-workers/stubborn" in err, err
    assert "nothing left to force" not in err, err
    assert "Traceback" not in err, err
