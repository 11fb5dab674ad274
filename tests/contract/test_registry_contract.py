"""The registry contract (docs/contract.md "Registry contract"), one suite for every backend.

Documented exceptions, by name (each runs on the backends its flag selects):

- ``test_legacy_store_sees_only_the_calling_threads_entries`` — the legacy
  ThreadLocalRegistry (``per_thread_visibility``); every other backend runs
  ``test_shared_store_is_seen_by_every_thread`` instead.
- ``test_legacy_store_filters_dead_agents_at_read_time_and_keeps_them_in_memory``
  — the legacy store monitors nothing (``monitors_agents=False``); monitoring
  backends run ``test_monitored_store_frees_dead_entries_and_reports_down``.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable
from typing import Any

import pytest

from foundation.errors import (
    AlreadyRegistered,
    InvalidCriteria,
    InvalidKey,
    InvalidMetadata,
    NotAlive,
    NotRegistered,
    UnsupportedAgent,
)
from foundation.liveness import is_alive
from foundation.registry import Entry, Registry, RegistryEvent
from foundation.registry._query import compile_criteria, matches
from foundation.registry._types import keys_of
from tests.contract.agents import AGENT_KINDS, Agents, wait_until
from tests.contract.backends import BackendSpec, backend_params

KINDS = pytest.mark.parametrize("kind", AGENT_KINDS)


def keys(entries: list[Entry]) -> set[Any]:
    return keys_of(entries)


def gone(registry: Registry, key: Any) -> Callable[[], bool]:
    return lambda: registry.lookup(key) is None


def snapshot(registry: Registry) -> dict[Any, tuple[Any, dict[str, Any]]]:
    """Everything a reader can see, for "nothing changed" checks."""
    return {e.key: (e.agent, dict(e.metadata)) for e in registry.list_all()}


def run_threads(target: Callable[[int], None], n: int) -> list[BaseException]:
    """Run ``target(i)`` in ``n`` plain threads at once; return their errors."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


# ---------------------------------------------------------------------------- basics


def test_register_and_lookup_with_metadata(registry: Registry, agents: Agents) -> None:
    agent = agents.new("thread")
    assert registry.register("w1", agent, {"role": "io", "limits": {"cpu": 2}}) is None
    entry = registry.lookup("w1")
    assert entry is not None
    assert entry.key == "w1"
    assert entry.agent is agent
    assert entry.metadata == {"role": "io", "limits": {"cpu": 2}}
    assert isinstance(entry.registered_at, float)
    assert isinstance(entry.node, str)
    assert "w1" in registry
    assert len(registry) == registry.count() == 1


def test_lookup_of_an_unknown_key_is_none(registry: Registry) -> None:
    assert registry.lookup("nobody") is None
    assert "nobody" not in registry
    assert [] not in registry  # an unhashable key is simply not there


def test_keys_may_be_any_hashable(registry: Registry, agents: Agents) -> None:
    for key in [1, ("node", 2), "s", 2.5, frozenset({"x"})]:
        registry.register(key, agents.new("future"))
        found = registry.lookup(key)
        assert found is not None
        assert found.key == key


def test_metadata_is_a_read_only_copy(registry: Registry, agents: Agents) -> None:
    metadata: dict[str, Any] = {"role": "io", "tags": ["a"]}
    registry.register("w", agents.new("future"), metadata)
    metadata["role"] = "changed"
    metadata["tags"].append("b")
    entry = registry.lookup("w")
    assert entry is not None
    assert entry.metadata == {"role": "io", "tags": ("a",)}
    with pytest.raises(TypeError):
        entry.metadata["role"] = "x"  # type: ignore[index]


def test_registering_without_metadata_gives_empty_metadata(
    registry: Registry, agents: Agents
) -> None:
    registry.register("w", agents.new("future"))
    entry = registry.lookup("w")
    assert entry is not None
    assert dict(entry.metadata) == {}


def test_protocol_version_indexed_attributes_and_context_manager(
    backend: BackendSpec, request: pytest.FixtureRequest, agents: Agents
) -> None:
    with backend.make(request, ("role",)) as registry:
        assert registry.protocol_version() == "2.0"
        assert registry.indexed_attributes() == frozenset({"role"})
        with registry as same:
            assert same is registry
            registry.register("w", agents.new("thread"))
        registry.close()  # idempotent after __exit__ closed it


# ---------------------------------------------------------------------------- duplicates


@KINDS
def test_duplicate_key_raises_already_registered_carrying_the_live_entry(
    registry: Registry, agents: Agents, kind: str
) -> None:
    first = agents.new(kind)
    registry.register("k", first, {"n": 1})
    before = snapshot(registry)
    with pytest.raises(AlreadyRegistered) as caught:
        registry.register("k", agents.new("thread"), {"n": 2})
    assert isinstance(caught.value, ValueError)
    assert caught.value.entry is not None
    assert caught.value.entry.agent is first
    assert caught.value.entry.metadata == {"n": 1}
    assert snapshot(registry) == before


def test_re_register_with_replace_swaps_the_agent(registry: Registry, agents: Agents) -> None:
    first, second = agents.new("thread"), agents.new("thread")
    registry.register("k", first, {"role": "old"})
    registry.register("k", second, {"role": "new"}, replace=True)
    entry = registry.lookup("k")
    assert entry is not None
    assert entry.agent is second
    assert registry.count() == 1
    assert keys(registry.find_by_attribute("role", "new")) == {"k"}
    assert registry.find_by_attribute("role", "old") == []


def test_replaced_agent_dying_does_not_remove_its_successor(
    backend: BackendSpec, registry: Registry, agents: Agents
) -> None:
    first, second = agents.new("thread"), agents.new("thread")
    registry.register("k", first)
    registry.register("k", second, replace=True)
    agents.kill(first)
    assert wait_until(lambda: not is_alive(first))
    # The old agent's monitor (if any) was released; a late death must not
    # touch the new registration. Its own death is still seen afterwards.
    registry.register("probe", agents.new("future"))
    entry = registry.lookup("k")
    assert entry is not None
    assert entry.agent is second
    assert backend.monitor_count(registry) == (2 if backend.monitors_agents else 0)


@KINDS
def test_a_dead_but_not_yet_cleaned_key_is_simply_replaced(
    registry: Registry, agents: Agents, kind: str
) -> None:
    old = agents.new(kind)
    registry.register("k", old)
    agents.kill(old)
    assert wait_until(lambda: not is_alive(old))
    new = agents.new("thread")
    registry.register("k", new)  # no AlreadyRegistered: the old agent is dead
    entry = registry.lookup("k")
    assert entry is not None
    assert entry.agent is new


@KINDS
def test_a_retaken_dead_key_tells_the_death_once_before_the_new_registration(
    registry: Registry, agents: Agents, kind: str
) -> None:
    # A monitoring store tells the death when the agent dies; the legacy store
    # when its dead copy is taken (a MigratingRegistry with the flag off: the
    # legacy store's events, though its shared side saw the death first).
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    old = agents.new(kind)
    registry.register("k", old)
    agents.kill(old)
    shared = getattr(registry, "target", None)  # a MigratingRegistry's monitoring side
    assert wait_until(
        lambda: registry.lookup("k") is None and (shared is None or shared.lookup("k") is None)
    )
    new = agents.new("thread")
    registry.register("k", new)
    registry.unregister("k")  # the last event: the others come before it
    assert wait_until(lambda: len(events) >= 4)
    names = {id(old): "old", id(new): "new"}
    assert [(e.kind, e.reason, names[id(e.entry.agent)]) for e in events] == [
        ("registered", None, "old"),
        ("unregistered", "down", "old"),
        ("registered", None, "new"),
        ("unregistered", "unregistered", "new"),
    ]


@pytest.mark.parametrize("replace", [False, True])
def test_a_dead_holder_taken_over_before_its_monitor_told_is_down(
    registry: Registry, agents: Agents, replace: bool
) -> None:
    # The old agent is dead (a future, done) but the registry's monitor has not
    # told it yet: an earlier monitor of the same agent holds the death back
    # until the key was taken. Taken over, with or without replace=True, it is
    # "down" on every backend (it was "replaced" with replace=True), told once.
    from foundation.liveness import monitor

    events: list[RegistryEvent] = []
    old = agents.new("future")
    taken, held = threading.Event(), threading.Event()

    def hold(_down: object) -> None:  # runs first: monitors are told in order
        held.set()
        taken.wait(10)

    first = monitor(old, hold)
    registry.register("k", old)
    registry.subscribe(events.append)
    dying = threading.Thread(target=old.set_result, args=(None,))
    dying.start()
    try:
        assert held.wait(10)
        assert not is_alive(old)
        new = agents.new("thread")
        registry.register("k", new, replace=replace)
    finally:
        taken.set()
        dying.join(10)
        first.demonitor()
    registry.unregister("k")  # the last event: the others come before it
    assert wait_until(lambda: len(events) >= 3)
    names = {id(old): "old", id(new): "new"}
    assert [(e.kind, e.reason, names[id(e.entry.agent)]) for e in events] == [
        ("unregistered", "down", "old"),
        ("registered", None, "new"),
        ("unregistered", "unregistered", "new"),
    ]


# ---------------------------------------------------------------------------- death


@KINDS
def test_killed_agent_disappears(registry: Registry, agents: Agents, kind: str) -> None:
    agent = agents.new(kind)
    registry.register("doomed", agent, {"role": "victim"})
    registry.register("bystander", agents.new("thread"), {"role": "victim"})
    agents.kill(agent)
    assert wait_until(gone(registry, "doomed"))
    assert keys(registry.list_all()) == {"bystander"}
    assert keys(registry.find_by_attribute("role", "victim")) == {"bystander"}


@KINDS
def test_a_dead_agent_is_never_returned(registry: Registry, agents: Agents, kind: str) -> None:
    agent = agents.new(kind)
    registry.register("d", agent, {"role": "r", "tags": ["t"]})
    agents.kill(agent)
    assert wait_until(gone(registry, "d"))
    # Once one read path no longer returns it, none does.
    assert "d" not in registry
    assert registry.count() == len(registry) == 0
    assert registry.list_all() == []
    assert registry.query([]) == []
    assert registry.query([("role", "eq", "r")]) == []
    assert registry.find_by_attribute("tags", "t") == []
    assert registry.list_all(filter=lambda md: True) == []


@KINDS
def test_listing_excludes_the_dead(registry: Registry, agents: Agents, kind: str) -> None:
    doomed = [agents.new(kind) for _ in range(3)]
    alive = [agents.new(kind) for _ in range(3)]
    for i, agent in enumerate(doomed + alive):
        registry.register(i, agent, {"role": "x"})
    for agent in doomed:
        agents.kill(agent)
    assert wait_until(lambda: registry.count() == 3)
    assert keys(registry.list_all()) == {3, 4, 5}
    assert keys(registry.query([("role", "eq", "x")])) == {3, 4, 5}


@KINDS
def test_registering_a_dead_agent_raises_not_alive_and_stores_nothing(
    backend: BackendSpec, registry: Registry, agents: Agents, kind: str
) -> None:
    dead = agents.dead(kind)
    baseline = backend.monitor_count(registry)
    with pytest.raises(NotAlive) as caught:
        registry.register("k", dead)
    assert isinstance(caught.value, ValueError)
    assert registry.lookup("k") is None
    assert registry.count() == 0
    assert backend.stored_count(registry) == 0
    assert backend.monitor_count(registry) == baseline


@KINDS
def test_many_agents_killed_at_once_all_disappear(
    backend: BackendSpec, registry: Registry, agents: Agents, kind: str
) -> None:
    n = 12 if kind == "process" else 40
    population = [agents.new(kind) for _ in range(n)]
    for i, agent in enumerate(population):
        registry.register(i, agent, {"role": "mass", "tags": [i % 3]})
    survivor = agents.new("thread")
    registry.register("survivor", survivor, {"role": "mass"})
    for agent in population:
        agents.kill(agent)
    assert wait_until(lambda: registry.count() == 1)
    assert keys(registry.list_all()) == {"survivor"}
    assert keys(registry.find_by_attribute("role", "mass")) == {"survivor"}
    assert registry.find_by_attribute("tags", 0) == []
    if backend.monitors_agents:
        assert wait_until(lambda: backend.monitor_count(registry) == 1)
        assert backend.stored_count(registry) == 1


def test_one_agent_under_two_keys_disappears_from_both(registry: Registry, agents: Agents) -> None:
    agent = agents.new("thread")
    registry.register("a", agent)
    registry.register("b", agent)
    agents.kill(agent)
    assert wait_until(lambda: registry.count() == 0)


@KINDS
@pytest.mark.parametrize("backend", backend_params(lambda s: s.monitors_agents), indirect=True)
def test_monitored_store_frees_dead_entries_and_reports_down(
    backend: BackendSpec, registry: Registry, agents: Agents, kind: str
) -> None:
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    agent = agents.new(kind)
    registry.register("k", agent, {"role": "r"})
    agents.kill(agent)
    assert wait_until(lambda: any(e.reason == "down" for e in events))
    down_event = next(e for e in events if e.reason == "down")
    assert down_event.kind == "unregistered"
    assert down_event.entry.key == "k"
    assert down_event.down is not None
    expected = {
        "task": "cancelled",
        "thread": "normal",
        "raising_thread": "exception",
        "process": "killed",
        "future": "normal",
    }[kind]
    assert down_event.down.reason == expected
    assert backend.stored_count(registry) == 0
    assert backend.monitor_count(registry) == 0


@KINDS
@pytest.mark.parametrize("backend", backend_params(lambda s: not s.monitors_agents), indirect=True)
def test_legacy_store_filters_dead_agents_at_read_time_and_keeps_them_in_memory(
    backend: BackendSpec, registry: Registry, agents: Agents, kind: str
) -> None:
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    agent = agents.new(kind)
    registry.register("k", agent, {"role": "r"})
    agents.kill(agent)
    assert wait_until(gone(registry, "k"))
    assert registry.count() == 0
    assert backend.stored_count(registry) == 1  # lingers: nothing cleaned it
    assert [e.kind for e in events] == ["registered"]  # no "down" event: not monitored
    assert registry.unregister("k") is False  # dropped now, but it was not registered
    assert backend.stored_count(registry) == 0


# ---------------------------------------------------------------------------- unregister


def test_unregister_removes_the_entry(registry: Registry, agents: Agents) -> None:
    registry.register("k", agents.new("thread"), {"role": "r", "tags": ["a", "b"]})
    assert registry.unregister("k") is True
    assert registry.lookup("k") is None
    assert registry.count() == 0
    assert registry.find_by_attribute("role", "r") == []
    assert registry.find_by_attribute("tags", "a") == []


def test_unregister_of_a_missing_key_returns_false(registry: Registry, agents: Agents) -> None:
    assert registry.unregister("never") is False
    registry.register("k", agents.new("thread"))
    assert registry.unregister("k") is True
    assert registry.unregister("k") is False


def test_unregister_releases_the_monitor(
    backend: BackendSpec, registry: Registry, agents: Agents
) -> None:
    baseline = backend.monitor_count(registry)
    agent = agents.new("thread")
    registry.register("k", agent)
    assert backend.monitor_count(registry) == baseline + (1 if backend.monitors_agents else 0)
    registry.unregister("k")
    assert backend.monitor_count(registry) == baseline
    assert backend.stored_count(registry) == 0
    # The released monitor never fires: re-register the key elsewhere, kill the
    # old agent, and the new registration stays.
    registry.register("k", agents.new("thread"))
    agents.kill(agent)
    assert wait_until(lambda: not is_alive(agent))
    assert registry.lookup("k") is not None


@KINDS
def test_a_thousand_register_unregister_cycles_leave_monitors_at_baseline(
    backend: BackendSpec, registry: Registry, agents: Agents, kind: str
) -> None:
    agent = agents.new(kind)
    baseline = backend.monitor_count(registry)
    cycles = 1000 if kind != "process" else 200
    for i in range(cycles):
        registry.register(i % 7, agent, {"role": "cycle", "tags": [i % 5]})
        assert registry.unregister(i % 7) is True
    assert backend.monitor_count(registry) == baseline
    assert backend.stored_count(registry) == 0
    assert registry.count() == 0
    assert registry.find_by_attribute("role", "cycle") == []
    stats = getattr(registry, "stats", None)
    if stats is not None and hasattr(stats(), "index_sizes"):
        assert all(size == 0 for size in stats().index_sizes.values())
        assert all(size == 0 for size in stats().index_values.values())


# ---------------------------------------------------------------------------- update


def test_update_metadata_replaces_it_and_indexes_follow(registry: Registry, agents: Agents) -> None:
    agent = agents.new("thread")
    registry.register("k", agent, {"role": "old", "tags": ["a", "b"], "n": 1})
    registered_at = registry.lookup("k").registered_at  # type: ignore[union-attr]
    registry.update_metadata("k", {"role": "new", "tags": ["b", "c"]})
    entry = registry.lookup("k")
    assert entry is not None
    assert entry.agent is agent
    assert entry.registered_at == registered_at
    assert entry.metadata == {"role": "new", "tags": ("b", "c")}
    assert registry.find_by_attribute("role", "old") == []
    assert keys(registry.find_by_attribute("role", "new")) == {"k"}
    assert registry.find_by_attribute("tags", "a") == []
    assert keys(registry.find_by_attribute("tags", "b")) == {"k"}
    assert keys(registry.find_by_attribute("tags", "c")) == {"k"}
    assert registry.query([("n", "eq", 1)]) == []


def test_update_metadata_of_an_unknown_key_raises_not_registered(registry: Registry) -> None:
    with pytest.raises(NotRegistered) as caught:
        registry.update_metadata("ghost", {"a": 1})
    assert isinstance(caught.value, KeyError)
    assert registry.count() == 0


@KINDS
def test_update_metadata_of_a_dead_agent_raises_not_registered(
    registry: Registry, agents: Agents, kind: str
) -> None:
    agent = agents.new(kind)
    registry.register("k", agent)
    agents.kill(agent)
    assert wait_until(gone(registry, "k"))
    with pytest.raises(NotRegistered):
        registry.update_metadata("k", {"a": 1})


def test_updated_entry_still_disappears_when_its_agent_dies(
    registry: Registry, agents: Agents
) -> None:
    agent = agents.new("thread")
    registry.register("k", agent, {"role": "a"})
    registry.update_metadata("k", {"role": "b"})
    registry.update_metadata("k", {"role": "c"})
    agents.kill(agent)
    assert wait_until(gone(registry, "k"))
    assert registry.find_by_attribute("role", "c") == []


# ---------------------------------------------------------------------------- bad input


def test_bad_input_raises_typed_errors_and_leaves_state_unchanged(
    backend: BackendSpec, registry: Registry, agents: Agents
) -> None:
    live = agents.new("thread")
    registry.register("k", live, {"role": "r"})
    before = snapshot(registry)
    monitors = backend.monitor_count(registry)
    cases: list[tuple[type[Exception], Callable[[], object]]] = [
        (InvalidKey, lambda: registry.register(["unhashable"], agents.new("future"))),
        (InvalidKey, lambda: registry.register({"a": 1}, live)),
        (InvalidMetadata, lambda: registry.register("n", live, [("a", 1)])),  # type: ignore[arg-type]
        (InvalidMetadata, lambda: registry.register("n", live, {"a": {1, 2}})),
        (InvalidMetadata, lambda: registry.register("n", live, {1: "int key"})),
        (InvalidMetadata, lambda: registry.register("n", live, {"x": float("nan")})),
        (InvalidMetadata, lambda: registry.register("n", live, {"o": object()})),
        (UnsupportedAgent, lambda: registry.register("n", object())),
        (UnsupportedAgent, lambda: registry.register("n", 42)),
        (InvalidMetadata, lambda: registry.update_metadata("k", {"a": b"bytes"})),
        (InvalidMetadata, lambda: registry.update_metadata("k", "role=x")),  # type: ignore[arg-type]
        (InvalidCriteria, lambda: registry.query([("role", "like", "r")])),
        (InvalidCriteria, lambda: registry.find_by_attribute("", "r")),
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
        assert snapshot(registry) == before, error
        assert backend.monitor_count(registry) == monitors, error
    assert registry.lookup("n") is None
    assert keys(registry.find_by_attribute("role", "r")) == {"k"}


def test_error_types_are_also_builtin_errors(registry: Registry, agents: Agents) -> None:
    with pytest.raises(TypeError):
        registry.register(["x"], agents.new("future"))
    with pytest.raises(TypeError):
        registry.register("x", "not an agent")
    with pytest.raises(ValueError):
        registry.register("x", agents.new("future"), {"bad": object()})


class RaisingProbe(str):
    """A query value whose comparisons raise (not ``TypeError``): the caller's bug."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("probe comparison")

    __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __eq__  # type: ignore[assignment]
    __hash__ = str.__hash__


def test_a_probe_whose_comparison_raises_is_invalid_criteria(
    registry: Registry, agents: Agents
) -> None:
    registry.register("k", agents.new("future"), {"role": "io", "x": "io", "tags": ["io"]})
    before = snapshot(registry)
    probe = RaisingProbe("io")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("role", lambda: registry.find_by_attribute("role", probe)),  # an indexed attribute
        ("x", lambda: registry.find_by_attribute("x", probe)),  # a scanned one
        ("x", lambda: registry.query([("x", "gt", probe)])),
        ("role", lambda: registry.query([("role", "in", [probe])])),
        ("tags", lambda: registry.query([("x", "eq", "io"), ("tags", "neq", probe)])),
    ]
    for attr, call in cases:
        with pytest.raises(InvalidCriteria, match=f"'{attr}'") as caught:
            call()  # never the caller's RuntimeError: every public call raises errors types
        assert isinstance(caught.value, ValueError)
        assert len(str(caught.value)) < 200
    assert snapshot(registry) == before
    assert keys(registry.find_by_attribute("role", "io")) == {"k"}


# ---------------------------------------------------------------------------- query


@pytest.fixture
def populated(registry: Registry, agents: Agents) -> Registry:
    data: dict[str, dict[str, Any]] = {
        "a": {"role": "io", "n": 1, "tags": ["gpu", "fast"], "limits": {"cpu": 4}},
        "b": {"role": "cpu", "n": 5, "tags": ["slow"], "limits": {"cpu": 1, "mem": 2}},
        "c": {"role": "io", "n": "five", "tags": [], "limits": {"cpu": None}},
        "d": {"role": None, "tags": ["gpu"]},
        "e": {},
    }
    for key, metadata in data.items():
        registry.register(key, agents.new("future"), metadata)
    return registry


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ([], {"a", "b", "c", "d", "e"}),
        ([("role", "eq", "io")], {"a", "c"}),
        ([("role", "neq", "io")], {"b", "d"}),  # missing path (e) never matches
        ([("role", "eq", None)], {"d"}),  # a present None is a value
        ([("tags", "eq", "gpu")], {"a", "d"}),  # collection containing the value
        ([("tags", "in", ["fast", "slow"])], {"a", "b"}),
        ([("tags", "not_in", ["gpu"])], {"b", "c"}),
        ([("role", "in", ("io", "cpu"))], {"a", "b", "c"}),
        ([("role", "not_in", {"io"})], {"b", "d"}),
        ([("limits.cpu", "gt", 1)], {"a"}),  # None and missing do not compare
        ([("limits.cpu", "lte", 1)], {"b"}),
        ([(("limits", "mem"), "eq", 2)], {"b"}),
        ([("limits.cpu", "eq", None)], {"c"}),
        ([("n", "gt", 2)], {"b"}),  # "five" > 2 raises TypeError: not matching
        ([("n", "lt", 2)], {"a"}),
        ([("n", "gte", "a")], {"c"}),
        ([("n", "neq", 1)], {"b", "c"}),
        ([("role", "eq", "io"), ("n", "eq", 1)], {"a"}),
        ([("limits.cpu.deeper", "eq", 1)], set()),
        ([("nowhere", "neq", 1)], set()),
        ([("nowhere", "not_in", [1])], set()),
        ([("tags", "eq", ["gpu", "fast"])], {"a"}),
        ([("role", "eq", {"unhashable": [1]})], set()),
        ([("role", "neq", {"unhashable": [1]})], {"a", "b", "c", "d"}),
        ([("limits", "in", {"x"})], set()),  # unhashable stored value in a set
    ],
)
def test_query_operators_on_nested_paths_missing_paths_and_incomparable_values(
    populated: Registry, criteria: list[Any], expected: set[str]
) -> None:
    assert keys(populated.query(criteria)) == expected


def test_find_by_attribute_is_exactly_an_eq_query(populated: Registry) -> None:
    for attr, value in [("role", "io"), ("tags", "gpu"), ("n", 5), ("role", None), ("x", 1)]:
        assert keys(populated.find_by_attribute(attr, value)) == keys(
            populated.query([(attr, "eq", value)])
        )


@pytest.mark.parametrize(
    "bad",
    [
        "role",
        [("role", "eq")],
        [("role", "eq", 1), ("", "eq", 1)],
        [("role", "bogus", 1)],
        [("role", "in", "io")],
        [("role", "not_in", 3)],
        [(["role"], "eq", 1)],
        [((), "eq", 1)],
    ],
)
def test_invalid_criteria_raise_before_evaluation_even_on_an_empty_registry(
    registry: Registry, agents: Agents, bad: Any
) -> None:
    with pytest.raises(InvalidCriteria):
        registry.query(bad)
    registry.register("k", agents.new("future"), {"role": "io"})
    with pytest.raises(InvalidCriteria):
        registry.query(bad)
    with pytest.raises(ValueError):
        registry.query(bad)


def test_find_by_attribute_raises_invalid_criteria_where_query_would(registry: Registry) -> None:
    with pytest.raises(InvalidCriteria):
        registry.find_by_attribute("a..b", 1)
    with pytest.raises(InvalidCriteria):
        registry.find_by_attribute(("a", ["b"]), 1)  # type: ignore[arg-type]


VALUES: list[Any] = [
    "io",
    "cpu",
    1,
    1.0,
    True,
    0,
    None,
    ["io", "gpu"],
    ["cpu"],
    [1, 2],
    [[1, 2], 3],
    [],
    {"nested": 1},
    ["io", {"x": 1}],
]


def test_index_answers_equal_full_scan_answers(
    backend: BackendSpec, request: pytest.FixtureRequest, agents: Agents
) -> None:
    rng = random.Random(7)
    queries: list[list[Any]] = []
    for value in [*VALUES, (1, 2), [1, 2], {"nested": 1}, "absent", 2]:
        for attr in ("role", "tags"):
            queries.append([(attr, "eq", value)])
            queries.append([(attr, "neq", value)])
    for _ in range(40):
        attr = rng.choice(["role", "tags"])
        picked = rng.sample([v for v in VALUES if not isinstance(v, dict)], 3)
        queries.append([(attr, rng.choice(["in", "not_in"]), picked)])
        queries.append([(attr, "in", {v for v in picked if not isinstance(v, list)})])
        queries.append([(attr, "eq", rng.choice(VALUES)), ("n", "gte", rng.randrange(10))])
    with (
        backend.make(request, ("role", "tags")) as indexed,
        backend.make(request, ()) as plain,
    ):
        for i in range(60):
            metadata: dict[str, Any] = {"n": i % 10}
            if i % 11:
                metadata["role"] = rng.choice(VALUES)
            if i % 13:
                metadata["tags"] = rng.choice(VALUES)
            agent = agents.new("future")
            indexed.register(i, agent, metadata)
            plain.register(i, agent, metadata)
        for i in range(0, 60, 4):  # updates and removals must keep the index exact
            indexed.update_metadata(i, {"role": rng.choice(VALUES), "n": 3})
            plain.update_metadata(i, indexed.lookup(i).metadata)  # type: ignore[union-attr]
        for i in range(1, 60, 9):
            indexed.unregister(i)
            plain.unregister(i)
        everything = indexed.list_all()
        for criteria in queries:
            compiled = compile_criteria(criteria)
            scan = {e.key for e in everything if matches(e.metadata, compiled)}
            assert keys(indexed.query(criteria)) == scan, criteria
            assert keys(plain.query(criteria)) == scan, criteria


# ---------------------------------------------------------------------------- events


def test_events_follow_register_update_replace_and_unregister(
    registry: Registry, agents: Agents
) -> None:
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    first, second = agents.new("thread"), agents.new("thread")
    registry.register("k", first, {"v": 1})
    registry.update_metadata("k", {"v": 2})
    registry.register("k", second, {"v": 3}, replace=True)
    registry.unregister("k")
    registry.unregister("k")  # absent: no event
    assert [(e.kind, e.reason, e.entry.agent is first, dict(e.entry.metadata)) for e in events] == [
        ("registered", None, True, {"v": 1}),
        ("updated", None, True, {"v": 2}),
        ("unregistered", "replaced", True, {"v": 2}),
        ("registered", None, False, {"v": 3}),
        ("unregistered", "unregistered", False, {"v": 3}),
    ]
    assert all(e.down is None for e in events)


def test_failed_writes_emit_no_events(registry: Registry, agents: Agents) -> None:
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    live = agents.new("thread")
    registry.register("k", live)
    for call in (
        lambda: registry.register("k", agents.new("thread")),
        lambda: registry.register("d", agents.dead("future")),
        lambda: registry.update_metadata("ghost", {}),
        lambda: registry.register("m", live, {"x": object()}),
    ):
        with pytest.raises((ValueError, KeyError)):
            call()
    assert [e.kind for e in events] == ["registered"]


def test_unsubscribe_stops_events_and_is_idempotent(registry: Registry, agents: Agents) -> None:
    events: list[RegistryEvent] = []
    unsubscribe = registry.subscribe(events.append)
    registry.register("a", agents.new("future"))
    unsubscribe()
    unsubscribe()
    registry.register("b", agents.new("future"))
    assert [e.entry.key for e in events] == ["a"]


def test_a_raising_listener_does_not_corrupt_the_registry(
    registry: Registry, agents: Agents, monkeypatch: pytest.MonkeyPatch
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: reported.append(u.exc_value))
    seen: list[str] = []

    def broken(event: RegistryEvent) -> None:
        raise RuntimeError("listener bug")

    registry.subscribe(broken)
    registry.subscribe(lambda e: seen.append(e.kind))
    registry.register("k", agents.new("thread"), {"role": "r"})
    registry.update_metadata("k", {"role": "s"})
    assert registry.unregister("k") is True
    assert registry.count() == 0
    assert registry.find_by_attribute("role", "s") == []
    assert seen == ["registered", "updated", "unregistered"]
    assert len(reported) == 3
    assert all(isinstance(e, RuntimeError) for e in reported)


def test_a_listener_may_call_the_registry(registry: Registry, agents: Agents) -> None:
    follower = agents.new("thread")
    seen: list[tuple[str, Any]] = []

    def listener(event: RegistryEvent) -> None:
        seen.append((event.kind, event.entry.key))
        if event.kind == "registered" and event.entry.key == "leader":
            assert registry.lookup("leader") is not None
            registry.register("follower", follower)

    registry.subscribe(listener)
    registry.register("leader", agents.new("thread"))
    assert registry.lookup("follower") is not None
    assert seen == [("registered", "leader"), ("registered", "follower")]


# Batches of register_many and the events a subscriber hears: those of one
# register call per item, in input order, on every backend. A batch is (keys
# registered first, the batch, replace, its outcomes, its events); agents are
# named by letters, an event is (kind, reason, key, agent's name).
Batch = tuple[list[tuple[str, str]], list[tuple[str, str]], bool, list[str], list[Any]]

BATCHES: dict[str, Batch] = {
    "fresh_keys": (
        [],
        [("a", "A"), ("b", "B")],
        False,
        ["ok", "ok"],
        [("registered", None, "a", "A"), ("registered", None, "b", "B")],
    ),
    "a_key_twice": (
        [],
        [("d", "D1"), ("e", "E"), ("d", "D2"), ("f", "F")],
        False,
        ["ok", "ok", "AlreadyRegistered", "ok"],
        [
            ("registered", None, "d", "D1"),
            ("registered", None, "e", "E"),
            ("registered", None, "f", "F"),
        ],
    ),
    "a_key_twice_replaced": (
        [],
        [("g", "G1"), ("h", "H"), ("g", "G2"), ("i", "I")],
        True,
        ["ok", "ok", "ok", "ok"],
        [
            ("registered", None, "g", "G1"),
            ("registered", None, "h", "H"),
            ("unregistered", "replaced", "g", "G1"),
            ("registered", None, "g", "G2"),
            ("registered", None, "i", "I"),
        ],
    ),
    "replace_a_live_key": (
        [("r", "R0")],
        [("x", "X"), ("r", "R1"), ("y", "Y")],
        True,
        ["ok", "ok", "ok"],
        [
            ("registered", None, "x", "X"),
            ("unregistered", "replaced", "r", "R0"),
            ("registered", None, "r", "R1"),
            ("registered", None, "y", "Y"),
        ],
    ),
    "already_registered_in_the_middle": (
        [("k", "K0")],
        [("m1", "M1"), ("k", "K1"), ("m2", "M2")],
        False,
        ["ok", "AlreadyRegistered", "ok"],
        [("registered", None, "m1", "M1"), ("registered", None, "m2", "M2")],
    ),
    "replaced_and_repeated_keys_mixed": (
        [("s", "S0"), ("t", "T0")],
        [("n1", "N1"), ("s", "S1"), ("t", "T1"), ("n1", "N2"), ("n2", "N3"), ("s", "S2")],
        True,
        ["ok"] * 6,
        [
            ("registered", None, "n1", "N1"),
            ("unregistered", "replaced", "s", "S0"),
            ("registered", None, "s", "S1"),
            ("unregistered", "replaced", "t", "T0"),
            ("registered", None, "t", "T1"),
            ("unregistered", "replaced", "n1", "N1"),
            ("registered", None, "n1", "N2"),
            ("registered", None, "n2", "N3"),
            ("unregistered", "replaced", "s", "S1"),
            ("registered", None, "s", "S2"),
        ],
    ),
}

DEAD_AGENTS_KEY: Batch = (
    [("z", "Z0")],  # Z0 dies before the batch
    [("p", "P"), ("z", "Z1"), ("q", "Q")],
    True,
    ["ok"] * 3,
    [
        ("registered", None, "p", "P"),
        ("registered", None, "z", "Z1"),
        ("registered", None, "q", "Q"),
    ],
)


def run_batch(
    registry: Registry,
    agents: Agents,
    batch: Batch,
    before: Callable[[dict[str, Any], list[RegistryEvent]], None] | None = None,
) -> tuple[list[str], list[Any]]:
    """Run ``batch`` (``before(agents by name, events)`` once its first keys are
    registered and heard); returns its outcomes' names and the events heard."""
    first, items, replace, _, expected = batch
    named: dict[str, Any] = {}
    for key, name in first:
        named[name] = agents.new("thread")
        registry.register(key, named[name])
    events: list[RegistryEvent] = []
    registry.subscribe(events.append)
    if before is not None:
        before(named, events)
    events.clear()
    given = []
    for key, name in items:
        named[name] = agents.new("thread")
        given.append((key, named[name]))
    outcomes = registry.register_many(given, replace=replace)
    names = {id(agent): name for name, agent in named.items()}
    # A writer whose events another thread (a courier) is delivering may return first.
    wait_until(lambda: len(events) >= len(expected))
    heard = [(e.kind, e.reason, e.entry.key, names.get(id(e.entry.agent))) for e in events]
    return ["ok" if o is None else type(o).__name__ for o in outcomes], heard


@pytest.mark.parametrize("batch", list(BATCHES))
def test_register_many_events_are_those_of_register_calls_in_input_order(
    registry: Registry, agents: Agents, batch: str
) -> None:
    outcomes, heard = run_batch(registry, agents, BATCHES[batch])
    assert outcomes == BATCHES[batch][3]
    assert heard == BATCHES[batch][4]


@pytest.mark.parametrize("backend", backend_params(lambda s: s.monitors_agents), indirect=True)
def test_register_many_over_a_dead_agents_key_follows_its_down_event(
    registry: Registry, agents: Agents
) -> None:
    # Monitoring backends: the death is heard (and the key freed) before the
    # batch. A legacy store keeps the dead entry (monitors_agents=False: see
    # test_legacy_store_filters_dead_agents_at_read_time_and_keeps_them_in_memory).
    def kill(named: dict[str, Any], events: list[RegistryEvent]) -> None:
        agents.kill(named["Z0"])
        assert wait_until(lambda: any(e.reason == "down" for e in events))
        assert registry.lookup("z") is None

    outcomes, heard = run_batch(registry, agents, DEAD_AGENTS_KEY, kill)
    assert outcomes == DEAD_AGENTS_KEY[3]
    assert heard == DEAD_AGENTS_KEY[4]


# ---------------------------------------------------------------------------- threads


@pytest.mark.parametrize(
    "backend", backend_params(lambda s: s.per_thread_visibility), indirect=True
)
def test_legacy_store_sees_only_the_calling_threads_entries(
    registry: Registry, agents: Agents
) -> None:
    registry.register("main", agents.new("thread"))
    agent = agents.new("thread")
    seen: dict[str, Any] = {}

    def other() -> None:
        seen["lookup"] = registry.lookup("main")
        seen["count"] = registry.count()
        registry.register("main", agent)  # its own store: no conflict
        seen["own"] = registry.lookup("main")

    errors = run_threads(lambda i: other(), 1)
    assert errors == []
    assert seen["lookup"] is None
    assert seen["count"] == 0
    assert seen["own"].agent is agent
    main = registry.lookup("main")
    assert main is not None
    assert main.agent is not agent


@pytest.mark.parametrize(
    "backend", backend_params(lambda s: not s.per_thread_visibility), indirect=True
)
def test_shared_store_is_seen_by_every_thread(registry: Registry, agents: Agents) -> None:
    agent = agents.new("thread")
    registry.register("main", agent)
    seen: dict[str, Any] = {}

    def other() -> None:
        seen["lookup"] = registry.lookup("main")
        try:
            registry.register("main", agents.new("future"))
        except AlreadyRegistered as exc:
            seen["conflict"] = exc.entry

    assert run_threads(lambda i: other(), 1) == []
    assert seen["lookup"].agent is agent
    assert seen["conflict"].agent is agent


def test_concurrent_registration_from_many_threads(
    backend: BackendSpec, registry: Registry, agents: Agents
) -> None:
    n_threads, per_thread = 8, 60
    agent = agents.new("thread")
    wins: list[int] = []

    def work(t: int) -> None:
        for i in range(per_thread):
            registry.register((t, i), agent, {"role": f"r{t}", "tags": [i % 4]})
        # The contested key: exactly one thread wins it (per store).
        try:
            registry.register("contested", agent, {"winner": t})
            wins.append(t)
        except AlreadyRegistered:
            pass
        mine = registry.query([("role", "eq", f"r{t}")])
        assert keys(mine) == {(t, i) for i in range(per_thread)}

    assert run_threads(work, n_threads) == []
    if backend.per_thread_visibility:
        assert sorted(wins) == list(range(n_threads))  # private stores never conflict
        assert registry.count() == 0  # the main thread registered nothing itself
    else:
        assert len(wins) == 1
        assert registry.count() == n_threads * per_thread + 1
        assert registry.lookup("contested").metadata == {"winner": wins[0]}  # type: ignore[union-attr]
        assert len(registry.find_by_attribute("tags", 0)) == n_threads * per_thread // 4
        assert backend.monitor_count(registry) == registry.count()


def test_concurrent_readers_writers_and_updaters_keep_invariants(
    backend: BackendSpec, registry: Registry, agents: Agents
) -> None:
    writers, readers, rounds = 4, 3, 150
    agent = agents.new("thread")
    hot = [f"hot{i}" for i in range(6)]
    stop = threading.Event()
    final: dict[int, dict[Any, Any]] = {}
    read_errors: list[str] = []

    def writer(t: int) -> None:
        rng = random.Random(t)
        own: dict[Any, Any] = {}
        for r in range(rounds):
            key = (t, rng.randrange(12))
            op = rng.random()
            if op < 0.45:
                try:
                    registry.register(key, agent, {"role": f"v{r % 3}", "tags": [t]})
                    own[key] = f"v{r % 3}"
                except AlreadyRegistered:
                    pass
            elif op < 0.7:
                if registry.unregister(key):
                    own.pop(key)
            elif op < 0.9:
                try:
                    registry.update_metadata(key, {"role": f"u{r % 3}", "tags": [t, "u"]})
                    own[key] = f"u{r % 3}"
                except NotRegistered:
                    assert key not in own
            else:  # contested keys, shared by every writer
                h = rng.choice(hot)
                with contextlib.suppress(AlreadyRegistered):
                    registry.register(h, agent, {"role": "hot"}, replace=rng.random() < 0.5)
                if rng.random() < 0.3:
                    registry.unregister(h)
        # Each writer's own keys are exactly what it believes, in its own view.
        for k in range(12):
            entry = registry.lookup((t, k))
            expected = own.get((t, k))
            assert (entry.metadata["role"] if entry else None) == expected
        final[t] = own

    def reader(i: int) -> None:
        while not stop.is_set():
            for entry in registry.find_by_attribute("role", "v1"):
                if entry.metadata["role"] != "v1":
                    read_errors.append(f"index returned {entry}")
            for entry in registry.query([("tags", "eq", "u")]):
                if "u" not in entry.metadata["tags"]:
                    read_errors.append(f"query returned {entry}")
            listed = registry.list_all()
            if len({e.key for e in listed}) != len(listed):
                read_errors.append("duplicate keys listed")
            registry.count()
            registry.lookup(hot[0])

    # Readers must stop even if a writer fails: run writers, then stop readers.
    reader_threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    for t in reader_threads:
        t.start()
    try:
        errors = run_threads(writer, writers)
    finally:
        stop.set()
        for t in reader_threads:
            t.join()
    assert errors == []
    assert read_errors == []
    if backend.per_thread_visibility:
        assert registry.list_all() == []  # the main thread's own (empty) store
        return
    expected = {k: v for own in final.values() for k, v in own.items()}
    listed = {
        e.key: e.metadata["role"] for e in registry.list_all() if not str(e.key).startswith("hot")
    }
    assert listed == expected
    assert registry.count() == len(registry.list_all())
    for role in ("v0", "v1", "v2", "u0", "u1", "u2", "hot"):
        assert keys(registry.find_by_attribute("role", role)) == keys(
            registry.list_all(filter=lambda md, role=role: md.get("role") == role)
        )
    assert backend.monitor_count(registry) == registry.count()
    for entry in registry.list_all():
        assert registry.lookup(entry.key) == entry
