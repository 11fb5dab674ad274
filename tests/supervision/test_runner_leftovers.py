"""Tasks still on ``run()``'s loop at its end, in a plain interpreter.

``run()`` cancels them and closes the loop, as ``asyncio.run`` does; a task
of the program's own that raised while cancelled there was silenced (its
exception retrieved, never reported), where ``asyncio.run`` reports it.
"""

from __future__ import annotations

from tests.faults._subprocess import Expected, run_scenario

SCENARIO = """
import asyncio
from foundation.supervision import ChildSpec, Supervisor, run

class CleanupBug(Exception):
    pass

async def flaky_cleanup():
    try:
        await asyncio.Event().wait()
    finally:
        raise CleanupBug("raised while cancelled at the loop's end")

async def worker(ctx):
    asyncio.get_running_loop().create_task(flaky_cleanup())  # not a child
    ctx.ready()
    await asyncio.Event().wait()

def stop_soon(sup):
    asyncio.get_running_loop().create_task(sup.stop())

print("exit", run(Supervisor([ChildSpec("w", worker)]), on_started=stop_soon))
print("OK")
"""


def test_a_program_task_raising_at_the_loops_end_is_reported_once() -> None:
    # The program's own task raises on purpose; run() reports it through the
    # loop's exception handler (asyncio's logger), as asyncio.run does.
    shutdown = Expected("unhandled exception during foundation's run() shutdown", "CleanupBug")
    result = run_scenario(SCENARIO, expect=(shutdown,))
    assert result.lines("exit") == ["exit 0"]
    assert result.stderr.count("CleanupBug: raised while cancelled at the loop's end") == 1
    assert "unhandled exception during foundation's run() shutdown" in result.stderr


def test_a_task_cancelled_quietly_at_the_loops_end_is_not_reported() -> None:
    raising = 'raise CleanupBug("raised while cancelled at the loop\'s end")'
    assert raising in SCENARIO
    quiet = SCENARIO.replace(raising, "pass")
    result = run_scenario(quiet)
    assert result.lines("exit") == ["exit 0"]
    assert "CleanupBug" not in result.stderr
    assert "unhandled exception" not in result.stderr
