"""Reaps of expired leases and close()'s release run in chunks: no script holds Redis
for long (``_scripts.REAP_CHUNK`` entries at most), every entry keeps its own
``'d'`` record, and a node's lease and info go with its last entry only.

What each script did is read from ``MONITOR`` (a raw socket): Redis runs a
script's commands back to back, so the commands between two ``EVAL*`` lines are
one script's. Nothing here looks at durations.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from foundation.liveness import spawn_thread
from foundation.registry._redis import RedisRegistry, _scripts
from tests.redis.conftest import MakeRegistry
from tests.redis.support import wait_until
from tests.redis.test_state import (
    test_each_scripts_argv_is_named_by_its_dataclass_in_order as _argv_named_in_order,
)
from tests.redis_support import RedisServer

ROOT = Path(__file__).resolve().parents[2]
MAXLEN = 200_000  # the stream keeps every record of a test

# A node that registers N keys (one live agent behind them all, index sets too),
# prints its name, then waits: the test SIGKILLs it (a dead node).
_DEAD_NODE = """
import sys, threading
from foundation.liveness import spawn_thread
from foundation.registry._redis import RedisRegistry
url, ns, n, maxlen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
reg = RedisRegistry(url, namespace=ns, indexed=("role",), lease_ttl=2.0, stream_maxlen=maxlen)
agent = spawn_thread(threading.Event().wait)
for first in range(0, n, 1000):
    items = [(("k", i), agent, {"role": f"r{i % 7}"}) for i in range(first, min(n, first + 1000))]
    assert not any(reg.register_many(items))
print(reg.node, flush=True)
sys.stdin.read()
"""

_COMMAND = re.compile(rb'^\+\S+ \[\d+ ([^\]]*)\] "([A-Za-z]+)"')
_FIELD = {name: re.compile(rb'"' + name + rb'" "([^"]*)"') for name in (b"n", b"why", b"op")}


class Monitor:
    """What Redis runs, read from ``MONITOR`` by a thread, kept compact: ``("script",)``
    at every ``EVAL``/``EVALSHA``, ``("d", node, why)`` for a script's delete record,
    ``("forget", node)`` for a script's ``ZREM`` of a lease, ``("echo",)`` for the
    pinger's ``ECHO``."""

    def __init__(self, port: int, leases: bytes) -> None:
        self._leases = b'"ZREM" "' + leases + b'" "'
        self.events: list[tuple[str, ...]] = []
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=None)
        self._sock.sendall(b"MONITOR\r\n")
        self._file = self._sock.makefile("rb")
        assert self._file.readline() == b"+OK\r\n"
        self._thread = threading.Thread(target=self._read, name="test-monitor", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in self._file:
                self._parse(line)

    def _parse(self, line: bytes) -> None:
        m = _COMMAND.match(line)
        if m is None:
            return
        who, cmd = m.group(1), m.group(2).upper()
        if who != b"lua":
            if cmd in (b"EVALSHA", b"EVAL"):
                self.events.append(("script",))
            elif cmd == b"ECHO":
                self.events.append(("echo",))
        elif cmd == b"XADD" and b'"op" "d"' in line:
            self.events.append(("d", _field(line, b"n"), _field(line, b"why")))
        elif cmd == b"ZREM" and self._leases in line:
            self.events.append(("forget", line.split(self._leases)[1].split(b'"')[0].decode()))

    def close(self) -> list[tuple[str, ...]]:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=30)
        self._file.close()
        self._sock.close()
        return self.events


def _field(line: bytes, name: bytes) -> str:
    m = _FIELD[name].search(line)
    assert m is not None, line
    return m.group(1).decode()


def _drops_per_script(events: list[tuple[str, ...]], node: str) -> list[int]:
    """How many of ``node``'s entries each script that dropped any dropped."""
    counts: list[int] = [0]
    for e in events:
        if e[0] == "script":
            counts.append(0)
        elif e[0] == "d" and e[1] == node:
            counts[-1] += 1
    return [c for c in counts if c]


def _check_forgotten_last(events: list[tuple[str, ...]], node: str, n: int) -> None:
    """``node``'s lease went once, after its n delete records."""
    drops = [i for i, e in enumerate(events) if e[0] == "d" and e[1] == node]
    forgets = [i for i, e in enumerate(events) if e == ("forget", node)]
    assert len(drops) == n
    assert len(forgets) == 1
    assert forgets[0] > drops[-1]


def _deletes_on_stream(raw: redis.Redis, ns: str, node: str) -> list[tuple[bytes, bytes, bytes]]:
    """``(k, why, dr)`` of every delete record of ``node``'s entries on the stream."""
    out = []
    for _, f in raw.xrange(f"{{{ns}}}:log"):
        if f.get(b"op") == b"d" and f.get(b"n") == node.encode():
            out.append((f[b"k"], f[b"why"], f[b"dr"]))
    return out


@contextlib.contextmanager
def _dead_node(url: str, ns: str, n: int) -> Iterator[str]:
    """A node with ``n`` entries, SIGKILLed: yields its name."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _DEAD_NODE, url, ns, str(n), str(MAXLEN)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"},
    )
    try:
        assert proc.stdout is not None
        node = proc.stdout.readline().strip()
        assert node, "the dead node did not start"
        proc.kill()
        proc.wait(timeout=10)
        yield node
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _node_entries(reg: RedisRegistry, node: str) -> int:
    return sum(1 for e in reg.list_all() if e.node == node)


@pytest.fixture
def raw(fresh_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fresh_redis.url)
    yield client
    client.close()


def test_a_dead_node_is_reaped_in_chunks_by_two_nodes_at_once(
    fresh_redis: RedisServer,
    raw: redis.Redis,
    ns: str,
    make_registry: MakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """5,000 entries, 300 per script: every script drops at most 300, each entry gets
    one 'd' record (two reapers never drop one twice), both mirrors end empty of them,
    and the dead node's lease and info go only after its last entry."""
    monkeypatch.setattr(_scripts, "REAP_CHUNK", 300)
    n = 5000
    b = make_registry(url=fresh_redis.url, lease_ttl=2.0, stream_maxlen=MAXLEN)
    c = make_registry(url=fresh_redis.url, lease_ttl=2.0, stream_maxlen=MAXLEN)
    monitor = Monitor(fresh_redis.port, f"{{{ns}}}:leases".encode())
    try:
        with _dead_node(fresh_redis.url, ns, n) as dead:
            assert b.wait_for_version(n, timeout=30)
            assert c.wait_for_version(n, timeout=30)
            assert _node_entries(b, dead) == n
            assert wait_until(
                lambda: (
                    raw.zscore(f"{{{ns}}}:leases", dead) is None
                    and _node_entries(b, dead) == 0
                    and _node_entries(c, dead) == 0
                ),
                timeout=60,
            )
    finally:
        events = monitor.close()
    per_script = _drops_per_script(events, dead)
    assert max(per_script) <= 300
    assert len(per_script) >= n // 300 + 1
    _check_forgotten_last(events, dead, n)
    assert not raw.hexists(f"{{{ns}}}:nodes", dead)
    assert not raw.exists(f"{{{ns}}}:owned:{dead}")
    assert raw.hlen(f"{{{ns}}}:head") == 0
    deletes = _deletes_on_stream(raw, ns, dead)
    assert len(deletes) == n
    assert len({k for k, _, _ in deletes}) == n
    assert {(why, dr) for _, why, dr in deletes} == {(b"down", b"lease_expired")}


def test_a_large_reap_leaves_redis_to_other_clients_between_chunks(
    fresh_redis: RedisServer, raw: redis.Redis, ns: str, make_registry: MakeRegistry
) -> None:
    """50,000 entries with the default bound: no script drops more than REAP_CHUNK,
    and another client's commands are served between the reap's scripts."""
    n = 50_000
    b = make_registry(url=fresh_redis.url, lease_ttl=2.0, stream_maxlen=MAXLEN)
    stop = threading.Event()
    echoes = [0]

    def pinger() -> None:
        client = redis.Redis.from_url(fresh_redis.url, socket_timeout=60)
        while not stop.is_set():
            client.echo("pinger")
            echoes[0] += 1
            time.sleep(0.002)  # sleep-ok: pacing another client's traffic
        client.close()

    with _dead_node(fresh_redis.url, ns, n) as dead:
        assert b.wait_for_version(n, timeout=60)
        monitor = Monitor(fresh_redis.port, f"{{{ns}}}:leases".encode())
        thread = threading.Thread(target=pinger, name="test-pinger", daemon=True)
        thread.start()
        try:
            assert wait_until(
                lambda: (
                    raw.zscore(f"{{{ns}}}:leases", dead) is None and _node_entries(b, dead) == 0
                ),
                timeout=120,
            )
        finally:
            stop.set()
            thread.join(timeout=30)
            events = monitor.close()
    per_script = _drops_per_script(events, dead)
    assert max(per_script) <= _scripts.REAP_CHUNK
    assert len(per_script) >= n // _scripts.REAP_CHUNK
    _check_forgotten_last(events, dead, n)
    drops = [i for i, e in enumerate(events) if e[0] == "d" and e[1] == dead]
    assert any(e == ("echo",) for e in events[drops[0] : drops[-1]])


def test_close_releases_in_chunks_and_forgets_the_lease_last(
    fresh_redis: RedisServer,
    raw: redis.Redis,
    ns: str,
    make_registry: MakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    stop: threading.Event,
) -> None:
    """close() of a node with 2,000 entries, 300 per script: each RELEASE drops at most
    300, each entry gets its 'unregistered' record, another node's mirror sees all
    of them go, and the lease and info go with the last entry."""
    monkeypatch.setattr(_scripts, "REAP_CHUNK", 300)
    n = 2000
    a = make_registry(url=fresh_redis.url, indexed=("role",), stream_maxlen=MAXLEN)
    o = make_registry(url=fresh_redis.url, stream_maxlen=MAXLEN)
    agent = spawn_thread(stop.wait)
    for first in range(0, n, 500):
        items = [(("k", i), agent, {"role": f"r{i % 3}"}) for i in range(first, first + 500)]
        assert not any(a.register_many(items))
    assert o.wait_for_version(a.status().written)
    assert _node_entries(o, a.node) == n
    monitor = Monitor(fresh_redis.port, f"{{{ns}}}:leases".encode())
    try:
        a.close()
        assert wait_until(lambda: _node_entries(o, a.node) == 0, timeout=30)
    finally:
        events = monitor.close()
    per_script = _drops_per_script(events, a.node)
    assert max(per_script) <= 300
    assert len(per_script) >= n // 300 + 1
    _check_forgotten_last(events, a.node, n)
    assert raw.zscore(f"{{{ns}}}:leases", a.node) is None
    assert not raw.hexists(f"{{{ns}}}:nodes", a.node)
    deletes = _deletes_on_stream(raw, ns, a.node)
    assert len({k for k, _, _ in deletes}) == len(deletes) == n
    assert {(why, dr) for _, why, dr in deletes} == {(b"unregistered", b"")}


def test_a_half_reaped_node_that_heartbeats_learns_its_lease_was_lost(
    fresh_redis: RedisServer, raw: redis.Redis, ns: str
) -> None:
    """A node whose expired lease another node reaped in part heartbeats (it thawed):
    the heartbeat says the lease was lost (``had`` 0, so it re-asserts), although
    the lease is still there (kept until the last entry goes); it renews it, and
    no later chunk touches the rest of its entries. The scripts are run directly,
    as the two nodes would (a grace of a minute: no global-outage shift)."""
    n, chunk, grace = 1000, 300, 60_000
    log_key = f"{{{ns}}}:log"
    leases = f"{{{ns}}}:leases"
    reap = raw.register_script(_scripts.REAP)
    beat = raw.register_script(_scripts.HEARTBEAT)
    with _dead_node(fresh_redis.url, ns, n) as node:
        deadline = float(raw.zscore(leases, node) or 0)
        assert wait_until(lambda: _server_ms(raw) > deadline, timeout=10)
        reaped, more = reap(
            keys=[log_key], args=_scripts.ReapArgs(str(MAXLEN), grace, chunk).argv()
        )
        assert (reaped, more) == (chunk, 1)
        assert raw.zscore(leases, node) is not None  # half reaped: kept
        assert raw.hexists(f"{{{ns}}}:nodes", node)
        args = _scripts.HeartbeatArgs(str(MAXLEN), node, 5000, "{}", grace, chunk)
        reply = beat(keys=[log_key], args=args.argv())
        had, reaped, now, more = reply[0], reply[1], reply[2], reply[5]
    assert had == 0
    assert reaped == chunk  # its own heartbeat reaped a chunk of its expired lease first
    assert more == 0
    assert float(raw.zscore(leases, node) or 0) > now  # renewed
    left = n - 2 * chunk
    assert raw.scard(f"{{{ns}}}:owned:{node}") == raw.hlen(f"{{{ns}}}:head") == left
    reaped, more = reap(keys=[log_key], args=_scripts.ReapArgs(str(MAXLEN), grace, chunk).argv())
    assert (reaped, more) == (0, 0)
    assert raw.hlen(f"{{{ns}}}:head") == left


def _server_ms(raw: redis.Redis) -> int:
    sec, usec = raw.time()
    return int(sec) * 1000 + int(usec) // 1000


_RELEASE_CUT = """
from foundation.liveness import spawn_thread
from foundation.registry._redis import RedisRegistry, _scripts
from foundation._demo._redis_server import RedisServerProcess

_scripts.REAP_CHUNK = 1  # thousands of RELEASE calls: Redis dies between two
server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    n = 3000
    a = RedisRegistry(server.url, namespace="r", lease_ttl=30.0, op_timeout=0.5)
    agent = spawn_thread(stop.wait)
    assert not any(a.register_many([(("k", i), agent) for i in range(n)]))

    left = []

    def kill_once_released_in_part():
        while server.command("HLEN", "{r}:head") == n:
            pass  # polling Redis itself: the release starts any moment
        left.append(server.command("HLEN", "{r}:head"))
        server.kill()

    killer = threading.Thread(target=kill_once_released_in_part)
    killer.start()
    a.close()  # must neither raise nor hang: as when Redis is down at close()
    killer.join(timeout=30)
    assert not killer.is_alive()
    assert 0 < left[0] < n, left  # killed in the middle of the release
    assert library_threads() == [], library_threads()
    print("OK")
finally:
    stop.set()
    server.stop()
"""


def test_close_returns_when_redis_dies_between_release_chunks() -> None:
    """Redis killed after the release dropped part of the entries: close() swallows
    the failure as before (the lease expires, others reap the rest), no thread dies."""
    from tests.faults._subprocess import run_scenario

    result = run_scenario(_RELEASE_CUT, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr


def test_reaps_argv_is_named_by_its_dataclass_in_order() -> None:
    """``REAP``'s Lua comment lists ``ReapArgs``' fields in order (as test_state
    checks for the other scripts)."""
    _argv_named_in_order(_scripts.REAP, _scripts.ReapArgs)
