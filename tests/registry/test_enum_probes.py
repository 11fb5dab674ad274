"""Enum members (and other values with plain hash/equality) are answered by the index.

Issue 11 item 2: ``find_by_attribute("capability", Cap.X)`` with a ``StrEnum``
member used to fall back to a full scan. A probe whose type keeps the
``__eq__``/``__hash__`` of ``str``/``int``/``float`` is looked up as its plain
value, in ``MemoryRegistry`` and in the ``RedisRegistry`` mirror (one shared
``AttributeIndex``); only a value that really redefines equality scans, and
``MemoryRegistry.stats()`` shows it.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from foundation.liveness import spawn_thread
from foundation.registry import MemoryRegistry
from foundation.registry._query import AttributeIndex, compile_criteria, index_plan
from foundation.registry._redis._mirror import Mirror
from foundation.registry._types import Entry, keys_of


class Cap(enum.StrEnum):
    CRAWL = "crawl"
    PARSE = "parse"
    STORE = "store"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class OldStyle(str, enum.Enum):  # noqa: UP042 - the pre-StrEnum idiom, on purpose
    CRAWL = "crawl"


class Ratio(float, enum.Enum):
    HALF = 0.5


class PlainSub(str):
    """A str subclass that keeps str's hash and equality."""


class Loose(str):
    """Redefines equality: equal to any string that starts like it."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.startswith(str.__str__(self))

    __hash__ = str.__hash__


@pytest.fixture
def agent() -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = spawn_thread(stop.wait, name="enum-probe-agent")
    yield thread
    stop.set()
    thread.join()


@pytest.fixture
def registry(agent: threading.Thread) -> Iterator[MemoryRegistry]:
    with MemoryRegistry(indexed=("capability", "level", "ratio")) as reg:
        reg.register("a", agent, {"capability": "crawl", "level": 1, "ratio": 0.5})
        reg.register("b", agent, {"capability": ["crawl", "parse"], "level": 2})
        reg.register("c", agent, {"capability": "store", "level": 1})
        reg.register("d", agent, {"capability": "crawler", "node": "x"})
        yield reg


def _keys(entries: list[Entry]) -> set[Any]:
    return keys_of(entries)


@pytest.mark.parametrize(
    ("attr", "probe", "plain"),
    [
        ("capability", Cap.CRAWL, "crawl"),
        ("capability", Cap.PARSE, "parse"),
        ("capability", OldStyle.CRAWL, "crawl"),
        ("capability", PlainSub("store"), "store"),
        ("level", Level.LOW, 1),
        ("level", Level.HIGH, 2),
        ("ratio", Ratio.HALF, 0.5),
    ],
)
def test_a_member_probe_is_answered_by_the_index_like_its_plain_value(
    registry: MemoryRegistry, attr: str, probe: object, plain: object
) -> None:
    before = registry.stats()
    found = _keys(registry.find_by_attribute(attr, probe))
    after = registry.stats()
    assert found == _keys(registry.find_by_attribute(attr, plain))
    assert found  # every probe above matches something
    assert after.scans == before.scans
    assert after.indexed_queries == before.indexed_queries + 1


def test_in_and_tuple_probes_with_members_use_the_index(registry: MemoryRegistry) -> None:
    before = registry.stats()
    assert _keys(registry.query([("capability", "in", [Cap.PARSE, Cap.STORE])])) == {"b", "c"}
    assert _keys(registry.query([("capability", "eq", (Cap.CRAWL, "parse"))])) == {"b"}
    assert _keys(registry.query([("level", "in", (Level.HIGH,))])) == {"b"}
    after = registry.stats()
    assert after.scans == before.scans
    assert after.indexed_queries == before.indexed_queries + 3


def test_a_value_that_redefines_equality_scans_and_gets_the_scan_answer(
    registry: MemoryRegistry,
) -> None:
    probe = Loose("crawl")
    before = registry.stats().scans
    found = _keys(registry.find_by_attribute("capability", probe))
    assert registry.stats().scans == before + 1
    # The scan applies the query rule with the probe's own equality.
    expected = {
        e.key
        for e in registry.list_all()
        if "capability" in e.metadata
        and (
            e.metadata["capability"] == probe
            or (isinstance(e.metadata["capability"], tuple) and probe in e.metadata["capability"])
        )
    }
    assert found == expected == {"a", "b", "d"}


def test_unindexed_attributes_and_other_ops_are_counted_as_scans(
    registry: MemoryRegistry,
) -> None:
    before = registry.stats()
    assert _keys(registry.query([("node", "eq", "x")])) == {"d"}
    assert _keys(registry.query([("level", "gt", Level.LOW)])) == {"b"}
    after = registry.stats()
    assert after.scans == before.scans + 2
    assert after.indexed_queries == before.indexed_queries


def test_metadata_stored_with_members_is_found_by_plain_and_member_probes(
    agent: threading.Thread,
) -> None:
    with MemoryRegistry(indexed=("capability",)) as reg:
        reg.register("m", agent, {"capability": [Cap.CRAWL, Cap.STORE]})
        for probe in ("crawl", Cap.CRAWL, "store", Cap.STORE):
            assert _keys(reg.find_by_attribute("capability", probe)) == {"m"}
        assert reg.stats().scans == 0
        reg.unregister("m")
        assert reg.stats().index_sizes == {"capability": 0}


def test_the_redis_mirror_shares_the_index_and_answers_members_alike() -> None:
    mirror = Mirror(("capability",))
    assert isinstance(mirror.index, AttributeIndex)
    entries = {
        "a": Entry("a", None, {"capability": "crawl"}, 0.0),
        "b": Entry("b", None, {"capability": ("crawl", "parse")}, 0.0),
        "c": Entry("c", None, {"capability": "store"}, 0.0),
    }
    for version, entry in enumerate(entries.values(), start=1):
        mirror.put(entry, version)
    for probe, plain in ((Cap.CRAWL, "crawl"), (OldStyle.CRAWL, "crawl"), (Cap.STORE, "store")):
        plans = index_plan(
            compile_criteria([("capability", "eq", probe)]), frozenset({"capability"})
        )
        assert len(plans) == 1  # served by the index, not a scan
        assert mirror.candidates(plans[0].attr, plans[0].values) == mirror.candidates(
            "capability", (plain,)
        )
    assert mirror.candidates("capability", ("crawl",)) == {"a", "b"}
    # Replacing an entry keeps the index exact: the old terms go, the shared ones stay.
    mirror.put(Entry("b", None, {"capability": ("parse",)}, 0.0), 10)
    assert mirror.candidates("capability", ("crawl",)) == {"a"}
    assert mirror.candidates("capability", ("parse",)) == {"b"}
    mirror.remove("b", 11)
    assert mirror.candidates("capability", ("parse",)) == set()
    assert mirror.index.sizes() == {"capability": 2}


def test_a_redefined_equality_has_no_index_plan() -> None:
    indexed = frozenset({"capability"})
    assert index_plan(compile_criteria([("capability", "eq", Loose("x"))]), indexed) == []
    assert index_plan(compile_criteria([("capability", "in", ["a", Loose("x")])]), indexed) == []
    [plan] = index_plan(compile_criteria([("capability", "eq", Cap.CRAWL)]), indexed)
    assert plan.values == ("crawl",)
    assert type(plan.values[0]) is str
