"""``MemoryRegistry`` after ``close()``: every public call raises ``errors.Closed``.

Reads included (``lookup``, ``in``, ``len``, ``count``, ``list_all``, ``query``,
``stats``): the readers' table is swapped for one whose every access raises,
so the open registry's lookup path pays nothing for the check.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from foundation.errors import Closed, FoundationError
from foundation.liveness import MonitorManager, spawn_thread
from foundation.registry import MemoryRegistry

Call = Callable[[MemoryRegistry, Any], object]

CALLS: dict[str, Call] = {
    "register": lambda r, a: r.register("k", a, {"role": "io"}),
    "register(replace)": lambda r, a: r.register("held", a, replace=True),
    "register(no metadata)": lambda r, a: r.register("k", a),
    "register_many": lambda r, a: r.register_many([("k", a)]),
    "lookup": lambda r, a: r.lookup("held"),
    "lookup(absent)": lambda r, a: r.lookup("absent"),
    "unregister": lambda r, a: r.unregister("held"),
    "update_metadata": lambda r, a: r.update_metadata("held", {"role": "db"}),
    "query": lambda r, a: r.query([("role", "eq", "io")]),
    "query(scan)": lambda r, a: r.query([("n", "gt", 1)]),
    "find_by_attribute": lambda r, a: r.find_by_attribute("role", "io"),
    "list_all": lambda r, a: r.list_all(),
    "count": lambda r, a: r.count(),
    "len": lambda r, a: len(r),
    "in": lambda r, a: "held" in r,
    "subscribe": lambda r, a: r.subscribe(print),
    "stats": lambda r, a: r.stats(),
    "indexed_attributes": lambda r, a: r.indexed_attributes(),
    "register_async": lambda r, a: asyncio.run(r.register_async("k", a)),
    "unregister_async": lambda r, a: asyncio.run(r.unregister_async("held")),
}


@pytest.mark.parametrize("shared_manager", [False, True], ids=["own manager", "shared manager"])
@pytest.mark.parametrize("call", list(CALLS))
def test_every_public_call_after_close_raises_closed(
    stop: threading.Event, call: str, shared_manager: bool
) -> None:
    manager = MonitorManager(name="closed-test") if shared_manager else None
    try:
        registry = MemoryRegistry(indexed=("role",), manager=manager)
        registry.register("held", spawn_thread(stop.wait), {"role": "io"})
        registry.close()
        agent = spawn_thread(stop.wait)
        baseline = manager.active_count() if manager is not None else 0
        with pytest.raises(Closed) as info:
            CALLS[call](registry, agent)
        assert isinstance(info.value, RuntimeError)
        assert isinstance(info.value, FoundationError)
        assert "closed" in str(info.value)
        if manager is not None:  # a refused register leaves no monitor behind
            assert manager.active_count() == baseline == 0
    finally:
        if manager is not None:
            manager.close()


def test_close_is_idempotent_and_repr_still_works(stop: threading.Event) -> None:
    registry = MemoryRegistry()
    registry.register("a", spawn_thread(stop.wait))
    registry.close()
    registry.close()
    assert "closed" in repr(registry)
    with pytest.raises(Closed), registry:  # entering a closed registry is a call: Closed
        pytest.fail("the with block ran on a closed registry")
    registry.__exit__(None, None, None)  # an exit closes again: still quiet


def test_close_releases_every_monitor_of_a_shared_manager(stop: threading.Event) -> None:
    with MonitorManager(name="closed-release") as manager:
        registry = MemoryRegistry(manager=manager)
        agent = spawn_thread(stop.wait)
        for i in range(10):
            registry.register(i, agent)
        assert manager.active_count() == 10
        registry.close()
        assert manager.active_count() == 0
        assert not manager.closed  # not ours to close


def test_readers_racing_close_see_an_answer_or_closed_never_anything_else(
    stop: threading.Event,
) -> None:
    registry = MemoryRegistry(indexed=("role",))
    agent = spawn_thread(stop.wait)
    for i in range(200):
        registry.register(i, agent, {"role": "io"})
    started = threading.Barrier(3)
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def reader(read: Callable[[], object]) -> None:
        started.wait()
        try:
            while True:
                read()
        except Closed:
            outcomes.append("closed")
        except BaseException as exc:  # anything else is the defect this test looks for
            errors.append(exc)

    threads = [
        threading.Thread(target=reader, args=(lambda: registry.lookup(7),)),
        threading.Thread(target=reader, args=(lambda: registry.find_by_attribute("role", "io"),)),
    ]
    for t in threads:
        t.start()
    started.wait()
    registry.close()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert errors == []
    assert outcomes == ["closed", "closed"]
