"""A Redis whose ``maxmemory-policy`` may evict the library's keys is reported.

An ``allkeys-*`` policy with ``maxmemory`` set makes Redis delete keys under
memory pressure without any error reply: registrations, leases, flag states
or history would vanish silently (docs/redis.md, the failure table). So each
``RedisRegistry`` node and ``RedisFlagStore`` reads ``INFO memory`` when it
connects and after every reconnect, logs ONE WARNING naming the policy, the
redacted URL and the fix (``noeviction``), and shows the policy in
``status().eviction_policy``. ``INFO`` refused (an ACL user without ``+info``)
fails nothing. A ``volatile-*`` policy cannot evict these keys (none has a
TTL): Redis answers ``OOM`` instead, as with ``noeviction``, and is not
reported. Every scenario runs against a real redis-server, in a subprocess
with the interpreter's default hooks.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import CLOSE_ALL, RECORDS
from tests.faults._subprocess import run_scenario
from tests.redis.test_acl_permissions import DOCUMENTED_ACL, NAMESPACE, PASSWORD, USER

_SETUP = (
    RECORDS
    + """
import os, tempfile
from foundation import FeatureFlags, Flag, RedisFlagStore, RedisRegistry, spawn_thread
from tests.redis_support import RedisServer

server = RedisServer(password="s3cret")
server.start()
URL = f"redis://:s3cret@127.0.0.1:{server.port}/0"
SHOWN = f"redis://:***@127.0.0.1:{server.port}/0"
stop = threading.Event()
opened = []

def open_all(url=URL):
    a = RedisRegistry(url, namespace="ev", lease_ttl=3.0, op_timeout=1.0)
    opened.append(a)
    b = RedisRegistry(url, namespace="ev", lease_ttl=3.0, op_timeout=1.0)
    opened.append(b)
    store = RedisFlagStore(url, namespace="ev", timeout=1.0, resync_interval=0.5,
                           cache_path=os.path.join(tempfile.mkdtemp(), "copy.sqlite3"))
    opened.append(store)
    return a, b, store

def open_with_policy(policy):
    server.command("CONFIG", "SET", "maxmemory", "200mb")
    server.command("CONFIG", "SET", "maxmemory-policy", policy)
    return open_all()

def open_evicting(policy, registrations):
    # Under an evicting policy: each node registers some keys, the kill switch is off.
    a, b, store = open_with_policy(policy)
    for i in range(registrations):
        a.register(("a", i), spawn_thread(stop.wait), {"role": "x"})
        b.register(("b", i), spawn_thread(stop.wait), {"role": "x"})
    flags = FeatureFlags([Flag("kill", default=True), Flag("other")], store=store)
    flags.disable("kill", by="ops", reason="incident")
    return a, b, store, flags

class EvictionRecords(Records):
    def about_eviction(self, level):
        return [r for r in self.records
                if r.levelno == level and "maxmemory-policy" in r.getMessage()]

def kill_for_a_new_process():
    # The kill switch as a process without a copy reads it.
    fresh = RedisFlagStore(URL, namespace="ev", timeout=1.0, cache_path=None)
    try:
        return FeatureFlags([Flag("kill", default=True), Flag("other")],
                            store=fresh).enabled("kill")
    finally:
        fresh.close()

records = EvictionRecords()
logging.getLogger("foundation").addHandler(records)
"""
)

_RECONNECT = (
    """
try:
    # maxmemory set but noeviction: nothing can be evicted, nothing to report.
    a, b, store = open_with_policy("noeviction")
    assert [a.status().eviction_policy, b.status().eviction_policy,
            store.status().eviction_policy] == [None, None, None]
    assert records.about_eviction(logging.WARNING) == []

    # The policy is changed under running clients: they see it at their reconnect.
    server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")

    def cut_until(predicate, what):
        # Cut every client connection until predicate holds (each cut is followed by
        # a reconnect; a client between two reads may miss one cut: cut again).
        deadline = time.monotonic() + 40
        while True:
            server.command("CLIENT", "KILL", "TYPE", "normal")
            try:
                wait_for(predicate, what, timeout=1.0)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    def statuses():
        return [a.status(), b.status(), store.status()]

    def cut_and_wait(policy):
        before = statuses()
        cut_until(lambda: [s.eviction_policy for s in statuses()] == [policy] * 3
                  and all(s.recoveries > o.recoveries for s, o in zip(statuses()[:2], before))
                  and store.status().resyncs > before[2].resyncs,
                  "every client to reconnect and show the policy")
        wait_for(lambda: all(s.state == "connected" for s in statuses()[:2])
                 and not store.stale, "every client in sync")

    cut_and_wait("allkeys-lru")
    cut_and_wait("allkeys-lru")  # a second reconnect: no second warning

    warnings = records.about_eviction(logging.WARNING)
    assert sorted(r.name for r in warnings) == [
        "foundation.flags", "foundation.registry.redis", "foundation.registry.redis",
    ], [r.getMessage() for r in warnings]
    for r in warnings:
        text = r.getMessage()
        assert "allkeys-lru" in text and "noeviction" in text and SHOWN in text, text
        assert "s3cret" not in text, text
    assert any(a.node in r.getMessage() for r in warnings)
    assert any(b.node in r.getMessage() for r in warnings)
    assert any("flag store 'ev'" in r.getMessage() for r in warnings)

    # Fixed at runtime: status() clears at the next reconnect (an INFO line says so).
    server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
    cut_and_wait(None)
    assert len(records.about_eviction(logging.WARNING)) == 3

    # And everything works throughout.
    a.register("k", spawn_thread(stop.wait))
    assert b.wait_for_version(a.status().written)
    assert b.lookup("k") is not None
    flags = FeatureFlags([Flag("kill", default=True)], store=store)
    flags.disable("kill")
    assert flags.enabled("kill") is False
    print("OK")
"""
    + CLOSE_ALL
)


def test_an_evicting_policy_is_warned_once_per_client_and_shown_in_status() -> None:
    """A policy set under running clients is seen at their reconnect: one WARNING per
    registry node and per flag store (however many reconnects), naming the policy,
    the redacted URL and ``noeviction``; ``status().eviction_policy`` follows it."""
    run_scenario(_SETUP + _RECONNECT, timeout=120)


_AT_START_AND_ACL = (
    f"""
DOCUMENTED_ACL = {DOCUMENTED_ACL!r}
USER, PASSWORD, NAMESPACE = {USER!r}, {PASSWORD!r}, {NAMESPACE!r}
"""
    + """
try:
    a, b, store = open_with_policy("allkeys-random")
    assert [a.status().eviction_policy, b.status().eviction_policy,
            store.status().eviction_policy] == ["allkeys-random"] * 3
    assert len(records.about_eviction(logging.WARNING)) == 3

    # The ACL user of docs/redis.md, word for word (no +info): nothing fails,
    # the policy is unknown (None), said once per client at INFO level.
    server.command("ACL", *DOCUMENTED_ACL)
    acl = f"redis://{USER}:{PASSWORD}@127.0.0.1:{server.port}/0"
    before = len(records.records)
    c = RedisRegistry(acl, namespace=NAMESPACE, lease_ttl=3.0, op_timeout=1.0)
    opened.append(c)
    store2 = RedisFlagStore(acl, namespace=NAMESPACE, timeout=1.0, cache_path=None)
    opened.append(store2)
    assert c.status().eviction_policy is None and store2.status().eviction_policy is None
    new = records.records[before:]
    refused = [r for r in new if "cannot read INFO memory" in r.getMessage()]
    assert len(refused) == 2 and all(r.levelno == logging.INFO for r in refused), refused
    assert all(f"{USER}:***@" in r.getMessage() and f":{PASSWORD}@" not in r.getMessage()
               for r in refused)
    assert [r for r in new if r.levelno >= logging.WARNING
            and "maxmemory-policy" in r.getMessage()] == []
    c.register("k", spawn_thread(stop.wait))
    FeatureFlags([Flag("f")], store=store2).enable("f")
    print("OK")
"""
    + CLOSE_ALL
)


def test_an_evicting_policy_at_start_is_warned_and_a_refused_info_fails_nothing() -> None:
    """Configured before the clients start: each warns at construction. An ACL user
    without ``+info``: construction and writes succeed, the policy is unknown."""
    run_scenario(_SETUP + _AT_START_AND_ACL, timeout=120)


_VOLATILE = (
    """
try:
    a, b, store = open_all()
    flags = FeatureFlags([Flag("kill", default=True)], store=store)
    flags.disable("kill")
    a.register("k", spawn_thread(stop.wait))
    ours = sorted(server.command("KEYS", "{ev}*"))
    used = int(server.command("INFO", "memory").decode().split("used_memory:")[1].split()[0])
    server.command("CONFIG", "SET", "maxmemory-policy", "volatile-lru")
    server.command("CONFIG", "SET", "maxmemory", str(used + 1_000_000))
    for i in range(400):  # 4 MB of keys with a TTL: evicted to make room for each other
        server.command("SET", f"cache:{i}", "x" * 10_000, "EX", "3600")
    stats = server.command("INFO", "stats").decode()
    assert int(stats.split("evicted_keys:")[1].split()[0]) > 0, stats
    refused = 0
    for i in range(400):  # then keys without a TTL: once no TTL key is left, OOM
        try:
            server.command("SET", f"plain:{i}", "x" * 10_000)
        except Exception as exc:
            assert "OOM" in str(exc), exc
            refused += 1
    assert refused > 0
    assert sorted(server.command("KEYS", "{ev}*")) == ours  # none of ours evicted
    assert [a.status().eviction_policy, store.status().eviction_policy] == [None, None]
    assert records.about_eviction(logging.WARNING) == []
    server.command("CONFIG", "SET", "maxmemory", "0")
    a.register("k2", spawn_thread(stop.wait))
    assert b.wait_for_version(a.status().written) and b.lookup("k") is not None
    wait_for(lambda: not store.stale, "the store in sync")
    assert flags.enabled("kill") is False
    print("OK")
"""
    + CLOSE_ALL
)


def test_a_volatile_policy_evicts_none_of_the_library_keys_and_is_not_reported() -> None:
    """``volatile-lru`` (the default of some managed services) under memory pressure:
    other keys with a TTL go, ours (none has a TTL) stay; writes meet ``OOM`` as
    with ``noeviction``; no warning."""
    run_scenario(_SETUP + _VOLATILE, timeout=120)


_LOST_KEYS = (
    """
import redis as redis_py
try:
    a, b, store, flags = open_evicting("allkeys-lru", registrations=5)
    flags.enable("other")
    raw = redis_py.Redis.from_url(URL)

    # 1. The registry's entry hashes go (what an allkeys-* eviction does to a key;
    #    which keys it takes is chance, so the test names them), leases stay.
    raw.delete("{ev}:owner", "{ev}:meta")
    wait_for(lambda: raw.hlen("{ev}:owner") == 10 and raw.hlen("{ev}:meta") == 10,
             "both nodes to write their registrations back")
    for node in (a, b):
        wait_for(lambda: node.status().state == "connected", "connected")
        assert node.status().reasserts >= 1, node.status()
        assert node.count() == 10
    noticed = [r for r in records.records if "lost this node's registrations" in r.getMessage()]
    assert {a.node, b.node} <= {n for r in noticed for n in (a.node, b.node)
                                if n in r.getMessage()}, [r.getMessage() for r in noticed]
    assert all(r.levelno == logging.WARNING for r in noticed)

    # 2. The flag store's state hash and history go, its meta stays (same version).
    raw.delete("{ev}:flags:state", "{ev}:flags:history")
    wait_for(lambda: store.status().restores == 1, "the store to restore from its copy")
    assert kill_for_a_new_process() is False  # a process without a copy: the kill switch holds
    assert flags.enabled("kill") is False
    assert [c.new.switch for c in store.history("kill")] == [False]
    restored = [r for r in records.records if "lost keys of version" in r.getMessage()]
    assert len(restored) == 1 and restored[0].levelno == logging.WARNING, restored
    assert "{ev}:flags:state" in restored[0].getMessage()

    # 3. Nothing lost: no needless restore or re-assert afterwards.
    before = (a.status().reasserts, b.status().reasserts, store.status().restores)
    flags.enable("other")
    a.register("after", spawn_thread(stop.wait))
    assert b.wait_for_version(a.status().written)
    assert (a.status().reasserts, b.status().reasserts, store.status().restores) == before
    print("OK")
"""
    + CLOSE_ALL
)


def test_keys_lost_under_an_evicting_policy_are_written_back_from_the_nodes() -> None:
    """Evicted registry hashes (leases kept) and an evicted flag state hash and
    history (meta kept, so the versions agree): each registry node writes its
    registrations back at its next heartbeat, the flag store restores from its
    copy within ``resync_interval``; a process without a copy reads the kill
    switch off. Without the checks nothing noticed (docs/redis.md)."""
    run_scenario(_SETUP + _LOST_KEYS, timeout=120)


_REAL_EVICTION = (
    """
import redis as redis_py
try:
    a, b, store, flags = open_evicting("allkeys-random", registrations=20)
    raw = redis_py.Redis.from_url(URL)
    ours = set(raw.keys("{ev}*"))
    used = int(raw.info("memory")["used_memory"])
    raw.config_set("maxmemory", str(used + 2_000_000))
    for i in range(3000):  # 30 MB of other keys into 2 MB of room
        raw.set(f"filler:{i}", b"x" * 10_000)
    assert int(raw.info("stats")["evicted_keys"]) > 0
    evicted = ours - set(raw.keys("{ev}*"))
    print("EVICTED", sorted(k.decode() for k in evicted))
    assert evicted, "none of the library's keys was evicted: the scenario proves nothing"
    raw.config_set("maxmemory", "0")
    raw.delete(*[f"filler:{i}" for i in range(3000)])

    wait_for(lambda: raw.hlen("{ev}:owner") == 40, "every registration back in Redis")
    wait_for(lambda: kill_for_a_new_process() is False, "the kill switch back in Redis")
    assert flags.enabled("kill") is False
    for node in (a, b):
        wait_for(lambda: node.status().state == "connected" and node.count() == 40, "mirror")
    print("OK")
"""
    + CLOSE_ALL
)


def test_real_eviction_under_allkeys_random_loses_no_registration_and_no_kill_switch() -> None:
    """Real eviction: memory filled past ``maxmemory`` with ``allkeys-random`` takes
    arbitrary keys of the library; once the pressure is gone every registration
    and the kill switch are back in Redis."""
    run_scenario(_SETUP + _REAL_EVICTION, timeout=120)
