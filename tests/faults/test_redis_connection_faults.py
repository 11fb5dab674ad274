"""Connection-level Redis faults, outside pytest: what two ``RedisRegistry`` nodes,
a ``FeatureFlags`` on a ``RedisFlagStore`` and the ``foundation`` command do.

- ``maxclients`` reached: a connection the library must open anew (one the
  server cut, one more for the pool) gets ``-ERR max number of clients
  reached``. It is ``BackendUnavailable`` saying MAXCLIENTS (not
  "unreachable"), the node is ``degraded``, the store ``stale``; everything
  recovers by itself once slots free.
  A node whose tail alone cannot reconnect flaps (degraded at each tail retry,
  connected at each recovery): one WARNING says so, the repeats go to DEBUG.
- the server's idle ``timeout``: idle pooled connections are closed by the
  server; the next call reconnects without an error.
- ``CLIENT KILL`` of each library connection in turn (they are named, see
  ``CLIENT LIST``): a pooled or write connection is replaced without an error,
  a tail or listener connection is a fault the node recovers from at once.
- ``?protocol=3`` / ``?legacy_responses=false``: refused (``InvalidConfig``);
  the flag store's listener could not read the RESP3 shape of ``XREAD``. So
  is ``?max_connections=N``: a registry node failed every heartbeat and write
  with "Too many connections" on a healthy server.

Every scenario asserts that no library thread died (``run_scenario``).
"""

from __future__ import annotations

from tests.faults._redis_scenarios import RECORDS
from tests.faults._subprocess import run_scenario

_SETUP = """
import os, subprocess, tempfile
import redis
from foundation import FeatureFlags, Flag, RedisFlagStore, errors, spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess

server = RedisServerProcess()
server.start()
stop = threading.Event()
# One connection of the test's own, opened first: the server's only free slot
# may be taken by a library connection, never by the test's admin commands.
admin = redis.Redis.from_url(server.url, single_connection_client=True, decode_responses=True)
admin.ping()

def named(prefix):
    return [c for c in admin.client_list() if c["name"].startswith(prefix)]

def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "foundation.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )

def open_all(heartbeat):
    # A lease far longer than any scenario: a node cut off (maxclients) is never
    # reaped by the other however slow the machine, so what a scenario asserts
    # about the other node's mirror holds whatever the time it takes.
    options = dict(lease_ttl=600.0, heartbeat=heartbeat, op_timeout=1.0)
    a = RedisRegistry(server.url, namespace="m", node="a", **options)
    b = RedisRegistry(server.url, namespace="m", node="b", **options)
    store = RedisFlagStore(
        server.url, namespace="f", timeout=1.0,
        cache_path=os.path.join(tempfile.mkdtemp(), "copy.db"),
    )
    flags = FeatureFlags([Flag("beta")], store=store)
    return a, b, store, flags
"""

# The end of a scenario that opened with open_all: close (inside the try, so a
# failing close fails the scenario), then stop.
_CLOSE_AND_STOP = """    for closing in (flags, store, a, b):
        closing.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""

_MAXCLIENTS = (
    _SETUP
    + RECORDS
    + """
said = Records(logging.INFO)
logging.getLogger("foundation").addHandler(said)
try:
    a, b, store, flags = open_all(2.0)
    a.register("a1", spawn_thread(stop.wait), {})
    b.register("b1", spawn_thread(stop.wait), {})
    flags.enable("beta", by="ops")
    # Node a's tail applies b1 in its own time (late on a loaded machine): wait for it
    # before the fault, so that "node a's mirror still answers" below checks the fault.
    wait_for(lambda: a.lookup("b1") is not None, "node a to see b1")
    threads = library_threads()
    admin.config_set("maxclients", 1)  # every connection open stays; no new one
    # Cut node b's and the flag store's connections: each must connect anew.
    for c in named("foundation:b") + named("foundation-tail:b") + named("foundation-flags"):
        admin.client_kill_filter(_id=c["id"])
    try:
        b.register("b2", spawn_thread(stop.wait), {})
        raise AssertionError("b.register succeeded with no connection to be had")
    except errors.BackendUnavailable as exc:
        print("REGISTER", exc)
        assert "MAXCLIENTS" in str(exc) and "maxclients" in str(exc), exc
        assert "unreachable" not in str(exc), exc
    try:
        flags.set("beta", True, by="ops", reason="a write")
        flags.enable("beta", by="ops")
    except errors.BackendUnavailable as exc:
        print("FLAGS", exc)
        assert "MAXCLIENTS" in str(exc), exc
    # The node knows Redis answers but refuses it: degraded, not disconnected.
    wait_for(lambda: b.status().state == "degraded", "node b to say degraded")
    assert "MAXCLIENTS" in (b.status().last_error or ""), b.status()
    wait_for(lambda: store.status().stale, "the store to go stale")
    wait_for(lambda: "MAXCLIENTS" in (store.status().last_error or ""), "the store's error")
    flags.disable("beta", by="ops", reason="kill switch")  # kept: applied here at once
    assert not flags.enabled("beta") and store.status().pending_flags == ("beta",)
    assert a.lookup("b1") is not None  # node a's mirror still answers
    # Node a loses its tail's connection only: each recovery (on the lease's own
    # connection) is followed by the tail failing again. A flap: one WARNING.
    recoveries = a.status().recoveries
    for c in named("foundation-tail:a"):
        admin.client_kill_filter(_id=c["id"])
    wait_for(lambda: a.status().recoveries >= recoveries + 4, "node a to flap", timeout=40)
    print("FLAPS", a.status().recoveries - recoveries)
    listed = cli("agents", "list", "--redis", server.url, "--namespace", "m")
    print("CLI", listed.returncode, listed.stderr.strip())
    assert listed.returncode == 69 and "MAXCLIENTS" in listed.stderr, listed
    assert "Traceback" not in listed.stderr, listed.stderr

    admin.config_set("maxclients", 10000)
    wait_for(lambda: b.status().state == "connected", "node b to recover")
    # Node a's recoveries were logged at DEBUG: once it stays connected for the
    # flap window, an INFO line says the flap is over (its log does not end at
    # the flap's WARNING).
    wait_for(lambda: any("node a (namespace 'm')" in m and "flap is over" in m
                         for m in said.messages), "node a to say its flap is over", timeout=40)
    assert a.status().state == "connected", a.status()
    wait_for(lambda: not store.status().stale and not store.status().pending, "the store")
    b.register("b2", spawn_thread(stop.wait), {})
    wait_for(lambda: a.lookup("b2") is not None, "node a to see b2")
    flags.enable("beta", by="ops")
    assert flags.enabled("beta")
    assert library_threads() == threads, (threads, library_threads())
"""
    + _CLOSE_AND_STOP
)


def test_maxclients_reached_is_maxclients_degraded_and_recovers() -> None:
    result = run_scenario(_MAXCLIENTS, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr
    # The operator is told what is wrong, by the node and by the store.
    assert "connected -> degraded" in result.stderr, result.stderr
    assert "MAXCLIENTS, the server refuses new connections" in result.stderr, result.stderr
    # Node a flapped (its tail failing right after each recovery): said once at
    # WARNING, then at DEBUG, not a WARNING and an INFO line per flap.
    node_a = [line for line in result.stderr.splitlines() if "node a (namespace 'm')" in line]
    warnings = [line for line in node_a if line.startswith("LOG WARNING")]
    assert sum("Redis failed again, with the same error" in line for line in warnings) == 1, (
        result.stderr
    )
    assert len(warnings) <= 3, "\n".join(warnings)  # the cut, MAXCLIENTS, the flap
    quiet = [line for line in node_a if line.startswith("LOG DEBUG") and "-> degraded" in line]
    assert len(quiet) >= 2, result.stderr
    over = [line for line in node_a if "flap is over" in line]
    assert len(over) == 1, result.stderr
    assert over[0].startswith("LOG INFO"), over


_IDLE_TIMEOUT = (
    _SETUP
    + """
try:
    a, b, store, flags = open_all(3.0)  # a heartbeat every 3 s: idle past the timeout
    a.register("a1", spawn_thread(stop.wait), {})
    flags.enable("beta", by="ops")
    threads = library_threads()
    admin.config_set("timeout", 1)  # the server closes connections idle past 1 s
    pooled = {c["id"] for c in named("foundation:") + named("foundation-flags[")}
    wait_for(lambda: not pooled & {c["id"] for c in admin.client_list()},
             "the server to close the idle pooled connections")
    began = time.monotonic()
    # Each call after the idle period works at its first attempt.
    a.register("a2", spawn_thread(stop.wait), {})
    a.update_metadata("a1", {"v": 2})
    b.register("b1", spawn_thread(stop.wait), {})
    flags.set("beta", False, by="ops")
    assert [c.flag for c in flags.history()] == ["beta", "beta"]
    wait_for(lambda: b.lookup("a2") is not None and a.lookup("b1") is not None, "the mirrors")
    # The lease threads' heartbeats reconnect too (their pooled connection idled out).
    wait_for(lambda: min(n._sh.last_beat_ok for n in (a, b)) > began, "a heartbeat")
    for node in (a, b):
        assert node.status().state == "connected", node.status()
        assert node.status().last_error is None, node.status()
    assert store.status().last_error is None and not store.status().stale, store.status()
    # Blocked readers (the tails, the listener) are not idle: never closed.
    assert named("foundation-tail:a") and named("foundation-flags-listener["), admin.client_list()
    listed = cli("agents", "list", "--redis", server.url, "--namespace", "m")
    assert listed.returncode == 0, listed
    assert library_threads() == threads, (threads, library_threads())
"""
    + _CLOSE_AND_STOP
)


def test_the_servers_idle_timeout_closing_pooled_connections_is_invisible() -> None:
    result = run_scenario(_IDLE_TIMEOUT, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr
    assert "LOG WARNING" not in result.stderr, result.stderr


_CLIENT_KILL = (
    _SETUP
    + """
try:
    a, b, store, flags = open_all(2.0)
    other = RedisFlagStore(server.url, namespace="f", timeout=1.0, cache_path=None)
    seen = FeatureFlags([Flag("beta")], store=other)
    a.register("a0", spawn_thread(stop.wait), {})
    threads = library_threads()
    # No library connection is a pub/sub one: nothing to kill.
    assert admin.client_kill_filter(_type="pubsub") == 0
    names = sorted({c["name"] for c in named("foundation")})
    print("NAMES", names)
    assert {"foundation:a", "foundation-tail:a", "foundation-flags[f]",
            "foundation-flags-listener[f]"} <= set(names), names
    for i, name in enumerate(names):
        for c in named(name):
            admin.client_kill_filter(_id=c["id"])
        if name.startswith(("foundation-tail", "foundation-flags-listener")):
            # A blocked reader's connection is a fault: noticed, recovered from.
            wait_for(lambda: all(n.status().state == "connected" for n in (a, b)), "nodes")
            wait_for(lambda: not store.status().stale and not other.status().stale, "stores")
        # A write connection or a pooled one is replaced at the first call.
        a.register(("a", i), spawn_thread(stop.wait), {})
        b.register(("b", i), spawn_thread(stop.wait), {})
        flags.set("beta", i % 2 == 0, by="ops")
        wait_for(lambda: b.lookup(("a", i)) is not None and a.lookup(("b", i)) is not None,
                 f"the nodes to see each other's write after killing {name}")
        wait_for(lambda: seen.enabled("beta") == (i % 2 == 0),
                 f"the other store to hear the flag after killing {name}")
        print("KILLED", name)
    assert library_threads() == threads, (threads, library_threads())
    for closing in (seen, other):
        closing.close()
"""
    + _CLOSE_AND_STOP
)


def test_client_kill_of_each_library_connection_in_turn_is_recovered() -> None:
    result = run_scenario(_CLIENT_KILL, timeout=120)
    assert "LOG ERROR" not in result.stderr, result.stderr
    assert len(result.lines("KILLED")) >= 6, result.stdout
    # A blocked read cut by the server says so (not "unreachable").
    assert (
        "the server closed the connection (it stopped or restarted, or it cut this client: "
        "CLIENT KILL" in result.stderr
    ), result.stderr


_RESP3 = """
from foundation import RedisFlagStore, errors
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess

server = RedisServerProcess()
server.start()
try:
    refused = {
        "protocol=3": "RESP2",
        "legacy_responses=false": "RESP2",
        "protocol=2&legacy_responses=0": "RESP2",
        "max_connections=1": "Too many connections",
        "max_connections=50": "Too many connections",
    }
    for query, why in refused.items():
        url = f"{server.url}?{query}"
        for make in (
            lambda: RedisFlagStore(url, namespace="f", timeout=1.0, cache_path=None),
            lambda: RedisRegistry(url, namespace="m", op_timeout=1.0),
        ):
            try:
                made = make()
                made.close()
                raise AssertionError(f"{query} was accepted")
            except errors.InvalidConfig as exc:
                print("REFUSED", exc)
                assert why in str(exc) and query.split("=")[0] in str(exc), exc
    # The defaults, spelled out, are accepted.
    store = RedisFlagStore(f"{server.url}?protocol=2&legacy_responses=true",
                           namespace="f", timeout=1.0, cache_path=None)
    assert store.status().connected and not store.status().stale, store.status()
    store.close()
    print("OK")
finally:
    server.stop()
"""


def test_a_url_asking_for_resp3_reply_shapes_or_a_pool_cap_is_refused() -> None:
    result = run_scenario(_RESP3)
    assert len(result.lines("REFUSED")) == 10, result.stdout
