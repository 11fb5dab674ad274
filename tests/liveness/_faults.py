"""The agents and fault injectors of the liveness fault scenarios (scripts run
by ``tests.faults._subprocess.run_scenario`` in a plain interpreter)."""

from __future__ import annotations

import textwrap

KINDS = ("spawned", "cf_future", "asyncio", "foreign_thread", "pidfd", "procpoll")

# Agents of every kind, each with the function that ends it, and the fault injectors.
_AGENTS = """
import asyncio, concurrent.futures, subprocess
from foundation.liveness import MonitorManager, spawn_thread
from foundation.registry import MemoryRegistry

class PopFailsOnce(dict):
    # The manager's table of monitors: its pop raises MemoryError once, when armed.
    armed = False
    failed = 0

    def pop(self, *args):
        if self.armed and not self.failed:
            self.failed += 1
            raise MemoryError("injected: the manager's bookkeeping")
        return super().pop(*args)

class PopitemFailsOnce(dict):
    # A watch's monitors: taking the next one raises MemoryError once, half-way.
    failed = 0
    calls = 0

    def popitem(self):
        self.calls += 1
        if not self.failed and self.calls > self.fail_after:
            self.failed += 1
            raise MemoryError("injected: taking the next monitor")
        return super().popitem()

def make_manager(kind):
    return MonitorManager(name="fire", thread_poll_interval=0.01, _pidfd=kind != "procpoll")

_LOOP = None

def loop():
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        threading.Thread(target=_LOOP.run_forever, name="test-loop", daemon=True).start()
    return _LOOP

def make_agent(kind):
    # (agent, end): end() makes the agent die.
    if kind == "spawned":
        gate = threading.Event()
        return spawn_thread(gate.wait), gate.set
    if kind == "foreign_thread":
        gate = threading.Event()
        thread = threading.Thread(target=gate.wait, daemon=True)
        thread.start()
        return thread, gate.set
    if kind == "cf_future":
        fut = concurrent.futures.Future()
        return fut, lambda: fut.set_result(None)
    if kind == "asyncio":
        fut = asyncio.run_coroutine_threadsafe(_new_future(), loop()).result()
        return fut, lambda: loop().call_soon_threadsafe(fut.set_result, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    return proc, proc.stdin.close

async def _new_future():
    return asyncio.get_running_loop().create_future()

def watch_of(manager, agent):
    if isinstance(agent, concurrent.futures.Future):
        return agent.__dict__["_foundation_watch"]
    if isinstance(agent, asyncio.Future):
        return manager._aio[id(agent)]
    if hasattr(agent, "_foundation_watch"):
        return agent._foundation_watch
    return manager._watches[id(agent)]

def wait_settled(manager, agent):
    # Every monitor released and the watch out of the manager's tables.
    wait_for(lambda: manager.active_count() == 0, "no monitor left")
    if not isinstance(agent, asyncio.Future):  # kept while the future lives, by design
        wait_for(lambda: manager.stats().watched_agents == 0, "the watch forgotten")
    if isinstance(agent, subprocess.Popen):
        agent.wait()

def expected_threads(kind):
    role = {"foreign_thread": "threads", "pidfd": "pidfd", "procpoll": "procpoll"}.get(kind)
    return [f"foundation-fire-{role}"] if role else []
"""


def scenario(kind: str, body: str) -> str:
    """The script: the agents and injectors, ``KIND``, then ``body``."""
    return _AGENTS + f"\nKIND = {kind!r}\n" + textwrap.dedent(body)
