"""Demo part 1: hundreds of agents of every kind, some killed, all cleaned up."""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from foundation._demo._console import Console
from foundation._demo._interrupts import ctrl_c_deferred, finishing
from foundation._demo._released import release_and_join
from foundation._demo._scoreboard import Scoreboard
from foundation._demo._timing import percentile, wait_until
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry, MemoryRegistryStats, RegistryEvent

__all__ = ["run_core"]


class _LoopThread:
    """An asyncio loop running in a background thread, for task agents."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        # Strong references (the loop keeps weak ones): a task whose creator was
        # interrupted (Ctrl-C in result() below) is still cancelled by close(),
        # not collected pending ("Task was destroyed but it is pending!").
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="foundation-demo-loop", daemon=True
        )
        self._thread.start()

    def spawn_waiting_task(self) -> asyncio.Task[Any]:
        # Race: a Ctrl-C can land anywhere in this thread. A coroutine object
        # made here and interrupted before the loop took it would be collected
        # unawaited ("coroutine ... was never awaited" on stderr), so every
        # coroutine is made in the loop's thread; a task made there after an
        # interrupt is in _tasks and close() cancels it.
        made: concurrent.futures.Future[asyncio.Task[Any]] = concurrent.futures.Future()

        def create() -> None:
            task = self.loop.create_task(asyncio.Event().wait())
            self._tasks.add(task)  # in the loop's thread, as close()'s reads of it
            made.set_result(task)

        self.loop.call_soon_threadsafe(create)
        return made.result(5)

    def cancel(self, task: asyncio.Task[Any]) -> None:
        self.loop.call_soon_threadsafe(task.cancel)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
            tasks |= self._tasks
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._tasks.clear()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def run_core(console: Console, score: Scoreboard, *, per_kind: int) -> None:
    """Register ``per_kind`` agents of each kind, kill half, measure the cleanup."""
    console.heading("1. A registry of live agents that cleans itself up")
    loops: list[_LoopThread] = []
    releases: list[threading.Event] = []
    threads: list[threading.Thread] = []
    processes: list[subprocess.Popen[bytes]] = []
    killed_at: dict[object, float] = {}
    removed: dict[object, threading.Event] = {}
    cleaned_after: dict[str, list[float]] = {"task": [], "thread": [], "process": []}
    lock = threading.Lock()

    try:
        loop = _start_loop(loops)
        with MemoryRegistry(indexed=("kind", "group")) as registry:

            def on_event(event: RegistryEvent) -> None:
                # Runs on whichever thread saw the death; only record, never block.
                if event.kind == "unregistered" and event.reason == "down":
                    seen = time.perf_counter()
                    with lock:
                        started = killed_at.get(event.entry.key)
                    if started is not None:
                        kind = str(event.entry.metadata["kind"])
                        cleaned_after[kind].append(seen - started)
                        removed[event.entry.key].set()

            unsubscribe = registry.subscribe(on_event)
            agents: dict[str, list[tuple[str, Any]]] = {"task": [], "thread": [], "process": []}
            makers: dict[str, Callable[[], Any]] = {
                "task": loop.spawn_waiting_task,
                "thread": lambda: _waiting_thread(releases, threads),
                "process": lambda: _sleeping_process(processes),
            }
            register_seconds = _register_agents(console, registry, makers, agents, per_kind)
            total = registry.count()
            console.say(
                f"registered [bold]{total}[/bold] agents "
                f"({per_kind} asyncio tasks, {per_kind} threads, {per_kind} OS processes) "
                f"in {register_seconds:.2f}s"
            )
            score.check("all agents registered", total == 3 * per_kind, f"{total}")
            by_index = len(registry.find_by_attribute("kind", "process"))
            score.check("index finds every process", by_index == per_kind, f"{by_index}")

            _kill_every_other(
                agents, loop, releases=releases, killed_at=killed_at, removed=removed, lock=lock
            )
            expected = 3 * per_kind - len(killed_at)
            cleaned = wait_until(lambda: registry.count() == expected, timeout=15)
            score.check("every killed agent disappeared", cleaned, f"{registry.count()} left")
            stale = [e.key for e in registry.list_all() if e.key in killed_at]
            score.check("no dead agent is listed", not stale, f"{len(stale)} stale")

            _cleanup_table(console, registry, cleaned_after, agents, per_kind)
            proc_ms = [s * 1000 for s in cleaned_after["process"]]
            score.figure(
                "registrations per second (mixed kinds)", f"{total / register_seconds:,.0f}"
            )
            score.figure(
                "OS process death -> registry removal p99", f"{percentile(proc_ms, 99):.2f} ms"
            )
            stats = registry.stats()
            score.check(
                "one monitor per entry",
                stats.monitors == stats.entries,
                f"{stats.monitors} monitors / {stats.entries} entries",
            )

            stats = _unregister_all(registry, agents)
            score.check(
                "unregister releases every monitor", stats.monitors == 0, f"{stats.monitors}"
            )
            score.figure("leaked monitors after unregister", str(stats.monitors))
            unsubscribe()

    finally:
        # Also on Ctrl-C or an error: no thread, task or process of this part outlives it.
        _stop_agents(releases, threads, processes, loops)


def _start_loop(loops: list[_LoopThread]) -> _LoopThread:
    """A loop thread for the task agents, listed in ``loops`` (for ``_stop_agents``)."""
    # Race: a signal inside new_event_loop() left a half-made loop whose __del__
    # printed "Exception ignored ... no attribute '_signal_handlers'"; one just
    # after it, before run_core's try, left the loop's thread running: the loop
    # is made whole and listed first, then a signal meanwhile is raised.
    with ctrl_c_deferred():
        loops.append(_LoopThread())
    return loops[-1]


def _unregister_all(
    registry: MemoryRegistry, agents: dict[str, list[tuple[str, Any]]]
) -> MemoryRegistryStats:
    """Unregister every agent left; the registry's stats then (monitors must be zero)."""
    for pairs in agents.values():
        for key, _agent in pairs:
            registry.unregister(key)
    return registry.stats()


def _register_agents(
    console: Console,
    registry: MemoryRegistry,
    makers: dict[str, Callable[[], Any]],
    agents: dict[str, list[tuple[str, Any]]],
    per_kind: int,
) -> float:
    """Register ``per_kind`` agents of each kind into ``agents``; return the seconds taken."""
    started = time.perf_counter()
    with console.progress("registering agents", 3 * per_kind) as advance:
        for kind, make in makers.items():
            for i in range(per_kind):
                key = f"{kind}-{i}"
                agent = make()
                registry.register(key, agent, {"kind": kind, "group": i % 10})
                agents[kind].append((key, agent))
                advance()
    return time.perf_counter() - started


def _kill_every_other(
    agents: dict[str, list[tuple[str, Any]]],
    loop: _LoopThread,
    *,
    releases: list[threading.Event],
    killed_at: dict[object, float],
    removed: dict[object, threading.Event],
    lock: threading.Lock,
) -> None:
    # Kill every other agent of each kind, one at a time, and wait for its
    # removal: each sample is one death's latency, not a queue behind a burst.
    for kind, pairs in agents.items():
        for n, (key, agent) in enumerate(pairs):
            if n % 2:
                continue
            removed[key] = threading.Event()
            with lock:
                killed_at[key] = time.perf_counter()
            if kind == "task":
                loop.cancel(agent)
            elif kind == "thread":
                releases[n].set()
            else:
                agent.send_signal(signal.SIGKILL)
            removed[key].wait(5)


def _cleanup_table(
    console: Console,
    registry: MemoryRegistry,
    cleaned_after: dict[str, list[float]],
    agents: dict[str, list[tuple[str, Any]]],
    per_kind: int,
) -> None:
    """Print the per-kind table of kills and kill-to-removal latencies."""
    rows = []
    for kind, samples in cleaned_after.items():
        ms = [s * 1000 for s in samples]
        rows.append(
            [kind, per_kind, per_kind - len(agents[kind][1::2]), len(samples),
             len(registry.find_by_attribute("kind", kind)),
             f"{percentile(ms, 50):.2f}", f"{percentile(ms, 99):.2f}"]
        )  # fmt: skip
    console.table(
        "Agents killed and cleaned up (latency from kill to registry removal)",
        ["kind", "registered", "killed", "cleaned", "still live", "p50 ms", "p99 ms"],
        rows,
    )


def _stop_agents(
    releases: list[threading.Event],
    threads: list[threading.Thread],
    processes: list[subprocess.Popen[bytes]],
    loops: list[_LoopThread],
) -> None:
    """Release the waiting threads, reap the processes and stop the loop: to the
    end, whatever signal lands meanwhile (each step is bounded), then the signal."""
    with finishing():
        release_and_join(releases, threads)  # (why: _released)
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for loop in loops:
            loop.close()


def _waiting_thread(
    releases: list[threading.Event], threads: list[threading.Thread]
) -> threading.Thread:
    release = threading.Event()
    releases.append(release)
    threads.append(spawn_thread(release.wait, name=f"demo-agent-{len(releases)}"))
    return threads[-1]


def _sleeping_process(processes: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    # Race: a Ctrl-C inside Popen, after the fork, would lose the child (never
    # listed, so never killed): Ctrl-C waits until it is listed.
    with ctrl_c_deferred():
        process = subprocess.Popen(["sleep", "120"])
        processes.append(process)
    return process
