"""A blocked ``RedisRegistry.subscribe`` listener on one node, outside pytest.

Node A's listener blocks (a webhook that hangs) on every event until the
test releases it. Before, A ran its listeners on the thread that applied the
change: the tail (so A's mirror stopped following the other nodes), the
lease thread during a recovery (so A's heartbeats stopped: its lease ran out
and the others reaped its registrations), or a writer. Now every event is
queued under the mirror lock and a courier thread (``foundation-redis-events``)
runs the listeners: A's mirror keeps applying B's changes, A's own writes
return, the server is killed and restarted empty and A recovers (its resync
drops the registrations of node C, closed while Redis was down, with events)
and keeps its lease, while the listener is still blocked. Released, the
listener gets every event, in mirror order. No library thread dies.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import CLOSE_ALL, REGISTRY_PAIR
from tests.faults._subprocess import run_scenario

_SCENARIO = (
    REGISTRY_PAIR
    + """
import random

TTL = 1.0
release, held = threading.Event(), threading.Event()
heard = []   # (thread name, event) of every event A's listener got

def slow(event):
    heard.append((threading.current_thread().name, event))
    held.set()
    release.wait(60)   # blocked until the test releases it, on every event

def same(x, y):
    return x.node == y.node and x.registered_at == y.registered_at

def replay(events):
    # The model of A's mirror these events imply, and the events that did not fit it.
    model, misfits = dict(before), []
    for e in events:
        key, old = e.entry.key, model.get(e.entry.key)
        fits = old is None if e.kind == "registered" else old is not None and same(old, e.entry)
        if not fits:
            misfits.append((e, old))
        if e.kind == "unregistered":
            model.pop(key, None)
        else:
            model[key] = e.entry
    return model, misfits

def shape(entries):
    return sorted((e.key, e.node, e.registered_at, dict(e.metadata)) for e in entries)

try:
    a, b = open_nodes("slow-listener", lease_ttl=TTL, op_timeout=0.5)
    c = RedisRegistry(server.url, namespace="slow-listener", node="c", lease_ttl=TTL,
                      op_timeout=0.5)
    opened.append(c)
    a.register("a-own", spawn_thread(stop.wait), {"n": 0})
    for k in ("c1", "c2"):
        c.register(k, spawn_thread(stop.wait))
    assert a.wait_for_version(c.status().written)
    before = {e.key: e for e in a.list_all()}  # nothing changes until B writes
    a.subscribe(slow)

    # 1. A remote change: A's tail applies it, a courier blocks in the listener.
    b.register("b1", spawn_thread(stop.wait))
    assert held.wait(20), "A's listener never got B's change"

    # 2. The listener is blocked; A's mirror keeps following B ...
    b.register("b2", spawn_thread(stop.wait))
    b.unregister("b1")
    b.update_metadata("b2", {"v": 2})
    wait_for(lambda: a.lookup("b1") is None and a.lookup("b2") is not None
             and a.lookup("b2").metadata == {"v": 2}, "A's mirror to apply B's changes")
    # ... and A's own writes return (their events wait behind the blocked one).
    wrote = threading.Event()
    def write_on_a():
        a.register("a2", spawn_thread(stop.wait))
        a.update_metadata("a-own", {"n": 1})
        wrote.set()
    threading.Thread(target=write_on_a, name="writer-a").start()
    assert wrote.wait(20), "A's writes waited for the blocked listener"
    assert b.wait_for_version(a.status().written) and b.lookup("a2") is not None

    # 3. Redis dies; C goes away meanwhile (nobody re-asserts its entries); Redis
    # restarts empty. A recovers (heartbeat, re-assert, resync: c1 and c2 leave
    # its mirror with events), the listener still blocked.
    recoveries = a.status().recoveries
    server.kill()
    c.close()
    server.start()
    wait_for(lambda: a.status().recoveries > recoveries and a.status().state == "connected"
             and a.lookup("c1") is None and a.lookup("c2") is None, "A to recover", 30)
    wait_for(lambda: b.status().state == "connected" and b.lookup("a-own") is not None
             and b.lookup("a2") is not None, "B to see A's re-asserted entries", 30)
    # A keeps renewing its lease: B sees A's entries for 3 TTLs (without heartbeats
    # B would reap them after one).
    until = time.monotonic() + 3 * TTL
    while time.monotonic() < until:
        assert b.lookup("a-own") is not None and b.lookup("a2") is not None, "A's lease lapsed"
        assert a.status().state == "connected", a.status()
        time.sleep(0.02)  # sleep-ok: sampling B's view over the lease window
    assert not release.is_set() and len(heard) == 1, "the listener was not blocked throughout"
    threads = library_threads()
    for t in ("foundation-redis-tail[a]", "foundation-redis-lease[a]"):
        assert t in threads, threads

    # 4. Released: every event, in mirror order, none from a tail or lease thread.
    release.set()
    def drained():
        q = a._delivery
        return not q.pending and not q.busy
    wait_for(drained, "A's events to be delivered")
    events = [e for _, e in heard]
    model, misfits = replay(events)
    assert not misfits, misfits
    wait_for(lambda: shape(replay([e for _, e in heard])[0].values()) == shape(a.list_all()),
             "the events to describe A's mirror")
    assert heard[0][0] == "foundation-redis-events", heard[0]  # the courier
    names = {name for name, _ in heard}
    assert not any(n.startswith(("foundation-redis-tail", "foundation-redis-lease"))
                   for n in names), names
    kinds = [(e.kind, e.entry.key) for e in events]
    for step in [("registered", "b1"), ("registered", "b2"), ("unregistered", "b1"),
                 ("updated", "b2"), ("registered", "a2"), ("updated", "a-own"),
                 ("unregistered", "c1"), ("unregistered", "c2")]:
        assert step in kinds, (step, kinds)
    assert kinds.index(("registered", "b2")) < kinds.index(("updated", "b2"))
    print("OK")
"""
    + CLOSE_ALL
)


def test_a_blocked_listener_stalls_neither_the_mirror_nor_the_lease_nor_writes() -> None:
    result = run_scenario(_SCENARIO, timeout=150)
    assert "LOG ERROR" not in result.stderr, result.stderr[-4000:]
