"""A global outage with nodes of different ``lease_ttl`` reaps no live agent.

Node A (``lease_ttl`` 30 s, heartbeat 3 s: its outage grace is 4.5 s) and node B
(``lease_ttl`` 3 s, in its own process). Redis is frozen for 4 s: shorter than
A's grace, longer than B's lease. B stays frozen until A has renewed its lease
once after Redis came back (so A judges the silence first, deterministically),
then B carries on. "After a global outage of any length, no node loses a live
agent" (docs/redis.md) must hold: A must not reap B's agents.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess
from tests.redis.support import NodeProcess

server = RedisServerProcess()
server.start()
b = None
try:
    a = RedisRegistry(server.url, namespace="s", lease_ttl=30.0, heartbeat=3.0, op_timeout=0.5)
    threads = library_threads()
    b = NodeProcess(server.url, "s", ttl=3.0)
    keys = [["b", i] for i in range(5)]
    for k in keys:
        assert b.call("register", key=k)["ok"]
    assert a.wait_for_version(b.call("status")["status"]["written"])
    events = []
    a.subscribe(events.append)
    b.freeze()  # first: no heartbeat of B is left in flight
    last = server.command("GET", "{s}:lastbeat")
    server.freeze()
    time.sleep(4.0)  # sleep-ok: the outage itself (shorter than A's grace)
    server.thaw()
    wait_for(lambda: server.command("GET", "{s}:lastbeat") != last,
             "A renewed its lease after the outage")
    b.thaw()
    wait_for(lambda: b.call("status")["status"]["state"] == "connected", "B connected")
    b_node = b.node
    wait_for(lambda: a.status().state == "connected", "A connected")
    assert b.call("wait_version", version=a.status().written)["ok"]
    assert a.wait_for_version(b.call("status")["status"]["written"])
    lost = [(e.entry.key, e.reason, e.down and e.down.reason) for e in events
            if e.kind == "unregistered"]
    print("A saw:", lost, "extensions:", a.status().lease_extensions)
    assert lost == [], lost
    assert sorted(e.key for e in a.list_all()) == [tuple(k) for k in keys]
    assert all(a.lookup(tuple(k)).node == b_node for k in keys)
    assert b.call("conflicts")["keys"] == []
    assert library_threads() == threads, library_threads()
    a.close()
    print("OK")
finally:
    if b is not None:
        b.close()
    server.stop()
"""


def test_a_global_outage_shorter_than_one_nodes_grace_reaps_no_live_agent() -> None:
    result = run_scenario(_SCENARIO, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr
