"""An adversarial review of every registry backend against issue 11 (items 4, 5, 7, 8).

Each test here failed before its fix. Every backend of the contract suite
(``tests/contract/backends.py``: memory, thread_local, MigratingRegistry with
the flag off, on and finished, redis) must answer these calls identically:

- a closed registry says ``Closed`` first, whatever the arguments (an invalid
  key, metadata, agent, criteria or listener, an empty or malformed batch):
  before, ``MemoryRegistry`` and ``MigratingRegistry`` judged the arguments
  first, and ``register_many([])`` on a closed registry returned ``[]``;
- ``lookup`` and ``in`` apply the key rule on a hit as on a miss: ``True`` is
  no key even though ``True == 1`` (it used to return the entry of ``1``), and
  an object that is no key is never hashed or compared with the table's keys
  (one whose ``__hash__`` raised leaked its ``ValueError``);
- constructors and ``list_all`` refuse bad arguments at the call
  (``indexed="role"`` indexed ``r``, ``o``, ``l``, ``e`` in memory and was a
  ``TypeError`` on Redis; ``list_all(filter=5)`` answered ``[]`` while empty);
- messages stay short: a ``MigratingRegistry``'s divergence reasons and the
  ``finish()`` refusal named whole entries (megabytes, with 64 KiB metadata);
- events go event by event to every listener (``RedisRegistry`` went listener
  by listener: one unsubscribed during the first event still got the second).
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from foundation import (
    FeatureFlags,
    Flag,
    MemoryRegistry,
    MigratingRegistry,
    RedisRegistry,
    ThreadLocalRegistry,
    spawn_thread,
)
from foundation.errors import Closed, InvalidConfig, InvalidKey, MigrationError
from foundation.liveness import MonitorManager
from foundation.registry import Registry
from foundation.registry._validation import validate_key
from tests.contract.backends import BackendSpec, backend_params

INDEXED = ("role", "tags")
FLAG = "use_ets_agent_registry"


class Role(enum.StrEnum):
    IO = "io"


class Level(enum.IntEnum):
    ONE = 1


class RaisingHash:
    """No key: hashing it raises something that is not a ``TypeError``."""

    def __hash__(self) -> int:
        raise ValueError("no hash for you")


class LooksLikeK:
    """No key, though it hashes and compares equal to ``"k"``."""

    def __hash__(self) -> int:
        return hash("k")

    def __eq__(self, other: object) -> bool:
        return other == "k"


@pytest.fixture(params=backend_params())
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    spec: BackendSpec = request.param
    with spec.make(request, INDEXED) as reg:
        yield reg


# --------------------------------------------------------------------------- closed first

# Calls refused for their arguments on an open registry; a closed one says Closed.
BAD_CALLS_AFTER_CLOSE: dict[str, Callable[[Registry, Any], object]] = {
    "register(invalid key)": lambda r, a: r.register(["k"], a),
    "register(bool key)": lambda r, a: r.register(True, a),
    "register(invalid metadata)": lambda r, a: r.register("k", a, {"bad": {1}}),
    "register(unsupported agent)": lambda r, a: r.register("k", object()),
    "register_many([])": lambda r, a: r.register_many([]),
    "register_many(invalid key item)": lambda r, a: r.register_many([(["k"], a)]),
    "register_many(malformed item)": lambda r, a: r.register_many([("k",)]),
    "register_many(None)": lambda r, a: r.register_many(None),  # type: ignore[arg-type]
    "register_many_async(None)": lambda r, a: asyncio.run(
        r.register_many_async(None)  # type: ignore[arg-type]
    ),
    "register_async(invalid key)": lambda r, a: asyncio.run(r.register_async(["k"], a)),
    "unregister(invalid key)": lambda r, a: r.unregister(["k"]),
    "update_metadata(invalid key)": lambda r, a: r.update_metadata(["k"], {}),
    "update_metadata(invalid metadata)": lambda r, a: r.update_metadata("held", 5),  # type: ignore[arg-type]
    "lookup(invalid key)": lambda r, a: r.lookup(["k"]),
    "lookup(True)": lambda r, a: r.lookup(True),
    "in(invalid key)": lambda r, a: ["k"] in r,
    "query(invalid criteria)": lambda r, a: r.query(5),  # type: ignore[arg-type]
    "find_by_attribute(invalid path)": lambda r, a: r.find_by_attribute(5, "x"),  # type: ignore[arg-type]
    "subscribe(None)": lambda r, a: r.subscribe(None),  # type: ignore[arg-type]
    "list_all(non-callable filter)": lambda r, a: r.list_all(5),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("call", list(BAD_CALLS_AFTER_CLOSE))
def test_a_closed_registry_says_closed_whatever_the_arguments(
    registry: Registry, stop: threading.Event, call: str
) -> None:
    registry.register("held", spawn_thread(stop.wait), {"role": "io"})
    registry.close()
    with pytest.raises(Closed):
        BAD_CALLS_AFTER_CLOSE[call](registry, spawn_thread(stop.wait))


def test_a_closed_memory_registry_with_a_shared_manager_refuses_a_dead_agent_as_closed() -> None:
    # The manager outlives the registry, so monitoring the dead agent works and
    # reports it dead at once: the registry must still answer Closed, not NotAlive.
    with MonitorManager(name="shared") as manager:
        registry = MemoryRegistry(manager=manager)
        registry.close()
        dead = spawn_thread(lambda: None)
        dead.join()
        with pytest.raises(Closed):
            registry.register("k", dead)
        with pytest.raises(Closed):
            registry.register("k", object())
        assert manager.active_count() == 0


def test_a_filter_that_is_not_callable_is_refused_even_with_nothing_to_filter(
    registry: Registry, stop: threading.Event
) -> None:
    # Before, an empty registry answered [] and the first entry made it a TypeError.
    with pytest.raises(TypeError, match="filter must be a callable"):
        registry.list_all(5)  # type: ignore[arg-type]
    registry.register("k", spawn_thread(stop.wait), {"role": "io"})
    with pytest.raises(TypeError, match="filter must be a callable"):
        registry.list_all("role")  # type: ignore[arg-type]
    assert [e.key for e in registry.list_all(lambda m: m["role"] == "io")] == ["k"]


# --------------------------------------------------------------------------- events


def test_events_go_event_by_event_and_an_unsubscribed_listener_gets_no_later_one(
    registry: Registry, stop: threading.Event
) -> None:
    # A replacing register makes two events. Every backend delivers the first to
    # every listener, then the second; RedisRegistry delivered listener by
    # listener, so B got the second event after A had unsubscribed it.
    registry.register("k", spawn_thread(stop.wait))
    seen: list[tuple[str, str]] = []
    unsubscribe_b: list[Callable[[], None]] = []

    def a(event: Any) -> None:
        seen.append(("A", event.kind))
        unsubscribe_b[0]()

    registry.subscribe(a)
    unsubscribe_b.append(registry.subscribe(lambda event: seen.append(("B", event.kind))))
    registry.register("k", spawn_thread(stop.wait), replace=True)
    assert seen == [("A", "unregistered"), ("B", "unregistered"), ("A", "registered")]


# --------------------------------------------------------------------------- the key rule on hits


def test_bool_is_no_key_on_a_hit_either(registry: Registry, stop: threading.Event) -> None:
    registry.register(1, spawn_thread(stop.wait))
    registry.register((1, "a"), spawn_thread(stop.wait))
    for probe in (True, (True, "a")):
        with pytest.raises(InvalidKey):
            registry.lookup(probe)
        with pytest.raises(InvalidKey):
            registry.unregister(probe)  # as before: lookup and unregister now agree
        assert probe not in registry
    assert registry.lookup(1) is not None  # untouched
    assert registry.lookup((1, "a")) is not None
    assert registry.count() == 2


def test_an_object_that_is_no_key_is_never_hashed_or_compared(
    registry: Registry, stop: threading.Event
) -> None:
    registry.register("k", spawn_thread(stop.wait))
    for probe in (RaisingHash(), (RaisingHash(),), ("a", RaisingHash()), LooksLikeK()):
        with pytest.raises(InvalidKey):
            registry.lookup(probe)
        assert probe not in registry
    assert registry.lookup("k") is not None


def test_keys_in_another_form_still_find_their_entry(
    registry: Registry, stop: threading.Event
) -> None:
    # The normal form is applied to lookups too: enum members, integral floats, -0.0.
    registry.register("io", spawn_thread(stop.wait))
    registry.register(1, spawn_thread(stop.wait))
    registry.register(0, spawn_thread(stop.wait))
    registry.register(("io", 1), spawn_thread(stop.wait))
    registry.register(2**63 - 1, spawn_thread(stop.wait))
    assert registry.lookup(Role.IO) is registry.lookup("io") is not None
    assert registry.lookup(Level.ONE) is registry.lookup(1.0) is registry.lookup(1) is not None
    assert registry.lookup(-0.0) is registry.lookup(0) is not None
    assert registry.lookup((Role.IO, Level.ONE)) is registry.lookup(("io", 1.0)) is not None
    assert Role.IO in registry
    assert 1.0 in registry
    assert ("io", Level.ONE) in registry
    assert registry.lookup(2**63 - 1) is not None
    with pytest.raises(InvalidKey):
        registry.lookup(2**63)  # out of range: no key, hit or miss
    assert 2**63 not in registry
    assert registry.lookup("absent") is None
    assert registry.lookup(7) is None


def test_the_flat_tuple_fast_path_keeps_the_key_rule() -> None:
    assert validate_key(("a", 1, -(2**63), 2**63 - 1)) == ("a", 1, -(2**63), 2**63 - 1)
    normal = validate_key(("a", Role.IO, 2.0))
    assert normal == ("a", "io", 2)
    assert [type(x) for x in normal] == [str, str, int]  # type: ignore[union-attr]
    for bad in (("a", True), ("a", 2**63), ("a", -(2**63) - 1), ("a", ["b"]), ("a", RaisingHash())):
        with pytest.raises(InvalidKey):
            validate_key(bad)


# --------------------------------------------------------------------------- constructors


@pytest.mark.parametrize("make", [MemoryRegistry, ThreadLocalRegistry])
def test_indexed_as_one_str_is_refused_as_on_redis(make: Callable[..., Registry]) -> None:
    with pytest.raises(TypeError, match="not a str"):
        make(indexed="role")
    with pytest.raises(TypeError, match="non-empty str"):
        make(indexed=[""])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"indexed": [""]},
        {"indexed": "role"},
        {"node": 5},
        {"manager": 5},
        {"lease_ttl": "5"},
        {"lease_ttl": float("nan")},
        {"lease_ttl": float("inf")},
        {"lease_ttl": 1e12},
        {"lease_ttl": True},
        {"heartbeat": "1"},
        {"op_timeout": float("inf")},
        {"op_timeout": 0},
        {"stream_maxlen": -1},
        {"stream_maxlen": 0},
        {"stream_maxlen": "x"},
        {"stream_maxlen": 2.5},
        {"node": "\ud800"},  # was UnicodeEncodeError
        {"namespace": "a\ud800"},
    ],
    ids=repr,
)
def test_redis_registry_refuses_bad_arguments_before_connecting(kwargs: dict[str, Any]) -> None:
    # Port 1: nothing listens there. Checked before any connection is tried, so
    # the answer is the argument's TypeError/InvalidConfig, not BackendUnavailable.
    with pytest.raises((TypeError, ValueError)) as info:
        RedisRegistry("redis://127.0.0.1:1/0", **kwargs)
    assert type(info.value) in (TypeError, InvalidConfig)
    assert len(str(info.value)) < 300


def test_a_node_name_redis_would_refuse_as_a_client_name_works(
    redis_server: Any, stop: threading.Event
) -> None:
    # The node name is this node's Redis client name too, where Redis refuses
    # spaces and non-ASCII: it was BackendUnavailable("failed while connecting").
    name = "host a:1 \u00e9\x00"
    with RedisRegistry(redis_server.url, namespace="adversarial-node", node=name) as reg:
        reg.register("k", spawn_thread(stop.wait))
        entry = reg.lookup("k")
        assert entry is not None
        assert entry.node == name == reg.node


@pytest.mark.parametrize("kwargs", [{"node": 5}, {"manager": 5}], ids=repr)
def test_memory_registry_refuses_bad_node_and_manager(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        MemoryRegistry(**kwargs)


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    with FeatureFlags([Flag(FLAG)]) as f:
        yield f


def test_migrating_registry_refuses_what_is_not_a_registry_or_flags(flags: FeatureFlags) -> None:
    with MemoryRegistry() as target:
        with pytest.raises(TypeError, match="legacy must be a Registry"):
            MigratingRegistry(None, target, flags)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="target must be a Registry"):
            MigratingRegistry(ThreadLocalRegistry(), None, flags)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="flags must be a FeatureFlags"):
            MigratingRegistry(ThreadLocalRegistry(), target, None)  # type: ignore[arg-type]
        # Refused before anything happened: the target has no listener of a facade.
        seen: list[object] = []
        target.subscribe(seen.append)
        stop = threading.Event()
        target.register("w", spawn_thread(stop.wait))
        stop.set()
        assert len(seen) == 1


def test_migrating_registry_refuses_a_per_thread_target(flags: FeatureFlags) -> None:
    with (
        MemoryRegistry() as legacy,
        ThreadLocalRegistry() as target,
        pytest.raises(ValueError, match="shared target"),
    ):
        MigratingRegistry(legacy, target, flags)


# --------------------------------------------------------------------------- bounded messages


def test_divergence_reasons_and_the_finish_refusal_stay_short(
    flags: FeatureFlags, stop: threading.Event
) -> None:
    """Two threads hold the same keys privately (flag off), with 60 KB metadata each:
    the shared target takes one copy per key, the other copies are divergences."""
    big = {"blob": "y" * 60_000}
    registry = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
    keys = [("k" * 500, i) for i in range(40)]
    registered = [threading.Event(), threading.Event()]

    def holder(i: int) -> None:
        for key in keys:
            registry.register(key, spawn_thread(stop.wait), big)
        registered[i].set()
        stop.wait()  # a thread's private copies (and divergences) end with it

    threads = [threading.Thread(target=holder, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        assert all(ev.wait(30) for ev in registered)
        divergences = registry.divergences()
        assert len(divergences) == len(keys)
        assert max(len(d.reason) for d in divergences) <= 300
        problems = registry.readiness()
        assert len(problems) == len(keys)
        assert max(len(p) for p in problems) <= 600
        flags.enable(FLAG)
        with pytest.raises(MigrationError) as info:
            registry.finish()
        message = str(info.value)
        assert len(message) <= 2_000
        assert "more" in message  # the rest are counted, not listed
    finally:
        stop.set()
        for t in threads:
            t.join()
        registry.close()
