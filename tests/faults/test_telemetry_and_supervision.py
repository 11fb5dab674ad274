"""Raising telemetry listeners and a child that raises SystemExit, outside pytest.

A telemetry listener is called inside library code (flag writes, the
supervisor's own event handling): its error must be logged and go no
further. A supervisor's event loop thread must survive a child task that
raises ``SystemExit`` (asyncio re-raises it out of ``run_forever``).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_TELEMETRY = """
from foundation import FeatureFlags, Flag, telemetry

def broken(name, data):
    raise ListenerBug(f"telemetry-bug on {name}")

seen = []
telemetry.attach("demo.event", broken)
telemetry.attach("demo.event", lambda name, data: seen.append(data["n"]))
assert telemetry.emit("demo.event", {"n": 1}) is None
assert seen == [1], seen

telemetry.attach("flag.changed", broken)
flags = FeatureFlags([Flag("beta")])
assert flags.enable("beta", by="ana") is None
assert flags.enabled("beta") and len(flags.history()) == 1
telemetry.emit("demo.event", {"n": 2})
assert seen == [1, 2], seen
print("OK")
"""


def test_a_raising_telemetry_listener_never_breaks_the_producer() -> None:
    result = run_scenario(_TELEMETRY)
    assert "ListenerBug: telemetry-bug on demo.event" in result.stderr, result.stderr
    assert "ListenerBug: telemetry-bug on flag.changed" in result.stderr, result.stderr
    assert "LOG ERROR foundation.telemetry" in result.stderr, result.stderr


_SUPERVISOR = """
import asyncio
from foundation import telemetry
from foundation.supervision import ChildSpec, Supervisor

def broken(name, data):
    raise ListenerBug(f"telemetry-bug on {name}")

for name in ("supervisor.child_started", "supervisor.child_exited",
             "supervisor.child_restarted"):
    telemetry.attach(name, broken)

runs = []

async def child(ctx, how):
    runs.append(how)
    ctx.ready()
    if len(runs) == 1:
        raise ValueError("first run crashes")
    if len(runs) == 2:
        raise SystemExit(3)           # asyncio re-raises this out of run_forever
    await asyncio.Event().wait()

with Supervisor([ChildSpec("w", child, args=("task",))], max_restarts=5).run_in_thread() as sup:
    wait_for(lambda: len(runs) >= 3, "the child to be restarted twice")
    wait_for(lambda: sup.count_children().active == 1, "the third run to be active")
    assert sup.thread.is_alive(), "the supervisor's loop thread died"
print("OK")
"""


def test_a_supervisor_survives_raising_telemetry_and_a_child_raising_system_exit() -> None:
    result = run_scenario(_SUPERVISOR)
    assert "ListenerBug: telemetry-bug on supervisor.child_exited" in result.stderr
    assert "LOG ERROR foundation.telemetry" in result.stderr, result.stderr
    assert "SystemExit: 3" in result.stderr, result.stderr
    assert "LOG ERROR foundation.supervision" in result.stderr, result.stderr
