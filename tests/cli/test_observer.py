"""``RedisObserver``: a read-only view of a namespace (real redis-server, real registry nodes)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from foundation import errors
from foundation.liveness import spawn_thread
from foundation.registry import RedisRegistry, RegistryEvent
from foundation.registry._redis._observer import RedisObserver
from tests.redis_support import RedisServer


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # sleep-ok: polling a condition with a deadline


def test_observer_follows_and_registers_nothing(redis_server: RedisServer) -> None:
    ns = f"obs-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    reg = RedisRegistry(redis_server.url, namespace=ns)
    try:
        reg.register("a", spawn_thread(stop.wait), {"role": "io", "cpu": 2})
        before = threading.enumerate()
        with RedisObserver(redis_server.url, namespace=ns) as obs:
            assert [e.key for e in obs.list_all()] == ["a"]  # from the snapshot
            assert obs.lookup("a") is not None
            assert obs.lookup("b") is None
            events: list[RegistryEvent] = []
            obs.subscribe(events.append)
            agent_stop = threading.Event()
            reg.register(("job", 2), spawn_thread(agent_stop.wait), {"role": "cpu"})
            reg.update_metadata("a", {"role": "io", "cpu": 3})
            agent_stop.set()  # the agent ends: the node reports it down
            _until(lambda: len(events) >= 3, "three events")
            assert [(e.kind, e.entry.key, e.reason) for e in events] == [
                ("registered", ("job", 2), None),
                ("updated", "a", None),
                ("unregistered", ("job", 2), "down"),
            ]
            assert [d.event.entry.key for d in obs.recently_dead()] == [("job", 2)]
            assert [e.key for e in obs.query([("cpu", "gte", 3)])] == ["a"]
            assert obs.count() == 1
            assert obs.connected
            assert list(obs.nodes()) == [reg.node]  # the observer is no node
            client = redis.Redis.from_url(redis_server.url)
            leases: list[Any] = client.zrange("{" + ns + "}:leases", 0, -1)
            client.close()
            assert [n.decode() for n in leases] == [reg.node]
        assert threading.enumerate() == before  # the observer's thread ended
        with pytest.raises(errors.Closed):
            obs.list_all()
    finally:
        stop.set()
        reg.close()


def test_observer_resyncs_after_redis_restarts_empty(fresh_redis: RedisServer) -> None:
    ns = f"obs-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    reg = RedisRegistry(fresh_redis.url, namespace=ns)
    obs = None
    try:
        reg.register("a", spawn_thread(stop.wait), {})
        obs = RedisObserver(fresh_redis.url, namespace=ns, timeout=0.5)
        assert obs.count() == 1
        fresh_redis.restart()  # empty: the node re-asserts its agents
        reg.register("b", spawn_thread(stop.wait), {})
        _until(lambda: sorted(str(e.key) for e in obs.list_all()) == ["a", "b"], "a and b")
        # The answer may come before the tail's own reconnect is recorded (a
        # read reconnects on its own): connected follows, polled, not assumed.
        _until(lambda: obs.connected, "the observer connected again")
    finally:
        if obs is not None:
            obs.close()
        stop.set()
        reg.close()


def test_observer_knows_its_tail_connection_again_after_a_reconnect(
    fresh_redis: RedisServer,
) -> None:
    """close() ends the tail's blocking XREAD by its client id: after the tail
    reconnects, the id must be the new connection's, not one the server may
    since have given to another client."""
    ns = f"obs-{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(fresh_redis.url)

    def tail_ids() -> list[int]:
        return [
            int(c["id"])
            for c in admin.client_list()
            if c["name"] == f"foundation-observer-tail[{ns}]"
        ]

    with RedisObserver(fresh_redis.url, namespace=ns, timeout=0.5) as obs:
        (first,) = tail_ids()
        assert obs._tail_id == first
        admin.client_kill_filter(_id=first)
        _until(lambda: tail_ids() not in ([], [first]), "the tail to reconnect")
        (second,) = tail_ids()
        _until(lambda: obs._tail_id == second, "the observer to learn the new id")
    admin.close()


def test_observer_constructor_errors(redis_server: RedisServer) -> None:
    with pytest.raises(errors.InvalidConfig):
        RedisObserver("http://x", namespace="n")
    with pytest.raises(errors.InvalidConfig):
        RedisObserver(redis_server.url, namespace="{bad}")
    with pytest.raises(errors.BackendUnavailable):
        RedisObserver("redis://127.0.0.1:1/0", namespace="n", timeout=0.5)


def test_observer_subscriptions_follow_the_one_listener_rule(redis_server: RedisServer) -> None:
    # As every subscribe of the library: a non-callable is refused at the call;
    # a listener subscribed twice is called twice; one unsubscribe removes one
    # subscription and is idempotent.
    ns = f"obs-{uuid.uuid4().hex[:8]}"
    stop = threading.Event()
    seen: list[str] = []

    def listener(event: RegistryEvent) -> None:
        seen.append(str(event.entry.key))

    with (
        RedisRegistry(redis_server.url, namespace=ns) as reg,
        RedisObserver(redis_server.url, namespace=ns, timeout=0.5) as obs,
    ):
        with pytest.raises(TypeError, match="a listener must be callable"):
            obs.subscribe(None)  # type: ignore[arg-type]
        first = obs.subscribe(listener)
        obs.subscribe(listener)
        reg.register("a", spawn_thread(stop.wait), {})
        _until(lambda: seen.count("a") == 2, "both subscriptions to see 'a'")
        first()
        first()  # idempotent: the second subscription stays
        reg.register("b", spawn_thread(stop.wait), {})
        _until(lambda: "b" in seen, "the remaining subscription to see 'b'")
        reg.register("c", spawn_thread(stop.wait), {})
        _until(lambda: "c" in seen, "the remaining subscription to see 'c'")
        assert seen.count("b") == 1, seen
    stop.set()
