"""Yes/no options take ``True`` or ``False``, nothing else: ``TypeError`` at the call.

Before, ``register(key, agent, replace=1)`` was read by its truth on every
backend (``replace="no"`` replaced a live holder), and ``register_many`` and
``snapshot_all_threads(include_dead=...)`` likewise. Now each refuses a
non-bool with ``TypeError``, stores nothing, and a closed registry still says
``Closed`` first (docs/contract.md, "Registry contract").
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from foundation import ThreadLocalRegistry, spawn_thread
from foundation.errors import Closed
from foundation.registry import Registry
from tests.contract.backends import BackendSpec, backend_params

NOT_BOOLS: list[Any] = [1, 0, "no", "", None, 1.0, [], object()]


@pytest.fixture(params=backend_params())
def registry(request: pytest.FixtureRequest) -> Any:
    spec: BackendSpec = request.param
    with spec.make(request, ("role",)) as reg:
        yield reg


@pytest.mark.parametrize("flag", NOT_BOOLS, ids=repr)
def test_register_refuses_a_replace_that_is_not_a_bool(
    registry: Registry, flag: Any, stop: threading.Event
) -> None:
    holder = spawn_thread(stop.wait)
    registry.register("held", holder, {"role": "io"})
    for key in ("held", "free"):  # a taken key and a free one: the same answer
        with pytest.raises(TypeError, match="replace must be True or False"):
            registry.register(key, spawn_thread(stop.wait), {"role": "db"}, replace=flag)
    with pytest.raises(TypeError, match="replace must be True or False"):
        asyncio.run(registry.register_async("free", spawn_thread(stop.wait), replace=flag))
    with pytest.raises(TypeError, match="replace must be True or False"):
        registry.register_many([("free", spawn_thread(stop.wait))], replace=flag)
    with pytest.raises(TypeError, match="replace must be True or False"):
        registry.register_many([], replace=flag)  # even an empty batch
    # Nothing changed: the holder is still there, the free key still free.
    entry = registry.lookup("held")
    assert entry is not None
    assert entry.agent is holder
    assert dict(entry.metadata) == {"role": "io"}
    assert registry.lookup("free") is None
    assert registry.count() == 1


def test_true_and_false_still_work(registry: Registry, stop: threading.Event) -> None:
    registry.register("k", spawn_thread(stop.wait), replace=False)
    newer = spawn_thread(stop.wait)
    registry.register("k", newer, replace=True)
    entry = registry.lookup("k")
    assert entry is not None
    assert entry.agent is newer
    assert registry.register_many([("k", spawn_thread(stop.wait))], replace=True) == [None]


def test_a_closed_registry_says_closed_before_judging_replace(
    registry: Registry, stop: threading.Event
) -> None:
    registry.close()
    with pytest.raises(Closed):
        registry.register("k", spawn_thread(stop.wait), replace=1)  # type: ignore[arg-type]
    with pytest.raises(Closed):
        registry.register_many([], replace="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("flag", NOT_BOOLS, ids=repr)
def test_snapshot_all_threads_refuses_an_include_dead_that_is_not_a_bool(flag: Any) -> None:
    registry = ThreadLocalRegistry()
    try:
        with pytest.raises(TypeError, match="include_dead must be True or False"):
            registry.snapshot_all_threads(include_dead=flag)
        assert registry.snapshot_all_threads(include_dead=True) == {}
    finally:
        registry.close()
