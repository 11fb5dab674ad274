"""A defect inside a watcher loop itself, or a callback raising SystemExit.

Neither may end the thread: the error is logged, the loop pauses briefly
(defects only) and carries on, so the next death or change is still seen.
Defects are injected by replacing one internal step with a version that
raises the first few times it is called.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_FLAKY = """
def flaky(real, times):
    calls = [0]
    def step(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= times:
            raise RuntimeError(f"injected defect {calls[0]}")
        return real(*args, **kwargs)
    step.calls = calls
    return step
"""

_MANAGER = """
import subprocess
import foundation.liveness._manager as manager_module
from foundation.liveness import MonitorManager

manager = MonitorManager(name="faults", process_poll_interval=0.005, _pidfd=PIDFD)
assert manager.uses_pidfd is PIDFD
if PIDFD:   # the readiness check of a pidfd the selector reported
    manager_module.pidfd_readable = step = flaky(manager_module.pidfd_readable, 3)
else:       # one whole pass of the poller
    MonitorManager._poll_once = step = flaky(MonitorManager._poll_once, 3)

for n in (1, 2):
    proc = subprocess.Popen(["sleep", "60"])
    fired = threading.Event()
    manager.monitor(proc, lambda down: fired.set())
    proc.kill()
    assert fired.wait(20), f"death {n} was not seen"
    proc.wait()
    assert f"foundation-faults-{ROLE}" in library_threads(), library_threads()
assert step.calls[0] > 3, "the defect was never hit: the scenario tests nothing"
manager.close()
print("OK")
"""


@pytest.mark.parametrize(("pidfd", "role"), [(True, "pidfd"), (False, "procpoll")])
def test_a_defect_in_a_watcher_loop_is_logged_and_the_loop_carries_on(
    pidfd: bool, role: str
) -> None:
    result = run_scenario(f"PIDFD = {pidfd}\nROLE = {role!r}\n" + _FLAKY + _MANAGER)
    assert "RuntimeError: injected defect 3" in result.stderr, result.stderr
    assert f"LOG ERROR foundation.liveness [foundation-faults-{role}]" in result.stderr


_SQLITE = """
import os, tempfile
from foundation import FeatureFlags, Flag, SQLiteFlagStore

path = os.path.join(tempfile.mkdtemp(), "flags.db")
declared = [Flag("beta"), Flag("gamma"), Flag("delta")]
here = SQLiteFlagStore(path, poll_interval=0.01)
there = FeatureFlags(declared, store=SQLiteFlagStore(path, poll_interval=0.01))

def exits(changes):
    raise SystemExit("store-callback-exit")

delivered = []
here.subscribe(exits)            # first: SystemExit before the recorder runs
here.subscribe(lambda changes: delivered.extend(c.flag for c in changes))

there.enable("beta")
wait_for(lambda: "beta" in delivered, "a change after a callback raised SystemExit")

# A defect of the watcher's own step, three times in a row.
SQLiteFlagStore._poll = step = flaky(SQLiteFlagStore._poll, 3)
there.enable("gamma")
wait_for(lambda: step.calls[0] > 3, "the watcher to step past the defect")
there.enable("delta")
wait_for(lambda: "delta" in delivered, "a change after the watcher's defect")
there.close()
there.store.close()
here.close()
print("OK")
"""


def test_the_sqlite_watcher_outlives_a_system_exit_and_its_own_defect() -> None:
    result = run_scenario(_FLAKY + _SQLITE)
    assert "SystemExit: store-callback-exit" in result.stderr, result.stderr
    assert "RuntimeError: injected defect 3" in result.stderr, result.stderr
    assert "LOG ERROR foundation.flags" in result.stderr, result.stderr
