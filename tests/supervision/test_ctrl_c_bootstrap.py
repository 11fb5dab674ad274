"""A terminal's Ctrl-C during a multiprocessing child's bootstrap reaches only
the supervisor's process.

A spawned child leaves the terminal's process group in the library's entry
point, after its bootstrap (re-importing ``__main__`` and the target's
module). Before the fix a Ctrl-C meanwhile reached it too: it died printing
its own ``KeyboardInterrupt`` traceback (here: its start failed). The child
is held in that bootstrap (``_bootstrap_targets``' gate) while the test
sends SIGINT to the program's whole process group, as a terminal does; the
program runs in a session of its own, a plain interpreter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._processes import kill_session
from tests.faults._subprocess import PRELUDE, run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups, signal masks")

_ROOT = Path(__file__).resolve().parents[2]

_PROGRAM = """
import os, signal, threading
os.environ["FOUNDATION_TEST_GATE_PARENT"] = str(os.getpid())
ctrl_c = threading.Event()
signal.signal(signal.SIGINT, lambda signum, frame: ctrl_c.set())
from foundation.supervision import ChildSpec, Supervisor
from tests.supervision import _bootstrap_targets as targets

with Supervisor([ChildSpec("mp", targets.serve, kind="process")]).run_in_thread() as handle:
    wait_for(ctrl_c.is_set, "the Ctrl-C in the supervisor's process")
    print("child", handle.which_children()[0].status)
print("OK")
"""


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, "the program ended before its child bootstrapped"
        assert time.monotonic() < deadline, "no child bootstrapping"
        time.sleep(0.005)  # sleep-ok: polling with a deadline


def test_ctrl_c_during_bootstrap_reaches_only_the_supervisor(tmp_path: Path) -> None:
    env = dict(os.environ, FOUNDATION_TEST_GATE=str(tmp_path))
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONPATH"] = os.pathsep.join((str(_ROOT / "src"), str(_ROOT)))
    proc = subprocess.Popen(
        [sys.executable, "-c", PRELUDE + _PROGRAM],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        _wait_for(tmp_path / "bootstrapping", proc)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole group
        (tmp_path / "open").touch()
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        kill_session(proc.pid)
    report = f"\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert "KeyboardInterrupt" not in err, report
    assert proc.returncode == 0, report
    assert "child running" in out, report
    assert "OK" in out.splitlines(), report


_CTRL_C_DURING_THE_SPAWN = """
import asyncio, os, signal
import multiprocessing.process as mp_process
from pathlib import Path
from foundation.supervision import ChildSpec, Supervisor
from tests.supervision import _bootstrap_targets as targets

# Python's own SIGINT handler, as a program started from a terminal has (a run
# started in the background inherits SIGINT ignored, and Python keeps that).
signal.signal(signal.SIGINT, signal.default_int_handler)
spawned = []
start = mp_process.BaseProcess.start

def start_after_a_ctrl_c(self):
    os.kill(os.getpid(), signal.SIGINT)  # the operator's Ctrl-C, as the spawn begins
    start(self)
    spawned.append(self.pid)

mp_process.BaseProcess.start = start_after_a_ctrl_c

async def main():
    sup = Supervisor([ChildSpec("mp", targets.serve, kind="process")], name="app")
    try:
        await sup.start()
    finally:
        await sup.stop()

def running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"

loop = asyncio.new_event_loop()  # the loop in the main thread, Python's SIGINT handler
try:
    loop.run_until_complete(main())
    print("interrupted no")
except KeyboardInterrupt:
    print("interrupted yes")
finally:
    loop.close()
print("spawned", len(spawned))
print("running", [pid for pid in spawned if running(pid)])
for pid in spawned:  # (an orphan must not outlive a failed run of this test)
    if running(pid):
        os.kill(pid, signal.SIGKILL)
print("OK")
"""


def test_a_ctrl_c_during_the_spawn_leaves_no_child_running() -> None:
    # SIGINT is held while the child is spawned; unblocking it raised the
    # KeyboardInterrupt after the child had started: its start failed, nothing
    # stopped it, and out of the terminal's group no Ctrl-C reached it.
    result = run_scenario(_CTRL_C_DURING_THE_SPAWN)
    assert result.lines("interrupted") == ["interrupted yes"]
    assert result.lines("running") == ["running []"], result.stdout
