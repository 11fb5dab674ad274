"""RedisRegistry.register_many: one round trip, per-key outcomes, whole-call failures."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from foundation import errors
from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry, Registry, RegistryEvent
from foundation.registry._redis import RedisRegistry
from tests.redis.conftest import MakeRegistry
from tests.redis_support import RedisServer


def _dead_thread() -> Any:
    t = spawn_thread(lambda: None)
    t.join(timeout=5)
    assert not t.is_alive()
    return t


def _names(outcomes: list[Any]) -> list[str]:
    return [type(o).__name__ for o in outcomes]


def _count_executes(reg: RedisRegistry) -> list[int]:
    """Count pipeline round trips of ``reg``'s client (a spy around the real one)."""
    client = reg._sh.client
    real = client.pipeline
    calls = [0]

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real(*args, **kwargs)
        execute = pipe.execute

        def counted(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            return execute(*a, **k)

        pipe.execute = counted
        return pipe

    client.pipeline = pipeline
    return calls


def test_outcomes_in_input_order_with_the_errors_register_raises(
    make_registry: MakeRegistry, agents
) -> None:
    a = make_registry(indexed=("role",))
    b = make_registry(indexed=("role",))
    b.register("taken", agents())
    assert a.wait_for_version(b.status().written)
    w1, w2 = agents(), agents()
    outcomes = a.register_many(
        [
            ("k1", w1, {"role": "io"}),
            ("bad-key", w1, {"x": object()}),  # InvalidMetadata
            (["unhashable"], w1),  # InvalidKey
            ("k2", w2),
            ("unsupported", object()),  # UnsupportedAgent
            ("dead", _dead_thread()),  # NotAlive
            ("taken", w1),  # held by node b
            ("k1", w2),  # the batch's own first item holds it
            (("t", 3), w2, {"role": "cpu"}),
        ]
    )
    assert _names(outcomes) == [
        "NoneType",
        "InvalidMetadata",
        "InvalidKey",
        "NoneType",
        "UnsupportedAgent",
        "NotAlive",
        "AlreadyRegistered",
        "AlreadyRegistered",
        "NoneType",
    ]
    taken = outcomes[6]
    assert isinstance(taken, errors.AlreadyRegistered)
    assert taken.entry is not None
    assert taken.entry.node == b.node
    assert a.lookup("k1").agent is w1  # the first item won
    assert a.lookup("k2").agent is w2
    assert a.lookup(("t", 3)).metadata["role"] == "cpu"
    assert "dead" not in a
    assert "bad-key" not in a
    assert "unsupported" not in a
    assert a.lookup("taken").node == b.node
    assert [e.key for e in a.find_by_attribute("role", "io")] == ["k1"]
    # Every other node sees the batch, with the index.
    assert b.wait_for_version(a.status().written)
    assert {e.key for e in b.find_by_attribute("role", "cpu")} == {("t", 3)}
    assert b.lookup("k2").node == a.node
    assert a.manager.active_count() == 3  # one monitor per registration, none leaked


@pytest.mark.parametrize("size", [100, 1234])
def test_a_batch_is_one_round_trip_and_never_asks_script_exists(
    size: int, make_registry: MakeRegistry, redis_server: RedisServer, agents
) -> None:
    # A long lease: no heartbeat (an EVALSHA too) between the reset and the
    # count, however slow the machine (one every 1.7 s by default: counted once).
    a = make_registry(lease_ttl=600.0)
    worker = agents()
    # The script loaded first: on a server that never ran it (this test alone),
    # the first EVALSHA is refused (NOSCRIPT) and counted too.
    a.register_many([("warm", worker)])
    assert a.unregister("warm")
    executes = _count_executes(a)
    with redis.Redis.from_url(redis_server.url) as raw:
        raw.config_resetstat()
        outcomes = a.register_many([(("b", i), worker, {"i": i}) for i in range(size)])
        stats = raw.info("commandstats")
    assert outcomes == [None] * size
    assert executes[0] == 1  # one round trip
    # One script call per 500 items (chunks of one pipeline), never one per item.
    assert stats["cmdstat_evalsha"]["calls"] == -(-size // 500)
    assert "cmdstat_script|exists" not in stats
    assert a.count() == size
    assert a.lookup(("b", 42)).metadata == {"i": 42}


def test_replace_in_one_batch_behaves_as_two_register_calls(
    make_registry: MakeRegistry, agents
) -> None:
    a = make_registry()
    seen: list[RegistryEvent] = []
    a.subscribe(seen.append)
    w1, w2, w3 = agents(), agents(), agents()
    a.register("x", w1)
    outcomes = a.register_many([("x", w2), ("y", w2), ("x", w3)], replace=True)
    assert outcomes == [None, None, None]
    assert a.lookup("x").agent is w3
    assert [(e.kind, e.reason, e.entry.key, e.entry.agent) for e in seen] == [
        ("registered", None, "x", w1),
        ("unregistered", "replaced", "x", w1),
        ("registered", None, "x", w2),
        ("registered", None, "y", w2),
        ("unregistered", "replaced", "x", w2),
        ("registered", None, "x", w3),
    ]
    assert a.manager.active_count() == 2  # the replaced agents are no longer watched


def test_a_script_flush_is_survived(
    make_registry: MakeRegistry, redis_server: RedisServer, agents
) -> None:
    a = make_registry()
    with redis.Redis.from_url(redis_server.url) as raw:
        raw.script_flush()
    worker = agents()
    assert a.register_many([("f1", worker), ("f2", worker)]) == [None, None]
    assert a.count() == 2


def test_malformed_items_are_refused_before_anything_is_registered(
    make_registry: MakeRegistry, agents
) -> None:
    a = make_registry()
    worker = agents()
    for bad in ([("ok", worker), "not-a-tuple"], [("ok", worker), ("k",)], "abc", {"k": worker}):
        with pytest.raises(TypeError):
            a.register_many(bad)  # type: ignore[arg-type]
    assert a.count() == 0
    assert a.manager.active_count() == 0
    assert a.register_many([]) == []


def test_redis_down_fails_the_whole_call_and_keeps_nothing_unconfirmed(
    fresh_redis: RedisServer, agents
) -> None:
    reg = RedisRegistry(fresh_redis.url, lease_ttl=1.0, op_timeout=0.5)
    try:
        reg.register("before", agents())
        fresh_redis.kill()
        worker = agents()
        with pytest.raises(errors.BackendUnavailable):
            reg.register_many([("k", worker), ("l", worker), ("before", worker)])
        assert "k" not in reg
        assert "l" not in reg
        assert reg.lookup("before") is not None  # untouched
        assert reg.manager.active_count() == 1  # the batch's monitors were released
    finally:
        reg.close()


def test_register_many_async_has_the_same_outcomes(make_registry: MakeRegistry, agents) -> None:
    a = make_registry()
    w = agents()

    async def main() -> list[Any]:
        return await a.register_many_async(x for x in [("a", w), ("a", w), ("b", w)])

    assert _names(asyncio.run(main())) == ["NoneType", "AlreadyRegistered", "NoneType"]
    assert a.count() == 2


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_every_backend_gives_the_same_outcomes(
    backend: str, make_registry: MakeRegistry, agents
) -> None:
    reg: Registry = MemoryRegistry() if backend == "memory" else make_registry()
    try:
        live = agents()
        outcomes = reg.register_many(
            [
                ("a", live),
                ("a", live),
                ("b", _dead_thread()),
                ("c", object()),
                ("d", live, {"bad": {1, 2}}),
                ((1, "t"), live, {"ok": [1, "x"]}),
            ]
        )
        assert _names(outcomes) == [
            "NoneType",
            "AlreadyRegistered",
            "NotAlive",
            "UnsupportedAgent",
            "InvalidMetadata",
            "NoneType",
        ]
        assert sorted(map(repr, (e.key for e in reg.list_all()))) == ["'a'", "(1, 't')"]
    finally:
        if backend == "memory":
            reg.close()
