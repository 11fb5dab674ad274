"""A slow ``RedisRegistry`` listener during a recovery, outside pytest.

A node's recovery (heartbeat, re-assert, resync) runs on its lease thread
holding the node's write lock, and the resync's snapshot emits the changes the
node missed. Those events used to be delivered right there: a listener that
took a while over one of them (a supervisor restarting something, a slow
webhook) stopped the node's heartbeats for that long, so the other nodes
reaped its live registrations once its lease ran out, and held the write lock,
so every write of the node waited ``4 * op_timeout`` and failed with
``BackendUnavailable`` "not answering" from a healthy Redis. Now a recovery
hands its events to the tail thread, which delivers them (in order, before any
later change): the lease thread never runs a listener.

The recovery is made real: the version counter moved by someone else (as a
lost ``{ns}:ver`` key does) is a version gap on the stream for every tail.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import CLOSE_ALL, REGISTRY_PAIR
from tests.faults._subprocess import run_scenario

_SLOW_LISTENER = (
    REGISTRY_PAIR
    + """
release = threading.Event()
held = threading.Event()
delivered = []      # (thread name, kind, key) of every event node b's listener got
seen_on_a = []

def slow(event):
    delivered.append((threading.current_thread().name, event.kind, event.entry.key))
    if event.entry.key == "a2":
        held.set()
        release.wait(30)   # a listener that takes its time (longer than the lease)

def lease_deadline():
    return raw.zscore("{s}:leases", "b")

try:
    a, b = open_nodes("s", lease_ttl=1.5, op_timeout=1.0)
    b.register("b1", spawn_thread(stop.wait), {})
    a.register("a0", spawn_thread(stop.wait), {})
    wait_for(lambda: b.lookup("a0") is not None, "node b to see a0")
    a.subscribe(lambda e: seen_on_a.append((e.kind, e.entry.key)))
    b.subscribe(slow)
    threads = library_threads()
    raw.incrby("{s}:ver", 5)   # the next record is a version gap: every tail resyncs
    a.register("a2", spawn_thread(stop.wait), {})
    assert held.wait(20), "node b's listener never got a2"
    # The listener holds a2. Node b still heartbeats (its lease moves on) ...
    before = lease_deadline()
    assert before is not None, raw.zrange("{s}:leases", 0, -1, withscores=True)
    wait_for(lambda: (lease_deadline() or 0) > before, "node b to renew its lease", timeout=10)
    renewed = lease_deadline()
    wait_for(lambda: (lease_deadline() or 0) > renewed, "node b to renew it again", timeout=10)
    # ... so node a keeps its registrations, past a whole lease_ttl ...
    assert a.lookup("b1") is not None, seen_on_a
    assert ("unregistered", "b1") not in seen_on_a, seen_on_a
    # ... and node b's writes go on.
    b.register("b2", spawn_thread(stop.wait), {})
    wait_for(lambda: a.lookup("b2") is not None, "node a to see b2")
    release.set()
    wait_for(lambda: ("registered", "b2") in [d[1:] for d in delivered], "b's own event")
    print("DELIVERED", delivered)
    by = {name for name, _, _ in delivered}
    assert not any(name.startswith("foundation-redis-lease") for name in by), delivered
    assert [k for _, kind, k in delivered if kind == "registered"].count("a2") == 1, delivered
    assert b.status().state == "connected", b.status()
    assert library_threads() == threads, (threads, library_threads())
    print("OK")
"""
    + CLOSE_ALL.replace("finally:\n", "finally:\n    release.set()\n", 1)
)


def test_a_slow_listener_during_a_recovery_stops_neither_heartbeats_nor_writes() -> None:
    result = run_scenario(_SLOW_LISTENER, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr
