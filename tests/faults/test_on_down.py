"""A raising ``on_down`` passed to ``monitor()``, for each agent kind, outside pytest.

The other monitors of the same agent still fire, ``monitor()`` on an agent
that is already dead does not raise into its caller, the thread that saw the
death lives on (a second agent's death is still seen), and the error is
logged under ``foundation.liveness``.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.faults._subprocess import run_scenario

_MAKERS = {
    "spawn_thread": """
        def make():
            stop = threading.Event()
            return spawn_thread(stop.wait, name="agent"), stop.set
        WATCHER = None  # on_down runs on the agent's own thread
    """,
    "thread": """
        def make():
            stop = threading.Event()
            t = threading.Thread(target=stop.wait, name="agent", daemon=True)
            t.start()
            return t, stop.set
        WATCHER = "foundation-default-threads"
    """,
    "cf_future": """
        import concurrent.futures
        def make():
            fut = concurrent.futures.Future()
            return fut, lambda: fut.set_result(None)
        WATCHER = None  # on_down runs on the thread completing the future
    """,
    "asyncio_task": """
        import asyncio
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="loop", daemon=True).start()
        async def new_task():
            release = loop.create_future()
            async def body():
                await release
            return loop.create_task(body()), release
        def make():
            task, release = asyncio.run_coroutine_threadsafe(new_task(), loop).result()
            return task, lambda: loop.call_soon_threadsafe(release.set_result, None)
        WATCHER = "loop"
    """,
    "popen": """
        import subprocess
        def make():
            proc = subprocess.Popen(["sleep", "60"])
            return proc, proc.kill
        WATCHER = "foundation-default-pidfd"
    """,
    "os_process": """
        import subprocess
        from foundation.liveness import OSProcess
        keep = []
        def make():
            proc = subprocess.Popen(["sleep", "60"])
            keep.append(proc)
            return OSProcess(proc.pid), proc.kill
        WATCHER = "foundation-default-pidfd"
    """,
    "multiprocessing": """
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        def make():
            proc = ctx.Process(target=time.sleep, args=(60,), name="agent")
            proc.start()
            return proc, proc.kill
        WATCHER = "foundation-default-pidfd"
    """,
}

_SCENARIO = """
from foundation.liveness import is_alive, monitor, spawn_thread

def broken(down):
    raise ListenerBug(f"on_down-bug {down.reason}")

for round in (1, 2):
    agent, end = make()
    fired = threading.Event()
    monitor(agent, broken)           # first: it raises before the next one runs
    monitor(agent, lambda down: fired.set())
    end()
    assert fired.wait(20), f"round {round}: the second on_down was not called"
    if WATCHER is not None:
        names = {t.name for t in threading.enumerate()}
        assert WATCHER in names, f"round {round}: {WATCHER} died ({sorted(names)})"
    # Already dead: on_down runs inside monitor(), and must not raise out of it.
    wait_for(lambda: not is_alive(agent), "the agent to count as dead")
    mon = monitor(agent, broken)
    assert not mon.active
print("OK")
"""


@pytest.mark.parametrize("kind", sorted(_MAKERS))
def test_a_raising_on_down_is_logged_and_the_watcher_lives_on(kind: str) -> None:
    result = run_scenario(textwrap.dedent(_MAKERS[kind]) + _SCENARIO)
    assert "LOG ERROR foundation.liveness" in result.stderr, result.stderr
    assert "ListenerBug: on_down-bug" in result.stderr, result.stderr
    # The monitor() on the dead agent: on_down ran (and raised) inside the call.
    assert "LOG ERROR foundation.liveness [MainThread]" in result.stderr, result.stderr


_SYSTEM_EXIT = """
from foundation.liveness import monitor

def exits(down):
    raise SystemExit(f"on_down-exit {down.reason}")

for round in (1, 2):
    agent, end = make()
    fired = threading.Event()
    monitor(agent, exits)            # first: it raises before the next one runs
    monitor(agent, lambda down: fired.set())
    end()
    assert fired.wait(20), f"round {round}: the second on_down was not called"
    names = {t.name for t in threading.enumerate()}
    assert WATCHER in names, f"round {round}: {WATCHER} died ({sorted(names)})"
print("OK")
"""


@pytest.mark.parametrize("kind", ["thread", "popen"])
def test_an_on_down_raising_system_exit_does_not_end_a_watcher_thread(kind: str) -> None:
    result = run_scenario(textwrap.dedent(_MAKERS[kind]) + _SYSTEM_EXIT)
    assert "SystemExit: on_down-exit" in result.stderr, result.stderr
    assert "LOG ERROR foundation.liveness [foundation-default-" in result.stderr, result.stderr
