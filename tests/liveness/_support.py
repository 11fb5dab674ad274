"""Helpers for the liveness tests: recorders, deadlines, fd and thread counts."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from foundation.liveness import Down

TIMEOUT = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.002)  # sleep-ok: polling with a deadline


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def manager_threads(name: str) -> list[str]:
    prefix = f"foundation-{name}-"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


class Recorder:
    """An on_down that records every call, its thread, and signals an Event."""

    def __init__(self) -> None:
        self.downs: list[Down] = []
        self.threads: list[str] = []
        self.called = threading.Event()

    def __call__(self, down: Down) -> None:
        self.downs.append(down)
        self.threads.append(threading.current_thread().name)
        self.called.set()

    def wait(self, timeout: float = TIMEOUT) -> Down:
        assert self.called.wait(timeout), "on_down was not called in time"
        return self.downs[0]

    @property
    def count(self) -> int:
        return len(self.downs)
