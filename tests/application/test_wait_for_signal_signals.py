"""``Application.wait_for_signal()`` handles signals as ``supervision.run()``:
a second signal during the stop forces it (logged, ``128 + signo``), a thread
left running after one signal is a WARNING, and a tree that gave up logs no
``app_stopping`` after its services stopped.

Real programs in subprocesses, signals sent with ``os.kill``; every wait is
on an output line, a file, or a deadline.
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

from tests.faults._subprocess import run_scenario
from tests.supervision._support import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0

# {workers}: the workers' specs. The stubborn argv child records each SIGTERM
# it ignores in DIR/term.seen, so the test knows the stop has reached it.
PROGRAM = """
import logging, os, sys, threading, time
from foundation import Application, ChildSpec

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
DIR = sys.argv[1]

STUBBORN = '''
import os, signal, sys
from foundation.supervision import notify_ready
def seen(*_):
    with open(os.path.join(sys.argv[1], "term.seen"), "a") as f:
        f.write("TERM\\\\n")
signal.signal(signal.SIGTERM, seen)
signal.signal(signal.SIGINT, signal.SIG_IGN)
notify_ready()   # its handler is in place: the test's signals may come
while True:
    signal.pause()
'''

def stuck(ctx):
    ctx.ready()
    threading.Event().wait()   # never looks at ctx.stopping

stubborn = ChildSpec("stubborn", [sys.executable, "-c", STUBBORN, DIR], shutdown_timeout=120,
                     readiness="explicit", ready_timeout=60)
stuck_thread = ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=0.3)

with Application.start(services=("flags", "monitors", "registry"),
                       workers=[{workers}]) as app:
    status = app.wait_for_signal(on_installed=lambda: print("serving", flush=True))
    print("returned", status, flush=True)
print("ended", flush=True)
"""


@contextmanager
def program(tmp: Path, workers: str) -> Iterator[subprocess.Popen[str]]:
    script = tmp / "app.py"
    script.write_text(PROGRAM.replace("{workers}", workers))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "serving", proc.communicate(timeout=DEADLINE)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_forces_the_stop_as_run_does(tmp_path: Path, signo: int) -> None:
    # Was: the handlers were removed before the stop, so the second SIGTERM
    # killed the process (-15, nothing closed, nothing logged) and a second
    # SIGINT raised KeyboardInterrupt out of the stop (services not stopped).
    name = signal.Signals(signo).name
    with program(tmp_path, "stubborn") as proc:
        os.kill(proc.pid, signo)
        # The stop has reached the stubborn child (it got its SIGTERM).
        wait_until((tmp_path / "term.seen").exists, DEADLINE)
        os.kill(proc.pid, signo)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert f"returned {128 + signo}" in out.split("\n"), out
    assert "ended" in out.split("\n")
    assert f"received {name}: stopping supervisor foundation in order" in err
    assert f"received {name} again: forcing the stop of supervisor foundation" in err
    assert "killed process foundation-workers/stubborn" in err
    assert f"exit status {128 + signo}" in err
    assert "Traceback" not in err, err


def test_a_thread_left_running_after_one_signal_is_a_warning_not_an_error(
    tmp_path: Path,
) -> None:
    # Was: ShutdownError raised out of wait_for_signal(): a traceback and exit
    # status 1, where run() logs a WARNING and exits 0.
    with program(tmp_path, "stuck_thread") as proc:
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 0, err
    assert f"returned {int(signal.SIGTERM)}" in out.split("\n"), out
    assert "received SIGTERM: stopping supervisor foundation in order" in err
    warning = [line for line in err.splitlines() if line.startswith("WARNING:")]
    assert any("could not stop ['workers/stuck']" in line for line in warning), err
    # Reported once, as run() does: no ERROR with a traceback from the stop itself.
    assert "Traceback" not in err, err
    assert not [line for line in err.splitlines() if line.startswith("ERROR:")], err


def test_a_tree_that_gave_up_logs_no_stopping_after_its_services_stopped() -> None:
    # Was: service_stopped x3, app_failed, then app_stopping and app_stopped:
    # "stopping" came after everything had stopped.
    result = run_scenario(
        """
        import logging
        from foundation import Application
        from foundation.errors import RestartIntensityExceeded
        from foundation.supervision import ChildSpec

        class Events(logging.Handler):
            def emit(self, record):
                print("EVENT", record.event, flush=True)

        logging.getLogger("foundation.application").addHandler(Events())
        logging.getLogger("foundation.application").setLevel(logging.INFO)

        def crash(ctx):
            ctx.ready()
            raise RuntimeError("boom")

        app = Application.start(services=("flags", "monitors", "registry"),
                                workers=[ChildSpec("c", crash)])
        try:
            app.wait_for_signal()
        except RestartIntensityExceeded:
            print("RAISED", flush=True)
        print("OK")
        """,
        timeout=DEADLINE,
    )
    assert result.lines("RAISED") == ["RAISED"]
    events = [line.split()[1] for line in result.lines("EVENT")]
    assert events[events.index("app_started") + 1 :] == [
        "service_stopped",
        "service_stopped",
        "service_stopped",
        "app_failed",
        "app_stopped",
    ], events
