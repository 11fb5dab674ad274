"""Several RedisRegistry nodes as separate OS processes against one real redis-server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest

from foundation import errors
from foundation.liveness import Down, spawn_thread
from foundation.registry import RegistryEvent
from foundation.registry._redis import RemoteAgent
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, wait_until
from tests.redis_support import RedisServer

MakeNode = Callable[..., NodeProcess]


def test_a_registration_on_one_node_is_looked_up_and_queried_on_another(
    redis_server: RedisServer, make_registry: MakeRegistry, make_node: MakeNode
) -> None:
    a = make_node(redis_server.url)
    b = make_registry(indexed=("role",))
    reply = a.call("register", key=["worker", 1], meta={"role": "io", "zone": "eu"})
    assert reply["ok"]
    assert b.wait_for_version(reply["written"])
    entry = b.lookup(("worker", 1))
    assert entry is not None
    assert entry.node == a.node
    assert isinstance(entry.agent, RemoteAgent)
    assert entry.agent.kind == "thread"
    assert entry.agent.pid == a.proc.pid
    assert [e.key for e in b.find_by_attribute("role", "io")] == [("worker", 1)]
    assert [e.key for e in b.query([("role", "in", ["io", "x"]), ("zone", "eq", "eu")])] == [
        ("worker", 1)
    ]
    # ...and the other way round: B's registration is found by A's index.
    stop = threading.Event()
    b.register("b-worker", spawn_thread(stop.wait), {"role": "cpu"})
    try:
        assert a.call("wait_version", version=b.status().written)["ok"]
        assert a.call("find", attr="role", value="cpu")["keys"] == [json.dumps("b-worker")]
    finally:
        stop.set()


def test_a_duplicate_key_is_rejected_across_nodes(
    redis_server: RedisServer, make_registry: MakeRegistry, make_node: MakeNode, agents
) -> None:
    a = make_node(redis_server.url)
    b = make_registry()
    assert a.call("register", key="unique")["ok"]
    with pytest.raises(errors.AlreadyRegistered) as info:
        b.register("unique", agents())
    assert info.value.entry is not None
    assert info.value.entry.node == a.node
    reply = make_node(redis_server.url).call("register", key="unique")
    assert reply == {"ok": False, "error": "AlreadyRegistered", "message": reply["message"]}
    # replace=True takes it over; A learns it lost the key.
    b.register("unique", agents(), replace=True)
    assert a.call("wait_version", version=b.status().written)["ok"]
    assert a.call("lookup", key="unique")["entry"]["node"] == b.node


def test_a_killed_node_loses_its_entries_after_the_lease_ttl(
    redis_server: RedisServer, make_registry: MakeRegistry, make_node: MakeNode
) -> None:
    a = make_node(redis_server.url, ttl=1.0)
    b = make_registry(lease_ttl=1.0)
    seen: list[RegistryEvent] = []
    b.subscribe(seen.append)
    for i in range(3):
        reply = a.call("register", key=["k", i])
    assert b.wait_for_version(reply["written"])
    assert b.count() == 3
    a.kill()  # SIGKILL: no goodbye, only the lease tells
    assert wait_until(lambda: b.count() == 0, timeout=15)
    # Events of remote changes reach listeners on a courier thread, after the
    # mirror changed (docs/redis.md): wait for them, do not read them at once.
    assert wait_until(lambda: len([e for e in seen if e.kind == "unregistered"]) >= 3)
    downs = [e for e in seen if e.kind == "unregistered"]
    assert len(downs) == 3
    assert {(e.reason, e.down) for e in downs} == {("down", Down("lease_expired"))}


def test_a_frozen_node_is_reaped_then_reasserts_on_thaw_and_reports_its_conflict(
    redis_server: RedisServer, make_registry: MakeRegistry, make_node: MakeNode, agents
) -> None:
    a = make_node(redis_server.url, ttl=1.0)
    b = make_registry(lease_ttl=1.0)
    a.call("register", key="kept")
    reply = a.call("register", key="taken")
    assert b.wait_for_version(reply["written"])
    a.freeze()  # SIGSTOP: A's heartbeat stops, its agents stay alive
    assert wait_until(lambda: b.count() == 0, timeout=15)
    b.register("taken", agents())  # the key is free now: B takes it
    a.thaw()
    # A notices its lease was lost, re-registers what is still free, and
    # reports the key B took as a conflict (B keeps it).
    assert wait_until(lambda: b.lookup("kept") is not None, timeout=15)
    assert b.lookup("kept").node == a.node  # type: ignore[union-attr]
    assert b.lookup("taken").node == b.node  # type: ignore[union-attr]
    assert a.call("conflicts", count=1)["keys"] == [json.dumps("taken")]
    assert a.call("wait_keys", keys=["kept", "taken"])["ok"]
    assert a.call("lookup", key="taken")["entry"]["node"] == b.node
    assert a.call("lookup", key="kept")["entry"]["local"] is True


def test_stream_trimming_forces_a_resync_that_loses_nothing(
    redis_server: RedisServer, make_registry: MakeRegistry, make_node: MakeNode, agents
) -> None:
    a = make_registry(stream_maxlen=10)
    b = make_node(redis_server.url)
    a.register("before", agents(), {"n": 0})
    assert b.call("wait_keys", keys=["before"])["ok"]
    b.freeze()  # B's tail stops reading while A writes far past the stream cap
    for i in range(300):
        a.register(("k", i), agents(), {"n": i})
    for i in range(0, 300, 2):
        a.unregister(("k", i))
    a.update_metadata(("k", 1), {"n": -1})
    b.thaw()
    want = ["before"] + [["k", i] for i in range(1, 300, 2)]
    assert b.call("wait_keys", keys=want)["ok"]
    assert b.call("lookup", key=["k", 1])["entry"]["metadata"] == {"n": -1}
    assert b.call("status")["status"]["resyncs"] >= 1  # the gap was detected, not tailed over
