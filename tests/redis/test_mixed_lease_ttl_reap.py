"""The global-outage rule with mixed ``lease_ttl``s never keeps a dead node.

Each heartbeat records when its node is overdue (``{ns}:due``), and a silence in
which some node fell overdue counts as an outage (every lease extended by it).
A node that died falls overdue once: the heal that follows moves
``{ns}:lastbeat`` past that moment, so the next heartbeats do not heal again and
the dead node is reaped. Here the only other node heartbeats more slowly than
the dead node's grace, the case where healing at every heartbeat would have kept
the dead node's lease forever.
"""

from __future__ import annotations

from collections.abc import Callable

from foundation.registry import RegistryEvent
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, wait_until
from tests.redis_support import RedisServer


def test_a_dead_node_with_a_short_lease_is_reaped_by_a_node_with_a_long_one(
    redis_server: RedisServer, make_registry: MakeRegistry, make_node: Callable[..., NodeProcess]
) -> None:
    a = make_registry(lease_ttl=6.0, heartbeat=2.0)  # grace 3 s
    b = make_node(redis_server.url, ttl=1.0)  # heartbeat 0.33 s, grace 0.5 s
    keys = [["b", i] for i in range(3)]
    for k in keys:
        assert b.call("register", key=k)["ok"]
    assert a.wait_for_version(b.call("status")["status"]["written"])
    events: list[RegistryEvent] = []
    a.subscribe(events.append)
    b.kill()
    assert wait_until(lambda: len(a) == 0, timeout=30.0), a.list_all()
    downs = {(e.entry.key, e.down.reason if e.down else None) for e in events}
    assert downs == {(tuple(k), "lease_expired") for k in keys}, downs
