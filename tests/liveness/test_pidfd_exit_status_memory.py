"""An OS process's exit status survives a ``MemoryError`` on the pidfd selector's
status path.

When a watched process exits, the selector reads its status (non-reaping
``waitid``) and builds the ``Down``. Before the fix, a ``MemoryError`` there
(building the record, or waiting for the owner's stored code) was taken for
"status unreadable": the death was told as ``Down("exit")`` without its exit
code (a kill too), for good. Now the selector retries: the status is still
there (nothing was reaped, the pidfd stays registered) and is read again
after its pause. ``RLIMIT_AS`` cannot aim at one allocation, so a real
subclass of ``Down`` put where the library builds process records runs out of
memory the first two times. In a plain interpreter with the default hooks:
no library thread may die.
"""

from __future__ import annotations

import sys
from textwrap import dedent

import pytest

from tests.faults._subprocess import run_scenario

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="pidfds")


@pytest.mark.parametrize(
    ("ending", "expected"),
    [
        ("raise SystemExit(7)", ("exit", 7, None)),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", ("killed", None, 9)),
    ],
)
def test_a_memory_error_building_the_exit_status_keeps_the_status(
    ending: str, expected: tuple[str, int | None, int | None]
) -> None:
    result = run_scenario(
        f"ENDING = {ending!r}\nEXPECTED = {expected!r}\n"
        + dedent(
            """
            import subprocess
            import foundation.liveness._process as process_mod
            from foundation.liveness import Down, MonitorManager

            class DownOutOfMemory(Down):
                # Building a process's record runs out of memory twice.
                __slots__ = ()
                failures = [2]

                def __post_init__(self):
                    if self.failures[0] > 0:
                        self.failures[0] -= 1
                        raise MemoryError("injected: building the exit status")

            process_mod.Down = DownOutOfMemory
            manager = MonitorManager(name="status")
            assert manager.uses_pidfd

            def child(ending):
                # Runs until its stdin is closed, then ends by `ending`.
                code = "import sys; sys.stdin.read(); " + ending
                return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)

            proc, gate = child(ENDING), child("pass")
            heard = []
            mon = manager.monitor(proc, heard.append)
            manager.monitor(gate, heard.append)
            proc.stdin.close()
            wait_for(lambda: len(heard) == 1, "the death told")
            down = heard[0]
            assert DownOutOfMemory.failures[0] < 2, "the fault was not hit"
            assert (down.reason, down.exit_code, down.signal) == EXPECTED, down
            assert DownOutOfMemory.failures == [0]  # retried past both failures
            assert not mon.active
            assert "foundation-status-pidfd" in library_threads()
            proc.wait()
            gate.stdin.close()  # the selector still serves the next death
            wait_for(lambda: len(heard) == 2, "the next death")
            gate.wait()
            assert manager.active_count() == 0
            manager.close()
            print("OK")
            """
        )
    )
    assert "injected: building the exit status" in result.stderr  # logged
