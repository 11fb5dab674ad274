"""Helpers for the Redis registry tests: nodes in other processes, polling, namespaces."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_ns = itertools.count()


def unique_namespace(prefix: str = "t") -> str:
    """A namespace no other test uses (tests share the session redis-server)."""
    return f"{prefix}-{os.getpid()}-{next(_ns)}"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return predicate()
        time.sleep(0.005)  # sleep-ok: polling with a deadline
    return True


class NodeProcess:
    """A RedisRegistry node running ``tests.redis.node_main`` in a child process.

    ``argv``: the interpreter's arguments instead (a node script of a test's own,
    e.g. ``["-c", SCRIPT, ...]``), speaking the same protocol: a first JSON line
    with ``ready`` (kept whole in ``.ready``), then one JSON line per request line
    ``{"op": ...}``; ``{"op": "exit"}`` ends it.
    """

    def __init__(
        self,
        url: str,
        namespace: str,
        *,
        ttl: float = 5.0,
        maxlen: int = 10_000,
        argv: Sequence[str] | None = None,
    ):
        if argv is None:
            argv = ["-m", "tests.redis.node_main", url, namespace, str(ttl), str(maxlen)]
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True, name="node-reader")
        self._reader.start()
        self.ready = self._next(30.0)
        self.node: str = self.ready["ready"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> dict[str, Any]:
        line = self._lines.get(timeout=timeout)
        if line is None:
            raise RuntimeError(f"node process exited ({self.proc.poll()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def call(self, op: str, timeout: float = 30.0, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._next(timeout)

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._close_pipes()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # in case a test left it frozen
            with contextlib.suppress(RuntimeError, queue.Empty, BrokenPipeError, OSError):
                self.call("exit", timeout=15)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        # stdin first; the reader ends at EOF of stdout (the process is gone).
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()
