"""A stop that lands while a crashed child is being restarted, in a plain
interpreter (the default hooks, log records on stderr).

The restart's wait for readiness was cut short by the stop with a
``RuntimeError("supervisor ... is stopping")``, reported as a failed start: an
ERROR record with a traceback on ``foundation.supervision.crash`` at every
deploy that met a restart. It is no failure: the stop goes on quietly, its
own records only, the child's crash before it reported once.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

SCENARIO = """
import asyncio
from foundation.supervision import ChildSpec, Supervisor

restarting = threading.Event()

async def crashes_then_starts_slowly(ctx):
    if ctx.attempt:
        restarting.set()
        await asyncio.Event().wait()  # never ready: the stop lands meanwhile
    ctx.ready()
    raise ValueError("boom")

async def steady(ctx):
    ctx.ready()
    await asyncio.Event().wait()

children = [ChildSpec("steady", steady), ChildSpec("sc", crashes_then_starts_slowly)]
handle = Supervisor(children, name="app", strategy=STRATEGY).run_in_thread()
assert restarting.wait(20)
handle.stop()
print("state", handle.supervisor.state)
print("OK")
"""


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all"])
def test_a_stop_during_a_restart_is_no_failed_start(strategy: str) -> None:
    result = run_scenario(SCENARIO.replace("STRATEGY", repr(strategy)))
    assert result.lines("state") == ["state stopped"]
    crash = [line for line in result.stderr.splitlines() if "supervision.crash" in line]
    assert len(crash) == 1, result.stderr  # the child's own crash, once
    assert "crashed" in crash[0], crash
    assert "failed to start" not in result.stderr, result.stderr
    assert "is stopping" not in result.stderr, result.stderr
