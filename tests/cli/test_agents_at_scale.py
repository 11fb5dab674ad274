"""``foundation agents list`` and ``count`` on many entries, as a subprocess against a
real redis-server of the test's own: ``count`` asks Redis for the number and
never reads metadata; ``list`` writes its rows as it reads them."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py

from foundation import spawn_thread
from foundation._cli._common import Output
from foundation.registry import RedisRegistry
from foundation.registry._redis._chunked_reads import CHUNK
from tests.cli._support import cli_env, ok_json, run_cli, start_cli
from tests.redis_support import RedisServer

NS = "scale"


@pytest.fixture
def registry(fresh_redis: RedisServer, stop: threading.Event) -> Iterator[RedisRegistry]:
    # A long lease: no heartbeat (an EVALSHA) between a test's reset of the
    # command statistics and its look at them, however slow the machine.
    reg = RedisRegistry(fresh_redis.url, namespace=NS, lease_ttl=600)
    yield reg
    reg.close()


def _register(reg: RedisRegistry, stop: threading.Event, n: int, pad: int = 0) -> None:
    agent = spawn_thread(stop.wait)
    for start in range(0, n, 250):
        items: list[Any] = [
            (f"w{i:05d}", agent, {"n": i, "role": "io" if i % 7 else "cpu", "pad": "x" * pad})
            for i in range(start, min(n, start + 250))
        ]
        assert reg.register_many(items) == [None] * len(items)


def _where(server: RedisServer) -> tuple[str, ...]:
    return ("--redis", server.url, "--namespace", NS)


def _stats(server: RedisServer, section: str) -> dict[str, Any]:
    with redis_py.Redis.from_url(server.url) as raw:
        return dict(raw.info(section))


def _reset_stats(server: RedisServer) -> None:
    with redis_py.Redis.from_url(server.url) as raw:
        raw.config_resetstat()


def test_count_asks_redis_for_the_number_and_reads_no_metadata(
    fresh_redis: RedisServer, registry: RedisRegistry, stop: threading.Event, tmp_path: Path
) -> None:
    _register(registry, stop, 600)
    _reset_stats(fresh_redis)
    counted = ok_json(run_cli("agents", "count", *_where(fresh_redis), cwd=tmp_path))
    assert counted == {"count": 600, "by_kind": {"thread": 600}, "by_node": {registry.node: 600}}
    calls = {k.removeprefix("cmdstat_") for k in _stats(fresh_redis, "commandstats")}
    assert "hlen" in calls, calls
    # No snapshot script, no whole hash, no metadata read: only the heads, scanned.
    assert not calls & {"eval", "evalsha", "hgetall", "hmget", "hget"}, calls


def test_count_and_list_agree_on_entries_written_by_something_else(
    fresh_redis: RedisServer, registry: RedisRegistry, stop: threading.Event, tmp_path: Path
) -> None:
    _register(registry, stop, 3)
    with redis_py.Redis.from_url(fresh_redis.url) as raw:  # not this library's: unreadable
        raw.hset(f"{{{NS}}}:head", mapping={'"junk"': b"not json", '"odd"': b"[1]"})
    counted = ok_json(run_cli("agents", "count", *_where(fresh_redis), cwd=tmp_path))
    listed = ok_json(run_cli("agents", "list", *_where(fresh_redis), cwd=tmp_path))
    assert counted["count"] == sum(counted["by_kind"].values()) == len(listed) == 3, (
        counted,
        listed,
    )


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="Linux /proc")
def test_list_writes_rows_before_it_has_read_every_entry(
    fresh_redis: RedisServer, registry: RedisRegistry, stop: threading.Event, tmp_path: Path
) -> None:
    n, pad = 6 * CHUNK, 2000
    _register(registry, stop, n, pad)
    _reset_stats(fresh_redis)
    proc = subprocess.Popen(
        [sys.executable, "-m", "foundation.cli", "agents", "list", *_where(fresh_redis)],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # Nobody reads stdout yet: the command blocks writing once the pipe is full.
        deadline = time.monotonic() + 60
        while not _wchan(proc.pid).endswith("pipe_write"):  # anon_pipe_write on newer kernels
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never blocked writing"
            time.sleep(0.01)  # sleep-ok: polling /proc with a deadline
        sent = _stats(fresh_redis, "stats")["total_net_output_bytes"]
        # Blocked on its first rows, it has read a chunk or two of entries, not all
        # n * pad bytes of their metadata (a whole snapshot before the first row).
        assert sent < n * pad / 2, (sent, n * pad)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    rows = json.loads(out)
    assert sorted(r["key"] for r in rows) == [f"w{i:05d}" for i in range(n)]
    assert [r["registered_at"] for r in rows] == sorted(r["registered_at"] for r in rows)


def test_where_and_limit_across_chunks(
    fresh_redis: RedisServer, registry: RedisRegistry, stop: threading.Event, tmp_path: Path
) -> None:
    n = 3 * CHUNK + 17
    _register(registry, stop, n)
    where = _where(fresh_redis)
    everyone = ok_json(run_cli("agents", "list", *where, cwd=tmp_path))
    assert len(everyone) == n
    cpu = ok_json(run_cli("agents", "list", "--where", "role", "eq", "cpu", *where, cwd=tmp_path))
    assert cpu == [r for r in everyone if r["metadata"]["role"] == "cpu"]
    first = ok_json(
        run_cli(
            "agents", "list", "--where", "role", "eq", "io", "--limit", "700", *where, cwd=tmp_path
        )
    )
    assert first == [r for r in everyone if r["metadata"]["role"] == "io"][:700]
    assert ok_json(run_cli("agents", "list", "--limit", "3", *where, cwd=tmp_path)) == everyone[:3]
    none = run_cli("agents", "list", "--text", "--where", "role", "eq", "x", *where, cwd=tmp_path)
    assert (none.returncode, none.stdout) == (0, "no agents match\n")
    text = run_cli("agents", "list", "--text", "--limit", "2", *where, cwd=tmp_path)
    lines = text.stdout.splitlines()
    assert lines[0].split() == ["KEY", "KIND", "NODE", "PID", "AGE", "METADATA"]
    assert [line.split()[0] for line in lines[1:]] == [r["key"] for r in everyone[:2]]


@pytest.mark.parametrize(
    "items",
    [
        [],
        [{}],
        [{"key": ["job", 7], "metadata": {"a": [1, {"b": "line\nbreak"}], "e": {}, "l": []}}],
        [{"n": i, "s": "caf\u00e9 \ud800", "t": (1, 2)} for i in range(3)],
    ],
)
def test_a_streamed_json_array_is_the_same_bytes_as_the_whole_list(items: list[Any]) -> None:
    whole, streamed = io.StringIO(), io.StringIO()
    Output(argparse.Namespace(json=True), whole).emit(items, lambda: None)
    Output(argparse.Namespace(json=True), streamed).json_array(iter(items))
    assert streamed.getvalue() == whole.getvalue()


_ORPHANS = """
import os, sys, threading
from foundation import spawn_thread
from foundation.registry import RedisRegistry
reg = RedisRegistry(sys.argv[1], namespace=sys.argv[2], lease_ttl=3600)
agent = spawn_thread(threading.Event().wait)
n, pad = int(sys.argv[3]), int(sys.argv[4])
for start in range(0, n, 250):
    items = [(f"w{i:05d}", agent, {"pad": "x" * pad}) for i in range(start, min(n, start + 250))]
    assert reg.register_many(items) == [None] * len(items)
print("registered", flush=True)
os.kill(os.getpid(), 9)  # the entries stay: no other node reaps them
"""


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="Linux /proc")
def test_redis_lost_midway_ends_the_list_with_69(fresh_redis: RedisServer, tmp_path: Path) -> None:
    n, pad = 6 * CHUNK, 2000
    made = subprocess.run(
        [sys.executable, "-c", _ORPHANS, fresh_redis.url, NS, str(n), str(pad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.stdout == "registered\n", made.stderr
    proc = start_cli("agents", "list", *_where(fresh_redis), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not _wchan(proc.pid).endswith("pipe_write"):  # its first rows fill the pipe
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the command never blocked writing"
            time.sleep(0.01)  # sleep-ok: polling /proc with a deadline
        fresh_redis.kill()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 69, err
    assert "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("BackendUnavailable: "), line
    assert out.startswith("[\n  {")  # the rows printed so far, not the whole list
    assert not out.rstrip().endswith("]")
