"""``AppConfig`` survives ``copy.copy``, ``copy.deepcopy`` and pickle: equal, checked, frozen."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from foundation import Application
from foundation.application import AppConfig
from foundation.errors import InvalidConfig


def _full() -> AppConfig:
    """A config with every field away from its default, ``flags`` nested."""
    return AppConfig(
        registry_backend="redis",
        indexed=["role", "zone"],
        redis_url="redis://127.0.0.1:6379/0",
        namespace="shop",
        lease_ttl=2.5,
        flag_store="sqlite",
        flag_store_path=".foundation/flags.sqlite3",
        flag_store_redis_url="redis://127.0.0.1:6379/1",
        flag_store_namespace="shop-flags",
        flag_store_history_limit="unlimited",
        flags={"use_ets_agent_registry": True, "rollout": {"percent": [10, 50]}},
        health_interval=1.5,
        max_error_rate=0.25,
        max_restarts_per_minute=10,
        max_latency_ratio=3.0,
    )


COPIES: dict[str, Callable[[AppConfig], AppConfig]] = {
    "deepcopy": copy.deepcopy,
    **{
        f"pickle{protocol}": lambda c, p=protocol: pickle.loads(pickle.dumps(c, protocol=p))
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1)
    },
}


@pytest.mark.parametrize("make", [AppConfig, _full], ids=["default", "full"])
@pytest.mark.parametrize("how", list(COPIES))
def test_a_copy_is_equal_frozen_and_read_only(how: str, make: Callable[[], AppConfig]) -> None:
    # Was: TypeError "cannot pickle 'mappingproxy' object" (deepcopy and pickle).
    original = make()
    twin = COPIES[how](original)
    assert type(twin) is AppConfig
    assert twin == original
    assert isinstance(twin.flags, MappingProxyType)
    assert isinstance(twin.indexed, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        twin.namespace = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        twin.flags["use_ets_agent_registry"] = False  # type: ignore[index]


@pytest.mark.parametrize("how", ["deepcopy", f"pickle{pickle.HIGHEST_PROTOCOL}"])
def test_a_deep_copy_shares_no_flag_value(how: str) -> None:
    original = _full()
    twin = COPIES[how](original)
    assert twin.flags["rollout"] == original.flags["rollout"]
    assert twin.flags["rollout"] is not original.flags["rollout"]


def test_a_shallow_copy_is_equal_to_a_deep_one() -> None:
    # copy.copy worked before (sharing the read-only flags); it now takes the
    # same path as the others, through the constructor.
    original = _full()
    shallow, deep = copy.copy(original), copy.deepcopy(original)
    assert shallow == deep == original
    assert isinstance(shallow.flags, MappingProxyType)


class _Tampered:
    """Pickles as an ``AppConfig`` whose values a config file could not hold."""

    def __reduce__(self) -> tuple[Any, ...]:
        rebuild, (cls, values) = AppConfig().__reduce__()
        return rebuild, (cls, {**values, "registry_backend": "etcd", "lease_ttl": -1})


def test_an_unpickled_config_is_checked_as_a_new_one() -> None:
    with pytest.raises(InvalidConfig, match=r"registry\.backend must be memory or redis"):
        pickle.loads(pickle.dumps(_Tampered()))


def test_an_application_runs_on_a_copied_config() -> None:
    config = copy.deepcopy(AppConfig(flags={"use_ets_agent_registry": True}))
    with Application.start(config, services=("flags",)) as app:
        assert app.config is config
        assert app.flags is not None
        assert app.flags.enabled("use_ets_agent_registry") is True
