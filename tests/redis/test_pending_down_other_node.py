"""The delete of a local agent that died while its register ran never drops,
unheard, an older entry the node's lagging mirror still shows.

Node a's tail is behind (``TailHold``): its mirror still shows an entry of
``k`` that Redis no longer holds (b unregistered it, or b replaced a's own
earlier registration and then unregistered). a registers ``k`` (free in
Redis) and the agent dies while the script runs: the register raises
``NotAlive`` and deletes a's new entry (``Lease.flush_pending_down``). That
delete used to remove whatever a's mirror showed under ``k``, at the delete's
version: past b's older records, which a's tail then skipped. The mirror ended
right, but a's listeners never heard that entry go. Now the delete waits for
the tail to apply the older records (which tell that end with Redis's reason);
an entry still shown then is one no record will remove (Redis lost a's earlier
registration with no record): it is dropped, told as a resync tells it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

from foundation.errors import NotAlive
from foundation.liveness import spawn_thread
from foundation.registry import RegistryEvent
from foundation.registry._redis import RedisRegistry, _batch
from tests.redis.conftest import MakeRegistry
from tests.redis.support import wait_until
from tests.redis.tail_hold import TailHold
from tests.redis_support import RedisServer

Seen = list[tuple[str, str, str, str | None]]


def _recorder(seen: Seen) -> Callable[[RegistryEvent], None]:
    def listener(ev: RegistryEvent) -> None:
        seen.append((ev.kind, str(ev.entry.key), ev.entry.node, ev.reason))

    return listener


def _register_dying(a: RedisRegistry, many: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """a registers ``k`` (replace; ``many``: by ``register_many``) with an agent
    that dies once Redis wrote it, before the writer applies the reply: ``NotAlive``."""
    sh = a._sh
    stop = threading.Event()
    agent = spawn_thread(stop.wait)

    def die() -> None:
        stop.set()
        agent.join(10)
        assert wait_until(lambda: "k" in sh.pending_downs), "on_down never ran"

    if many:
        pipelined = _batch._pipelined

        def sent(*args: Any) -> Any:
            out = pipelined(*args)
            die()
            return out

        monkeypatch.setattr(_batch, "_pipelined", sent)
        outcomes = a.register_many([("k", agent)], replace=True)
        monkeypatch.undo()
        assert isinstance(outcomes[0], NotAlive), outcomes
        return
    real = sh.write_script

    def write_script(name: str, argv: list[Any], doing: Any) -> Any:
        reply = real(name, argv, doing)
        if name == "register":
            die()
        return reply

    monkeypatch.setattr(sh, "write_script", write_script)
    with pytest.raises(NotAlive):
        a.register("k", agent, replace=True)
    monkeypatch.undo()


def _settle(a: RedisRegistry, b: RedisRegistry, seen: Seen, agents: Callable[[], Any]) -> None:
    """Wait until each node's tail caught up (a's delete of ``k`` included: a
    write of a's after it) and a's listeners heard all before "end"."""
    a.register("end-a", agents())
    assert b.wait_for_version(a.status().written, timeout=10)
    b.register("end", agents())
    assert a.wait_for_version(b.status().written, timeout=10)
    assert wait_until(lambda: ("registered", "end", "b", None) in seen)


def _assert_gone(a: RedisRegistry, b: RedisRegistry, redis_server: RedisServer) -> None:
    assert a.lookup("k") is None
    assert b.lookup("k") is None
    assert "k" not in a._sh.own
    with redis.Redis.from_url(redis_server.url) as raw:
        assert raw.hget(f"{a._sh.prefix}:owner", '"k"') is None


def _lose_k(a: RedisRegistry, redis_server: RedisServer) -> None:
    """Redis loses a's registration of ``k`` behind a's back: its fields go,
    with no change record; a's lease stays."""
    prefix = a._sh.prefix
    with redis.Redis.from_url(redis_server.url) as raw:
        for field in ("owner", "head", "meta", "at"):
            assert raw.hdel(f"{prefix}:{field}", '"k"') == 1
        assert raw.srem(f"{prefix}:owned:a", '"k"') == 1


def _pair(make_registry: MakeRegistry) -> tuple[RedisRegistry, RedisRegistry, Seen]:
    a = make_registry(node="a", lease_ttl=60.0, heartbeat=20.0)
    b = make_registry(node="b", lease_ttl=60.0, heartbeat=20.0)
    seen: Seen = []
    a.subscribe(_recorder(seen))
    return a, b, seen


def _hold_a(a: RedisRegistry, b: RedisRegistry, agents: Callable[[], Any]) -> TailHold:
    hold = TailHold(a, "stall")  # a's tail stays behind from "stall" on
    b.register("stall", agents())
    assert hold.stalled.wait(10), "a's tail never delivered 'stall'"
    return hold


@pytest.mark.parametrize("many", [False, True], ids=["register", "register_many"])
def test_another_nodes_stale_entry_is_heard_unregistered(
    make_registry: MakeRegistry,
    redis_server: RedisServer,
    agents: Callable[[], Any],
    many: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, seen = _pair(make_registry)
    b.register("k", agents())
    assert a.wait_for_version(b.status().written)
    hold = _hold_a(a, b, agents)
    try:
        assert b.unregister("k") is True
        shown = a.lookup("k")
        assert shown is not None
        assert shown.node == "b"  # a's mirror lags: still shows b's entry
        _register_dying(a, many, monkeypatch)
    finally:
        hold.release.set()
    _settle(a, b, seen, agents)
    _assert_gone(a, b, redis_server)
    assert [ev for ev in seen if ev[1] == "k"] == [
        ("registered", "k", "b", None),
        ("unregistered", "k", "b", "unregistered"),
    ]


@pytest.mark.parametrize("many", [False, True], ids=["register", "register_many"])
def test_own_earlier_entry_replaced_behind_the_tail_is_heard(
    make_registry: MakeRegistry,
    redis_server: RedisServer,
    agents: Callable[[], Any],
    many: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, seen = _pair(make_registry)
    a.register("k", agents())
    hold = _hold_a(a, b, agents)
    try:
        b.register("k", agents(), replace=True)  # drops a's entry ("replaced")
        assert b.unregister("k") is True
        shown = a.lookup("k")
        assert shown is not None
        assert shown.node == "a"  # a's mirror lags: still shows its own entry
        # a replaces k (its mirror says a holds it): Redis has none.
        _register_dying(a, many, monkeypatch)
    finally:
        hold.release.set()
    _settle(a, b, seen, agents)
    _assert_gone(a, b, redis_server)
    assert [ev for ev in seen if ev[1] == "k"] == [
        ("registered", "k", "a", None),
        ("unregistered", "k", "a", "replaced"),
        ("registered", "k", "b", None),
        ("unregistered", "k", "b", "unregistered"),
    ]


@pytest.mark.parametrize("many", [False, True], ids=["register", "register_many"])
def test_entry_redis_lost_without_record_is_not_kept(
    make_registry: MakeRegistry,
    redis_server: RedisServer,
    agents: Callable[[], Any],
    many: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis loses a's registration of ``k`` (its fields, no record; the lease
    kept); a replaces it with an agent that dies mid-script. No record will
    ever remove a's first entry: the delete must not leave it in a's mirror."""
    a, b, seen = _pair(make_registry)
    a.register("k", agents())
    _lose_k(a, redis_server)
    shown = a.lookup("k")
    assert shown is not None
    assert shown.node == "a"  # a's mirror cannot know: no record was written
    _register_dying(a, many, monkeypatch)
    _settle(a, b, seen, agents)
    _assert_gone(a, b, redis_server)
    assert [ev for ev in seen if ev[1] == "k"] == [
        ("registered", "k", "a", None),
        ("unregistered", "k", "a", "unregistered"),
    ]


def test_entry_redis_lost_behind_a_held_tail_is_dropped_later(
    make_registry: MakeRegistry,
    redis_server: RedisServer,
    agents: Callable[[], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above while a's tail lags past ``op_timeout``: the delete cannot wait
    for it, so the lease thread drops the entry after a heartbeat, once the
    tail caught up."""
    a = make_registry(node="a", lease_ttl=60.0, heartbeat=0.3)
    b = make_registry(node="b", lease_ttl=60.0, heartbeat=20.0)
    seen: Seen = []
    a.subscribe(_recorder(seen))
    a.register("k", agents())
    hold = _hold_a(a, b, agents)
    try:
        b.register("other", agents())  # a record a's tail has not applied
        _lose_k(a, redis_server)
        _register_dying(a, False, monkeypatch)
        shown = a.lookup("k")
        assert shown is not None  # the tail is held: kept for now
        assert shown.node == "a"
    finally:
        hold.release.set()
    _settle(a, b, seen, agents)
    assert wait_until(lambda: a.lookup("k") is None), "a keeps an entry Redis lost"
    _assert_gone(a, b, redis_server)
    assert wait_until(lambda: len([ev for ev in seen if ev[1] == "k"]) >= 2)
    assert [ev for ev in seen if ev[1] == "k"] == [
        ("registered", "k", "a", None),
        ("unregistered", "k", "a", "unregistered"),
    ]
