"""RedisFlagStore through Redis outages, each scenario in a plain interpreter.

The scenarios live in ``_outages.py`` and run in a subprocess started with
``sys.executable``: the interpreter's default ``sys.unraisablehook`` and
``threading.excepthook``, not pytest's. A scenario passes when it exits 0,
printed its ``OK`` marker, its listener threads were alive at the end, and
nothing reached stderr as an uncaught exception.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis_flags._outages import SCENARIOS
from tests.redis_flags._support import REPO


def run_scenario(name: str, work: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    return subprocess.run(
        [sys.executable, "-m", "tests.redis_flags._outages", name, str(work)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )


@pytest.mark.parametrize(
    "scenario",
    [
        # Redis SIGKILLed, restarted empty: no flag reverts, history restored, event seen.
        "restart_empty",
        # Four nodes restore at once, one with an older copy: newest wins, no duplicates.
        "concurrent_restore",
        # disable()/emergency_rollback() during the outage: local at once, committed later,
        # another process sees them; any other write fails and changes nothing.
        "kill_switch_in_outage",
        # A newer committed change beats a pending kill switch: WARNING and event.
        "superseded",
        # The same with node A alive (another process, frozen while Redis returns):
        # its listeners hear the flag come back.
        "superseded_live",
        # Error replies (READONLY, OOM): kill switches kept and committed after.
        "error_replies",
        # A node restarted during the outage starts from its copy and says it is stale.
        "restart_during_outage",
    ],
)
def test_flags_ride_out_a_redis_outage(scenario: str, tmp_path: Path) -> None:
    assert scenario in SCENARIOS
    out = run_scenario(scenario, tmp_path)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert f"OK {scenario}" in out.stdout, out.stdout
    assert "Exception in thread" not in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    threads = [line for line in out.stdout.splitlines() if line.startswith("threads ")]
    assert threads, out.stdout
    assert "foundation-flags-redis[outage]" in threads[-1], out.stdout
