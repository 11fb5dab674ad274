"""``update_metadata`` of a key whose registration another node replaced, before
this node's tail applied that replacement.

Node b registers ``k`` (A); node a replaces it (B: a delete record of A, a
registration record of B); b's tail has not applied them yet when b updates
``k``. Redis updates B. b's mirror used to put A with the new metadata at the
update's version, and its tail then skipped the older delete and registration
as already applied: b kept A for good (``lookup`` named b's dead-to-Redis
registration, no "unregistered" event, A's monitor kept), a later delete of B
was taken for "another registration than our live one" (kept too), and b's
next update found NOTREG: a false ``lease_lost`` and a re-assert on a healthy
Redis. Now the update waits for the tail to apply what precedes it (or, if
the tail is stalled past ``op_timeout``, has the mirror reloaded).

The tail is held by ``TailHold``; a ``Condition`` hook tells when the update
waits for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis

from foundation.registry import RegistryEvent
from foundation.registry._redis import RedisRegistry
from tests.redis.conftest import MakeRegistry
from tests.redis.tail_hold import TailHold
from tests.redis_support import RedisServer

Seen = list[tuple[str, str, str, str | None, dict[str, Any]]]


def _recorder(seen: Seen) -> Callable[[RegistryEvent], None]:
    def listener(ev: RegistryEvent) -> None:
        e = ev.entry
        seen.append((ev.kind, str(e.key), e.node, ev.reason, dict(e.metadata)))

    return listener


class _WaitSignal(threading.Condition):
    """A node's ``applied`` condition that tells when someone waits on it."""

    def __init__(self, lock: Any) -> None:
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        self.waiting.set()
        return super().wait_for(predicate, timeout)


def _replace_behind_b(
    a: RedisRegistry, b: RedisRegistry, agents: Callable[[], Any]
) -> tuple[TailHold, Any]:
    """b registers ``k``; with b's tail held, a replaces it. Returns the hold and
    b's registration's agent."""
    mine = agents()
    b.register("k", mine, {"r": 1})
    assert a.wait_for_version(b.status().written)
    hold = TailHold(b, "stall")  # b's tail stays behind from "stall" on
    a.register("stall", agents())
    assert hold.stalled.wait(10), "b's tail never delivered 'stall'"
    a.register("k", agents(), {"r": 2}, replace=True)
    entry = b.lookup("k")
    assert entry is not None
    assert entry.node == "b"  # b's mirror lags: still shows A
    return hold, mine


def _assert_converged(
    a: RedisRegistry, b: RedisRegistry, redis_server: RedisServer, meta: dict[str, Any]
) -> None:
    assert b.wait_for_version(a.status().written, timeout=10)
    assert a.wait_for_version(b.status().written, timeout=10)
    with redis.Redis.from_url(redis_server.url) as raw:
        assert raw.hget(f"{a._sh.prefix}:owner", '"k"') == b"a"
    for node in (a, b):
        entry = node.lookup("k")
        assert entry is not None
        assert (entry.node, dict(entry.metadata)) == ("a", meta), node.node
    assert "k" not in b._sh.own  # A's monitor released: it is no longer b's


def test_update_waits_for_the_tail_to_apply_a_replacement(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Callable[[], Any]
) -> None:
    a = make_registry(node="a", lease_ttl=60.0, heartbeat=20.0)
    b = make_registry(node="b", lease_ttl=60.0, heartbeat=20.0)
    seen: Seen = []
    b.subscribe(_recorder(seen))
    hold, _ = _replace_behind_b(a, b, agents)
    signal = b._sh.applied = _WaitSignal(b._sh.mlock)
    resyncs = b.status().resyncs
    done = threading.Event()

    def update() -> None:
        try:
            b.update_metadata("k", {"r": 3})
        finally:
            done.set()

    updater = threading.Thread(target=update)
    try:
        updater.start()
        # Without the fix the update never waits: it is done at once.
        assert signal.waiting.wait(10) or done.wait(0), "update neither waited nor ended"
    finally:
        hold.release.set()
        updater.join(10)
    assert done.is_set()
    _assert_converged(a, b, redis_server, {"r": 3})
    assert b.status().resyncs == resyncs  # the tail caught up: no reload
    # b heard A replaced, then B, then its own update, once each, in Redis's order.
    k_events = [ev for ev in seen if ev[1] == "k"]
    assert k_events == [
        ("registered", "k", "b", None, {"r": 1}),
        ("unregistered", "k", "b", "replaced", {"r": 1}),
        ("registered", "k", "a", None, {"r": 2}),
        ("updated", "k", "a", None, {"r": 3}),
    ]
    # a's unregister of B reaches b: nothing of k is left anywhere.
    assert a.unregister("k") is True
    assert b.wait_for_version(a.status().written, timeout=10)
    assert b.lookup("k") is None


def test_update_reloads_the_mirror_when_the_tail_stays_behind(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Callable[[], Any]
) -> None:
    a = make_registry(node="a", lease_ttl=60.0, heartbeat=20.0)
    b = make_registry(node="b", lease_ttl=60.0, heartbeat=20.0, op_timeout=0.5)
    hold, _ = _replace_behind_b(a, b, agents)
    try:
        b.update_metadata("k", {"r": 3})  # b's tail stays held past op_timeout
    finally:
        hold.release.set()
    _assert_converged(a, b, redis_server, {"r": 3})
    # b's next update finds B in Redis, as its mirror shows: no NOTREG, no re-assert.
    b.update_metadata("k", {"r": 4})
    _assert_converged(a, b, redis_server, {"r": 4})
    assert b.status().state == "connected"


def test_update_of_a_remote_key_registered_again_behind_the_tail(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    # The same with another node's entry: b's mirror shows a's first registration,
    # a has unregistered it and registered the key again; b updates it.
    a = make_registry(node="a", lease_ttl=60.0, heartbeat=20.0)
    b = make_registry(node="b", lease_ttl=60.0, heartbeat=20.0)
    a.register("k", agents(), {"r": 1})
    assert b.wait_for_version(a.status().written)
    first = b.lookup("k")
    assert first is not None
    hold = TailHold(b, "stall")
    a.register("stall", agents())
    assert hold.stalled.wait(10), "b's tail never delivered 'stall'"
    assert a.unregister("k") is True
    a.register("k", agents(), {"r": 2})
    signal = b._sh.applied = _WaitSignal(b._sh.mlock)
    updater = threading.Thread(target=b.update_metadata, args=("k", {"r": 3}))
    try:
        updater.start()
        signal.waiting.wait(10)  # without the fix: never (the update is done at once)
    finally:
        hold.release.set()
        updater.join(10)
    assert b.wait_for_version(a.status().written, timeout=10)
    assert b.wait_for_version(b.status().written, timeout=10)
    assert a.wait_for_version(b.status().written, timeout=10)
    ours, theirs = b.lookup("k"), a.lookup("k")
    assert ours is not None
    assert theirs is not None
    assert ours.registered_at == theirs.registered_at != first.registered_at
    assert dict(ours.metadata) == dict(theirs.metadata) == {"r": 3}
