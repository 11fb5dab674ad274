"""The cost paths of ``register``: what one call sends and runs, and the write connection.

A register of a free key is ONE ``EVALSHA`` whose script makes a fixed set of
Redis calls (no more creep in unnoticed); it is sent on the node's write
connection, which behaves as redis-py's pool would: a connection the server
dropped while idle is replaced before the write, and a script Redis lost is
loaded again. No test here measures time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from foundation.errors import AlreadyRegistered
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._scripts import RegisterArgs, register_argv
from tests.redis_support import RedisServer


@pytest.fixture
def private_server() -> Iterator[RedisServer]:
    """A server of this test alone: its command statistics count only our calls."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def quiet_node(private_server: RedisServer) -> Iterator[RedisRegistry]:
    """A node whose heartbeat will not run during the test (a long lease)."""
    with RedisRegistry(private_server.url, namespace="cost", lease_ttl=600.0) as reg:
        yield reg


@pytest.mark.parametrize("mode", ["n", "r", "a"])
@pytest.mark.parametrize("own_dead", [False, True])
def test_register_argv_is_register_args_argv(mode: Any, own_dead: bool) -> None:
    fields: dict[str, Any] = {
        "maxlen": "10000",
        "node": "n1",
        "ek": '["k",1]',
        "head": '{"n":"n1"}',
        "meta": b'{"b":1,"a":2}',
        "ix": "",
        "mode": mode,
        "own_dead": own_dead,
        "writer": "n1",
        "grace_ms": 2500,
    }
    assert register_argv(**fields) == RegisterArgs(**fields).argv()


def _script_calls(raw: redis.Redis) -> dict[str, int]:
    """Calls per command since the last CONFIG RESETSTAT (the tail's reads left out)."""
    stats = raw.info("commandstats")
    out = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    out.pop("xread", None)
    out.pop("info", None)
    out.pop("config|resetstat", None)
    return out


def test_a_register_of_a_free_key_is_one_script_with_a_fixed_set_of_calls(
    private_server: RedisServer, quiet_node: RedisRegistry, agents: Callable[[], Any]
) -> None:
    w = agents()
    quiet_node.register("warm", w)  # the script is loaded and the connection made
    with redis.Redis.from_url(private_server.url) as raw:
        raw.config_resetstat()
        quiet_node.register(("k", 1), w, {"b": 1, "a": 2})
        calls = _script_calls(raw)
    # The lease check, the owner probe (the owner hash, then the head: Redis may
    # have lost the owner hash alone), four hash fields (head, meta, owner, and
    # at: the registration's place in the server's order), the owned set, the
    # version counter and the change record: nothing else (no TIME, no trim).
    assert calls == {
        "evalsha": 1,
        "zscore": 1,
        "hget": 2,
        "hset": 4,
        "sadd": 1,
        "incr": 1,
        "xadd": 1,
    }


def test_a_write_connection_the_server_dropped_is_replaced_before_the_write(
    private_server: RedisServer, quiet_node: RedisRegistry, agents: Callable[[], Any]
) -> None:
    w = agents()
    quiet_node.register("first", w)
    name = f"foundation:{quiet_node.node}"
    with redis.Redis.from_url(private_server.url) as raw:
        ids = [c["id"] for c in raw.client_list() if c["name"] == name]
        assert ids  # the node's connections (the write one among them)
        for client_id in ids:
            raw.client_kill_filter(_id=client_id)
    # As redis-py's pool would: the dropped connection is noticed and replaced,
    # the write goes through, once.
    quiet_node.register("second", w, {"z": 1, "y": 2})
    assert quiet_node.status().state == "connected"
    with pytest.raises(AlreadyRegistered):
        quiet_node.register("second", agents())
    with RedisRegistry(private_server.url, namespace="cost") as other:
        entry = other.lookup("second")
        assert entry is not None
        assert list(entry.metadata) == ["z", "y"]


def test_a_script_redis_lost_is_loaded_again(
    private_server: RedisServer, quiet_node: RedisRegistry, agents: Callable[[], Any]
) -> None:
    w = agents()
    quiet_node.register("first", w)
    with redis.Redis.from_url(private_server.url) as raw:
        raw.script_flush()
        quiet_node.register("second", w)
        quiet_node.update_metadata("second", {"v": 1})
        assert quiet_node.unregister("first") is True
        assert raw.hexists("{cost}:head", '"second"')
        assert not raw.hexists("{cost}:head", '"first"')


def test_writes_from_many_threads_share_the_write_connection_safely(
    quiet_node: RedisRegistry, agents: Callable[[], Any]
) -> None:
    # Every write holds the node's write lock, so replies never cross threads:
    # each thread's keys end up registered with its own metadata.
    w = agents()
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(50):
                quiet_node.register((t, i), w, {"t": t, "i": i})
                if i % 5 == 0:
                    quiet_node.update_metadata((t, i), {"i": i, "t": t, "u": 1})
                if i % 7 == 0:
                    assert quiet_node.unregister((t, i)) is True
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors
    for t in range(4):
        for i in range(50):
            entry = quiet_node.lookup((t, i))
            if i % 7 == 0:
                assert entry is None
                continue
            assert entry is not None
            want = {"i": i, "t": t, "u": 1} if i % 5 == 0 else {"t": t, "i": i}
            assert entry.metadata == want
            assert list(entry.metadata) == list(want)


def test_own_writes_interleaved_with_another_nodes_converge_without_a_resync(
    private_server: RedisServer, agents: Callable[[], Any]
) -> None:
    # Each writer moves its own tail past the records it has just applied (so the
    # tail does not read them back); records of the other node in between must
    # still be read, in order, with no gap taken for a reset (no resync).
    with (
        RedisRegistry(private_server.url, namespace="mix", lease_ttl=600.0) as a,
        RedisRegistry(private_server.url, namespace="mix", lease_ttl=600.0) as b,
    ):
        w = agents()
        errors: list[BaseException] = []

        def writer(reg: RedisRegistry, name: str) -> None:
            try:
                for i in range(150):
                    if i % 3 == 0:
                        items = [((name, i, j), w, {"n": name, "j": j}) for j in range(5)]
                        assert reg.register_many(items) == [None] * 5
                    else:
                        reg.register((name, i), w, {"n": name})
                        if i % 10 == 1:
                            assert reg.unregister((name, i)) is True
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(r, n)) for r, n in ((a, "a"), (b, "b"))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=120)
        assert not errors, errors
        assert a.wait_for_version(b.status().written)
        assert b.wait_for_version(a.status().written)
        # Each node also applies its own last records before the tails are compared.
        last = max(a.status().written, b.status().written)
        assert a.wait_for_version(last)
        assert b.wait_for_version(last)
        keys_a = {e.key for e in a.list_all()}
        keys_b = {e.key for e in b.list_all()}
        assert keys_a == keys_b
        assert len(keys_a) == 2 * (100 + 50 * 5 - 10)
        assert a.status().resyncs == 0
        assert b.status().resyncs == 0
        # Each node's tail stands where the other's writes left it: one version.
        assert a.status().version == b.status().version


def test_a_register_many_of_free_keys_is_one_script_with_a_fixed_set_of_calls(
    private_server: RedisServer, quiet_node: RedisRegistry, agents: Callable[[], Any]
) -> None:
    w = agents()
    quiet_node.register_many([("warm", w)])  # the script is loaded and the connection made
    with redis.Redis.from_url(private_server.url) as raw:
        raw.config_resetstat()
        outcomes = quiet_node.register_many([(("k", i), w, {"i": i}) for i in range(50)])
        calls = _script_calls(raw)
    assert outcomes == [None] * 50
    # However many keys: the lease check, the owner probe (the owner hash, then
    # the heads of the keys it lacks: Redis may have lost an owner field alone,
    # and a key with a head is held), one HSET per hash (head, meta, owner, at),
    # the owned set, the version counter, ONE change record and its trim point:
    # no per-key call.
    assert calls == {
        "evalsha": 1,
        "zscore": 1,
        "hmget": 2,
        "hset": 4,
        "sadd": 1,
        "incrby": 1,
        "xadd": 1,
        "lindex": 2,
        "rpush": 1,
    }
