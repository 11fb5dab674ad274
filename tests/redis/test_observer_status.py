"""``RedisObserver.status()``: state, last_error and stale, as ``RedisRegistry.status()``
names them, read by ``foundation.metrics.connection_state`` through a real outage."""

from __future__ import annotations

import pytest

from foundation import errors
from foundation.metrics import connection_state
from foundation.registry._redis._observer import MAX_ERROR_CHARS, RedisObserver
from tests.redis.support import unique_namespace, wait_until
from tests.redis_support import RedisServer


def test_status_follows_a_killed_and_restarted_server_through_connection_state() -> None:
    with RedisServer() as server:
        observer = RedisObserver(server.url, namespace=unique_namespace(), timeout=0.5)
        try:
            status = observer.status()
            assert (status.state, status.connected, status.stale) == ("connected", True, False)
            assert status.last_error is None
            report = connection_state(observer)
            assert report is not None
            assert (report.state, report.last_error, report.stale) == ("connected", None, False)

            server.kill()
            assert wait_until(lambda: observer.status().state == "disconnected")
            down = observer.status()
            assert down.connected is False
            assert down.stale is True
            assert down.last_error is not None
            assert str(server.port) in down.last_error  # the caught error, redacted URL
            assert len(down.last_error) <= MAX_ERROR_CHARS
            assert down.state_since >= status.state_since
            report = connection_state(observer)
            assert report is not None
            assert report.state == "disconnected"
            assert report.stale is True
            assert report.last_error is not None
            assert str(server.port) in report.last_error

            server.start()
            assert wait_until(lambda: observer.status().state == "connected")
            up = observer.status()
            assert up.stale is False
            assert up.last_error is not None  # the last error is kept once connected
            assert up.state_since >= down.state_since
            report = connection_state(observer)
            assert report is not None
            assert report.connected
        finally:
            observer.close()
        with pytest.raises(errors.Closed):
            observer.status()
        report = connection_state(observer)
        assert report is not None
        assert report.state == "closed"
