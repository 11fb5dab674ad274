"""redis-server killed -9 and restarted (empty) during traffic."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from foundation import errors
from foundation.liveness import spawn_thread
from foundation.registry._redis import RedisRegistry
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, wait_until
from tests.redis_support import RedisServer

MakeNode = Callable[..., NodeProcess]


def test_a_redis_restart_gives_clear_errors_then_every_live_registration_is_restored(
    fresh_redis: RedisServer, make_registry: MakeRegistry, make_node: MakeNode, agents
) -> None:
    a = make_registry(fresh_redis.url, lease_ttl=1.0, op_timeout=0.5)
    b = make_node(fresh_redis.url, ttl=1.0)
    a.register("a1", agents(), {"role": "x"})
    a.register("a2", agents())
    assert b.call("register", key="b1", meta={"n": 1})["ok"]
    everything = ["a1", "a2", "b1"]
    assert b.call("wait_keys", keys=everything)["ok"]
    assert wait_until(lambda: a.count() == 3)

    # Traffic on A all along: every failure must be BackendUnavailable.
    stop = threading.Event()
    outcomes: dict[str, int] = {"ok": 0, "unavailable": 0}
    unexpected: list[BaseException] = []

    def traffic() -> None:
        while not stop.is_set():
            try:
                a.register("t", agents(), replace=True)
                a.unregister("t")
                outcomes["ok"] += 1
            except errors.BackendUnavailable:
                outcomes["unavailable"] += 1
            except BaseException as exc:
                unexpected.append(exc)
                return

    driver = spawn_thread(traffic)
    try:
        assert wait_until(lambda: outcomes["ok"] > 0)
        fresh_redis.kill()  # -9: all data gone
        with pytest.raises(errors.BackendUnavailable):
            a.register("during", agents())
        with pytest.raises(errors.BackendUnavailable):
            a.update_metadata("a1", {"role": "y"})
        assert wait_until(a.is_stale)
        assert a.lookup("a1") is not None  # reads keep serving the mirror
        assert a.status().connected is False
        assert wait_until(lambda: outcomes["unavailable"] > 0)
        fresh_redis.start()  # same port, empty
        before = outcomes["ok"]
        assert wait_until(lambda: outcomes["ok"] > before, timeout=15)
    finally:
        stop.set()
        driver.join(timeout=10)
    assert unexpected == []
    a.unregister("t")

    # Every node re-asserted its live registrations into the empty Redis.
    assert wait_until(lambda: not a.is_stale(), timeout=15)
    assert b.call("wait_keys", keys=everything, timeout=15)["ok"]
    assert wait_until(lambda: sorted(e.key for e in a.list_all()) == everything, timeout=15)
    assert a.lookup("a1").metadata["role"] == "x"  # type: ignore[union-attr]
    assert b.call("lookup", key="b1")["entry"]["metadata"] == {"n": 1}
    # ...and the cluster works as before: uniqueness holds across nodes again.
    with pytest.raises(errors.AlreadyRegistered):
        a.register("b1", agents())


def test_close_while_redis_is_down_returns_and_stops_its_threads(
    fresh_redis: RedisServer, agents
) -> None:
    reg = RedisRegistry(fresh_redis.url, lease_ttl=1.0, op_timeout=0.5)
    reg.register("k", agents())
    fresh_redis.kill()
    assert wait_until(reg.is_stale)
    reg.close()
    assert not [t for t in threading.enumerate() if reg.node in t.name]
    assert reg.manager.closed
