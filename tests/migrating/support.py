"""Helpers for the MigratingRegistry tests: real agents, flags, a worker thread."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, TypeVar

from foundation import (
    FeatureFlags,
    Flag,
    MemoryRegistry,
    MigratingRegistry,
    ThreadLocalRegistry,
    spawn_thread,
)
from foundation.registry import Registry

T = TypeVar("T")


class Switched(MemoryRegistry):
    """A real ``MemoryRegistry`` whose ``status()`` says ``state`` (a test sets it:
    "disconnected" makes a ``MigratingRegistry`` skip its mirrors, as for Redis)."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "connected"

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(state=self.state)


FLAG = "use_ets_agent_registry"
FLAGS = (Flag(FLAG), Flag("enable_migration_monitoring"))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.002)  # sleep-ok: polling with a deadline


class Agents:
    """Real agents: ``spawn_thread`` threads that run until killed."""

    def __init__(self) -> None:
        self._stops: dict[threading.Thread, threading.Event] = {}
        self._lock = threading.Lock()

    def new(self) -> threading.Thread:
        stop = threading.Event()
        agent = spawn_thread(stop.wait, name="migrating-test-agent")
        with self._lock:
            self._stops[agent] = stop
        return agent

    def kill(self, agent: threading.Thread) -> None:
        """End ``agent`` and wait until it is gone (its monitor has fired by then)."""
        with self._lock:
            stop = self._stops.pop(agent, None)
        if stop is not None:
            stop.set()
        agent.join(10)
        assert not agent.is_alive()

    def dead(self) -> threading.Thread:
        agent = self.new()
        self.kill(agent)
        return agent

    def close(self) -> None:
        with self._lock:
            items = list(self._stops.items())
            self._stops.clear()
        for _, stop in items:
            stop.set()
        for agent, _ in items:
            agent.join(10)


def legacy_backend() -> Registry:
    return ThreadLocalRegistry()


def make(
    flag_on: bool, *, legacy: Registry | None = None, target: Registry | None = None
) -> tuple[MigratingRegistry, FeatureFlags]:
    flags = FeatureFlags(FLAGS)
    flags.set(FLAG, flag_on)
    reg = MigratingRegistry(
        legacy if legacy is not None else legacy_backend(),
        target if target is not None else MemoryRegistry(),
        flags,
    )
    return reg, flags


class Worker:
    """A thread of its own that runs calls on request (a second legacy view)."""

    def __init__(self, name: str = "migrating-worker") -> None:
        self._inbox: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._outbox: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=name)
        self.thread.start()

    def _run(self) -> None:
        while True:
            fn = self._inbox.get()
            if fn is None:
                return
            try:
                self._outbox.put((True, fn()))
            except BaseException as exc:
                self._outbox.put((False, exc))

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the worker thread; return its result or raise its error."""
        self._inbox.put(fn)
        ok, value = self._outbox.get(timeout=30)
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def stop(self) -> None:
        self._inbox.put(None)
        self.thread.join(10)


def monitored_entries(target: MemoryRegistry) -> tuple[int, int]:
    stats = target.stats()
    return stats.entries, stats.monitors


def keys_and_agents(entries: Iterator[Any] | list[Any]) -> dict[Any, Any]:
    return {e.key: e.agent for e in entries}
