"""A listener raising on an OS process death must not kill the watcher thread.

Before the fix, the first raising listener on a process death killed the
pidfd selector: every later death was missed and dead agents stayed
registered for ever. Here a second (and third) death must still be seen.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import subprocess
from foundation import MemoryRegistry
from foundation.liveness import MonitorManager

manager = MonitorManager(name="faults", process_poll_interval=0.005, _pidfd=PIDFD)
assert manager.uses_pidfd is PIDFD, "this machine cannot run the pidfd variant"
reg = MemoryRegistry(manager=manager)

def broken(event):  # raises on deaths only: the writes themselves are not at stake here
    if event.kind == "unregistered":
        raise ListenerBug(f"listener-bug on {event.kind} of {event.entry.key}")

gone = []
reg.subscribe(broken)
reg.subscribe(lambda e: e.kind == "unregistered" and gone.append((e.entry.key, e.down.reason)))

procs = {k: subprocess.Popen(["sleep", "60"]) for k in ("p1", "p2", "p3")}
for key, proc in procs.items():
    reg.register(key, proc, {"pid": proc.pid})
thread = f"foundation-faults-{ROLE}"
assert thread in library_threads(), library_threads()

for key in ("p1", "p2", "p3"):
    procs[key].kill()
    wait_for(lambda: (key, "killed") in gone, f"the death of {key} to be seen")
    assert reg.lookup(key) is None
    assert thread in library_threads(), f"{thread} died after the death of {key}"
    procs[key].wait()

assert reg.count() == 0
reg.close()
manager.close()
print("OK")
"""


@pytest.mark.parametrize(("pidfd", "role"), [(True, "pidfd"), (False, "procpoll")])
def test_a_listener_raising_on_a_process_death_does_not_stop_the_watcher(
    pidfd: bool, role: str
) -> None:
    script = f"PIDFD = {pidfd}\nROLE = {role!r}\n" + _SCENARIO
    result = run_scenario(script)
    for key in ("p1", "p2", "p3"):
        assert f"ListenerBug: listener-bug on unregistered of {key}" in result.stderr
    assert "LOG ERROR foundation.registry" in result.stderr, result.stderr
