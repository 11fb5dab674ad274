"""Redis loses ONE key of a namespace (an ``allkeys-*`` eviction, a ``DEL`` by
mistake) under two running ``RedisRegistry`` nodes: nothing breaks.

For each key of the namespace in turn, the scenario deletes it while both
nodes hold registrations, then registers (new, conflicting, ``replace=True``,
``register_many`` of a held and a free key),
unregisters (own and remote), updates (own and remote) and reads on both
nodes. Redis stays healthy throughout, so the only errors due are
``AlreadyRegistered`` and ``NotRegistered``: no ``BackendUnavailable`` (a
script failing on a missing value), no untyped exception. Then, within a
deadline: both nodes connected, both mirrors the same, equal to what the
test's calls left (every live registration visible on both, with its last
metadata), and Redis consistent (``owner``, ``head`` and ``meta`` hold the
same keys, each node's ``owned`` set its keys: nothing half-dropped).

The server runs with an evicting policy (``allkeys-lru``, room to spare) so
the nodes' eviction check (docs/redis.md, failure table) is on. Each
scenario runs in a subprocess with the interpreter's default hooks
(``run_scenario``: no library thread died).
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import json
import redis
from foundation import errors, spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._codec import decode_key
from foundation._demo._redis_server import RedisServerProcess

VICTIM = {victim!r}
server = RedisServerProcess()
server.start()
stop = threading.Event()
admin = redis.Redis.from_url(server.url)
admin.config_set("maxmemory", "200mb")
admin.config_set("maxmemory-policy", "allkeys-lru")
P = "{{p}}"
a = RedisRegistry(server.url, namespace="p", node="a", indexed=("role",), lease_ttl=1.5)
b = RedisRegistry(server.url, namespace="p", node="b", indexed=("role",), lease_ttl=1.5)
nodes = {{"a": a, "b": b}}
threads = library_threads()
expected = {{}}  # key -> (node, metadata): what the calls below left
raised = []  # (call, exception) of every call that raised

def attempt(what, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        raised.append((what, exc))
        return None

def reg(n, key, meta, **kw):
    before = len(raised)
    attempt(f"{{n.node}}.register({{key!r}})", n.register, key, spawn_thread(stop.wait), meta, **kw)
    if len(raised) == before:
        expected[key] = (n.node, meta)

def reg_many(n, items, **kw):
    # register_many returns each item's error (not raised): recorded as raised.
    batch = [(key, spawn_thread(stop.wait), meta) for key, meta in items]
    outcomes = attempt(f"{{n.node}}.register_many()", n.register_many, batch, **kw)
    for (key, meta), outcome in zip(items, outcomes or [None] * len(items)):
        if outcomes is None:
            continue
        if outcome is None:
            expected[key] = (n.node, meta)
        else:
            raised.append((f"{{n.node}}.register_many({{key!r}})", outcome))
    return outcomes

def view(n):
    return {{e.key: (e.node, dict(e.metadata)) for e in n.list_all()}}

try:
    reg(a, "a1", {{"role": "io", "i": 1}})
    reg(a, "a2", {{"role": "db"}})
    reg(a, "k", {{"role": "io"}})
    reg(a, "a4", {{"role": "io"}})                # left alone throughout
    dies = threading.Event()
    attempt("a.register('a5')", a.register, "a5", spawn_thread(dies.wait), {{"role": "io"}})
    expected["a5"] = ("a", {{"role": "io"}})     # its agent dies after the loss
    reg(b, "b1", {{"role": "io"}})
    reg(b, "b2", {{"role": "db"}})
    for i in range(70):  # past 64 versions: the stream has a trim mark ({{p}}:marks)
        a.update_metadata("a1", {{"role": "io", "i": i}})
    expected["a1"] = ("a", {{"role": "io", "i": 69}})
    assert not raised, raised
    wait_for(lambda: view(a) == view(b) == expected, "both nodes see the registrations")

    victim = {{"owned": P + ":owned:a", "ixset": P + ':ix:role:"io"'}}.get(VICTIM, P + ":" + VICTIM)
    assert admin.delete(victim) == 1, (victim, admin.keys("*"))
    print("DELETED", victim)
    # A node starting now: its snapshot is of the damaged namespace.
    c = RedisRegistry(server.url, namespace="p", node="c", indexed=("role",), lease_ttl=1.5)
    nodes["c"] = c

    # Writes (each one a script run against the damaged namespace).
    dies.set()                                   # a deletes a5 (its lease thread)
    expected.pop("a5")
    reg(b, "k", {{"role": "db"}})                 # held by a: AlreadyRegistered
    # The bulk path judges a key held as register does (a lost owner field is
    # read from the head): k stays a's, the free key is written in bulk.
    outcomes = reg_many(b, [("k", {{"role": "db", "m": 1}}), ("b4", {{"role": "db"}})])
    print("REGISTER_MANY", outcomes)
    assert outcomes is not None and outcomes[1] is None, outcomes
    held = outcomes[0]
    assert isinstance(held, errors.AlreadyRegistered), outcomes
    assert held.entry is None or held.entry.node == "a", held.entry
    reg(b, "k", {{"role": "db", "r": 1}}, replace=True)
    reg(a, "a3", {{"role": "io"}})
    reg(b, "b3", {{"role": "db"}})
    for n, key in ((a, "a2"), (b, "a1")):        # own, remote
        if attempt(f"{{n.node}}.unregister({{key!r}})", n.unregister, key):
            expected.pop(key, None)
    for n, key, meta in (
        (b, "b1", {{"role": "db", "v": 2}}),          # own
        (a, "b2", {{"role": "io", "v": 3}}),          # remote
        (c, "a4", {{"role": "io", "v": 4}}),          # remote, perhaps not in c's snapshot
    ):
        before = len(raised)
        attempt(f"{{n.node}}.update_metadata({{key!r}})", n.update_metadata, key, meta)
        if len(raised) == before:
            expected[key] = (expected[key][0], meta)
    reg(a, "k", {{"role": "io"}})                 # now b's: AlreadyRegistered
    # Reads.
    for n in (a, b, c):
        attempt("lookup", n.lookup, "k")
        attempt("find_by_attribute", n.find_by_attribute, "role", "io")
        attempt("count", n.count)

    for what, exc in raised:
        print("RAISED", what, type(exc).__module__, type(exc).__name__, exc)
    untyped = [(w, e) for w, e in raised if not isinstance(e, errors.FoundationError)]
    assert not untyped, f"untyped exceptions: {{untyped!r}}"
    due = (errors.AlreadyRegistered, errors.NotRegistered)
    wrong = [(w, e) for w, e in raised if not isinstance(e, due)]
    assert not wrong, f"errors on a healthy Redis: {{wrong!r}}"

    def redis_view():
        heads = {{k.decode(): json.loads(v) for k, v in admin.hgetall(P + ":head").items()}}
        metas = {{k.decode(): json.loads(v) for k, v in admin.hgetall(P + ":meta").items()}}
        owners = {{k.decode(): v.decode() for k, v in admin.hgetall(P + ":owner").items()}}
        owned = {{
            name: {{m.decode() for m in admin.smembers(P + ":owned:" + name)}} for name in nodes
        }}
        consistent = (
            heads.keys() == metas.keys() == owners.keys()
            and all(owners[ek] == h["n"] for ek, h in heads.items())
            and all(ek in owned[owners[ek]] for ek in owners)
        )
        return consistent, {{decode_key(ek): (h["n"], metas.get(ek)) for ek, h in heads.items()}}

    def converged():
        if any(n.status().state != "connected" for n in nodes.values()):
            return False
        consistent, in_redis = redis_view()
        return consistent and view(a) == view(b) == view(c) == expected == in_redis

    try:
        wait_for(converged, "both nodes and Redis to converge", timeout=30.0)
    except AssertionError:
        print("A", a.status().state, view(a))
        print("B", b.status().state, view(b))
        print("C", c.status().state, view(c))
        print("EXPECTED", expected)
        print("REDIS", redis_view())
        raise
    for key, (owner, _) in expected.items():
        held = nodes[owner].lookup(key)
        assert held is not None and held.agent.is_alive(), key
    # Redis never let a node take a key another held: a conflict (a re-assert
    # meeting another node's registration) is only of a key replaced on purpose,
    # by a recovery that had not read that replacement yet (a version gap).
    for n in nodes.values():
        for conflict in n.conflicts():
            assert conflict.key == "k" and conflict.holder == expected["k"][0], conflict
    # The stream is still trimmed: its trim points ({{p}}:marks) stay in version
    # order, below the counter (one left above it would stop every trim).
    for i in range(70):
        b.update_metadata("b1", {{"role": "db", "v": 2, "i": i}})
    ver = int(admin.get(P + ":ver"))
    marks = [int(m.split()[0]) for m in admin.lrange(P + ":marks", 0, -1)]
    rising = all(x < y for x, y in zip(marks, marks[1:]))
    assert marks and rising and marks[-1] <= ver, (marks, ver)
    c.close()
    assert library_threads() == threads, (library_threads(), threads)
    print("OK")
finally:
    stop.set()
    for n in nodes.values():
        n.close()
    server.stop()
"""

# Each key of the namespace (ixset: one index set, owned: node a's owned set).
_KEYS = "owner,head,meta,ix,ixset,owned,log,ver,marks,lastbeat,nodes"


@pytest.mark.parametrize("victim", _KEYS.split(","))
def test_losing_one_key_of_the_namespace_breaks_nothing(victim: str) -> None:
    result = run_scenario(_SCENARIO.format(victim=victim), timeout=120.0)
    assert result.lines("DELETED"), result.stdout
