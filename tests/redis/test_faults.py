"""RedisRegistry under faults: error replies, global outages, lost registrations, thaws.

The outage scenarios run in a subprocess with the interpreter's default hooks
(``tests.faults._subprocess``), with a second node in a process of its own
(``tests.redis.node_main``), and assert what a user would see: typed errors
only, the library threads alive, ``status()`` truthful, and, once Redis is
healthy, every live registration of every node still there.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from foundation import errors
from foundation.registry import RegistryEvent
from foundation.registry._redis import RedisRegistry
from tests.faults._subprocess import run_scenario
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, wait_until
from tests.redis_support import RedisServer

MakeNode = Callable[..., NodeProcess]


def _redis_threads(reg: RedisRegistry) -> list[str]:
    return [t.name for t in threading.enumerate() if reg.node in t.name]


# ------------------------------------------------------------------ construction


def test_a_database_index_the_server_lacks_is_invalid_config(redis_server: RedisServer) -> None:
    before = threading.active_count()
    with pytest.raises(errors.InvalidConfig, match="out of range") as info:
        RedisRegistry(f"redis://127.0.0.1:{redis_server.port}/99", op_timeout=1.0)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, redis.RedisError)
    assert wait_until(lambda: threading.active_count() <= before)  # nothing left running


@pytest.fixture
def http_port() -> Iterator[int]:
    """A tiny HTTP server on a free port: something that is not Redis."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, name="http-not-redis", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_port_that_is_not_redis_is_backend_unavailable(http_port: int) -> None:
    with pytest.raises(errors.BackendUnavailable, match="Redis protocol") as info:
        RedisRegistry(f"redis://127.0.0.1:{http_port}/0", op_timeout=1.0)
    assert not isinstance(info.value, redis.RedisError)


def test_a_bad_database_in_the_url_is_invalid_config_before_connecting() -> None:
    with pytest.raises(errors.InvalidConfig, match="database must be a number"):
        RedisRegistry("redis://127.0.0.1:1/zero")


# ------------------------------------------------------------------ outage periods

_PERIOD = """
import json
from foundation import errors, spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess
from tests.redis.support import NodeProcess

FAULT = {fault!r}
TTL = 1.0
server = RedisServerProcess()
server.start()
stop = threading.Event()
b = None
try:
    a = RedisRegistry(server.url, namespace="p", lease_ttl=TTL, op_timeout=0.5)
    seen = []
    a.subscribe(lambda e: seen.append((e.kind, e.reason, e.entry.key)))
    b = NodeProcess(server.url, "p", ttl=TTL)
    for k in ("a1", "a2"):
        a.register(k, spawn_thread(stop.wait), {{"k": k}})
    assert b.call("register", key="b1", meta={{"k": "b1"}})["ok"]
    c = NodeProcess(server.url, "p", ttl=TTL)  # dies during the outage
    assert c.call("register", key="c1")["ok"]
    everything = ["a1", "a2", "b1"]
    assert b.call("wait_keys", keys=everything + ["c1"])["ok"]
    wait_for(lambda: sorted(e.key for e in a.list_all()) == everything + ["c1"], "A: every key")
    threads_before = library_threads()
    b_threads = b.call("threads")["threads"]
    assert len(b_threads) == 2, b_threads

    if FAULT == "readonly":
        server.make_read_only()
        marker = "READONLY"
    elif FAULT == "oom":
        server.oom_on()
        marker = "OOM"
    elif FAULT == "masterdown":
        # A replica that lost its master and must not serve stale data: every
        # command, reads included, answers MASTERDOWN.
        server.command("CONFIG", "SET", "replica-serve-stale-data", "no")
        server.make_read_only()
        marker = "MASTERDOWN"
    else:
        server.freeze()
        marker = "no answer"
    t_fault = time.monotonic()
    c.kill()  # SIGKILL during the outage: a really dead node

    def typed(call, *args):
        try:
            call(*args)
        except errors.BackendUnavailable as exc:
            return exc
        raise AssertionError(f"{{call.__name__}} did not raise BackendUnavailable")

    typed(a.register, "during", spawn_thread(stop.wait))
    assert a.lookup("during") is None, "a failed register changed state"
    typed(a.update_metadata, "a1", {{"k": "changed"}})
    assert a.lookup("a1").metadata["k"] == "a1", "a failed update changed state"
    if FAULT != "oom":  # under OOM Redis still allows deletes (they free memory)
        typed(a.unregister, "a2")
        assert a.lookup("a2") is not None, "a failed unregister changed state"
    wait_for(
        lambda: (st := a.status()).connected is False and st.stale
        and marker in (st.last_error or ""),
        "status() to tell the truth",
    )
    print("STATE", a.status().state, flush=True)
    if FAULT != "freeze":
        b_status = b.call("status")["status"]
        wait_for(lambda: b.call("status")["status"]["connected"] is False, "B to say so too")
    # Outlast every lease: nobody can heartbeat (3 TTLs of a global outage).
    wait_for(lambda: time.monotonic() > t_fault + 3 * TTL, "the leases to run out", 30)
    assert library_threads() == threads_before, (library_threads(), threads_before)

    if FAULT in ("readonly", "masterdown"):
        server.make_writable()
    elif FAULT == "oom":
        server.oom_off()
    else:
        server.thaw()
    t_back = time.monotonic()
    wait_for(lambda: a.status().state == "connected" and not a.is_stale(), "A to recover", 30)
    wait_for(lambda: b.call("status")["status"]["state"] == "connected", "B to recover", 30)
    print("RECOVERED_IN", round(time.monotonic() - t_back, 3), flush=True)

    # The dead node is still reaped (later by the outage's length); no live agent
    # of any node was reaped, on either side, nor in Redis.
    def heads():
        return sorted(json.loads(k) for k in server.command("HKEYS", "{{p}}:head"))

    # (Only "during" may come and go, and "c1" go: see below.)
    assert set(everything) <= set(heads()), heads()
    wait_for(lambda: heads() == everything, "Redis to hold exactly the live keys")
    wait_for(lambda: sorted(e.key for e in a.list_all()) == everything, "A's mirror too")
    assert b.call("wait_keys", keys=everything)["ok"]
    # A's listeners hear a change after its mirror applied it (a courier thread).
    wait_for(lambda: ("unregistered", "down", "c1") in seen, "A's listeners to hear c1 go")
    c1_gone = [e[:2] for e in seen if e[2] == "c1" and e[0] == "unregistered"]
    assert c1_gone == [("unregistered", "down")], c1_gone
    # (A write that timed out may have landed when a frozen server resumed: that
    # registration is deleted as an orphan; it is not one of these keys.)
    assert [s for s in seen if s[0] == "unregistered" and s[2] in everything] == [], seen
    b_log = b.call("events")["log"]
    lost = [e for e in b_log if e[0] == "unregistered" and json.loads(e[2]) in everything]
    assert lost == [], b_log
    assert library_threads() == threads_before, (library_threads(), threads_before)
    assert b.call("threads")["threads"] == b_threads

    # And everything works again.
    a.register("after", spawn_thread(stop.wait), {{"k": "after"}})
    a.update_metadata("a1", {{"k": "new"}})
    assert b.call("wait_version", version=a.status().written)["ok"]
    assert b.call("lookup", key="a1")["entry"]["metadata"] == {{"k": "new"}}
    assert b.call("register", key="b2")["ok"]
    a.close()
    b.close()
    print("OK")
finally:
    stop.set()
    if b is not None:
        b.close()
    server.stop()
"""


@pytest.mark.parametrize("fault", ["readonly", "oom", "masterdown", "freeze"])
def test_an_outage_period_keeps_threads_alive_errors_typed_and_every_live_agent(
    fault: str,
) -> None:
    """READONLY (a demoted master), OOM (maxmemory, noeviction), MASTERDOWN (a
    replica without its master) and a frozen server:
    writes raise BackendUnavailable, status() says so, no library thread dies,
    and after the fault NO live agent of any node was reaped (global-outage rule)."""
    result = run_scenario(_PERIOD.format(fault=fault), timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr
    state = result.lines("STATE")[0].split()[1]
    assert state == ("disconnected" if fault == "freeze" else "degraded")
    # Each transition is logged under foundation.registry.redis.
    assert "LOG WARNING foundation.registry.redis" in result.stderr
    assert "-> connected" in result.stderr


_REASSERT = """
import json
from foundation import errors, spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess

server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    # A long lease: the heartbeat alone would not notice the loss for seconds.
    a = RedisRegistry(server.url, namespace="u", lease_ttl=30.0, op_timeout=0.5)
    b = RedisRegistry(server.url, namespace="u", lease_ttl=30.0, op_timeout=0.5)
    a.register("k", spawn_thread(stop.wait), {"v": 1})
    a.register("other", spawn_thread(stop.wait), {"v": 1})
    assert b.wait_for_version(a.status().written)

    def in_redis(key):
        raw = server.command("HGET", "{u}:meta", json.dumps(key))
        return None if raw is None else json.loads(raw)

    # 1. Redis lost everything (as after a restart without persistence) while
    #    the connections stayed up: lookup and update_metadata must agree.
    server.command("FLUSHALL")
    assert a.lookup("k") is not None
    a.update_metadata("k", {"v": 2})
    assert a.lookup("k").metadata["v"] == 2
    assert in_redis("k") == {"v": 2}, in_redis("k")
    assert in_redis("other") == {"v": 1}, "the other live registration was not re-asserted"
    wait_for(lambda: b.lookup("k") is not None and b.lookup("k").metadata["v"] == 2, "B")

    # 2. A real restart, empty: the update made during the recovery wins.
    server.restart()
    deadline = time.monotonic() + 20
    while True:
        try:
            a.update_metadata("k", {"v": 3})
            break
        except errors.BackendUnavailable:
            assert time.monotonic() < deadline, "update_metadata never succeeded"
            time.sleep(0.01)  # sleep-ok: retrying with a deadline while Redis restarts
    assert a.lookup("k").metadata["v"] == 3
    wait_for(lambda: a.status().state == "connected", "A to recover")
    assert in_redis("k") == {"v": 3}, in_redis("k")
    assert in_redis("other") == {"v": 1}
    wait_for(lambda: b.lookup("k") is not None and b.lookup("k").metadata["v"] == 3, "B 3")
    st = a.status()
    assert st.reasserts >= 2 and st.reasserted >= 3, st
    a.close()
    b.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""


def test_update_while_redis_lost_our_registration_reasserts_with_the_new_metadata() -> None:
    result = run_scenario(_REASSERT, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr


# ------------------------------------------------------------------ no false "replaced"


def test_our_own_registration_written_back_is_not_reported_as_replaced(
    redis_server: RedisServer, make_registry: MakeRegistry, ns: str, agents
) -> None:
    """What a re-assert writes (our own registration, same head) reaching our tail
    is not a replacement: no event."""
    a = make_registry()
    a.register("k", agents(), {"n": 1})
    events: list[RegistryEvent] = []
    a.subscribe(events.append)
    p = "{" + ns + "}"
    with redis.Redis.from_url(redis_server.url) as raw:
        ek = json.dumps("k")
        head, meta = raw.hget(f"{p}:head", ek), raw.hget(f"{p}:meta", ek)
        # Exactly the record REGISTER (mode "a", writer "") appends for a key
        # Redis had lost: same head, same metadata.
        v = raw.incr(f"{p}:ver")
        raw.xadd(f"{p}:log", {"v": v, "w": "", "op": "r", "k": ek, "h": head, "m": meta})
    assert a.wait_for_version(v)
    assert events == []
    assert a.lookup("k").node == a.node  # type: ignore[union-attr]


def test_a_node_frozen_past_its_lease_tells_its_listeners_nothing_false_when_thawed(
    redis_server: RedisServer, make_registry: MakeRegistry, make_node: MakeNode
) -> None:
    a = make_node(redis_server.url, ttl=1.0)
    b = make_registry(lease_ttl=1.0)
    keys = [("k", i) for i in range(30)]
    for k in keys:
        reply = a.call("register", key=list(k), meta={"i": k[1]})
    for k in keys[::2]:  # the current metadata is what must come back
        reply = a.call("update", key=list(k), meta={"i": -k[1]})
    assert b.wait_for_version(reply["written"])
    assert a.call("churn")["ok"]  # writes on A all along, through the freeze
    a.freeze()  # SIGSTOP: A's heartbeat stops, its agents stay alive
    assert wait_until(lambda: all(b.lookup(k) is None for k in keys), timeout=20)
    a.thaw()
    # Nobody took A's keys: A re-asserts every one, with no conflict.
    assert wait_until(
        lambda: all((e := b.lookup(k)) is not None and e.node == a.node for k in keys),
        timeout=20,
    )
    for k in keys:
        want = {"i": -k[1]} if k[1] % 2 == 0 else {"i": k[1]}
        assert dict(b.lookup(k).metadata) == want  # type: ignore[union-attr]
    assert a.call("churn_stop")["errors"] == []
    assert a.call("conflicts")["keys"] == []
    events = a.call("events")["events"]
    assert events.get("unregistered:replaced", 0) == 0, events
    assert events.get("unregistered:down", 0) == 0, events
    # Counted once A has read its re-assert's replies, after B saw the keys land.
    assert wait_until(lambda: a.call("status")["status"]["reasserts"] >= 1)
    status = a.call("status")["status"]
    assert status["reasserted"] >= len(keys)


# ------------------------------------------------------------------ the loops never die

_LOOP_BUGS = """
from foundation import spawn_thread
from foundation.registry._redis import RedisRegistry, _lease, _tail
from foundation._demo._redis_server import RedisServerProcess

# Inject one unexpected exception into each loop body (a bug, not a Redis fault).
real_heartbeat, real_apply = _lease.Lease.heartbeat, _tail.Tail._apply_batch
injected = {"lease": 0, "tail": 0}

def buggy_heartbeat(self):
    if self._sh.node == "a" and injected["lease"] == 0 and self.thread.is_alive():
        injected["lease"] += 1
        raise RuntimeError("injected lease bug")
    return real_heartbeat(self)

def buggy_apply(self, gen, resp):
    if self._sh.node == "a" and injected["tail"] == 0:
        injected["tail"] += 1
        raise RuntimeError("injected tail bug")
    return real_apply(self, gen, resp)

_lease.Lease.heartbeat = buggy_heartbeat
_tail.Tail._apply_batch = buggy_apply

server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    a = RedisRegistry(server.url, namespace="l", node="a", lease_ttl=2.0)
    b = RedisRegistry(server.url, namespace="l", node="b", lease_ttl=2.0)
    a_threads = sorted(t.name for t in threading.enumerate() if "[a]" in t.name)

    def broken(event):
        raise ListenerBug(f"listener-bug on {event.kind} {event.entry.key}")

    a.subscribe(broken)
    seen = []
    a.subscribe(lambda e: seen.append((e.kind, e.entry.key)))
    a.register("mine", spawn_thread(stop.wait))
    b.register("theirs", spawn_thread(stop.wait))
    wait_for(lambda: injected["lease"] == 1 and injected["tail"] == 1, "both bugs to fire")
    # The tail re-reads what it could not apply; remote events reach listeners.
    wait_for(lambda: ("registered", "theirs") in seen, "A to apply B's write")
    b.update_metadata("theirs", {"n": 1})
    wait_for(lambda: ("updated", "theirs") in seen, "A to apply B's update")
    # The lease carried on: A's registration was never reaped.
    wait_for(lambda: a.status().state == "connected", "A connected")
    assert b.lookup("mine") is not None
    assert sorted(t.name for t in threading.enumerate() if "[a]" in t.name) == a_threads
    # A record nobody can read (written by something else) does not stop the tail.
    server.command("XADD", "{l}:log", "*", "junk", "1")
    b.register("after-junk", spawn_thread(stop.wait))
    wait_for(lambda: a.lookup("after-junk") is not None, "A to read past the junk")
    assert sorted(t.name for t in threading.enumerate() if "[a]" in t.name) == a_threads
    a.close()
    b.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""


def test_unexpected_errors_in_the_loops_and_listeners_are_logged_and_threads_carry_on() -> None:
    result = run_scenario(_LOOP_BUGS, timeout=120)
    err = result.stderr
    assert "LOG ERROR foundation.registry.redis [foundation-redis-lease[a]]" in err, err
    assert "RuntimeError: injected lease bug" in err
    assert "LOG ERROR foundation.registry.redis [foundation-redis-tail[a]]" in err, err
    assert "RuntimeError: injected tail bug" in err
    assert "KeyError: b'v'" in err  # the junk record, logged
    # The listener's error is reported with its traceback, once per event.
    assert err.count("ListenerBug: listener-bug on updated theirs") == 1, err


_STALE_META = """
import json
from foundation import spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess

server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    a = RedisRegistry(server.url, namespace="m", node="a", lease_ttl=30.0)
    b = RedisRegistry(server.url, namespace="m", node="b", lease_ttl=30.0)
    seen = []
    a.subscribe(lambda e: seen.append((e.kind, e.reason, e.entry.key)))
    b_seen = []
    b.subscribe(lambda e: b_seen.append((e.kind, e.reason, e.entry.key)))
    a.register("k", spawn_thread(stop.wait), {"v": 1})
    a.update_metadata("k", {"v": 2})
    assert b.wait_for_version(a.status().written)
    # A failover to a replica that missed the update: Redis holds the old
    # metadata under the same registration, and every connection is cut.
    server.command("HSET", "{m}:meta", json.dumps("k"), json.dumps({"v": 1}, separators=(",", ":")))
    server.command("CLIENT", "KILL", "TYPE", "normal")
    meta = lambda: json.loads(server.command("HGET", "{m}:meta", json.dumps("k")))
    wait_for(lambda: meta() == {"v": 2}, "A's re-assert to restore the current metadata")
    wait_for(lambda: b.lookup("k").metadata["v"] == 2, "B to follow")
    wait_for(lambda: a.status().state == "connected", "A to recover")
    assert a.lookup("k").metadata["v"] == 2
    assert a.status().reasserted >= 1
    assert not [e for e in seen + b_seen if e[0] == "unregistered"], (seen, b_seen)
    a.close()
    b.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""


def test_a_reassert_brings_metadata_redis_lost_back_to_the_current_one() -> None:
    result = run_scenario(_STALE_META, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr
