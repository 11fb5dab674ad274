"""Entries in Redis nobody can read (written by something else) stop no node.

A head that is not the library's JSON (not JSON, not an object, a field
missing), metadata that is not JSON, or a hash field that is no encoded key:
each snapshot raised on it (``json.JSONDecodeError``, ``KeyError``,
``InvalidMetadata``...). So a new node failed to start with that exception
(not a Foundation error), and a running node that needed a resync (a cut
connection here) never connected again: its lease thread logged "unexpected
error" with a traceback at every retry, for good. And ``update_metadata`` of
such a key, which this node's mirror did not show, leaked the parser's
exception. Now such an entry is left out of the mirror (one WARNING per
snapshot), as the tail leaves out a stream record it cannot read.

Runs in a subprocess with the interpreter's default hooks (``run_scenario``):
no library thread died.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import CLOSE_ALL, REGISTRY_PAIR
from tests.faults._subprocess import run_scenario

_SCENARIO = (
    REGISTRY_PAIR
    + """
from foundation.errors import FoundationError
try:
    opened.append(RedisRegistry(server.url, namespace="u", node="a"))
    a = opened[-1]
    a.register("mine", spawn_thread(stop.wait), {"by": "a"})
    bad_heads = {
        '"h1"': "not json", '"h2"': "[1]", '"h3"': "{}", '"h4"': '{"n": "x", "a": [1]}',
    }
    for ek, head in bad_heads.items():
        raw.hset("{u}:head", ek, head)
        raw.hset("{u}:owner", ek, "x")
    good = '{"n": "x", "a": {"kind": "thread"}, "t": 1.0}'
    raw.hset("{u}:head", mapping={'"m1"': good, "no key at all": good})
    raw.hset("{u}:meta", '"m1"', "not json")

    # A new node starts (its first snapshot).
    opened.append(RedisRegistry(server.url, namespace="u", node="b"))
    b = opened[-1]
    assert b.status().state == "connected", b.status()
    assert {e.key for e in b.list_all()} == {"mine"}, b.list_all()

    # An observer (``foundation agents``, the admin page) connects, as the nodes do.
    from foundation.registry._redis._observer import RedisObserver
    opened.append(RedisObserver(server.url, namespace="u"))
    observer = opened[-1]
    wait_for(lambda: observer.status().state == "connected", "the observer connected")
    assert {e.key for e in observer.list_all()} == {"mine"}, observer.list_all()

    # A running node resynchronises (its tail's connection cut).
    resyncs = a.status().resyncs
    for c in raw.client_list():
        if c["name"] == "foundation-tail:a":
            raw.client_kill_filter(_id=c["id"])
    wait_for(lambda: a.status().resyncs > resyncs, "a's resync")
    wait_for(lambda: a.status().state == "connected", "a connected")
    assert {e.key for e in a.list_all()} == {"mine"}, a.list_all()

    # update_metadata of such a key (the mirror does not show it): done in
    # Redis, or a Foundation error; never the parser's exception.
    for key in ("h1", "h2", "h3", "h4"):
        try:
            a.update_metadata(key, {"v": 1})
        except FoundationError as exc:
            print("UPDATE", key, type(exc).__name__)
    assert a.status().state == "connected", a.status()
    print("OK")
"""
    + CLOSE_ALL
)


def test_unreadable_entries_stop_no_snapshot_and_leak_no_exception() -> None:
    result = run_scenario(_SCENARIO, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr[-3000:]
    assert "LOG ERROR" not in result.stderr, result.stderr[-3000:]
    warned = [line for line in result.stderr.splitlines() if "could not be read" in line]
    assert warned, result.stderr[-3000:]
