"""A program whose main thread returns while its tree runs exits quietly.

multiprocessing's exit handler SIGTERMs every daemonic child, a supervisor's
multiprocessing children too, while the supervisor's thread still runs.
Before the fix the supervisor took that for a crash: an ERROR "killed by
SIGTERM (15); action: restart", and a replacement spawned mid-exit that died
with a raw traceback (EOFError, or a target it could no longer find). The
program is a plain interpreter (``tests/faults/_subprocess.py``); the second
child dies a second after its SIGTERM, so the exit handler's join() gives the
supervisor time to act on the first one's death.
"""

from __future__ import annotations

import sys

import pytest

from tests.faults._subprocess import run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pidfd, process groups")


def test_interpreter_exit_restarts_no_multiprocessing_child() -> None:
    result = run_scenario(
        """
        from foundation.supervision import ChildSpec, Supervisor
        from tests.supervision import _bootstrap_targets as targets

        specs = [
            ChildSpec("quick", targets.serve, kind="process"),
            ChildSpec("late", targets.serve_die_late, kind="process"),
        ]
        handle = Supervisor(specs, name="tree").run_in_thread()
        wait_for(lambda: len(handle.which_children()) == 2, "both children")
        print("OK")  # the main thread returns, the tree running
        """,
        timeout=60,
    )
    report = f"\n--- stderr ---\n{result.stderr}"
    assert "action: restart" not in result.stderr, report
    assert "Traceback" not in result.stderr, report
    assert " ERROR " not in result.stderr, report


def test_no_multiprocessing_child_starts_once_the_interpreter_exits() -> None:
    # multiprocessing's exit handler has begun (its flag is what it sets first):
    # a start is refused as a stop is, with no crash report and no process.
    result = run_scenario(
        """
        import multiprocessing, multiprocessing.util
        from foundation.errors import StartError
        from foundation.supervision import ChildSpec, Supervisor
        from tests.supervision import _bootstrap_targets as targets

        multiprocessing.util._exiting = True
        try:
            Supervisor([ChildSpec("mp", targets.serve, kind="process")]).run_in_thread()
        except StartError as exc:
            print("refused:", exc)
        assert multiprocessing.active_children() == []
        print("OK")
        """,
        timeout=60,
    )
    assert "interpreter is exiting" in "".join(result.lines("refused:")), result.stdout
    assert " ERROR " not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
