"""connect() turns redis-py's maintenance notifications off: no extra round trip
per connection, and no relaxed 10 s socket timeout past ``op_timeout``.

A real redis-server's MONITOR stream shows every command a new connection sends
that the server runs; this redis-server (7.0) refuses ``CLIENT MAINT_NOTIFICATIONS``
before running it, which redis-py logs at DEBUG: both are watched.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from foundation._redis_conn import connect
from tests.redis_support import RedisServer, SentinelSet


def _monitored(port: int, run: object) -> list[str]:
    """The commands the server received while ``run()`` ran, then a marker PING."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as mon:
        mon.sendall(b"MONITOR\r\n")
        seen = b""
        deadline = time.monotonic() + 10
        while b"+OK\r\n" not in seen:
            assert time.monotonic() < deadline, seen
            seen += mon.recv(65536)
        run()  # type: ignore[operator]
        marker = connect(f"redis://127.0.0.1:{port}/0", op_timeout=5, name="marker")
        try:
            marker.echo("end-of-test-marker")
        finally:
            marker.close()
        seen = b""
        while b"end-of-test-marker" not in seen:
            assert time.monotonic() < deadline, seen
            seen += mon.recv(65536)
    return [line for line in seen.decode(errors="replace").splitlines() if line.startswith("+")]


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


def _asked(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "maintenance notif" in r.getMessage()]


def test_a_new_connection_sends_no_maint_notifications(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redis")

    def run() -> None:
        client = connect(server.url, op_timeout=2, name="probe")
        try:
            client.set("k", "v")
            conn = client.connection_pool.get_connection()
            try:
                assert conn.socket_timeout == 2  # the bound, not a relaxed 10 s
            finally:
                client.connection_pool.release(conn)
        finally:
            client.close()

    lines = _monitored(server.port, run)
    assert any('"PING"' in line for line in lines), lines  # the stream is read
    assert not [line for line in lines if "MAINT_NOTIFICATIONS" in line.upper()], lines
    assert _asked(caplog) == []


def test_plain_redis_py_asks_for_them_here(
    server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The check above can fail: redis-py, left to itself, asks this server."""
    import redis

    caplog.set_level(logging.DEBUG, logger="redis")
    client = redis.Redis.from_url(server.url)
    try:
        client.ping()
    finally:
        client.close()
    if not hasattr(redis, "maint_notifications"):
        pytest.fail("this redis-py has no maintenance notifications: drop these tests")
    assert _asked(caplog), "redis-py no longer asks by default: the opt-out may be moot"


def test_sentinel_connections_send_no_maint_notifications(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="redis")
    with SentinelSet(sentinels=1) as group:

        def run() -> None:
            client = connect(group.url, op_timeout=2, name="probe")
            try:
                client.set("k", "v")
            finally:
                client.close()

        lines = _monitored(group.servers[0].port, run)
        assert any('"SET"' in line for line in lines), lines
        assert not [line for line in lines if "MAINT_NOTIFICATIONS" in line.upper()], lines
        assert _asked(caplog) == []
