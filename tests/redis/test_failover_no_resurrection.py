"""A death whose delete Redis lost is heard once, not "registered" again in between.

During a Sentinel failover the old master stays writable for about a second
after the promotion: node A's deletes of its dead agents land there and are
lost, node B has heard them already (``unregistered``/down). B's resync
snapshot from the new master holds the entries again; B took them for new
registrations (``registered``, and its ``lookup`` returned the dead agent),
then A's recovery deleted them: a second down. The same history, made
deterministic on one server: the namespace goes back in place (``SWAPDB``) to
a copy taken before the death while A is frozen, so B resynchronises before
A deletes its dead entry.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.redis._heard import Heard, owners
from tests.redis.conftest import MakeRegistry
from tests.redis.support import NodeProcess, unique_namespace, wait_until
from tests.redis.tail_hold import TailHold
from tests.redis_support import RedisServer


def _keep_old_copy(server: RedisServer, ns: str) -> None:
    for key in server.command("KEYS", f"{{{ns}}}:*"):
        server.command("COPY", key, key, "DB", "1", "REPLACE")


def test_a_death_redis_lost_is_heard_once(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any
) -> None:
    ns = unique_namespace("fo")
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=3.0)
    heard = Heard()
    b.subscribe(heard)
    a = NodeProcess(fresh_redis.url, ns, ttl=3.0)
    try:
        a.call("register", key="a0")
        a.call("register", key="a1")
        assert wait_until(lambda: b.lookup("a0") is not None and b.lookup("a1") is not None)
        _keep_old_copy(fresh_redis, ns)  # a0 registered, alive
        a.call("kill_agent", key="a0")
        assert wait_until(lambda: b.lookup("a0") is None)  # B heard the death
        a.freeze()  # A cannot delete a0 again before B resynchronises
        recoveries = b.status().recoveries
        fresh_redis.command("SWAPDB", "0", "1")  # back to the copy holding a0
        assert wait_until(
            lambda: b.status().recoveries > recoveries and b.status().state == "connected",
            timeout=15,
        ), b.status()
        # B follows the snapshot, which holds a0: the dead agent is not back.
        assert b.lookup("a0") is None
        assert b.lookup("a1") is not None
        a.thaw()
        # A notices Redis went back, deletes its dead a0 (re-asserts a1).
        assert wait_until(lambda: owners(fresh_redis, ns) == {'"a1"'}, timeout=15)
        b.register("marker", agents())  # events are delivered in order: all before it
        assert heard.marked.wait(10)
        assert b.lookup("a0") is None
        assert heard.of("a0") == [("registered", None), ("unregistered", "down")]
        assert heard.of("a1") == [("registered", None)]
    finally:
        a.close()


def _kill_tail_connection(server: RedisServer, node: str) -> None:
    for line in server.command("CLIENT", "LIST").decode().splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("name") == f"foundation-tail:{node}":
            server.command("CLIENT", "KILL", "ID", fields["id"])


def _wait_resync(b: Any, resyncs: int) -> None:
    """Wait until ``b`` resynchronised (more than ``resyncs``) and is connected."""
    assert wait_until(
        lambda: b.status().resyncs > resyncs and b.status().state == "connected", timeout=15
    ), b.status()


def _flush(b: Any, heard: Heard, agents: Any) -> None:
    """Register a marker on ``b`` and wait until its listeners heard it: every
    event before it was told."""
    b.register("marker", agents())
    assert heard.marked.wait(10)


def test_a_registration_written_back_in_the_same_history_is_told_at_once(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any
) -> None:
    """The other side of the guard: a registration B saw deleted (A's lease
    reaped while A was frozen) and A then wrote back, the same registration (a
    re-assert), in the same history, reaches B by a resync, not by its tail. The
    stream holds the delete: the entry is live and told at once, not held."""
    ns = unique_namespace("fo")
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.5)
    c = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.5)
    heard = Heard()
    b.subscribe(heard)
    a = NodeProcess(fresh_redis.url, ns, ttl=1.5)
    try:
        a.call("register", key="a0")
        assert wait_until(lambda: b.lookup("a0") is not None)
        a.freeze()
        assert wait_until(lambda: b.lookup("a0") is None, timeout=15)  # reaped, heard
        hold = TailHold(b, "stall")  # B's tail stays behind from "stall" on
        c.register("stall", agents())
        assert hold.stalled.wait(10)
        a.thaw()
        # A finds its lease lost and writes a0 back (B's tail does not read it).
        assert wait_until(lambda: owners(fresh_redis, ns) == {'"a0"', '"stall"'}, timeout=15)
        _kill_tail_connection(fresh_redis, b.node)
        resyncs = b.status().resyncs
        hold.release.set()
        _wait_resync(b, resyncs)
        assert b.lookup("a0") is not None
        _flush(b, heard, agents)
        assert heard.of("a0") == [
            ("registered", None),
            ("unregistered", "down"),
            ("registered", None),
        ]
    finally:
        hold_release = locals().get("hold")
        if hold_release is not None:
            hold_release.release.set()
        a.close()


def test_a_written_back_registration_whose_delete_was_trimmed_is_told_at_once(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any
) -> None:
    """As above, but B's tail falls behind past the stream's trim point (ordinary
    traffic, ``stream_maxlen``), so the delete record is trimmed, not lost: a
    record the stream no longer reaches proves nothing, and the live entry is
    told at once, never held (it was held two leases, its agent alive)."""
    ns = unique_namespace("fo")
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=3.0)
    c = make_registry(fresh_redis.url, namespace=ns, lease_ttl=3.0, stream_maxlen=64)
    heard = Heard()
    b.subscribe(heard)
    a = NodeProcess(fresh_redis.url, ns, ttl=3.0)
    hold = TailHold(b, "stall")
    try:
        a.call("register", key="a0")
        assert wait_until(lambda: b.lookup("a0") is not None)
        a.freeze()
        assert wait_until(lambda: b.lookup("a0") is None, timeout=20)  # reaped, heard
        c.register("stall", agents())
        assert hold.stalled.wait(10)
        a.thaw()
        assert wait_until(lambda: '"a0"' in owners(fresh_redis, ns), timeout=15)  # written back
        for i in range(400):  # the stream is trimmed past B's position and the delete
            c.register(("x", i), agents())
        resyncs = b.status().resyncs
        hold.release.set()  # B meets the gap and resynchronises
        _wait_resync(b, resyncs)
        assert b.lookup("a0") is not None
        _flush(b, heard, agents)
        assert heard.of("a0") == [
            ("registered", None),
            ("unregistered", "down"),
            ("registered", None),
        ]
    finally:
        hold.release.set()
        a.close()


@pytest.mark.parametrize("then", ["nothing", "update"])
def test_a_held_entry_is_shown_once_its_owner_updates_it_or_its_time_is_up(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any, then: str
) -> None:
    """A delete B heard that the history of B's next snapshot lacks (a record
    written by hand, then deleted from the stream), of a registration nobody
    removed: B holds the entry (not shown, not told), and shows it, told
    ``registered``, once its owner updates it, or after two leases with no
    record of it (the mirror never hides an entry of Redis for good)."""
    ns = unique_namespace("fo")
    a = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.5)
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.5)
    heard = Heard()
    b.subscribe(heard)
    _hold_a0(fresh_redis, ns, a, b, agents, keep=None)  # due after two leases
    if then == "update":
        a.update_metadata("a0", {"x": 2})
    assert wait_until(lambda: b.lookup("a0") is not None, timeout=15)
    _flush(b, heard, agents)
    told = [("registered", None), ("unregistered", "unregistered"), ("registered", None)]
    if then == "update":
        told.append(("updated", None))
    assert heard.of("a0") == told
    held = b.lookup("a0")
    assert held is not None
    assert dict(held.metadata) == {"x": 2 if then == "update" else 1}


@pytest.mark.parametrize("write", ["unregister", "replace"])
def test_a_held_entry_this_node_removes_is_never_shown(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any, write: str
) -> None:
    """B holds A's entry (its delete lost, as above) and removes it itself
    (``unregister``, or ``register(replace=True)``): Redis no longer has it,
    so the hold ends there. Before, two leases later B showed the removed
    entry, told ``registered``, until its next resync."""
    ns = unique_namespace("fo")
    a = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.0)
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.0)
    heard = Heard()
    b.subscribe(heard)
    _hold_a0(fresh_redis, ns, a, b, agents, keep=None)  # due after two leases
    mine = agents()
    if write == "unregister":
        assert b.unregister("a0") is True  # Redis had it
    else:
        b.register("a0", mine, replace=True)
    assert "a0" not in b._tail.holds.held  # the hold ended with the write
    # Past the hold's two leases (2 s) and more: the entry never comes back.
    shown = wait_until(lambda: (e := b.lookup("a0")) is not None and e.agent is not mine, timeout=5)
    assert not shown, b.lookup("a0")
    _flush(b, heard, agents)
    told = [("registered", None), ("unregistered", "unregistered")]
    if write == "replace":
        told.append(("registered", None))
    assert heard.of("a0") == told


def _hold_a0(
    server: RedisServer, ns: str, a: Any, b: Any, agents: Any, *, keep: float | None = 120.0
) -> None:
    """Make ``b`` hold ``a``'s entry ``a0``: a delete record written by hand, heard
    (B: unregistered), then deleted from the stream, so B's next snapshot's history
    lacks it. ``keep``: the hold's seconds (120: never due by itself while the test
    runs, until the test makes its time up; None: the registry's two leases)."""
    a.register("a0", agents(), {"x": 1})
    assert b.wait_for_version(a.status().written)
    head = server.command("HGET", f"{{{ns}}}:head", '"a0"')
    v = server.command("INCR", f"{{{ns}}}:ver")
    rid = server.command(
        *("XADD", f"{{{ns}}}:log", "*", "v", v, "w", a.node, "op", "d", "k", '"a0"'),
        *("n", a.node, "why", "unregistered", "dr", "", "dc", "", "ds", "", "h", head),
    )
    # Both read it first (A's tail, missing it, met a version gap and recovered).
    assert b.wait_for_version(v)
    assert a.wait_for_version(v)
    assert b.lookup("a0") is None  # B heard it unregistered
    server.command("XDEL", f"{{{ns}}}:log", rid)  # a history without that delete
    if keep is not None:
        b._tail.holds.keep = keep
    resyncs = b.status().resyncs
    _kill_tail_connection(server, b.node)
    _wait_resync(b, resyncs)
    assert b.lookup("a0") is None  # held
    assert "a0" in b._tail.holds.held


@pytest.mark.parametrize("write", ["register", "register_many"])
def test_a_held_entry_whose_key_this_node_registers_anew_is_never_shown(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any, write: str
) -> None:
    """B holds A's entry; A deletes it, and B registers the key before its tail
    applied that delete (Redis had the key free: nothing dropped). The tail then
    skips the delete (older than B's write), so only B's write can end the hold:
    before, once B's agent died, the hold's time up showed A's deleted entry."""
    from foundation.liveness import spawn_thread

    ns = unique_namespace("fo")
    a = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.0)
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.0)
    heard = Heard()
    b.subscribe(heard)
    _hold_a0(fresh_redis, ns, a, b, agents)
    hold = TailHold(b, "stall")  # B's tail stays behind from "stall" on
    try:
        a.register("stall", agents())
        assert hold.stalled.wait(10)
        assert a.unregister("a0") is True  # past B's tail
        dies = threading.Event()
        mine = spawn_thread(dies.wait)
        if write == "register":
            b.register("a0", mine)
        else:
            assert b.register_many([("a0", mine)]) == [None]
        assert b.lookup("a0") is not None
        dies.set()  # B's agent dies: B drops its entry and deletes it in Redis
        assert wait_until(lambda: b.lookup("a0") is None)
    finally:
        hold.release.set()
    with b._sh.mlock:  # the time of any hold left is up
        b._tail.holds.held = {k: (e, 0.0) for k, (e, _) in b._tail.holds.held.items()}
    a.register("poke", agents())  # B's tail reads, then releases what is due
    assert wait_until(lambda: b.lookup("poke") is not None)
    a.register("poke2", agents())  # read after that release
    assert wait_until(lambda: b.lookup("poke2") is not None)
    assert b.lookup("a0") is None
    _flush(b, heard, agents)
    assert heard.of("a0") == [
        ("registered", None),
        ("unregistered", "unregistered"),
        ("registered", None),
        ("unregistered", "down"),
    ]


def test_a_held_entry_this_node_updates_is_told_registered_once(
    fresh_redis: RedisServer, make_registry: MakeRegistry, agents: Any
) -> None:
    """B holds A's entry and updates its metadata: shown, told ``registered``.
    A's own update later is ``updated`` only (before, the hold left by B's
    update made B tell ``registered`` again, with the held, older metadata)."""
    ns = unique_namespace("fo")
    a = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.0)
    b = make_registry(fresh_redis.url, namespace=ns, lease_ttl=1.0)
    heard = Heard()
    b.subscribe(heard)
    _hold_a0(fresh_redis, ns, a, b, agents)
    b.update_metadata("a0", {"x": 2})
    shown = b.lookup("a0")
    assert shown is not None
    assert dict(shown.metadata) == {"x": 2}
    a.update_metadata("a0", {"x": 3})
    assert b.wait_for_version(a.status().written)
    _flush(b, heard, agents)
    assert heard.of("a0") == [
        ("registered", None),
        ("unregistered", "unregistered"),
        ("registered", None),
        ("updated", None),
    ]
