"""A ``MemoryRegistry`` listener raising ``KeyboardInterrupt`` on a death event.

The death of a ``spawn_thread`` agent is told by its own thread, at its end.
That thread delivered the event as a writer's would: the listener's
``KeyboardInterrupt`` went on, out of the thread's ``run``, to
``threading.excepthook`` ("Exception in thread agent-3", a raw traceback on
stderr) for each death that thread delivered itself. No call of the user's
waits there: now it is reported as on a courier (one ERROR record under
``foundation.registry``, naming the listener) and the later listeners still
hear every death. In the main thread (an asyncio agent's death, told by the
loop) a Ctrl-C still reaches the user: ``asyncio.run`` raises it.

In a subprocess with the interpreter's default hooks (``tests/faults/_subprocess.py``).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

N = 20

_SPAWNED = """
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry

N = <n>
registry = MemoryRegistry()
after = []

def raising(event):
    if event.kind == "unregistered":
        raise KeyboardInterrupt

registry.subscribe(raising)
registry.subscribe(lambda e: after.append(e.entry.key) if e.kind == "unregistered" else None)
threads_before = library_threads()
agents = []
for i in range(N):
    go = threading.Event()
    agents.append((go, spawn_thread(go.wait, name=f"agent-{i}")))
    registry.register(i, agents[-1][1])
for go, _ in agents:
    go.set()
for _, agent in agents:
    agent.join()
wait_for(lambda: len(after) == N, "every death told to the listener after the raising one")
assert sorted(after) == list(range(N)), after
assert len(registry) == 0
registry.close()
gone = set(threads_before) - set(library_threads())
assert not gone, gone
print("OK")
"""


def test_a_death_listener_raising_keyboard_interrupt_is_reported_not_a_thread_traceback() -> None:
    result = run_scenario(_SPAWNED.replace("<n>", str(N)))
    # (run_scenario: no "Exception in thread", no raw traceback in stderr)
    reports = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG ERROR foundation.registry") and "MemoryRegistry listener" in line
    ]
    assert len(reports) == N, result.stderr
    assert "KeyboardInterrupt" in result.stderr, result.stderr


_MAIN_THREAD = """
import asyncio
from foundation.registry import MemoryRegistry

def raising(event):
    if event.kind == "unregistered":
        raise KeyboardInterrupt

async def main():
    registry = MemoryRegistry()
    registry.subscribe(raising)
    registry.register("t", asyncio.get_running_loop().create_task(asyncio.sleep(0)))
    await asyncio.wait_for(asyncio.Event().wait(), 30)  # ended by the KeyboardInterrupt

try:
    asyncio.run(main())
except KeyboardInterrupt:
    print("INTERRUPTED")
print("OK")
"""


def test_in_the_main_thread_a_death_listener_keyboard_interrupt_still_reaches_the_user() -> None:
    result = run_scenario(_MAIN_THREAD)
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], result.stdout + result.stderr
