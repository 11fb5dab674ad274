"""Keys and metadata follow ONE rule on every backend (docs/keys-and-metadata.md).

Every test runs on every backend of the contract suite (memory, thread_local,
the three MigratingRegistry modes, redis on a real redis-server): the same
input is accepted with the same normal form, or refused with the same error,
and a refused call stores nothing.
"""

from __future__ import annotations

import copy
import enum
import json
import pickle
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from foundation.errors import InvalidKey, InvalidMetadata
from foundation.liveness import spawn_thread
from foundation.registry import Registry
from foundation.registry._redis import RemoteAgent
from foundation.registry._validation import (
    INT_MAX,
    INT_MIN,
    MAX_DEPTH,
    MAX_KEY_DEPTH,
    MAX_METADATA_BYTES,
    FrozenMetadata,
    freeze_metadata,
    validate_key,
)
from tests.contract.backends import BackendSpec, backend_params

MESSAGE_LIMIT = 400  # every error message stays this short, whatever the input


class Role(enum.StrEnum):
    IO = "io"


class Level(enum.IntEnum):
    HIGH = 3


class LoudStr(str):
    """A str subclass with its own equality: it cannot be a key."""

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


def _nested(depth: int, leaf: Any, kind: type = tuple) -> Any:
    value = leaf
    for _ in range(depth):
        value = kind([value])
    return value


@pytest.fixture(params=backend_params())
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    spec: BackendSpec = request.param
    with spec.make(request, ("role",)) as reg:
        yield reg


@pytest.fixture
def agent() -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = spawn_thread(stop.wait, name="rules-agent")
    yield thread
    stop.set()
    thread.join(10)


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("key", "normal"),
    [
        ("plain", "plain"),
        (7, 7),
        (2.5, 2.5),
        (None, None),
        (Role.IO, "io"),
        (Level.HIGH, 3),
        (2.0, 2),
        (("job", Role.IO, (Level.HIGH, 1.0)), ("job", "io", (3, 1))),
        (frozenset({Role.IO, 1}), frozenset({"io", 1})),
        (INT_MIN, INT_MIN),
        (INT_MAX, INT_MAX),
        (1e300, 1e300),  # integral but beyond the int range: stays a float
    ],
)
def test_keys_are_accepted_and_normalised_alike_on_every_backend(
    registry: Registry, agent: threading.Thread, key: object, normal: object
) -> None:
    registry.register(key, agent, {"role": "io"})
    entry = registry.lookup(normal)
    assert entry is not None
    assert entry.key == normal
    assert type(entry.key) is type(normal)
    if isinstance(normal, tuple):
        assert [type(x) for x in entry.key] == [type(x) for x in normal]  # type: ignore[attr-defined]
    registry.update_metadata(key, {"role": "db"})
    assert registry.lookup(normal).metadata == {"role": "db"}  # type: ignore[union-attr]
    assert registry.unregister(key) is True
    assert registry.lookup(normal) is None


@pytest.mark.parametrize(("member", "plain"), [(Role.IO, "io"), (Level.HIGH, 3)])
def test_an_enum_member_finds_the_entry_of_its_plain_value_on_every_backend(
    registry: Registry, agent: threading.Thread, member: object, plain: object
) -> None:
    assert registry.lookup(member) is None  # a miss first: the member's type is learnt here
    registry.register(plain, agent, {"role": "io"})
    for _ in range(2):  # and then answered from what was learnt about its type
        entry = registry.lookup(member)
        assert entry is not None
        assert entry.key == plain
        assert type(entry.key) is type(plain)
        assert member in registry
    assert registry.unregister(member) is True
    assert registry.lookup(member) is None
    assert registry.lookup(plain) is None


def test_a_str_subclass_with_its_own_equality_stays_refused_once_learnt(
    registry: Registry, agent: threading.Thread
) -> None:
    registry.register("x", agent)
    for _ in range(2):
        with pytest.raises(InvalidKey):
            registry.lookup(LoudStr("y"))  # equal to "x" by its own __eq__: never a match
    assert LoudStr("y") not in registry


BAD_KEYS = [
    pytest.param(True, id="bool"),
    pytest.param(INT_MAX + 1, id="int-too-big"),
    pytest.param(INT_MIN - 1, id="int-too-small"),
    pytest.param(10**5000, id="int-5000-digits"),
    pytest.param(float("nan"), id="nan"),
    pytest.param(float("inf"), id="inf"),
    pytest.param(["x"], id="list"),
    pytest.param({"a": 1}, id="dict"),
    pytest.param(b"x", id="bytes"),
    pytest.param(object(), id="object"),
    pytest.param(LoudStr("x"), id="str-subclass-with-own-eq"),
    pytest.param(("a", ["b"]), id="tuple-holding-a-list"),
    pytest.param((True,), id="tuple-holding-a-bool"),
    pytest.param(_nested(MAX_KEY_DEPTH + 1, "x"), id="tuple-too-deep"),
    pytest.param(_nested(5000, "x"), id="tuple-5000-deep"),
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_invalid_key_on_every_backend_and_store_nothing(
    registry: Registry, agent: threading.Thread, key: object
) -> None:
    for call in (
        lambda: registry.register(key, agent),
        lambda: registry.update_metadata(key, {"a": 1}),
        lambda: registry.unregister(key),
    ):
        with pytest.raises(InvalidKey) as info:
            call()
        assert len(str(info.value)) < MESSAGE_LIMIT
    assert registry.count() == 0
    assert registry.list_all() == []


@pytest.mark.parametrize("key", [["x"], {"a": 1}, _nested(5000, "x"), float("nan")])
def test_lookup_of_a_value_that_can_be_no_key_is_invalid_key(
    registry: Registry, key: object
) -> None:
    with pytest.raises(InvalidKey) as info:
        registry.lookup(key)
    assert len(str(info.value)) < MESSAGE_LIMIT
    assert key not in registry


def test_the_one_key_validator_is_the_redis_encoding_rule() -> None:
    from foundation.registry._redis._codec import decode_key, encode_key

    for key in (("job", Role.IO, 2.0), frozenset({Level.HIGH}), 1e300, -0.0):
        assert decode_key(encode_key(key)) == validate_key(key)
        assert type(decode_key(encode_key(key))) is type(validate_key(key))
    with pytest.raises(InvalidKey):
        encode_key(True)


# --------------------------------------------------------------------------- metadata


BAD_METADATA = [
    pytest.param({"s": "\ud800"}, id="lone-surrogate-value"),
    pytest.param({"\udfff": 1}, id="lone-surrogate-key"),
    pytest.param({"n": 10**5000}, id="int-5000-digits"),
    pytest.param({"n": INT_MAX + 1}, id="int-beyond-64-bits"),
    pytest.param({"n": [INT_MIN - 1]}, id="int-below-64-bits-in-a-list"),
    pytest.param({"s": {1, 2}}, id="set"),
    pytest.param({"b": b"x"}, id="bytes"),
    pytest.param({"f": float("nan")}, id="nan"),
    pytest.param({"o": object()}, id="object"),
    pytest.param({1: "x"}, id="int-key"),
    pytest.param({"d": _nested(MAX_DEPTH + 2, 1, list)}, id="too-deep"),
    pytest.param({"d": _nested(5000, 1, list)}, id="5000-deep"),
    pytest.param({"big": "x" * MAX_METADATA_BYTES}, id="over-the-size-limit"),
    pytest.param({"big": "é" * (MAX_METADATA_BYTES // 2)}, id="over-the-limit-in-utf8-bytes"),
    pytest.param({"many": list(range(20000))}, id="over-the-limit-nested"),
    pytest.param(["not", "a", "mapping"], id="not-a-mapping"),
]


@pytest.mark.parametrize("metadata", BAD_METADATA)
def test_bad_metadata_is_invalid_metadata_on_every_backend_and_changes_nothing(
    registry: Registry, agent: threading.Thread, metadata: Any
) -> None:
    with pytest.raises(InvalidMetadata) as info:
        registry.register("k", agent, metadata)
    assert len(str(info.value)) < MESSAGE_LIMIT
    assert registry.lookup("k") is None
    registry.register("k", agent, {"role": "io"})
    with pytest.raises(InvalidMetadata) as info:
        registry.update_metadata("k", metadata)
    assert len(str(info.value)) < MESSAGE_LIMIT
    assert registry.lookup("k").metadata == {"role": "io"}  # type: ignore[union-attr]


def test_metadata_exactly_at_the_size_limit_is_accepted_on_every_backend(
    registry: Registry, agent: threading.Thread
) -> None:
    overhead = len(json.dumps({"big": ""}, separators=(",", ":")))
    metadata = {"big": "x" * (MAX_METADATA_BYTES - overhead)}
    registry.register("k", agent, metadata)
    assert registry.lookup("k").metadata == metadata  # type: ignore[union-attr]
    with pytest.raises(InvalidMetadata, match="more than the limit"):
        registry.update_metadata("k", {"big": metadata["big"] + "x"})


def test_metadata_is_normalised_alike_and_dumps_as_json_on_every_backend(
    registry: Registry, agent: threading.Thread
) -> None:
    given = {
        "role": Role.IO,
        "level": Level.HIGH,
        "tags": ["a", Role.IO],
        "limits": {"cpu": 2, "gpus": (0, 1), "deep": {"x": [None, True, 1.5]}},
        "text": "é",
        "ints": [INT_MIN, INT_MAX],
    }
    registry.register("k", agent, given)
    metadata = registry.lookup("k").metadata  # type: ignore[union-attr]
    assert type(metadata["role"]) is str
    assert type(metadata["level"]) is int
    assert metadata["tags"] == ("a", "io")
    assert isinstance(metadata, FrozenMetadata)
    assert isinstance(metadata["limits"]["deep"], FrozenMetadata)
    assert json.loads(json.dumps(metadata)) == {
        "role": "io",
        "level": 3,
        "tags": ["a", "io"],
        "limits": {"cpu": 2, "gpus": [0, 1], "deep": {"x": [None, True, 1.5]}},
        "text": "é",
        "ints": [INT_MIN, INT_MAX],
    }
    assert registry.find_by_attribute("role", Role.IO)[0].key == "k"


def test_entry_metadata_is_read_only_yet_copies_deepcopies_and_pickles(
    registry: Registry, agent: threading.Thread
) -> None:
    registry.register("k", agent, {"role": "io", "limits": {"cpu": [1, 2]}})
    entry = registry.lookup("k")
    assert entry is not None
    metadata = entry.metadata
    with pytest.raises(TypeError, match="read-only"):
        metadata["role"] = "db"  # type: ignore[index]
    with pytest.raises(TypeError, match="read-only"):
        metadata["limits"]["cpu"] = 3
    for mutate in ("clear", "popitem"):
        with pytest.raises(TypeError):
            getattr(metadata, mutate)()
    with pytest.raises(TypeError):
        metadata.update({"x": 1})  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        del metadata["role"]  # type: ignore[attr-defined]
    assert dict(metadata) | {"role": "db"} == {"role": "db", "limits": {"cpu": (1, 2)}}
    assert copy.copy(entry) is entry
    assert copy.deepcopy(entry) is entry  # the agent is a live handle, never duplicated
    assert copy.deepcopy(metadata) == metadata
    restored = pickle.loads(pickle.dumps(metadata))
    assert restored == metadata
    assert type(restored["limits"]) is FrozenMetadata
    remote = replace(entry, agent=RemoteAgent("node-a", "thread", 1, "w"))
    assert pickle.loads(pickle.dumps(remote)) == remote  # pickles where the agent does
    assert registry.lookup("k").metadata == {"role": "io", "limits": {"cpu": (1, 2)}}  # type: ignore[union-attr]


def test_entries_and_their_metadata_hash_so_a_set_of_entries_works(
    registry: Registry, agent: threading.Thread
) -> None:
    registry.register("k", agent, {"role": "io", "limits": {"cpu": [1, 2]}})
    registry.register("j", agent)
    entries = registry.list_all()
    assert set(entries) == set(registry.list_all())  # was: TypeError, unhashable dict
    assert len(set(entries)) == 2
    metadata = registry.lookup("k").metadata  # type: ignore[union-attr]
    same = freeze_metadata({"limits": {"cpu": (1, 2)}, "role": "io"})
    assert metadata == same
    assert hash(metadata) == hash(same)  # equal, so equal hashes (key order aside)
    assert {metadata: 1}[same] == 1


def test_frozen_metadata_built_directly_is_validated_too() -> None:
    assert FrozenMetadata({"a": [1]}) == {"a": (1,)}
    with pytest.raises(InvalidMetadata):
        FrozenMetadata({"a": {1}})
    frozen = freeze_metadata({"a": 1})
    assert freeze_metadata(frozen) is frozen  # already frozen: shared, not copied
