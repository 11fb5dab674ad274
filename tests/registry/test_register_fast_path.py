"""The register fast paths keep the one rule and leave nothing behind.

``freeze_metadata`` checks a plain flat ``dict`` in one loop; anything that
loop does not accept takes the full walk. Both must give the same answer:
the same frozen value (types included) or the same refusal. Records refer to
no one in a cycle, so an unregistered entry is freed by reference counting
(nothing is left for the cyclic collector), and a registration whose
metadata was updated is still removed by its agent's death and still
releases its one monitor.
"""

from __future__ import annotations

import concurrent.futures
import enum
import gc
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.errors import InvalidMetadata
from foundation.liveness import MonitorManager, spawn_thread
from foundation.registry import MemoryRegistry
from foundation.registry._validation import (
    INT_MAX,
    INT_MIN,
    MAX_METADATA_BYTES,
    FrozenMetadata,
    _freeze_general,
    freeze_metadata,
)


class _Role(enum.StrEnum):
    IO = "io"


class _Level(enum.IntEnum):
    HIGH = 3


_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT_MIN - 2, max_value=INT_MAX + 2),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.text(alphabet=st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010), max_size=3),
    st.sampled_from([_Role.IO, _Level.HIGH, "", -0.0, 2**63 - 1, -(2**63)]),
)
_KEYS = st.one_of(st.text(max_size=6), st.sampled_from([_Role.IO, "\ud800", "é", ""]))


def _outcome(fn: Any, metadata: dict[Any, Any]) -> tuple[str, Any]:
    try:
        frozen = fn(metadata)
    except InvalidMetadata:
        return ("refused", None)
    assert type(frozen) is FrozenMetadata
    # Type-exact: True and 1, 0.0 and -0.0, a StrEnum member and its str differ here.
    return ("frozen", [(type(k), k, type(v), repr(v)) for k, v in frozen.items()])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _SCALARS, max_size=5))
def test_the_fast_path_answers_as_the_full_walk(metadata: dict[Any, Any]) -> None:
    fast = _outcome(freeze_metadata, metadata)
    full = _outcome(lambda m: _freeze_general(m, MAX_METADATA_BYTES), metadata)
    assert fast == full


@pytest.mark.parametrize(
    ("metadata", "accepted"),
    [
        ({"a": 1.5, "b": -0.0, "c": True, "d": None}, True),
        ({"a": float("nan")}, False),
        ({"a": float("-inf")}, False),
        ({"a": INT_MAX, "b": INT_MIN}, True),
        ({"a": INT_MAX + 1}, False),
        ({"a": "x" * (MAX_METADATA_BYTES - 8)}, True),  # {"a":"..."}: 8 bytes of JSON around
        ({"a": "x" * (MAX_METADATA_BYTES - 7)}, False),
        ({"a": "\\" * (MAX_METADATA_BYTES // 2)}, False),  # each escapes to 2 bytes
    ],
)
def test_flat_metadata_at_the_edges(metadata: dict[str, Any], accepted: bool) -> None:
    if accepted:
        frozen = freeze_metadata(metadata)
        assert frozen == metadata
        assert [type(v) for v in frozen.values()] == [type(v) for v in metadata.values()]
    else:
        with pytest.raises(InvalidMetadata):
            freeze_metadata(metadata)


def test_empty_metadata_is_the_shared_empty_mapping() -> None:
    assert freeze_metadata({}) is freeze_metadata(None) is FrozenMetadata()


@pytest.mark.parametrize("kind", ["concurrent future", "spawn_thread"])
def test_register_unregister_leaves_no_cyclic_garbage(kind: str) -> None:
    stop = threading.Event()
    agent: Any = concurrent.futures.Future() if kind == "concurrent future" else None
    if agent is None:
        agent = spawn_thread(stop.wait)
    try:
        with MemoryRegistry(indexed=("role",)) as registry:
            registry.register("warm-up", agent, {"role": "io"})  # the agent's watch
            registry.unregister("warm-up")
            gc.collect()
            gc.disable()
            try:
                for i in range(200):
                    registry.register(i, agent, {"role": "io", "n": i})
                    registry.update_metadata(i, {"role": "db", "n": i})
                    assert registry.unregister(i) is True
                # A record (or its metadata) kept alive by a cycle would be found
                # here, at least one per pair; other threads' stray garbage is rare.
                found = gc.collect()
            finally:
                gc.enable()
            assert found < 200
    finally:
        stop.set()
        if isinstance(agent, concurrent.futures.Future):
            agent.cancel()


def test_an_updated_registration_is_removed_by_death_and_releases_its_monitor() -> None:
    with MonitorManager(name="fast-path") as manager:
        registry = MemoryRegistry(indexed=("role",), manager=manager)
        first, second = concurrent.futures.Future[None](), concurrent.futures.Future[None]()
        # "a" is first's first monitor (a separate Monitor object); "b" is the
        # hot path where the record is its own monitor.
        registry.register("a", first, {"role": "io"})
        registry.register("b", first, {"role": "io"})
        registry.register("c", second, {"role": "io"})
        for key in ("a", "b", "c"):
            registry.update_metadata(key, {"role": "db"})
            registry.update_metadata(key, {"role": "cpu"})
        assert manager.active_count() == 3
        assert registry.unregister("c") is True
        assert manager.active_count() == 2
        first.set_result(None)  # both of first's registrations go, as updated
        assert registry.count() == 0
        assert manager.active_count() == 0
        assert registry.stats().index_sizes == {"role": 0}
        second.set_result(None)  # its monitor was released: nothing happens
        registry.close()
