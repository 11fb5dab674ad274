"""``update_metadata`` of a live key whose lease another node just reaped.

A node frozen past its lease (a long pause, SIGSTOP) has its registrations
reaped by another node's heartbeat (delete records with ``dr`` =
``lease_expired``). Its agents live on: its recovery writes them back (a reap
of our own expired lease is no unregister), and meanwhile ``lookup`` returns
them. ``update_metadata`` promises the same: a live registration Redis lost
because "our lease was reaped" is re-asserted first, then updated. Its check
for a delete by another node past the tail (``_deleted_unseen``) took the
reap's delete record for an unregister: ``NotRegistered`` for a key
``lookup`` returned, whenever the tail had not applied the reap yet (held
here by a listener, a public way to stall it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from tests.redis.conftest import MakeRegistry
from tests.redis.tail_hold import TailHold
from tests.redis_support import RedisServer


def test_update_of_a_reaped_live_key_reasserts_it_then_updates(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Callable[[], Any]
) -> None:
    # Long heartbeats: a's own lease thread stays out of the window below.
    a = make_registry(node="a", lease_ttl=60.0, heartbeat=20.0)
    b = make_registry(node="b", lease_ttl=60.0, heartbeat=20.0)
    a.register("k", agents(), {"v": 1})
    assert b.wait_for_version(a.status().written)

    hold = TailHold(a, "stall")  # a's tail stays behind from "stall" on
    stalled, release = hold.stalled, hold.release
    try:
        b.register("stall", agents())
        assert stalled.wait(10), "a's tail never delivered 'stall'"
        ns = a._sh.prefix
        with redis.Redis.from_url(redis_server.url) as raw:
            raw.zadd(f"{ns}:leases", {"a": 1})  # a's lease ran out (a was frozen)
            b._lease.heartbeat()  # b's heartbeat reaps it
            assert not raw.hexists(f"{ns}:owner", a._sh.own["k"].ek)
            entry = a.lookup("k")
            assert entry is not None
            assert entry.node == "a"  # a's agent lives on
            a.update_metadata("k", {"v": 2})  # NotRegistered before the fix
            assert raw.hget(f"{ns}:owner", a._sh.own["k"].ek) == b"a"
    finally:
        release.set()
    entry = a.lookup("k")
    assert entry is not None
    assert dict(entry.metadata) == {"v": 2}
    assert b.wait_for_version(a.status().written, timeout=10)
    entry = b.lookup("k")
    assert entry is not None
    assert entry.node == "a"
    assert dict(entry.metadata) == {"v": 2}
