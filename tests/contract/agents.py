"""Real agents for the contract suite, and a way to kill each kind.

- ``task``: an asyncio task on a loop running in a background thread
  (created with ``run_coroutine_threadsafe``); killed by cancelling it.
- ``thread``: a ``spawn_thread`` thread blocked on an Event; killed by setting it.
- ``raising_thread``: the same, but its target raises when released (the
  exception is expected: it is swallowed instead of reaching pytest's hook).
- ``process``: ``subprocess.Popen(["sleep", "60"])``; killed with SIGKILL,
  reaped at teardown.
- ``future``: a ``concurrent.futures.Future``; killed by setting a result.

Nothing here sleeps to synchronise: deaths are awaited with ``wait_until``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from foundation.liveness import is_alive, spawn_thread

__all__ = [
    "AGENT_KINDS",
    "AgentCrash",
    "Agents",
    "LoopThread",
    "expected_crashes",
    "wait_until",
]

AGENT_KINDS = ("task", "thread", "raising_thread", "process", "future")
DEADLINE = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.002)  # sleep-ok: polling with a deadline


class AgentCrash(Exception):
    """Raised on purpose by a ``raising_thread`` agent when it is killed."""


@contextlib.contextmanager
def expected_crashes() -> Iterator[None]:
    """Swallow ``AgentCrash`` in ``threading.excepthook``; chain anything else on."""
    previous = threading.excepthook

    def hook(args: Any) -> None:
        if isinstance(args.exc_value, AgentCrash):
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        if threading.excepthook is hook:
            threading.excepthook = previous


class LoopThread:
    """An asyncio event loop running forever in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="contract-loop", daemon=True)
        self.thread.start()
        self._ready.wait(DEADLINE)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def spawn(self) -> asyncio.Task[None]:
        """A task that runs until cancelled."""

        async def forever() -> None:
            await asyncio.Event().wait()

        async def create() -> asyncio.Task[None]:
            return asyncio.get_running_loop().create_task(forever())

        return asyncio.run_coroutine_threadsafe(create(), self.loop).result(DEADLINE)

    def close(self) -> None:
        async def cancel_all() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


class Agents:
    """Makes live agents of each kind and kills them; cleans everything up on close."""

    def __init__(self, loop: LoopThread) -> None:
        self._loop = loop
        self._events: list[threading.Event] = []
        self._threads: list[threading.Thread] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._killers: dict[int, Callable[[], None]] = {}

    def new(self, kind: str) -> Any:
        """A live agent of ``kind`` (one of ``AGENT_KINDS``)."""
        agent: Any
        if kind == "task":
            agent = self._loop.spawn()
            task = agent
            self._tasks.append(task)

            def kill() -> None:
                self._loop.loop.call_soon_threadsafe(task.cancel)

        elif kind in ("thread", "raising_thread"):
            release = threading.Event()
            raising = kind == "raising_thread"

            def body(release: threading.Event = release, raising: bool = raising) -> None:
                release.wait()
                if raising:
                    raise AgentCrash("killed on purpose")

            agent = spawn_thread(body, name=f"contract-{kind}")
            self._events.append(release)
            self._threads.append(agent)
            thread = agent

            def kill() -> None:
                if raising:
                    # The crash must reach our hook, not pytest's: wait for it here.
                    with expected_crashes():
                        release.set()
                        thread.join(DEADLINE)
                else:
                    release.set()

        elif kind == "process":
            proc = subprocess.Popen(["sleep", "60"])
            self._procs.append(proc)
            agent = proc

            def kill() -> None:
                proc.send_signal(signal.SIGKILL)

        elif kind == "future":
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            agent = fut

            def kill() -> None:
                if not fut.done():
                    fut.set_result(None)

        else:
            raise ValueError(f"unknown agent kind {kind!r}")
        self._killers[id(agent)] = kill
        return agent

    def dead(self, kind: str) -> Any:
        """An agent of ``kind`` that is already dead (and known to be)."""
        agent = self.new(kind)
        self.kill(agent)
        assert wait_until(lambda: not is_alive(agent))
        return agent

    def kill(self, agent: Any) -> None:
        """Start killing ``agent`` (it dies asynchronously: poll for the effect)."""
        self._killers[id(agent)]()

    def close(self) -> None:
        for task in self._tasks:
            self._loop.loop.call_soon_threadsafe(task.cancel)
        with expected_crashes():
            for event in self._events:
                event.set()
            for thread in self._threads:
                thread.join(DEADLINE)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(DEADLINE)
