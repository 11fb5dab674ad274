"""Where the server's order of two registrations (the stream ids kept in
``{ns}:at``) cannot be trusted, a re-assert falls back to the heads' times
(docs/redis.md, the older-snapshot row), and what the order needs is kept.

- An older version of the library (a rolling upgrade) neither deletes
  ``{ns}:at`` when it drops a registration nor writes it when it registers:
  its registration would inherit the place of an earlier, dropped one.
- Stream ids are ordered within one history of the stream only: Redis restarted
  empty on a host whose clock is behind gives a later registration a smaller id.
- A ``heal`` run by a register (the first script after the server's clock
  moved) is logged by the next heartbeat.
- A re-assert answered SAME tells the node the order its lost reply did not;
  one answered EXISTS gives the key up even when that order is not known.
- That logged shift expires if no node heartbeats (all closed).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from foundation.errors import AlreadyRegistered
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, wait_until
from tests.redis.test_server_clock_moves import _shift
from tests.redis_support import RedisServer

# What a node of the version before {ns}:at did (its UNREGISTER and REGISTER of
# a free key, reduced to their writes): the hashes, the owned set, the version
# and the change record, never {ns}:at. KEYS[1] is {ns}:log, as for the library.
_OLD_DROP = """
local P = string.sub(KEYS[1], 1, -5)
local ek, w = ARGV[1], ARGV[2]
local owner = redis.call('HGET', P .. ':owner', ek)
local head = redis.call('HGET', P .. ':head', ek)
redis.call('HDEL', P .. ':head', ek)
redis.call('HDEL', P .. ':meta', ek)
redis.call('HDEL', P .. ':owner', ek)
redis.call('SREM', P .. ':owned:' .. owner, ek)
local v = redis.call('INCR', P .. ':ver')
redis.call('XADD', KEYS[1], '*', 'v', v, 'w', w, 'op', 'd', 'k', ek, 'n', owner,
           'h', head, 'why', 'unregistered', 'dr', '', 'dc', '', 'ds', '')
return v
"""

_OLD_PUT = """
local P = string.sub(KEYS[1], 1, -5)
local ek, node, head, meta = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('HSET', P .. ':head', ek, head)
redis.call('HSET', P .. ':meta', ek, meta)
redis.call('HSET', P .. ':owner', ek, node)
redis.call('SADD', P .. ':owned:' .. node, ek)
local v = redis.call('INCR', P .. ':ver')
redis.call('XADD', KEYS[1], '*', 'v', v, 'w', node, 'op', 'r', 'k', ek, 'h', head, 'm', meta)
return v
"""

OLD = "old-node"  # the node of the older version (its lease is kept alive by hand)


def _owner(server: RedisServer, ns: str, key: str) -> str | None:
    raw = server.command("HGET", f"{{{ns}}}:owner", json.dumps(key))
    return None if raw is None else raw.decode()


def _server_ms(server: RedisServer) -> int:
    sec, usec = server.command("TIME")
    return int(sec) * 1000 + int(usec) // 1000


def _old_register(server: RedisServer, ns: str, key: str) -> None:
    """The older-version node registers ``key`` (free) with a live lease."""
    server.command("ZADD", f"{{{ns}}}:leases", str(_server_ms(server) + 600_000), OLD)
    head = json.dumps(
        {"n": OLD, "a": {"kind": "thread", "pid": 1, "name": "old"}, "t": time.time()},
        separators=(",", ":"),
    )
    server.command("EVAL", _OLD_PUT, "1", f"{{{ns}}}:log", json.dumps(key), OLD, head, "{}")


def test_an_order_left_by_an_older_version_is_not_the_holders(
    fresh_redis: RedisServer, make_node: Any, ns: str
) -> None:
    """Rolling upgrade: the old node unregisters N's ``k`` (``{ns}:at`` stays),
    the snapshot is taken, N registers ``k`` again; Redis restarts from the
    snapshot (N's registration lost) while N is frozen, and the old node
    registers the free ``k`` (a live agent). N's re-assert must not take it: the
    ``{ns}:at`` left of N's first registration is not the old node's."""
    n: NodeProcess = make_node(fresh_redis.url, ttl=30.0)
    assert n.call("register", key="k")["ok"]
    v = fresh_redis.command("EVAL", _OLD_DROP, "1", f"{{{ns}}}:log", json.dumps("k"), OLD)
    assert n.call("wait_version", version=v)["ok"]
    assert n.call("lookup", key="k")["entry"] is None  # N gave it up
    fresh_redis.command("SAVE")  # k free; {ns}:at of N's first registration left
    assert n.call("register", key="k")["ok"]  # the server orders it after the first
    n.freeze()  # slow to come back: the old node registers k first
    fresh_redis.kill()
    fresh_redis.start()  # from the snapshot: N's registration of k is lost
    _old_register(fresh_redis, ns, "k")
    n.thaw()
    assert wait_until(lambda: n.call("conflicts")["keys"], timeout=20)
    assert n.call("conflicts")["keys"] == [json.dumps("k")]
    assert _owner(fresh_redis, ns, "k") == OLD  # the later registration kept it


def test_an_order_from_another_history_of_the_stream_is_not_compared(
    fresh_redis: RedisServer, make_registry: MakeRegistry, make_node: Any, ns: str, agents: Any
) -> None:
    """N registers ``k`` while the server's clock is 300 s ahead (its stream ids
    with it: a record dated then, as XADD * never goes below the last id).
    Redis comes back empty with the right clock (as after a restart on a host
    whose clock is behind) while N is frozen; X registers the free ``k``. N's
    re-assert must not take it: X's id is smaller, but of a new history."""
    x = make_registry(fresh_redis.url, lease_ttl=30.0)
    n: NodeProcess = make_node(fresh_redis.url, ttl=3.0)
    ahead = f"{_server_ms(fresh_redis) + 300_000}-0"
    # A record nobody applies (an update of a key nobody holds), dated ahead.
    v = fresh_redis.command("INCR", f"{{{ns}}}:ver")
    fresh_redis.command(
        "XADD", f"{{{ns}}}:log", ahead, "v", str(v), "w", "", "op", "u", "k", '"zz"', "m", "{}"
    )
    assert n.call("register", key="k")["ok"]  # its id: past `ahead`
    n.freeze()
    fresh_redis.command("FLUSHALL")  # Redis empty (the restart), clock right
    x.register("k", agents())  # finds its lease gone: recovers, then registers
    n.thaw()
    assert wait_until(lambda: n.call("conflicts")["keys"], timeout=20)
    assert n.call("conflicts")["keys"] == [json.dumps("k")]
    assert _owner(fresh_redis, ns, "k") == x.node
    e = x.lookup("k")
    assert e is not None
    assert e.node == x.node


def test_a_clock_shift_healed_by_a_register_is_logged(
    redis_server: RedisServer,
    make_registry: MakeRegistry,
    ns: str,
    agents: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server's clock went back (every stored time dated 300 s ahead); the
    first script after it is B's register of A's key, which heals: the next
    heartbeat (finding no gap of its own) still says so."""
    caplog.set_level(logging.WARNING, logger="foundation.registry.redis")
    a = make_registry(lease_ttl=6.0)
    b = make_registry(lease_ttl=6.0)
    a.register("k", agents())
    _shift(redis_server, ns, 300_000)
    with pytest.raises(AlreadyRegistered):
        b.register("k", agents())
    # The register moved the deadlines back already (heal ran in it).
    deadline = redis_server.command("ZSCORE", f"{{{ns}}}:leases", a.node)
    assert float(deadline) < _server_ms(redis_server) + 100_000

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "clock went back" in r.getMessage()]

    assert wait_until(lambda: bool(said()), timeout=20), caplog.text
    e = a.lookup("k")
    assert e is not None
    assert e.node == a.node


def test_a_reassert_answered_same_gives_the_order(
    redis_server: RedisServer, make_registry: MakeRegistry, ns: str, agents: Any
) -> None:
    """A register whose reply was lost leaves the node without the stream id
    that orders its registration (``Own.at``); the re-assert that finds it in
    Redis (SAME) returns it. Simulated by clearing it, then a recovery."""
    a = make_registry(lease_ttl=6.0)
    a.register("k", agents())
    own = a._sh.own["k"]  # the node's own state is what is checked
    stored = redis_server.command("HGET", f"{{{ns}}}:at", json.dumps("k")).decode()
    want = stored.split(" ")[0]
    assert own.at == want
    own.at = ""  # what a lost register reply leaves
    before = a.status().recoveries
    a._sh.link.resync_needed("test: a reply was lost")
    assert wait_until(lambda: a.status().recoveries > before, timeout=20)
    assert own.at == want


def test_a_reassert_not_knowing_the_order_still_yields_a_key_another_node_took(
    redis_server: RedisServer, make_registry: MakeRegistry, ns: str, agents: Any
) -> None:
    """A node that does not know its registration's order (``Own.at`` empty: a
    lost register reply) loses its lease; another node takes the key; the
    re-assert answered EXISTS must give it up (a conflict). Before, the branch
    learning the order was in front of the EXISTS/GONE/NOLEASE chain: the node
    kept the key another node holds, with no conflict."""
    # Long heartbeats: a's own lease thread stays out of the window below.
    a = make_registry(node="a", lease_ttl=60.0, heartbeat=20.0)
    b = make_registry(node="b", lease_ttl=60.0, heartbeat=20.0)
    a.register("k", agents())
    a._sh.own["k"].at = ""  # what a lost register reply leaves (the node's own state)
    redis_server.command("ZADD", f"{{{ns}}}:leases", "1", a.node)  # a's lease ran out (frozen)
    b.register("k", agents())  # the free key: b takes it
    before = a.status().recoveries
    a._sh.link.resync_needed("test: a thawed")  # its recovery finds the lease gone
    assert wait_until(lambda: a.status().recoveries > before, timeout=20)
    assert [c.key for c in a.conflicts()] == ["k"]
    assert "k" not in a._sh.own
    assert _owner(redis_server, ns, "k") == b.node
    e = a.lookup("k")
    assert e is not None
    assert e.node == b.node


def test_a_shift_healed_by_a_register_is_kept_for_a_bounded_time(
    redis_server: RedisServer, make_registry: MakeRegistry, ns: str, agents: Any
) -> None:
    """The shift a register heals waits in ``{ns}:healed`` for the next
    heartbeat to log it; if every node closes first, it must not wait for ever
    (before, a node started days later reported that old shift). Its life is
    bounded (an expiry), not waited out here."""
    # Long heartbeats: no heartbeat runs between the register and the closes.
    a = make_registry(lease_ttl=60.0, heartbeat=20.0)
    b = make_registry(lease_ttl=60.0, heartbeat=20.0)
    a.register("k", agents())
    _shift(redis_server, ns, 300_000)
    with pytest.raises(AlreadyRegistered):
        b.register("k", agents())  # the first script after the shift: heals it
    a.close()
    b.close()
    assert redis_server.command("GET", f"{{{ns}}}:healed") is not None
    assert int(redis_server.command("PTTL", f"{{{ns}}}:healed")) > 0
