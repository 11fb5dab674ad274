"""A recovery never gives up a registration the node made again after another
node's delete of its earlier one (a delete recorded with a lost head, ``''``).

Another node unregistering one of our keys while Redis had lost its head (an
eviction) records the delete with head ``''`` ("whatever a held"). If a then
registers the key again before its tail applies that record, the recovery's
look at the stream past the tail must not take that old delete for one of the
NEW registration: giving it up locally left it in Redis, owned by a, with no
monitor (its agent's end never unregistered it: a stale entry for good).

Runs in a subprocess with the interpreter's default hooks (``run_scenario``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from foundation.registry._redis._scripts import RegisterArgs
from tests.faults._redis_scenarios import CLOSE_ALL, REGISTRY_PAIR
from tests.faults._subprocess import run_scenario
from tests.redis.conftest import MakeRegistry
from tests.redis_support import RedisServer

_SCENARIO = (
    REGISTRY_PAIR
    + """
again_stop = threading.Event()
try:
    a, b = open_nodes("u", lease_ttl=5.0)
    threads = library_threads()
    a.register("k", spawn_thread(stop.wait))
    assert b.wait_for_version(a.status().written)

    from tests.redis.tail_hold import TailHold
    hold = TailHold(a, "stall")  # a's tail stays behind from "stall" on
    stalled, release = hold.stalled, hold.release
    b.register("stall", spawn_thread(stop.wait))
    assert stalled.wait(10), "a's tail never delivered 'stall'"

    raw.delete("{u}:head")                     # Redis lost the heads (evicted)
    assert b.unregister("k") is True           # recorded with head ''
    a.register("k", spawn_thread(again_stop.wait), {"again": 1}, replace=True)  # a new one
    for c in raw.client_list():
        if c["name"] == "foundation-tail:a":
            raw.client_kill_filter(_id=c["id"])
    resyncs = a.status().resyncs
    release.set()
    wait_for(lambda: a.status().resyncs > resyncs, "a's recovery")
    wait_for(lambda: a.status().state == "connected", "a connected")
    # Kept: still a's, in Redis and as a's own (its monitor held).
    assert raw.hget("{u}:owner", '"k"') == "a"
    assert "k" in a._sh.own
    # a's agent ends: a unregisters its registration (its monitor fired).
    again_stop.set()
    wait_for(lambda: raw.hget("{u}:owner", '"k"') is None, "a unregistering its ended agent's key")
    assert library_threads() == threads, (library_threads(), threads)
    print("OK")
finally:
    stop.set()
    again_stop.set()
    for x in reversed(opened):
        x.close()
    server.stop()
"""
)


def test_a_recovery_keeps_a_registration_made_again_after_a_lost_head_delete() -> None:
    result = run_scenario(_SCENARIO, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr[-3000:]


_MANY_LOST = (
    REGISTRY_PAIR
    + """
N = 2500
try:
    a, b = open_nodes("m", lease_ttl=5.0)
    threads = library_threads()
    w = spawn_thread(stop.wait)
    assert a.register_many([(("k", i), w) for i in range(N)]) == [None] * N
    # Redis lost every entry hash (an eviction), then a recovers: it re-asserts
    # all N, one script each, every one of them free in Redis.
    raw.delete("{m}:owner", "{m}:head", "{m}:meta", "{m}:owned:a")
    for c in raw.client_list():
        if c["name"] == "foundation-tail:a":
            raw.client_kill_filter(_id=c["id"])
    wait_for(lambda: raw.hlen("{m}:owner") == N, "a writing its registrations back", timeout=60)
    wait_for(lambda: a.status().state == "connected", "a connected")
    assert library_threads() == threads, (library_threads(), threads)
    print("OK")
"""
    + CLOSE_ALL
)


def test_a_recovery_re_asserting_many_lost_keys_does_not_stall_redis() -> None:
    # Each re-assert script scanned the stream from the recovery's look at it,
    # past every record the earlier ones wrote: quadratic (2500 keys: about
    # 17 s of Redis busy in Lua, every client's 2 s timeout expired).
    result = run_scenario(_MANY_LOST, timeout=180)
    assert "LOG ERROR" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    stalled = [line for line in lines if "no answer in time" in line]
    assert stalled == [], "\n".join(stalled[:5])
    # Only a's one disconnect, the cut that started its recovery.
    cuts = [line for line in lines if "-> disconnected" in line]
    assert len(cuts) == 1, "\n".join(cuts[:5])
    assert "node a " in cuts[0], cuts[0]


def test_the_reassert_scripts_scan_continues_where_the_last_one_stopped(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Callable[[], Any]
) -> None:
    # The scan's progress is kept between the scripts of one re-assert (same
    # `since`): a delete landing after an earlier script scanned is still found.
    a = make_registry(node="a")
    b = make_registry(node="b")
    a.register("x", agents())
    a.register("k", agents())
    x, k = a._sh.own["x"], a._sh.own["k"]
    ns = a._sh.prefix
    with redis.Redis.from_url(redis_server.url) as raw:
        since = raw.xinfo_stream(f"{ns}:log")["last-generated-id"].decode()

        def reassert(own: Any) -> Any:
            args = RegisterArgs(
                a._sh.maxlen, "a", own.ek, own.head, own.meta, own.ix, "a", False, "", 2500, since
            )
            return a._sh.scripts["register"](keys=a._sh.keys, args=args.argv(), client=raw)

        raw.hdel(f"{ns}:owner", x.ek)  # Redis lost x (its head too): a free key
        raw.hdel(f"{ns}:head", x.ek)
        assert reassert(x)[0] == b"OK"  # scanned up to its own record
        assert raw.exists(f"{ns}:rescan:a")
        assert b.unregister("k") is True  # past what that script scanned
        assert reassert(k) == [b"GONE"]
        assert not raw.hexists(f"{ns}:owner", k.ek)
        # Evicted meanwhile (the one key with a TTL): the next scan starts over.
        raw.delete(f"{ns}:rescan:a")
        assert reassert(k) == [b"GONE"]
