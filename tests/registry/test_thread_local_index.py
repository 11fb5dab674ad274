"""``ThreadLocalRegistry(indexed=...)``: indexed queries are answered from an index.

Each thread's store keeps the shared ``AttributeIndex`` over its own entries;
``stats()`` shows how a query was answered (``indexed_queries`` / ``scans``),
as ``MemoryRegistry.stats()`` does. Every answer equals the scan's answer.
"""

from __future__ import annotations

import concurrent.futures
import enum
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.errors import Closed
from foundation.liveness import spawn_thread
from foundation.registry import ThreadLocalRegistry


class Role(enum.StrEnum):
    IO = "io"
    DB = "db"


@pytest.fixture
def agent() -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = spawn_thread(stop.wait)
    yield thread
    stop.set()
    thread.join()


@pytest.fixture
def reg() -> Iterator[ThreadLocalRegistry]:
    with ThreadLocalRegistry(indexed=("role", "tags")) as registry:
        yield registry


def _keys(entries: list[Any]) -> list[Any]:
    return sorted(e.key for e in entries)


def test_an_indexed_attribute_is_answered_from_the_index(
    reg: ThreadLocalRegistry, agent: threading.Thread
) -> None:
    for i in range(20):
        reg.register(i, agent, {"role": "io" if i % 2 else "db", "n": i})
    assert _keys(reg.find_by_attribute("role", "io")) == list(range(1, 20, 2))
    assert _keys(reg.query([("role", "in", ["db"]), ("n", "lt", 5)])) == [0, 2, 4]
    stats = reg.stats()
    assert (stats.indexed_queries, stats.scans) == (2, 0)


def test_a_query_no_index_can_answer_scans_and_is_counted(
    reg: ThreadLocalRegistry, agent: threading.Thread
) -> None:
    reg.register("a", agent, {"role": "io", "n": 3})
    assert _keys(reg.query([("n", "gt", 1)])) == ["a"]
    assert _keys(reg.find_by_attribute("n", 3)) == ["a"]  # "n" is not indexed
    stats = reg.stats()
    assert (stats.indexed_queries, stats.scans) == (0, 2)


def test_an_enum_member_probe_uses_the_index(
    reg: ThreadLocalRegistry, agent: threading.Thread
) -> None:
    reg.register("a", agent, {"role": Role.IO})
    reg.register("b", agent, {"role": "db"})
    assert _keys(reg.find_by_attribute("role", Role.IO)) == ["a"]
    assert _keys(reg.find_by_attribute("role", "io")) == ["a"]
    assert _keys(reg.query([("role", "in", [Role.DB, Role.IO])])) == ["a", "b"]
    assert reg.stats().scans == 0


def test_the_index_follows_updates_replacements_and_unregisters(
    reg: ThreadLocalRegistry, agent: threading.Thread
) -> None:
    reg.register("a", agent, {"role": "io"})
    reg.update_metadata("a", {"role": "db"})
    assert reg.find_by_attribute("role", "io") == []
    assert _keys(reg.find_by_attribute("role", "db")) == ["a"]
    reg.register("a", agent, {"role": "web"}, replace=True)
    assert reg.find_by_attribute("role", "db") == []
    assert _keys(reg.find_by_attribute("role", "web")) == ["a"]
    assert reg.unregister("a")
    assert reg.find_by_attribute("role", "web") == []
    assert reg.stats().scans == 0


def test_list_values_are_indexed_per_element(
    reg: ThreadLocalRegistry, agent: threading.Thread
) -> None:
    reg.register("a", agent, {"tags": ["x", "y"]})
    reg.register("b", agent, {"tags": ["y"]})
    assert _keys(reg.find_by_attribute("tags", "y")) == ["a", "b"]
    assert _keys(reg.query([("tags", "in", ["x"])])) == ["a"]
    reg.update_metadata("a", {"tags": ["y"]})  # keeps "y", drops "x"
    assert reg.find_by_attribute("tags", "x") == []
    assert _keys(reg.find_by_attribute("tags", "y")) == ["a", "b"]
    assert reg.stats().scans == 0


def test_a_dead_lingering_agent_is_filtered_from_indexed_answers(
    reg: ThreadLocalRegistry, agent: threading.Thread
) -> None:
    doomed: concurrent.futures.Future[None] = concurrent.futures.Future()
    reg.register("dead", doomed, {"role": "io"})
    reg.register("live", agent, {"role": "io"})
    doomed.set_result(None)
    assert _keys(reg.find_by_attribute("role", "io")) == ["live"]
    assert reg.stats().dead == 1  # it lingers, as documented, but is never answered
    reg.register("dead", agent, {"role": "db"})  # a dead entry is simply replaced
    assert _keys(reg.find_by_attribute("role", "io")) == ["live"]
    assert _keys(reg.find_by_attribute("role", "db")) == ["dead"]


def test_each_thread_queries_its_own_index(
    reg: ThreadLocalRegistry, agent: threading.Thread
) -> None:
    reg.register("mine", agent, {"role": "io"})
    seen: list[list[Any]] = []

    def other() -> None:
        reg.register("theirs", agent, {"role": "io"})
        seen.append(_keys(reg.find_by_attribute("role", "io")))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [["theirs"]]
    assert _keys(reg.find_by_attribute("role", "io")) == ["mine"]
    assert reg.stats().indexed_queries == 2


def test_without_indexed_attributes_every_query_scans(agent: threading.Thread) -> None:
    with ThreadLocalRegistry() as reg:
        reg.register("a", agent, {"role": "io"})
        assert _keys(reg.find_by_attribute("role", "io")) == ["a"]
        stats = reg.stats()
        assert (stats.indexed_queries, stats.scans) == (0, 1)


def test_closed_registry_refuses_indexed_queries(agent: threading.Thread) -> None:
    reg = ThreadLocalRegistry(indexed=("role",))
    reg.register("a", agent, {"role": "io"})
    reg.close()
    with pytest.raises(Closed):
        reg.find_by_attribute("role", "io")
    with pytest.raises(Closed):
        reg.stats()


_ops = st.lists(
    st.tuples(
        st.sampled_from(["register", "replace", "update", "unregister"]),
        st.integers(0, 5),
        st.sampled_from(["io", "db", Role.IO, ("io", "db"), None, 1]),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=_ops, probe=st.sampled_from(["io", "db", Role.DB, 1, None]))
def test_indexed_answers_equal_scanned_answers(ops: list[Any], probe: Any) -> None:
    stop = threading.Event()
    agent = spawn_thread(stop.wait)
    try:
        with (
            ThreadLocalRegistry(indexed=("role",)) as indexed,
            ThreadLocalRegistry() as plain,
        ):
            for op, key, value in ops:
                for reg in (indexed, plain):
                    if op == "register" and reg.lookup(key) is None:
                        reg.register(key, agent, {"role": value})
                    elif op == "replace":
                        reg.register(key, agent, {"role": value}, replace=True)
                    elif op == "update" and reg.lookup(key) is not None:
                        reg.update_metadata(key, {"role": value})
                    elif op == "unregister":
                        reg.unregister(key)
            for criteria in ([("role", "eq", probe)], [("role", "in", [probe, "db"])]):
                assert _keys(indexed.query(criteria)) == _keys(plain.query(criteria))
            assert indexed.stats().scans == 0
    finally:
        stop.set()
        agent.join()
