"""``AppConfig`` is hashable, consistently with ``==``.

Was: ``hash(AppConfig())`` raised ``TypeError`` (the frozen dataclass hashed its
``flags``, a ``MappingProxyType``, which is unhashable).
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

from foundation.application import AppConfig

EQUAL_PAIRS = [
    pytest.param({}, {}, id="defaults"),
    pytest.param({"lease_ttl": 5}, {"lease_ttl": 5.0}, id="an int and its float"),
    pytest.param({"indexed": ["role"]}, {"indexed": ("role",)}, id="a list and its tuple"),
    pytest.param(
        {"flags": {"a": True, "b": 3}}, {"flags": {"b": 3, "a": True}}, id="flags in any order"
    ),
    pytest.param(
        {"flags": {"variants": ["x", "y"], "table": {"k": 1}}},
        {"flags": {"variants": ["x", "y"], "table": {"k": 1}}},
        id="unhashable flag values",
    ),
    pytest.param(
        {"flags": {"s": {1}}}, {"flags": {"s": frozenset({1})}}, id="a set and a frozenset"
    ),
]


@pytest.mark.parametrize(("left", "right"), EQUAL_PAIRS)
def test_equal_configs_hash_alike(left: dict[str, Any], right: dict[str, Any]) -> None:
    a, b = AppConfig(**left), AppConfig(**right)
    assert a == b
    assert hash(a) == hash(b)
    assert {a: "first"}[b] == "first"  # one key


def test_a_config_and_its_copies_are_one_key() -> None:
    config = AppConfig(
        indexed=("role",), flags={"use_ets_agent_registry": True}, max_error_rate=0.1
    )
    copies = [copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))]
    assert {config, *copies} == {config}
    assert len({config, *copies}) == 1


def test_different_configs_are_different_keys() -> None:
    configs = [
        AppConfig(),
        AppConfig(namespace="other"),
        AppConfig(indexed=("role",)),
        AppConfig(flags={"a": True}),
        AppConfig(flags={"a": False}),  # the same hash as the one above: still another key
    ]
    assert len(set(configs)) == len(configs)
