"""Keys and metadata: what is accepted, the frozen shape, and the JSON hooks."""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from typing import Any

import pytest

from foundation.errors import InvalidKey, InvalidMetadata
from foundation.registry._validation import (
    EMPTY_METADATA,
    MAX_DEPTH,
    FrozenMetadata,
    check_metadata_size,
    freeze_metadata,
    metadata_from_json,
    metadata_to_json,
    validate_key,
)


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize("key", ["a", 1, 2.5, None, ("t", 1), frozenset({1})])
def test_hashable_keys_are_accepted(key: object) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", [["a"], {"a": 1}, {1}, ("t", [1])])
def test_unhashable_keys_raise_invalid_key_which_is_a_type_error(key: object) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)
    with pytest.raises(TypeError):
        validate_key(key)


def test_none_metadata_is_the_shared_empty_mapping() -> None:
    assert freeze_metadata(None) is EMPTY_METADATA
    assert dict(freeze_metadata(None)) == {}


@pytest.mark.parametrize("bad", [[("a", 1)], "a=1", 42, {1, 2}])
def test_metadata_that_is_not_a_mapping_is_rejected(bad: object) -> None:
    with pytest.raises(InvalidMetadata, match="must be a mapping"):
        freeze_metadata(bad)


@pytest.mark.parametrize(
    "bad",
    [
        {1: "int key"},
        {"nested": {2: "x"}},
        {"set": {1, 2}},
        {"bytes": b"x"},
        {"nan": float("nan")},
        {"inf": float("inf")},
        {"deep": [1, [2, object()]]},
        {"obj": object()},
    ],
)
def test_metadata_that_is_not_json_compatible_is_rejected(bad: dict[Any, Any]) -> None:
    with pytest.raises(InvalidMetadata):
        freeze_metadata(bad)
    with pytest.raises(ValueError):
        freeze_metadata(bad)


def test_cyclic_and_too_deep_metadata_is_rejected() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(InvalidMetadata, match="deeper"):
        freeze_metadata(cyclic)
    deep: Any = 1
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(InvalidMetadata, match="deeper"):
        freeze_metadata({"d": deep})


def test_frozen_metadata_is_a_read_only_deep_copy() -> None:
    original: dict[str, Any] = {"tags": ["a", "b"], "limits": {"cpu": 2, "gpus": [0, 1]}}
    frozen = freeze_metadata(original)
    original["tags"].append("c")
    original["limits"]["cpu"] = 99
    original["new"] = 1
    assert frozen == {"tags": ("a", "b"), "limits": {"cpu": 2, "gpus": (0, 1)}}
    assert isinstance(frozen, FrozenMetadata)
    assert isinstance(frozen["limits"], FrozenMetadata)
    with pytest.raises(TypeError):
        frozen["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        frozen["limits"]["cpu"] = 3


def test_subclasses_of_json_types_become_plain_types() -> None:
    class S(str):
        pass

    frozen = freeze_metadata(OrderedDict([(S("k"), Colour.RED), ("s", S("v")), ("t", (1,))]))
    assert type(next(iter(frozen))) is str
    assert type(frozen["k"]) is int
    assert type(frozen["s"]) is str


def test_json_round_trip_gives_the_same_frozen_shape() -> None:
    metadata = {"a": None, "b": True, "c": 1, "d": 1.5, "e": "x", "f": [1, {"g": [2]}]}
    frozen = freeze_metadata(metadata)
    text = metadata_to_json(frozen)
    assert json.loads(text) == {
        "a": None,
        "b": True,
        "c": 1,
        "d": 1.5,
        "e": "x",
        "f": [1, {"g": [2]}],
    }
    again = metadata_from_json(text)
    assert again == frozen
    assert type(again["f"]) is tuple
    assert isinstance(again["f"][1], FrozenMetadata)


def test_invalid_json_text_is_invalid_metadata() -> None:
    with pytest.raises(InvalidMetadata):
        metadata_from_json("{not json")
    with pytest.raises(InvalidMetadata):
        metadata_from_json("[1, 2]")


def test_size_limit_is_checked_on_the_json_encoding() -> None:
    freeze_metadata({"a": "x" * 10}, max_bytes=100)
    with pytest.raises(InvalidMetadata, match="more than the limit"):
        freeze_metadata({"a": "x" * 200}, max_bytes=100)
    with pytest.raises(InvalidMetadata):
        check_metadata_size("é" * 3, 5)  # 6 bytes in UTF-8
