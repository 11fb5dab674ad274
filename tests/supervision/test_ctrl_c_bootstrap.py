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
from tests.faults._subprocess import PRELUDE

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
