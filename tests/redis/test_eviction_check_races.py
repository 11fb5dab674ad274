"""The eviction check of a registry node's heartbeat raises no false alarm.

While the server may evict (here ``allkeys-lru`` with plenty of room: nothing
is ever evicted), each heartbeat looks for one of the node's registrations in
Redis and goes ``lease_lost`` (re-asserting everything) when it is missing.
Race: another node unregisters, or replaces, that very registration, and the
node's tail has not applied it yet. That is no eviction: a re-assert then
would undo the other node's unregister (the key registered again) and log a
WARNING on a healthy server. Here node b unregisters and replaces node a's
oldest registrations (the one a's check looks at) back to back for a while,
across many of a's heartbeats, while a keeps registering new ones.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import CLOSE_ALL, RECORDS, REGISTRY_PAIR
from tests.faults._subprocess import run_scenario

_CHURN = (
    REGISTRY_PAIR
    + RECORDS
    + """
records = Records(logging.INFO)
logging.getLogger("foundation").addHandler(records)
try:
    raw.config_set("maxmemory", "500mb")
    raw.config_set("maxmemory-policy", "allkeys-lru")
    # A short lease: a heartbeat (and its eviction check) every 0.3 s or so.
    a, b = open_nodes("ch", lease_ttl=1.0, op_timeout=2.0)
    assert a.status().eviction_policy == "allkeys-lru"
    threads = library_threads()
    ahead = 20
    for i in range(ahead):
        a.register(f"k{i}", spawn_thread(stop.wait), {"i": i})
    beats = a._sh.last_beat_ok
    unregistered, replaced = set(), set()
    i = 0
    # At least 12 of a's heartbeats, each checking while b removes a's oldest key.
    deadline = time.monotonic() + 30
    while a._sh.last_beat_ok < beats + 12 * 0.3 or i < 200:
        assert time.monotonic() < deadline, "too slow"
        a.register(f"k{i + ahead}", spawn_thread(stop.wait), {"i": i + ahead})
        key = f"k{i}"
        if i % 2:
            b.register(key, spawn_thread(stop.wait), {"by": "b"}, replace=True)
            replaced.add(key)
        else:
            assert b.unregister(key)
            unregistered.add(key)
        i += 1
    print("CHURN", i, "keys; a's heartbeats over", round(a._sh.last_beat_ok - beats, 1), "s")
    assert b.wait_for_version(a.status().written) and a.wait_for_version(b.status().written)
    wait_for(lambda: a.status().state == b.status().state == "connected", "connected")
    alarms = [m for m in records.messages if "lost this node's registrations" in m]
    assert alarms == [], alarms[:3]
    assert a.status().reasserts == 0, a.status()
    # Nothing b removed came back, in Redis or in either mirror.
    owners = raw.hgetall("{ch}:owner")
    for node in (a, b):
        for key in unregistered:
            assert node.lookup(key) is None, (node.node, key)
        for key in replaced:
            assert node.lookup(key).node == "b", (node.node, key)
    assert len(owners) == i + ahead - len(unregistered), len(owners)
    assert library_threads() == threads
    print("OK")
"""
    + CLOSE_ALL
)


def test_another_nodes_unregister_or_replace_is_no_eviction() -> None:
    result = run_scenario(_CHURN, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr[-3000:]
    node_a = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG WARNING")
        and "node a " in line
        and "maxmemory-policy allkeys-lru, which may evict" not in line  # the one expected
    ]
    assert node_a == [], "\n".join(node_a[:5])
    print(result.lines("CHURN"))
