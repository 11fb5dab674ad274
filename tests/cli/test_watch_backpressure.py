"""``foundation agents watch`` whose stdout's reader stops holds a bounded backlog.

Before, every event waited in an unbounded queue for a stdout nobody read: the
process grew (50 to 148 MB in 40 s) with nothing said. Now at most
``WATCH_BACKLOG`` events wait; later ones are dropped and counted: one stderr
line when dropping starts, and one ``dropped`` line on stdout, where the events
are missing, once the reader reads again.

The command runs as a real subprocess; this process churns agents on a real
redis-server through a ``RedisRegistry`` (another process than the command's).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import uuid
from pathlib import Path
from typing import Any

from foundation._cli._agents import WATCH_BACKLOG
from foundation.registry._redis import RedisRegistry
from tests.cli._support import start_cli
from tests.cli.test_watch_outage import Lines
from tests.redis_support import RedisServer

CHURNS = WATCH_BACKLOG * 2 // 3
"""Register-unregister pairs: 2 events each, well past the backlog and a pipe's worth."""
EVENTS = 2 * CHURNS
PIPE_SLACK = 2_000
"""Events past the backlog that may be printed before the gap: those in the pipe's
buffer (64 KiB; each line is over 300 bytes) and the one being written."""


def _churn(url: str, namespace: str) -> None:
    """Register and unregister agent ``c-I`` for I in 0..CHURNS-1 (in that order)."""
    registry = RedisRegistry(url, namespace=namespace)
    try:
        for i in range(CHURNS):
            registry.register(f"c-{i}", cf.Future(), {"i": i, "pad": "x" * 200})
            registry.unregister(f"c-{i}")
    finally:
        registry.close()


def _index(line: dict[str, Any]) -> int:
    """The event's place in the churn's order (2 per agent: registered, unregistered)."""
    return 2 * line["metadata"]["i"] + (line["event"] == "unregistered")


def _read_until_all_accounted(out: Lines) -> list[dict[str, Any]]:
    """Stdout's lines, read until every churned event was printed or counted dropped."""
    lines: list[dict[str, Any]] = []
    accounted = 0
    while accounted < EVENTS:
        line = json.loads(out.wait_for(f"a line ({accounted} of {EVENTS} events seen)", ""))
        lines.append(line)
        accounted += line["dropped"] if line["event"] == "dropped" else 1
    return lines


def _check_gaps(lines: list[dict[str, Any]]) -> None:
    """Events in the churn's order, missing exactly where (and as many as) a dropped line says."""
    expected = 0
    for line in lines:
        if line["event"] == "dropped":
            assert line["first_at"] <= line["last_at"] <= line["at"], line
            expected += line["dropped"]
            continue
        assert _index(line) == expected, (line, expected)
        expected += 1
    assert expected == EVENTS


def test_a_stopped_reader_gets_a_dropped_line_and_a_bounded_backlog(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    namespace = f"cli-backpressure-{uuid.uuid4().hex[:8]}"
    where = ["--redis", redis_server.url, "--namespace", namespace]
    watch = start_cli("--json", "agents", "watch", *where, cwd=tmp_path)
    assert watch.stdout is not None
    assert watch.stderr is not None
    err = out = None
    try:
        err = Lines(watch.stderr)
        err.wait_for("the ready line", "watching ")
        _churn(redis_server.url, namespace)  # nobody reads the command's stdout meanwhile
        warning = err.wait_for("the line saying events are dropped", "not keeping up")
        assert warning.startswith("warning: stdout's reader is not keeping up"), warning
        out = Lines(watch.stdout)  # reading again
        lines = _read_until_all_accounted(out)
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=30)
        for reader in (err, out):
            if reader is not None:
                reader.rest()  # the pipe's end: its thread is done with it
        watch.stdout.close()
        watch.stderr.close()
    stderr = err.rest()
    assert watch.returncode == 0, stderr
    dropped = [line for line in lines if line["event"] == "dropped"]
    assert dropped, lines[-3:]
    # One stderr line per run of drops (the reader stopped once: one run, at
    # most a few if it read while the churn's last events came).
    assert sum("not keeping up" in line for line in stderr) == len(dropped), stderr
    _check_gaps(lines)
    # The bound: the events held before the first gap are the backlog plus
    # what the pipe holds (without it, every event is kept, none dropped).
    before_gap = lines.index(dropped[0])
    assert before_gap <= WATCH_BACKLOG + PIPE_SLACK, before_gap
    assert stderr[-1] == "foundation agents watch: terminated", stderr
