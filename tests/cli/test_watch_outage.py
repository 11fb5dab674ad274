"""``foundation agents watch`` says on stderr when it loses Redis and when it is back.

The CLI runs as a real subprocess (default hooks); a ``RedisRegistry`` node in
another process registers agents; the test kills the test's own redis-server
and starts it again (empty) on the same port. Stdout stays JSON Lines of
events; the connection lines go to stderr, one per state change.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.cli._support import start_cli
from tests.cli.test_agents_cli import Node
from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer

DEADLINE = 45.0


class Lines:
    """The lines of a pipe, read on a thread of their own, to wait on with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, what: str, match: str) -> str:
        """The next line containing ``match`` (earlier lines are kept in ``seen``)."""
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {what} within {DEADLINE}s; saw {self.seen}") from None
            if line is None:
                raise AssertionError(f"the pipe closed before {what}; saw {self.seen}")
            self.seen.append(line)
            if match in line:
                return line

    def rest(self) -> list[str]:
        """Every line after the pipe closed (call once the process ended)."""
        self._thread.join(30)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                return self.seen
            self.seen.append(line)


@pytest.fixture
def namespace() -> str:
    return f"cli-outage-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def node(fresh_redis: RedisServer, namespace: str) -> Iterator[Node]:
    n = Node(fresh_redis.url, namespace)
    yield n
    n.close()


def _wait_node_connected(node: Node) -> None:
    deadline = time.monotonic() + DEADLINE
    while node.do(op="status")["status"]["state"] != "connected":
        assert time.monotonic() < deadline, "the node did not reconnect"
        time.sleep(0.05)  # sleep-ok: polling with a deadline


def test_watch_reports_the_outage_and_the_return_on_stderr(
    fresh_redis: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    where = ["--redis", fresh_redis.url, "--namespace", namespace]
    node.do(op="register", key="before", meta={})
    watch = start_cli("--json", "agents", "watch", *where, cwd=tmp_path)
    try:
        assert watch.stdout is not None
        assert watch.stderr is not None
        out, err = Lines(watch.stdout), Lines(watch.stderr)
        err.wait_for("the ready line", "watching ")
        node.do(op="register", key="during-ok", meta={})
        assert json.loads(out.wait_for("the first event", "during-ok"))["event"] == "registered"

        fresh_redis.kill()
        down = err.wait_for("the disconnected line", "disconnected")
        assert down.startswith(f"registry {namespace!r} disconnected"), down
        fresh_redis.start()  # the same port, empty
        back = err.wait_for("the connected-again line", "connected again")
        assert back.startswith(f"registry {namespace!r} connected again after "), back

        # The watch carries on: a change made after the outage is printed.
        _wait_node_connected(node)
        node.do(op="register", key="after", meta={})
        assert json.loads(out.wait_for("the event after", '"after"'))["event"] == "registered"
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=30)
    stderr, stdout = err.rest(), out.rest()
    watch.stdout.close()
    watch.stderr.close()
    assert watch.returncode == 0, stderr
    # One line per state change: the ready line, down, back, then the SIGTERM
    # line; nothing else (no traceback).
    assert len(stderr) == 4, stderr
    assert stderr[-1] == "foundation agents watch: terminated", stderr
    assert all(json.loads(line)["event"] in ("registered", "unregistered") for line in stdout)


_DEGRADED = """
import contextlib, io
from foundation import RedisRegistry
from foundation._cli._agents import LinkReporter
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
registry = RedisRegistry(server.url, namespace="ro", op_timeout=1.0, lease_ttl=1.5)
lines = io.StringIO()
with contextlib.redirect_stderr(lines):
    reporter = LinkReporter(registry, "ro")
    server.make_read_only()

    def seen(line):
        reporter.check()
        return line in lines.getvalue()

    wait_for(lambda: seen("degraded"), "the degraded line")
    server.make_writable()
    wait_for(lambda: seen("connected again"), "the connected-again line")
registry.close()
server.stop()
for line in lines.getvalue().splitlines():
    print("LINE", line)
print("OK")
"""


def test_the_watch_reporter_names_a_degraded_redis_and_its_return() -> None:
    """``watch`` over a registry that reports ``degraded`` (READONLY replies) says so."""
    result = run_scenario(_DEGRADED)
    lines = [line.removeprefix("LINE ") for line in result.lines("LINE")]
    # Down and back; a recovery may pass through "recovering" on the way (a line too).
    assert len(lines) >= 2, result.stdout
    assert all(line.startswith("registry 'ro' ") for line in lines), lines
    assert lines[0].startswith("registry 'ro' degraded (Redis answers with errors): "), lines
    assert "Redis at " in lines[0], lines  # the registry's last error, on the same line
    assert lines[-1].startswith("registry 'ro' connected again after "), lines
    assert sum("connected again" in line for line in lines) == 1, lines


_BLIP = """
import contextlib, io
from foundation.registry._redis._observer import RedisObserver
from foundation._cli._agents import LinkReporter
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
observer = RedisObserver(server.url, namespace="blip")
lines = io.StringIO()
with contextlib.redirect_stderr(lines):
    reporter = LinkReporter(observer, "blip")
    reporter.check()
    # The whole outage happens between two checks: down, then back.
    server.kill()
    wait_for(lambda: observer.status().state != "connected", "the observer to see the outage")
    server.start()  # the same port, empty
    wait_for(lambda: observer.status().state == "connected", "the observer to reconnect")
    reporter.check()
    reporter.check()  # nothing more happened: no second line
observer.close()
server.stop()
for line in lines.getvalue().splitlines():
    print("LINE", line)
print("OK")
"""


def test_an_outage_between_two_checks_still_prints_one_line() -> None:
    """The state is "connected" at both checks, but it was entered again in between."""
    result = run_scenario(_BLIP)
    lines = [line.removeprefix("LINE ") for line in result.lines("LINE")]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith(
        "registry 'blip' lost Redis and was connected again between two checks"
    ), lines
