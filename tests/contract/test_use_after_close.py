"""Use after ``close()``, on every backend: one error, ``errors.Closed``, for every call.

``close()`` is idempotent, and an unsubscribe callable taken before the close
still works (it does nothing). Every other public call of the contract —
reads, writes, ``subscribe``, the async face, ``len``/``in`` — raises
``errors.Closed`` (also a ``RuntimeError``), never a stale or empty answer.

There is no exception: ``protocol_version()`` and ``indexed_attributes()``,
which a closed registry could still answer, refuse too — a closed object
answers nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from foundation.errors import Closed, FoundationError
from foundation.registry import Registry
from tests.contract.agents import Agents
from tests.contract.backends import BackendSpec
from tests.contract.conftest import INDEXED

Call = Callable[[Registry, Any], object]

# Every public call of the contract, with arguments that would succeed on an open registry.
CALLS: dict[str, Call] = {
    "register": lambda r, a: r.register("k", a, {"role": "io"}),
    "register(replace=True)": lambda r, a: r.register("k", a, replace=True),
    "register_many": lambda r, a: r.register_many([("k", a, {"role": "io"})]),
    "lookup": lambda r, a: r.lookup("held"),
    "lookup(absent)": lambda r, a: r.lookup("absent"),
    "unregister": lambda r, a: r.unregister("held"),
    "update_metadata": lambda r, a: r.update_metadata("held", {"role": "db"}),
    "query([])": lambda r, a: r.query([]),
    "query(indexed)": lambda r, a: r.query([("role", "eq", "io")]),
    "query(scan)": lambda r, a: r.query([("load", "lt", 3)]),
    "find_by_attribute": lambda r, a: r.find_by_attribute("role", "io"),
    "list_all": lambda r, a: r.list_all(),
    "list_all(filter)": lambda r, a: r.list_all(lambda m: True),
    "count": lambda r, a: r.count(),
    "len": lambda r, a: len(r),
    "in": lambda r, a: "held" in r,
    "indexed_attributes": lambda r, a: r.indexed_attributes(),
    "protocol_version": lambda r, a: r.protocol_version(),
    "subscribe": lambda r, a: r.subscribe(lambda event: None),
    "register_async": lambda r, a: asyncio.run(r.register_async("k", a)),
    "register_many_async": lambda r, a: asyncio.run(r.register_many_async([("k", a)])),
    "unregister_async": lambda r, a: asyncio.run(r.unregister_async("held")),
    "update_metadata_async": lambda r, a: asyncio.run(
        r.update_metadata_async("held", {"role": "db"})
    ),
}

# Public methods of the contract that are not in CALLS, each with its reason.
NOT_REFUSED = {
    "close": "idempotent: closing a closed registry does nothing",
}


@pytest.fixture
def closed(
    backend: BackendSpec, request: pytest.FixtureRequest, agents: Agents
) -> Iterator[tuple[Registry, Any, Callable[[], None]]]:
    """A registry that held an entry and a listener, then was closed; a live agent."""
    with backend.make(request, INDEXED) as registry:
        registry.register("held", agents.new("thread"), {"role": "io"})
        unsubscribe = registry.subscribe(lambda event: None)
        registry.close()
        yield registry, agents.new("thread"), unsubscribe


def test_every_contract_call_is_checked_after_close() -> None:
    public = {
        name
        for name in dir(Registry)
        if not name.startswith("_") and callable(getattr(Registry, name))
    }
    checked = {name.split("(")[0] for name in CALLS} | set(NOT_REFUSED)
    assert public <= checked, f"add these calls to CALLS or NOT_REFUSED: {public - checked}"


@pytest.mark.parametrize("call", list(CALLS))
def test_every_call_after_close_raises_closed(
    closed: tuple[Registry, Any, Callable[[], None]], call: str
) -> None:
    registry, agent, _ = closed
    with pytest.raises(Closed) as info:
        CALLS[call](registry, agent)
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value, FoundationError)
    assert "closed" in str(info.value)


def test_close_is_idempotent_and_an_earlier_unsubscribe_still_works(
    closed: tuple[Registry, Any, Callable[[], None]],
) -> None:
    registry, _, unsubscribe = closed
    assert registry.close() is None
    assert registry.close() is None
    assert unsubscribe() is None
    assert unsubscribe() is None


def test_a_refused_call_changes_nothing_and_a_context_exit_closes_quietly(
    backend: BackendSpec, request: pytest.FixtureRequest, agents: Agents
) -> None:
    events: list[object] = []
    with backend.make(request, INDEXED) as registry:
        registry.subscribe(events.append)
        with registry:
            pass  # __exit__ closes it
        with pytest.raises(Closed):
            registry.register("late", agents.new("thread"))
        with pytest.raises(Closed):
            registry.lookup("late")
    assert events == []  # no event for the refused write, none for close
