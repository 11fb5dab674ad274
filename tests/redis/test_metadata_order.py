"""One answer from every backend: ``Entry.metadata`` keeps the registering caller's key order.

``list(entry.metadata)`` and ``json.dumps(entry.metadata)`` are the same on
``MemoryRegistry``, on the ``RedisRegistry`` node that registered the entry
(local), and on every other node (remote: applied from the change stream, or
loaded from a snapshot), nested mappings included; after ``update_metadata``
and for ``register_many`` too. An entry written by an older node, which
stored keys sorted, still reads back (in the order it was stored).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import redis

from foundation.registry import MemoryRegistry, Registry
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._codec import encode_key
from foundation.registry._redis._scripts import REGISTER, RegisterArgs
from foundation.registry._validation import freeze_metadata, metadata_to_json
from tests.redis.conftest import MakeRegistry
from tests.redis_support import RedisServer

FLAT = {"zeta": 1, "alpha": "a", "mid": None, "beta": True, "Ä": "ü"}
NESTED = {
    "z": {"y": 1, "b": {"q": 2, "a": [1, {"k": 1, "c": 2}]}},
    "a": 1.5,
    "m": ["x", {"n": None, "d": False}],
}
UPDATED = {"w": {"v": 1, "c": 2}, "b": 0}


def _shape(value: Any) -> Any:
    """``value`` with every mapping as its list of ``(key, shape)``: equal only
    when every key order, nested ones included, is equal."""
    if isinstance(value, Mapping):
        return [(k, _shape(v)) for k, v in value.items()]
    if isinstance(value, list | tuple):
        return [_shape(v) for v in value]
    return value


def _same_order(entry_metadata: Mapping[str, Any], given: Mapping[str, Any]) -> bool:
    return _shape(entry_metadata) == _shape(given) and json.dumps(entry_metadata) == json.dumps(
        given
    )


def _local_entries(
    backend: str, make_registry: MakeRegistry, agent: Any, metadata: dict[str, Any]
) -> list[tuple[str, Registry]]:
    """``(what, registry)`` of every view of the key ``"k"`` that ``backend`` has."""
    if backend == "memory":
        mem = MemoryRegistry()
        mem.register("k", agent, metadata)
        return [("memory, local", mem)]
    a = make_registry()
    b = make_registry()  # a remote node that exists before the write: the stream
    a.register("k", agent, metadata)
    assert b.wait_for_version(a.status().written)
    c = make_registry()  # a remote node that starts after it: the snapshot
    return [("redis, local", a), ("redis, remote (stream)", b), ("redis, remote (snapshot)", c)]


@pytest.mark.parametrize("metadata", [FLAT, NESTED], ids=["flat", "nested"])
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_every_view_keeps_the_callers_key_order(
    backend: str,
    metadata: dict[str, Any],
    make_registry: MakeRegistry,
    agents: Callable[[], Any],
) -> None:
    assert list(metadata) != sorted(metadata)  # the case under test: not sorted already
    views = _local_entries(backend, make_registry, agents(), metadata)
    try:
        for what, reg in views:
            entry = reg.lookup("k")
            assert entry is not None, what
            assert entry.metadata == freeze_metadata(metadata), what  # arrays: tuples
            assert _same_order(entry.metadata, metadata), (what, json.dumps(entry.metadata))
    finally:
        for _, reg in views:
            if isinstance(reg, MemoryRegistry):
                reg.close()


def test_an_update_by_another_node_keeps_its_callers_order(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    a, b = make_registry(), make_registry()
    a.register("k", agents(), FLAT)
    assert b.wait_for_version(a.status().written)
    b.update_metadata("k", UPDATED)  # b writes a's entry: remote for b, local for a
    assert a.wait_for_version(b.status().written)
    c = make_registry()
    for what, reg in (("owner", a), ("writer", b), ("snapshot", c)):
        entry = reg.lookup("k")
        assert entry is not None, what
        assert _same_order(entry.metadata, UPDATED), (what, json.dumps(entry.metadata))


def test_register_many_keeps_each_items_order(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    a, b = make_registry(), make_registry()
    w = agents()
    items = [(("m", i), w, {f"k{9 - j}": j for j in range(i % 4 + 2)} | NESTED) for i in range(8)]
    assert a.register_many(items) == [None] * len(items)
    assert b.wait_for_version(a.status().written)  # b applies the one bulk record
    for key, _, metadata in items:
        for what, reg in (("local", a), ("remote", b)):
            entry = reg.lookup(key)
            assert entry is not None, (what, key)
            assert _same_order(entry.metadata, metadata), (what, key)


def test_entries_an_older_node_stored_sorted_still_read_back(
    redis_server: RedisServer, make_registry: MakeRegistry, ns: str
) -> None:
    # An older node wrote metadata with sorted keys (metadata_to_json), through
    # the same REGISTER script; a node of this version reads it, from the stream
    # and from a snapshot, in the order it was stored.
    b = make_registry()
    frozen = freeze_metadata(NESTED)
    prefix = "{" + ns + "}"
    with redis.Redis.from_url(redis_server.url) as raw:
        seconds, micros = raw.time()
        deadline = seconds * 1000 + micros // 1000 + 600_000  # the old node's lease
        raw.zadd(f"{prefix}:leases", {"old-node": deadline})
        head = json.dumps({"n": "old-node", "a": {"kind": "thread", "pid": 1, "name": "w"}})
        head = head[:-1] + ', "t": 1.0, "s": 1}'
        args = RegisterArgs(
            "10000",
            "old-node",
            encode_key("old"),
            head,
            metadata_to_json(frozen).encode(),
            "",
            "n",
            False,
            "old-node",
            2500,
        )
        reply = raw.eval(REGISTER, 1, f"{prefix}:log", *args.argv())
    assert reply[0] == b"OK"
    assert b.wait_for_version(int(reply[1]))
    c = make_registry()
    for what, reg in (("stream", b), ("snapshot", c)):
        entry = reg.lookup("old")
        assert entry is not None, what
        assert entry.node == "old-node", what
        assert entry.metadata == frozen, what
        assert json.dumps(entry.metadata, sort_keys=True) == json.dumps(entry.metadata), what


def test_a_remote_entrys_order_is_not_sorted_by_the_wire(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    # The check above could pass if keys happened to be given sorted; this one
    # names the order exactly.
    a, b = make_registry(), make_registry()
    a.register("k", agents(), {"b": 1, "a": {"d": 1, "c": 2}})
    assert b.wait_for_version(a.status().written)
    entry = b.lookup("k")
    assert entry is not None
    assert list(entry.metadata) == ["b", "a"]
    assert list(entry.metadata["a"]) == ["d", "c"]
    assert isinstance(b, RedisRegistry)
