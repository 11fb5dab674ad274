"""MemoryRegistry's table holds each registration's ``Entry`` itself.

``lookup`` returns the object the table holds (one ``dict.get``); every
other read and every event hands out that same object. ``new_entry`` (how
backends build entries fast) gives a real, frozen ``Entry``, equal to one
built by ``Entry(...)``; the private ``_registration`` slot takes part in no
comparison, copy or pickle.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
import threading
import weakref

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation.errors import AlreadyRegistered
from foundation.liveness import MonitorManager, spawn_thread
from foundation.registry import Entry, MemoryRegistry, RegistryEvent
from foundation.registry._types import _EntryBuilder, new_entry


def test_the_builder_has_entrys_layout() -> None:
    # new_entry switches __class__ from the builder to Entry: the slots must match.
    assert _EntryBuilder.__slots__ == tuple(f.name for f in dataclasses.fields(Entry))


@given(
    key=st.one_of(st.text(), st.integers(-(2**63), 2**63 - 1)),
    at=st.floats(allow_nan=False),
    node=st.text(),
)
def test_new_entry_is_an_entry_equal_to_the_constructors(key: object, at: float, node: str) -> None:
    built = new_entry(key, "agent", {"a": 1}, at, node, registration=object())
    plain = Entry(key, "agent", {"a": 1}, at, node)
    assert type(built) is Entry
    assert built == plain
    assert repr(built) == repr(plain)
    assert pickle.loads(pickle.dumps(built)) == plain
    assert dataclasses.replace(built, node="x") == dataclasses.replace(plain, node="x")
    assert copy.copy(built) is built
    assert copy.deepcopy(built) is built
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.key = "other"  # type: ignore[misc]


def test_every_read_and_event_hands_out_the_tables_entry() -> None:
    stop = threading.Event()
    agent = spawn_thread(stop.wait)
    events: list[RegistryEvent] = []
    try:
        with MemoryRegistry(indexed=("role",)) as registry:
            registry.subscribe(events.append)
            registry.register("a", agent, {"role": "io"})
            entry = registry.lookup("a")
            assert type(entry) is Entry
            assert registry.list_all()[0] is entry
            assert registry.find_by_attribute("role", "io")[0] is entry
            assert registry.query([("role", "eq", "io")])[0] is entry
            assert events[-1].entry is entry
            with pytest.raises(AlreadyRegistered) as refused:
                registry.register("a", agent)
            assert refused.value.entry is entry
            registry.update_metadata("a", {"role": "db"})
            updated = registry.lookup("a")
            assert updated is not entry
            assert updated is events[-1].entry
            assert updated.metadata == {"role": "db"}
            assert entry.metadata == {"role": "io"}
            assert updated.registered_at == entry.registered_at
    finally:
        stop.set()


def test_an_entry_kept_after_unregister_holds_no_monitor() -> None:
    stop = threading.Event()
    agent = spawn_thread(stop.wait)
    try:
        with MonitorManager(name="kept-entry") as manager:
            registry = MemoryRegistry(manager=manager)
            registry.register("a", agent)
            kept = registry.lookup("a")
            assert manager.active_count() == 1
            registry.unregister("a")
            assert manager.active_count() == 0
            assert kept is not None
            assert kept.key == "a"
            registry.register("a", agent)  # a new registration under the same key
            assert registry.lookup("a") is not kept
            assert manager.active_count() == 1
            registry.close()
            assert manager.active_count() == 0
    finally:
        stop.set()


def test_a_death_removes_only_its_own_registration() -> None:
    # The token is the registration, not the key: after "a" was re-registered
    # to another agent, the first agent's death must leave the new entry alone.
    first_stop, second_stop = threading.Event(), threading.Event()
    first, second = spawn_thread(first_stop.wait), spawn_thread(second_stop.wait)
    removed = threading.Event()
    try:
        with MemoryRegistry() as registry:
            registry.register("a", first)
            registry.register("a", second, replace=True)
            registry.register("witness", first)
            registry.subscribe(lambda e: removed.set() if e.entry.key == "witness" else None)
            first_stop.set()
            assert removed.wait(10), "the first agent's death was never reported"
            entry = registry.lookup("a")
            assert entry is not None
            assert entry.agent is second
    finally:
        first_stop.set()
        second_stop.set()


def _kept_entries_of_a_dropped_registry(close: bool) -> tuple[weakref.ref[object], list[Entry]]:
    stop = threading.Event()
    agent = spawn_thread(stop.wait)
    events: list[RegistryEvent] = []
    registry = MemoryRegistry(indexed=("role",))
    registry.subscribe(events.append)
    registry.register("a", agent, {"role": "io"})
    registry.register("b", agent, {"role": "io"})
    registry.register("c", agent, {"role": "io"})
    kept = [e for e in (registry.lookup("a"), registry.lookup("b")) if e is not None]
    with pytest.raises(AlreadyRegistered) as refused:
        registry.register("c", agent)
    kept.append(refused.value.entry)
    registry.update_metadata("a", {"role": "db"})  # "a"'s first entry is superseded
    registry.unregister("b")
    registry.register("c", spawn_thread(stop.wait), replace=True)  # "c"'s entry is replaced
    kept.extend(e.entry for e in events)
    emptied = threading.Event()
    if close:
        registry.close()
    else:
        registry.subscribe(lambda _: emptied.set() if len(registry) == 0 else None)
    stop.set()  # every agent dies: the live entries leave the table
    if not close:
        assert emptied.wait(10), "the deaths were never reported"
    return weakref.ref(registry), kept


@pytest.mark.parametrize("close", [False, True], ids=["agents died", "closed"])
def test_entries_kept_by_the_caller_do_not_keep_the_registry_alive(close: bool) -> None:
    # An Entry a caller keeps (lookup, events, AlreadyRegistered) once named its
    # registration, whose class names the registry: it must let go on leaving.
    ref, kept = _kept_entries_of_a_dropped_registry(close)
    gc.collect()
    assert len(kept) >= 8
    assert ref() is None, "a kept Entry keeps its MemoryRegistry alive"
