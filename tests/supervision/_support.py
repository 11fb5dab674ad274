"""Helpers for the supervision tests: controllable children, polling, telemetry capture."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from foundation import telemetry
from foundation.supervision import ChildContext, ChildSpec

T = TypeVar("T")

EVENTS = (
    "supervisor.child_started",
    "supervisor.child_exited",
    "supervisor.child_restarted",
    "supervisor.intensity_exceeded",
)


class Boom(Exception):
    """The crash a test child raises on demand."""


def run(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async test function with asyncio.run (no pytest-asyncio here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            async with asyncio.timeout(60):  # in this task: no extra task is created
                return await fn(*args, **kwargs)

        return asyncio.run(main())

    return wrapper


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` on the loop until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)  # sleep-ok: polling with a deadline


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` from a thread until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)  # sleep-ok: polling with a deadline


@contextmanager
def captured_events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every supervisor telemetry event emitted inside the block, in order."""
    seen: list[tuple[str, dict[str, Any]]] = []
    lock = threading.Lock()

    def listener(name: str, data: Any) -> None:
        with lock:
            seen.append((name, dict(data)))

    detach = [telemetry.attach(name, listener) for name in EVENTS]
    try:
        yield seen
    finally:
        for d in detach:
            d()


class Crew:
    """Task children whose life the test drives, logging what happens to them.

    ``log`` gets ("start", id, attempt), ("ready", id) and ("stop", id, how).
    ``crash(id)`` makes the current run raise ``Boom``; ``finish(id)`` makes it
    return normally. A child with ``block_ready`` never becomes ready; one in
    ``fail_start`` raises before ready (``fail_next[id]``: only that many times).
    """

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self._commands: dict[str, asyncio.Queue[str]] = {}
        self.fail_start: set[str] = set()
        self.fail_next: dict[str, int] = {}  # id -> how many more starts fail
        self.block_ready: set[str] = set()

    def spec(self, id: str, **kwargs: Any) -> ChildSpec:
        return ChildSpec(id, self.child, args=(id,), **kwargs)

    def _queue(self, id: str) -> asyncio.Queue[str]:
        return self._commands.setdefault(id, asyncio.Queue())

    def crash(self, id: str) -> None:
        self._queue(id).put_nowait("crash")

    def finish(self, id: str) -> None:
        self._queue(id).put_nowait("finish")

    def starts(self, id: str | None = None) -> list[Any]:
        return [e[1] for e in self.log if e[0] == "start" and (id is None or e[1] == id)]

    def stops(self) -> list[Any]:
        return [e[1] for e in self.log if e[0] == "stop"]

    def kinds(self, *names: str) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] in names]

    async def child(self, ctx: ChildContext, id: str) -> None:
        # Drop commands meant for an earlier run, before the start is logged: a
        # test that saw this run's start sends commands this run will get (the
        # test and the child share one loop). (Drained after it, a "finish" sent
        # between the two was lost and the test hung; 1 in ~4,000 under load.)
        queue = self._queue(id)
        while not queue.empty():
            queue.get_nowait()
        self.log.append(("start", id, ctx.attempt))
        how = "cancelled"
        try:
            if self.fail_next.get(id, 0) > 0:
                self.fail_next[id] -= 1
                how = "failed"
                raise Boom(f"{id} cannot start this time")
            if id in self.fail_start:
                how = "failed"
                raise Boom(f"{id} cannot start")
            if id in self.block_ready:
                await asyncio.Event().wait()
            ctx.ready()
            self.log.append(("ready", id))
            command = await queue.get()
            how = command
            if command == "crash":
                raise Boom(f"{id} crashed")
        finally:
            self.log.append(("stop", id, how))


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def child_pids() -> set[int]:
    """Pids of this process's live (or zombie) child processes."""
    me = os.getpid()
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            pids.add(int(entry))
    return pids
