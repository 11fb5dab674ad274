"""Helpers for the RedisFlagStore tests: polling with a deadline, a node in another process."""

from __future__ import annotations

import importlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def raw_client(url: str) -> Any:
    """A plain redis-py client, to tamper with keys behind the store's back."""
    # Imported by name: a sibling test folder called `redis` confuses import sorting.
    return importlib.import_module("redis").Redis.from_url(url)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)  # sleep-ok: polling with a deadline


class Node:
    """``tests.redis_flags._node`` in a separate OS process, driven over stdin/stdout lines."""

    def __init__(self, url: str, namespace: str, cache_path: Path | None = None) -> None:
        """``cache_path``: the node's copy (None: in memory only)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
        copy = "" if cache_path is None else str(cache_path)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.redis_flags._node", url, namespace, copy],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._stderr: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<eof>")

    def expect(self, prefix: str, timeout: float = 10.0) -> str:
        """The next line starting with ``prefix`` (other lines are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"node printed no line starting {prefix!r} in {timeout}s")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line == "<eof>":
                raise AssertionError(f"node exited while waiting for {prefix!r}: {self.stderr()}")
            if line.startswith(prefix):
                return line

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str, timeout: float = 10.0) -> str:
        """Send ``command`` and return the node's answer line (``= ...``)."""
        self.send(command)
        return self.expect("= ", timeout).removeprefix("= ")

    def stderr(self) -> str:
        """Everything the node wrote to stderr (once it has exited)."""
        if self.process.poll() is None:
            return "<still running>"
        if self._stderr is None:
            assert self.process.stderr is not None
            self._stderr = self.process.stderr.read()
        return self._stderr

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        self.stderr()  # kept: the streams close next
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
