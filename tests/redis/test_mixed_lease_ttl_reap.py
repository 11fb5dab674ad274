"""A dead node is reaped, with mixed ``lease_ttl``s, and its death is no outage.

Here the only other node heartbeats more slowly than the dead node's grace.
A rule that healed whenever some node fell due inside a silence (tried, and
reverted) took every death for a global outage: all leases extended, a false
"global outage" WARNING, the dead node reaped a gap late.
"""

from __future__ import annotations

from collections.abc import Callable

from foundation.registry import RegistryEvent
from tests._logs import captured
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
    with captured("foundation.registry.redis") as said:
        b.kill()
        assert wait_until(lambda: len(a) == 0, timeout=30.0), a.list_all()
    # (A stall of this process under load is logged as its own, not as an outage.)
    assert not [m for m in said.messages() if "a global outage" in m], said.messages()
    # Listeners hear a change after the mirror applied it (a courier thread).
    assert wait_until(lambda: len(events) >= len(keys)), events
    downs = {(e.entry.key, e.down.reason if e.down else None) for e in events}
    assert downs == {(tuple(k), "lease_expired") for k in keys}, downs
