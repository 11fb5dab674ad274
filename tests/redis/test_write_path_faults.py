"""RedisRegistry's write path (its own write connection) under real faults.

API writes go out on one redis-py connection the node keeps (``Shared.write_script``).
Each scenario runs in a subprocess with the interpreter's default hooks and asserts
what a user sees: typed errors only, the mirror equal to Redis after recovery,
no library thread dead, no file descriptor leaked, and, after ``fork()``, a
child that never writes on its parent's connection.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import pytest
import redis

from foundation import errors, telemetry
from foundation._redis_conn import ROUND_TRIP_EVENT
from foundation.registry import RegistryEvent
from foundation.registry._redis import RedisRegistry
from tests.faults._subprocess import run_scenario
from tests.redis.conftest import MakeRegistry
from tests.redis.support import wait_until
from tests.redis.tail_hold import TailHold
from tests.redis_support import RedisServer

_COMMON = """
import json, os
from foundation import errors, spawn_thread
from foundation.registry._redis import RedisRegistry
from foundation._demo._redis_server import RedisServerProcess

def in_redis(server, ns, key):
    raw = server.command("HGET", "{%s}:meta" % ns, json.dumps(key))
    return None if raw is None else json.loads(raw)

def typed(fn):
    try:
        fn()
    except errors.FoundationError as exc:
        return type(exc).__name__
    return "ok"

def fds():
    return len(os.listdir("/proc/self/fd"))
"""

_FAULTS = (
    _COMMON
    + """
server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    reg = RedisRegistry(server.url, namespace="w", lease_ttl=30.0, op_timeout=0.5)
    threads = library_threads()
    reg.register("k", spawn_thread(stop.wait), {"n": 0})
    connected = lambda: reg.status().state == "connected"

    # Frozen during a write, thawed after the timeout: the late reply of the
    # timed-out write must never be read by the next one.
    server.freeze()
    assert typed(lambda: reg.update_metadata("k", {"n": 1})) == "BackendUnavailable"
    server.thaw()
    wait_for(connected, "reconnected after the freeze")
    reg.update_metadata("k", {"n": 2})
    assert reg.lookup("k").metadata == {"n": 2} == in_redis(server, "w", "k")

    # The write connection killed between writes, then the scripts flushed.
    server.command("CLIENT", "KILL", "TYPE", "normal")
    wait_for(connected, "reconnected after CLIENT KILL")
    reg.update_metadata("k", {"n": 3})
    server.command("SCRIPT", "FLUSH")
    reg.update_metadata("k", {"n": 4})
    assert reg.unregister("k")
    reg.register("k", spawn_thread(stop.wait), {"n": 5})
    assert in_redis(server, "w", "k") == {"n": 5}

    # DEBUG SLEEP longer than the timeout. The sleep ends by itself: a write a
    # loaded machine sends too late to meet it (answered: "ok") is made again
    # under a new sleep, with a deadline, until one meets it.
    deadline = time.monotonic() + 60
    while True:
        sleeper = server.debug_sleep(1.5)
        got = typed(lambda: reg.update_metadata("k", {"n": 6}))
        sleeper.join()
        if got != "ok" or time.monotonic() > deadline:
            break
        wait_for(connected, "connected before another DEBUG SLEEP")
    assert got == "BackendUnavailable", got
    wait_for(connected, "reconnected after DEBUG SLEEP")
    reg.update_metadata("k", {"n": 7})
    assert reg.lookup("k").metadata == {"n": 7} == in_redis(server, "w", "k")

    # Killed and restarted (empty), again and again: no descriptor leaks.
    before = fds()
    for i in range(8):
        server.kill()
        assert typed(lambda: reg.update_metadata("k", {"n": i})) == "BackendUnavailable"
        server.start()
        wait_for(connected, "reconnected after a restart")
        reg.update_metadata("k", {"n": i})
        assert reg.lookup("k").metadata == {"n": i} == in_redis(server, "w", "k")
    assert fds() <= before, (before, fds())
    assert library_threads() == threads, library_threads()
    reg.close()
    assert typed(lambda: reg.update_metadata("k", {"n": 0})) == "Closed"
    print("OK")
finally:
    stop.set()
    server.stop()
"""
)


def test_write_connection_faults_are_typed_and_leave_the_mirror_equal_to_redis() -> None:
    result = run_scenario(_FAULTS, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr


_FORK = (
    _COMMON
    + """
server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    # A long heartbeat: no lease connection opens while the clients are counted.
    reg = RedisRegistry(server.url, namespace="f", lease_ttl=60.0, op_timeout=2.0)
    reg.register("k", spawn_thread(stop.wait), {"by": "parent"})
    name = "foundation:" + reg.node

    def writers():
        out = {}
        for line in server.command("CLIENT", "LIST").decode().splitlines():
            fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
            if fields.get("name") == name and fields.get("cmd") == "evalsha":
                out[fields["id"]] = fields["addr"]
        return out

    before = writers()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            # An inherited registry is closed in the child (tests/test_fork_closes_inherited.py):
            # its write is refused, naming fork(), and sends nothing on any connection.
            from foundation import errors
            try:
                reg.update_metadata("k", {"by": "child"})
            except errors.Closed as exc:
                code = 0 if "fork()" in str(exc) else 4
            # Checked while the child lives (its connections close with it).
            code = 3 if set(writers()) - set(before) else code
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, os.waitstatus_to_exitcode(status)
    assert in_redis(server, "f", "k") == {"by": "parent"}
    reg.update_metadata("k", {"by": "parent again"})
    assert in_redis(server, "f", "k") == {"by": "parent again"}
    reg.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""
)


def test_a_forked_child_never_writes_on_its_parents_connection() -> None:
    run_scenario(_FORK, timeout=60)


def _replay(events: list[RegistryEvent]) -> tuple[dict[Hashable, dict[str, Any]], list[str]]:
    """The entries a listener of ``events`` believes in, and what made no sense."""
    seen: dict[Hashable, dict[str, Any]] = {}
    wrong: list[str] = []
    for e in events:
        key = e.entry.key
        if e.kind == "registered" and key in seen:
            wrong.append(f"registered {key!r} twice")
        elif e.kind != "registered" and key not in seen:
            wrong.append(f"{e.kind} {key!r} never registered")
        if e.kind == "unregistered":
            seen.pop(key, None)
        else:
            seen[key] = dict(e.entry.metadata)
    return seen, wrong


def test_an_update_of_an_entry_the_mirror_has_not_seen_is_a_registration_to_listeners(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    """B updates A's new key before B's tail has read its registration (the tail
    is held): B's listeners see it registered (with the new metadata), then
    nothing more for it; never an update of a key they never saw."""
    a, b = make_registry(), make_registry()
    hold = TailHold(b, "gate")  # B's tail thread waits once it applied "gate"
    held, release = hold.stalled, hold.release
    events: list[RegistryEvent] = []
    b.subscribe(events.append)
    a.register("gate", agents())
    assert held.wait(10)
    a.register("k", agents(), {"n": 1})
    b.update_metadata("k", {"n": 2})  # B's mirror lacks "k": its tail is held
    release.set()
    assert b.wait_for_version(a.status().written)
    assert b.wait_for_version(b.status().written)
    assert wait_until(lambda: not b._delivery.pending and not b._delivery.busy)
    seen, wrong = _replay(events)
    assert wrong == []
    assert seen == {"gate": {}, "k": {"n": 2}}
    assert {e.key: dict(e.metadata) for e in b.list_all()} == seen


def test_many_writers_on_two_nodes_leave_events_mirrors_and_redis_agreeing(
    make_registry: MakeRegistry, agents: Callable[[], Any], redis_server: RedisServer, ns: str
) -> None:
    """Threads of two nodes register, replace, update and unregister the same keys
    at once: each node's listeners replay to its mirror, both mirrors equal Redis."""
    a, b = make_registry(), make_registry()
    log: dict[str, list[RegistryEvent]] = {a.node: [], b.node: []}
    a.subscribe(log[a.node].append)
    b.subscribe(log[b.node].append)
    failures: list[BaseException] = []

    def work(reg: RedisRegistry, seed: int) -> None:
        rnd = random.Random(seed)
        for i in range(150):
            key = f"k{rnd.randrange(12)}"
            try:
                op = rnd.randrange(4)
                if op == 0:
                    reg.register(key, agents(), {"s": seed, "i": i}, replace=rnd.random() < 0.5)
                elif op == 1:
                    reg.update_metadata(key, {"s": seed, "i": i})
                elif op == 2:
                    reg.unregister(key)
                else:
                    reg.register_many([(f"m{seed}-{i}", agents()), (key, agents())])
            except (errors.AlreadyRegistered, errors.NotRegistered):
                pass
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=work, args=((a, b)[n % 2], n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    written = max(a.status().written, b.status().written)
    assert a.wait_for_version(written)
    assert b.wait_for_version(written)
    # The mirrors are current; their listeners may still be hearing the last
    # events (a writer leaves its events to a courier already delivering).
    for reg in (a, b):
        assert wait_until(lambda r=reg: not r._delivery.pending and not r._delivery.busy)
    client = redis.Redis.from_url(redis_server.url)
    try:
        heads = client.hgetall(f"{{{ns}}}:head")
        metas = client.hgetall(f"{{{ns}}}:meta")
    finally:
        client.close()
    truth = {json.loads(k): json.loads(metas[k]) for k in heads}
    for reg in (a, b):
        mirror = {e.key: dict(e.metadata) for e in reg.list_all()}
        assert mirror == truth
        seen, wrong = _replay(log[reg.node])
        assert wrong == []
        assert seen == mirror


def test_a_registration_another_node_removes_before_the_reply_is_applied_succeeded(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    """A's register lands, B unregisters it, and A's tail applies B's delete before
    A's writer applies its reply (held there by a round-trip telemetry listener,
    which runs in the writing thread): the register succeeded, its agent lives,
    so it returns normally (never NotAlive), and both mirrors lack the key."""
    a, b = make_registry(), make_registry()
    landed, go = threading.Event(), threading.Event()

    def hold(_name: str, data: Mapping[str, Any]) -> None:
        if data["doing"] == "registering 'k'" and data["ok"] and not go.is_set():
            landed.set()
            go.wait(10)

    detach = telemetry.attach(ROUND_TRIP_EVENT, hold)
    outcome: list[BaseException | None] = []

    def register() -> None:
        try:
            a.register("k", agents(), {"n": 1})
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=register)
    try:
        writer.start()
        assert landed.wait(10)
        assert wait_until(lambda: b.lookup("k") is not None)
        assert b.unregister("k")
        assert a.wait_for_version(b.status().written)
    finally:
        go.set()
        detach()
        writer.join(10)
    assert outcome == [None]
    assert a.lookup("k") is None
    assert b.lookup("k") is None
    assert a.status().local_entries == 0


def test_an_update_racing_another_nodes_unregister_never_brings_the_key_back(
    make_registry: MakeRegistry, agents: Callable[[], Any], redis_server: RedisServer, ns: str
) -> None:
    """B unregisters A's key; A updates it before A's tail has applied that delete
    (the tail is held). Redis did not lose it, so A must not re-assert it
    (undoing B's unregister): NotRegistered, and the key stays gone."""
    a, b = make_registry(), make_registry()
    a.register("k", agents(), {"n": 1})
    assert b.wait_for_version(a.status().written)
    hold = TailHold(a, "gate")  # A's tail thread waits once it applied "gate"
    held, release = hold.stalled, hold.release
    try:
        b.register("gate", agents())
        assert held.wait(10)
        assert b.unregister("k")
        with pytest.raises(errors.NotRegistered):
            a.update_metadata("k", {"n": 2})
    finally:
        release.set()
    assert a.wait_for_version(b.status().written)
    assert a.lookup("k") is None
    assert b.lookup("k") is None
    assert redis_server.command("HGET", f"{{{ns}}}:head", '"k"') is None
    assert a.status().recoveries == 0


_SAME_DATA = (
    _COMMON
    + """
def replay(events):
    seen, wrong = {}, []
    for e in events:
        k = e.entry.key
        if e.kind == "registered" and k in seen:
            wrong.append(("registered twice", k))
        elif e.kind != "registered" and k not in seen:
            wrong.append((e.kind, k))
        if e.kind == "unregistered":
            seen.pop(k, None)
        else:
            seen[k] = dict(e.entry.metadata)
    return seen, wrong

server = RedisServerProcess()
server.start()
stop = threading.Event()
try:
    a = RedisRegistry(server.url, namespace="s", op_timeout=0.5)
    b = RedisRegistry(server.url, namespace="s", op_timeout=0.5)
    threads = library_threads()
    events = {a.node: [], b.node: []}
    a.subscribe(events[a.node].append)
    b.subscribe(events[b.node].append)
    for i in range(20):
        a.register(f"a{i}", spawn_thread(stop.wait), {"i": i})
        b.register(f"b{i}", spawn_thread(stop.wait), {"i": i})
    server.command("SAVE")
    # Lost by the restart below: Redis comes back from the older data (its change
    # counter and stream go back), while both nodes write.
    for i in range(20, 30):
        a.register(f"a{i}", spawn_thread(stop.wait), {"i": i})
    for i in range(5):
        b.update_metadata(f"a{i}", {"u": 1})
    assert b.unregister("a7")
    assert a.wait_for_version(b.status().written)  # A knows: it must not re-assert "a7"
    server.kill()
    server.start()  # loads the SAVEd data

    failures = []
    def write(reg, prefix):
        for i in range(30):
            try:
                reg.update_metadata(f"{prefix}{i % 20}", {"n": i})
            except (errors.NotRegistered, errors.BackendUnavailable):
                pass
            except BaseException as exc:
                failures.append(repr(exc))
    writers = [threading.Thread(target=write, args=(r, p)) for r, p in ((a, "a"), (b, "b"))]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    assert failures == [], failures

    def truth():
        heads = server.command("HGETALL", "{s}:head")
        return {json.loads(k): in_redis(server, "s", json.loads(k)) for k in heads[::2]}

    def mirrors():
        return [{e.key: dict(e.metadata) for e in r.list_all()} for r in (a, b)]

    def converged():
        states = {a.status().state, b.status().state}
        return states == {"connected"} and all(m == truth() for m in mirrors())

    wait_for(converged, "both mirrors equal to Redis")
    assert len(truth()) == 30 + 20 - 1, sorted(truth())  # every live agent, "a7" gone
    for reg, mirror in zip((a, b), mirrors()):
        seen, wrong = replay(events[reg.node])
        assert wrong == [], wrong
        assert seen == mirror
    assert library_threads() == threads, library_threads()
    a.close()
    b.close()
    print("OK")
finally:
    stop.set()
    server.stop()
"""
)


def test_a_restart_from_older_data_while_both_nodes_write_converges() -> None:
    result = run_scenario(_SAME_DATA, timeout=120)
    assert "unexpected error" not in result.stderr, result.stderr
