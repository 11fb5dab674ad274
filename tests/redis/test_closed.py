"""RedisRegistry after close(): every public call raises errors.Closed, reads included."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from foundation import errors
from foundation.registry._redis import RedisRegistry
from tests.redis.conftest import MakeRegistry


def _calls(reg: RedisRegistry, agent: Any) -> dict[str, Callable[[], Any]]:
    return {
        "register": lambda: reg.register("new", agent),
        "register_many": lambda: reg.register_many([("new", agent)]),
        "lookup": lambda: reg.lookup("k"),
        "lookup-missing": lambda: reg.lookup("missing"),
        "unregister": lambda: reg.unregister("k"),
        "update_metadata": lambda: reg.update_metadata("k", {"a": 1}),
        "query": lambda: reg.query([("role", "eq", "io")]),
        "query-all": lambda: reg.query([]),
        "find_by_attribute": lambda: reg.find_by_attribute("role", "io"),
        "list_all": reg.list_all,
        "count": reg.count,
        "in": lambda: "k" in reg,
        "len": lambda: len(reg),
        "subscribe": lambda: reg.subscribe(lambda e: None),
        "status": reg.status,
        "is_stale": reg.is_stale,
        "indexed_attributes": reg.indexed_attributes,
        "protocol_version": reg.protocol_version,
        "conflicts": reg.conflicts,
        "wait_for_version": lambda: reg.wait_for_version(0, timeout=0.1),
        "register_async": lambda: asyncio.run(reg.register_async("new", agent)),
        "register_many_async": lambda: asyncio.run(reg.register_many_async([("new", agent)])),
        "unregister_async": lambda: asyncio.run(reg.unregister_async("k")),
        "update_metadata_async": lambda: asyncio.run(reg.update_metadata_async("k", {})),
    }


def test_every_public_call_raises_closed(make_registry: MakeRegistry, agents) -> None:
    reg = make_registry(indexed=("role",))
    reg.register("k", agents(), {"role": "io"})
    reg.close()
    reg.close()  # idempotent
    for name, call in _calls(reg, agents()).items():
        with pytest.raises(errors.Closed) as info:
            call()
        assert isinstance(info.value, errors.FoundationError), name
        assert isinstance(info.value, RuntimeError), name
        assert "closed" in str(info.value), name
    assert "closed" in repr(reg)
    assert reg.manager.closed  # its own manager, closed with it


def test_invalid_input_after_close_is_still_closed(make_registry: MakeRegistry, agents) -> None:
    reg = make_registry()
    reg.close()
    with pytest.raises(errors.Closed):
        reg.lookup(["unhashable"])
    with pytest.raises(errors.Closed):
        reg.register(["unhashable"], agents())
    with pytest.raises(errors.Closed):
        reg.unregister(["unhashable"])


def test_a_waiting_wait_for_version_raises_closed_when_closed(
    make_registry: MakeRegistry,
) -> None:
    reg = make_registry()
    waiting = threading.Event()
    outcome: list[BaseException | bool] = []

    def waiter() -> None:
        waiting.set()
        try:
            outcome.append(reg.wait_for_version(10**9, timeout=60))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(5)
    reg.close()
    t.join(timeout=30)
    assert not t.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], errors.Closed)
