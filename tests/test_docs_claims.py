"""What README.md and docs/*.md state about behaviour, tried as a user would.

Each test names the page and the sentence it checks. Rules, errors, defaults
and limits only: the blocks themselves run in test_readme.py and
test_docs_blocks.py.
"""

from __future__ import annotations

import copy
import inspect
import os
import pickle
import threading
from collections.abc import Iterator
from enum import IntEnum, StrEnum
from pathlib import Path

import pytest

from foundation import (
    FeatureFlags,
    Flag,
    MemoryRegistry,
    MigratingRegistry,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    RedisRegistry,
    Stage,
    ThreadLocalRegistry,
    errors,
    spawn_thread,
)
from foundation.flags import DEFAULT_FLAGS
from foundation.supervision import ChildSpec


@pytest.fixture
def registry() -> Iterator[MemoryRegistry]:
    with MemoryRegistry(indexed=("role",)) as r:
        yield r


# --- keys (docs/keys-and-metadata.md "Keys", docs/contract.md "Keys and metadata") -----


class Role(StrEnum):
    IO = "io"


class Level(IntEnum):
    HIGH = 3


class PlainStr(str):
    pass


class OwnEq(str):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


def _nested_tuple(depth: int) -> object:
    key: object = "k"
    for _ in range(depth):
        key = (key,)
    return key


@pytest.mark.parametrize(
    ("key", "normal"),
    [
        ("a", "a"),
        (-(2**63), -(2**63)),
        (2**63 - 1, 2**63 - 1),
        (2.5, 2.5),
        (2.0, 2),
        (None, None),
        (("job", 7), ("job", 7)),
        (frozenset({"a", 1}), frozenset({"a", 1})),
        (Role.IO, "io"),
        (Level.HIGH, 3),
        (PlainStr("p"), "p"),
        (_nested_tuple(16), _nested_tuple(16)),
    ],
)
def test_an_accepted_key_is_stored_in_its_normal_form(
    registry: MemoryRegistry, stop: threading.Event, key: object, normal: object
) -> None:
    registry.register(key, spawn_thread(stop.wait))
    entry = registry.lookup(normal)
    assert entry is not None
    assert entry.key == normal
    assert type(entry.key) is type(normal)


@pytest.mark.parametrize(
    "key",
    [
        True,
        2**63,
        -(2**63) - 1,
        float("nan"),
        float("inf"),
        [1],
        {"a": 1},
        {1},
        b"x",
        object(),
        OwnEq("x"),
        _nested_tuple(17),
    ],
    ids=repr,
)
def test_a_key_outside_the_rule_is_invalid_key_and_stores_nothing(
    registry: MemoryRegistry, stop: threading.Event, key: object
) -> None:
    with pytest.raises(errors.InvalidKey) as raised:
        registry.register(key, spawn_thread(stop.wait))
    assert isinstance(raised.value, TypeError)
    assert len(str(raised.value)) < 1000
    assert registry.count() == 0


def test_reads_compare_like_a_dict(registry: MemoryRegistry) -> None:
    # "raises InvalidKey only when nothing matches and k could never be a key";
    # "k in registry never raises"
    with pytest.raises(errors.InvalidKey):
        registry.lookup([])
    with pytest.raises(errors.InvalidKey):
        registry.lookup(float("nan"))
    assert [] not in registry
    assert float("nan") not in registry  # noqa: PLW0177 - the documented probe


# --- metadata ----------------------------------------------------------------------------


def _nested_dict(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_metadata_limits_are_32_levels_and_64_kib(
    registry: MemoryRegistry, stop: threading.Event
) -> None:
    # 32 levels of nesting below the metadata mapping itself
    registry.register("deep", spawn_thread(stop.wait), _nested_dict(33))
    overhead = len('{"b":""}')
    registry.register("big", spawn_thread(stop.wait), {"b": "x" * (65536 - overhead)})
    for bad in (_nested_dict(34), {"b": "x" * (65536 - overhead + 1)}):
        with pytest.raises(errors.InvalidMetadata):
            registry.register("bad", spawn_thread(stop.wait), bad)
    cycle: dict[str, object] = {}
    cycle["self"] = cycle
    with pytest.raises(errors.InvalidMetadata):
        registry.register("bad", spawn_thread(stop.wait), cycle)
    assert "bad" not in registry


@pytest.mark.parametrize(
    "value",
    [{1}, b"x", float("nan"), float("inf"), "\ud800", 10**5000, 2**63, object()],
    ids=lambda v: type(v).__name__,
)
def test_metadata_outside_the_rule_is_invalid_metadata(
    registry: MemoryRegistry, stop: threading.Event, value: object
) -> None:
    with pytest.raises(errors.InvalidMetadata) as raised:
        registry.register("x", spawn_thread(stop.wait), {"v": value})
    assert isinstance(raised.value, ValueError)
    with pytest.raises(errors.InvalidMetadata):
        registry.register("x", spawn_thread(stop.wait), {1: "non-str key"})
    assert "x" not in registry


def test_the_frozen_shape(registry: MemoryRegistry, stop: threading.Event) -> None:
    registry.register("k", spawn_thread(stop.wait), {"tags": [1, 2], "n": {"a": Role.IO}})
    entry = registry.lookup("k")
    assert entry is not None
    m = entry.metadata
    assert isinstance(m, dict)
    assert m["tags"] == (1, 2)
    assert type(m["n"]["a"]) is str
    for change in (
        lambda: m.__setitem__("x", 1),
        lambda: m.__delitem__("tags"),
        lambda: m.update(x=1),
        lambda: m.pop("tags"),
        m.clear,
        lambda: m.setdefault("x", 1),
        lambda: m.__ior__({"x": 1}),
        lambda: m["n"].__setitem__("b", 1),
    ):
        with pytest.raises(TypeError):
            change()
    assert dict(m) == m
    assert (m | {"x": 1})["x"] == 1
    assert copy.copy(m) is m
    assert copy.deepcopy(m) is m
    assert pickle.loads(pickle.dumps(m)) == m
    assert copy.copy(entry) is entry
    assert copy.deepcopy(entry) is entry
    with pytest.raises(Exception):  # noqa: B017 - a thread does not pickle
        pickle.dumps(entry)
    # "queries compare [lists and tuples] alike"
    assert registry.query([("tags", "eq", [1, 2])]) == [entry]


# --- the registry contract (README "Registries", docs/contract.md) ------------------------


def test_registry_contract_details(registry: MemoryRegistry, stop: threading.Event) -> None:
    assert registry.protocol_version() == "2.0"
    assert registry.indexed_attributes() == frozenset({"role"})
    with pytest.raises(TypeError):
        registry.subscribe(None)  # type: ignore[arg-type]
    registry.register("a", spawn_thread(stop.wait), {"node": "a", "role": "io"})
    # README Quickstart: a missing path never matches, neq included
    assert registry.query([("node", "eq", "a"), ("load", "lt", 3)]) == []
    assert registry.query([("load", "neq", 3)]) == []
    assert len(registry.query([])) == 1
    with pytest.raises(errors.AlreadyRegistered) as held:
        registry.register("a", spawn_thread(stop.wait))
    assert held.value.entry is registry.lookup("a")
    with pytest.raises(errors.NotRegistered):
        registry.update_metadata("absent", {})
    assert registry.unregister("a") is True
    assert registry.unregister("a") is False


def test_malformed_criteria_are_refused_before_evaluation_even_when_empty() -> None:
    with MemoryRegistry() as empty:
        for criteria in (
            [("a", "eq")],
            [("a", "like", 1)],
            [("a", "in", "abc")],
            [("", "eq", 1)],
            [((), "eq", 1)],
        ):
            with pytest.raises(errors.InvalidCriteria):
                empty.query(criteria)


def test_register_many_refuses_a_malformed_item_before_storing_anything(
    registry: MemoryRegistry, stop: threading.Event
) -> None:
    with pytest.raises(TypeError):
        registry.register_many([("a", spawn_thread(stop.wait)), ("b",)])  # type: ignore[list-item]
    assert registry.count() == 0
    outcomes = registry.register_many(
        [("a", spawn_thread(stop.wait)), ("a", spawn_thread(stop.wait)), (True, None)]
    )
    assert outcomes[0] is None
    assert isinstance(outcomes[1], errors.AlreadyRegistered)
    assert isinstance(outcomes[2], errors.InvalidKey)


def test_index_and_scan_are_counted_by_stats(
    registry: MemoryRegistry, stop: threading.Event
) -> None:
    registry.register("a", spawn_thread(stop.wait), {"role": "io", "zone": "eu"})
    before = registry.stats()
    assert registry.find_by_attribute("role", Role.IO) != []
    assert registry.find_by_attribute("zone", "eu") != []
    after = registry.stats()
    assert after.indexed_queries == before.indexed_queries + 1
    assert after.scans == before.scans + 1


def test_thread_local_registry_answers_indexed_queries_from_its_index(
    stop: threading.Event,
) -> None:
    with ThreadLocalRegistry(indexed=("role",)) as legacy:
        legacy.register("a", spawn_thread(stop.wait), {"role": "io"})
        before = legacy.stats()
        assert len(legacy.find_by_attribute("role", "io")) == 1
        assert legacy.stats().indexed_queries == before.indexed_queries + 1


def test_every_call_after_close_raises_closed(stop: threading.Event) -> None:
    registry = MemoryRegistry()
    registry.register("a", spawn_thread(stop.wait))
    registry.close()
    registry.close()  # idempotent
    for call in (
        lambda: registry.register("b", spawn_thread(stop.wait)),
        lambda: registry.lookup("a"),
        lambda: registry.unregister("a"),
        lambda: registry.update_metadata("a", {}),
        lambda: registry.query([]),
        registry.list_all,
        registry.count,
        lambda: registry.find_by_attribute("x", 1),
    ):
        with pytest.raises(errors.Closed) as raised:
            call()
        assert isinstance(raised.value, RuntimeError)


def test_migrating_registry_refuses_one_registry_on_both_sides() -> None:
    flags = FeatureFlags(DEFAULT_FLAGS)
    with MemoryRegistry() as both, pytest.raises(ValueError):
        MigratingRegistry(both, both, flags)
    flags.close()


def test_finish_is_refused_while_the_flag_is_off() -> None:
    flags = FeatureFlags(DEFAULT_FLAGS)
    registry = MigratingRegistry(ThreadLocalRegistry(), MemoryRegistry(), flags)
    with pytest.raises(errors.MigrationError):
        registry.finish()
    registry.close()
    flags.close()


# --- flags (README "Feature flags and migrations", docs/contract.md "Feature flags") -------


def test_flag_rules_of_the_contract() -> None:
    flags = FeatureFlags(
        [Flag("beta"), Flag("color", variants={"red": 1, "blue": 2}, default="red")]
    )
    with pytest.raises(errors.UnknownFlag) as unknown:
        flags.enabled("btea")
    assert isinstance(unknown.value, KeyError)
    assert "beta" in str(unknown.value)
    assert flags.enabled("beta") is False
    assert flags.flag("beta").kind == "boolean"
    assert flags.flag("color").kind == "integer"
    assert flags.variant("beta") == "off"
    for bad in (
        lambda: flags.set("beta", 1),
        lambda: flags.set_percentage("beta", 10**400),
        lambda: flags.set_percentage("beta", 101),
        lambda: flags.set_percentage("beta", -1),
        lambda: flags.enable("beta", by=7),
        lambda: flags.enable("beta", reason="r" * 4097),
        lambda: flags.allow("beta", "\ud800"),
        lambda: flags.enabled("color"),
        lambda: flags.value("beta"),
        lambda: flags.set_percentage("color", 10),
        lambda: flags.allow("color", "a"),
        lambda: flags.assign("beta", "a", "on"),
        lambda: flags.set_split("beta", {"on": 100}),
        lambda: flags.set_split("color", {"red": 50, "blue": 40}),
        lambda: flags.assign("color", "a", "green"),
    ):
        with pytest.raises(errors.InvalidFlagValue):
            bad()
    assert flags.history() == []  # a failed call changes nothing
    flags.set_percentage("beta", 12.5, by="ana")  # fractions allowed, switch on
    assert flags.state("beta").switch is True
    flags.disable("beta")
    flags.enable("beta")
    assert flags.state("beta").percentage == 12.5  # enable resumes the rollout
    flags.close()


@pytest.mark.parametrize(
    "variants",
    [{"a": True}, {"a": 1, "b": "x"}, {"a": float("nan")}, {"": 1}],
    ids=["bool", "mixed", "nan", "empty-name"],
)
def test_a_bad_typed_declaration_is_invalid_flag_value(variants: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidFlagValue):
        Flag("f", variants=variants, default=next(iter(variants)))


def test_a_default_naming_no_variant_names_the_nearest() -> None:
    with pytest.raises(errors.InvalidFlagValue, match="'red'"):
        Flag("f", variants={"red": "#f00"}, default="rde")


def test_a_description_is_at_most_1000_characters() -> None:
    Flag("f", description="d" * 1000)
    with pytest.raises(errors.InvalidFlagValue):
        Flag("f", description="d" * 1001)


def test_config_loading_rules(tmp_path: Path) -> None:
    flags = FeatureFlags([Flag("beta"), Flag("gamma")])
    with pytest.raises(errors.InvalidFlagValue):
        flags.load_from_config({"beta": 5}, env=None)  # bare numbers are refused
    with pytest.raises(errors.UnknownFlag) as unknown:
        flags.load_from_config({"betaa": True, "gama": True}, env=None)
    assert "betaa" in str(unknown.value)
    assert "gama" in str(unknown.value)
    with pytest.raises(errors.UnknownFlag, match="FOUNDATION_FLAG_NOPE"):
        flags.load_from_config({}, env={"FOUNDATION_FLAG_NOPE": "on"})
    flags.load_from_config({"beta": "OFF", "gamma": "25%"}, env={"FOUNDATION_FLAG_BETA": "On"})
    assert flags.enabled("beta") is True  # env over config
    assert flags.history() == []  # the config layer is never written to the store
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[flags]\nbeta = "\xe9"\n')
    big = tmp_path / "big.toml"
    big.write_text("[flags]\n" + "#" * (1024 * 1024 + 10) + "\n", encoding="utf-8")
    deep = tmp_path / "deep.toml"
    deep.write_text("[flags]\nbeta = " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    for path in (latin1, big, deep, Path("/dev/zero")):
        with pytest.raises(errors.InvalidFlagValue):
            flags.load_from_config(path, env=None)
    flags.close()


def test_an_actor_beyond_64_bits_is_refused_whatever_the_flag_state() -> None:
    # docs/keys-and-metadata.md: "an int actor beyond 64 bits | InvalidFlagValue";
    # FeatureFlags.enabled: "InvalidFlagValue: actor is neither a str nor an int"
    with FeatureFlags([Flag("beta")]) as flags:
        with pytest.raises(errors.InvalidFlagValue):
            flags.evaluate("beta", actor=2**64)
        for actor in (2**64, object(), 1.5):
            with pytest.raises(errors.InvalidFlagValue):
                flags.enabled("beta", actor=actor)  # type: ignore[arg-type]


def test_help_of_load_from_config_shows_no_environment() -> None:
    # issue 11 item 9: help(FeatureFlags) printed the whole process environment
    signature = str(inspect.signature(FeatureFlags.load_from_config))
    assert "environ(" not in signature
    assert all(value not in signature for value in os.environ.values() if len(value) > 3)


# --- migrations --------------------------------------------------------------------------


def test_the_default_plan_and_the_refused_transitions() -> None:
    plan = MigrationPlan.default()
    assert [(s.number, s.name) for s in plan.stages] == [(1, "registry")]
    assert set(plan.stages[0].flags) == {"use_ets_agent_registry", "enable_migration_monitoring"}
    assert Stage(1, "s", ("beta",)).risk == "low"
    flags = FeatureFlags(DEFAULT_FLAGS)
    migration = Migration(flags, plan)
    with pytest.raises(errors.MigrationError):
        migration.rollback_to(0)  # not below the current stage
    migration.advance(by="ana")
    assert migration.status().stage == 1
    with pytest.raises(errors.MigrationError):
        migration.advance()  # past the last stage
    migration.emergency_rollback("drill", by="oncall")
    assert migration.status().stage == 0
    assert not flags.enabled("use_ets_agent_registry")
    flags.close()


# --- supervision -------------------------------------------------------------------------


def test_child_spec_names_a_missing_comma() -> None:
    async def worker(ctx: object, topic: str) -> None:
        return None

    with pytest.raises(TypeError, match="missing comma"):
        ChildSpec("ingest", worker, args=("events"))
    with pytest.raises(errors.InvalidMetadata):
        ChildSpec("ingest", worker, args=("events",), metadata={"x": {1}})


# --- errors (docs/contract.md "Errors") ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parent", "builtin"),
    [
        ("Closed", "FoundationError", RuntimeError),
        ("InvalidConfig", "FoundationError", ValueError),
        ("AlreadyRegistered", "RegistryError", ValueError),
        ("NotRegistered", "RegistryError", KeyError),
        ("NotAlive", "RegistryError", ValueError),
        ("UnsupportedAgent", "RegistryError", TypeError),
        ("InvalidKey", "RegistryError", TypeError),
        ("InvalidMetadata", "RegistryError", ValueError),
        ("InvalidCriteria", "RegistryError", ValueError),
        ("BackendUnavailable", "RegistryError", ConnectionError),
        ("UnknownFlag", "FlagError", KeyError),
        ("InvalidFlagValue", "FlagError", ValueError),
        ("MigrationError", "FlagError", RuntimeError),
        ("FlagStoreUnavailable", "FlagError", ConnectionError),
        ("FlagStoreUnavailable", "BackendUnavailable", ConnectionError),
        ("StartError", "SupervisorError", RuntimeError),
        ("ShutdownError", "SupervisorError", RuntimeError),
        ("RestartIntensityExceeded", "SupervisorError", RuntimeError),
    ],
)
def test_the_error_tree(name: str, parent: str, builtin: type) -> None:
    error = getattr(errors, name)
    assert issubclass(error, getattr(errors, parent))
    assert issubclass(error, errors.FoundationError)
    assert issubclass(error, builtin)
    for group in ("RegistryError", "FlagError", "SupervisorError"):
        assert issubclass(getattr(errors, group), errors.FoundationError)


# --- Redis defaults and configuration errors (docs/redis.md "Configuration") --------------


def test_redis_registry_defaults_are_the_documented_ones() -> None:
    params = inspect.signature(RedisRegistry).parameters
    assert params["namespace"].default == "foundation"
    assert params["indexed"].default == ()
    assert params["lease_ttl"].default == 5.0
    assert params["op_timeout"].default == 2.0
    assert params["stream_maxlen"].default == 10_000
    store = inspect.signature(RedisFlagStore).parameters
    assert store["namespace"].default == "foundation"
    assert store["cache_path"].default is True


@pytest.mark.parametrize(
    "url", ["http://cache:6379/0", "redis://cache:notaport/0", "redis://cache:6379/x"]
)
def test_a_malformed_redis_url_is_invalid_config_before_any_io(url: str) -> None:
    with pytest.raises(errors.InvalidConfig) as raised:
        RedisRegistry(url)
    assert isinstance(raised.value, ValueError)


def test_redis_configuration_errors_against_a_real_server() -> None:
    from tests.redis_support import RedisServer, free_port

    with RedisServer() as server, pytest.raises(errors.InvalidConfig, match="out of range"):
        RedisRegistry(server.url.rsplit("/", 1)[0] + "/99", op_timeout=1.0)
    with pytest.raises(errors.BackendUnavailable):
        RedisRegistry(f"redis://127.0.0.1:{free_port()}/0", op_timeout=0.5)
    password = "s3cret-do-not-print"
    with RedisServer(password=password) as server:
        url = server.url.replace("redis://", "redis://:wrong-" + password + "@")
        with pytest.raises(errors.BackendUnavailable) as refused:
            RedisRegistry(url, op_timeout=1.0)
        assert password not in str(refused.value)


def test_pyproject_config_and_an_all_or_nothing_load(tmp_path: Path) -> None:
    # README: config is foundation.toml ([flags]), pyproject.toml ([tool.foundation.flags])
    # or a mapping; a load is all-or-nothing.
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.foundation.flags]\nbeta = "on"\n', encoding="utf-8")
    with FeatureFlags([Flag("beta"), Flag("gamma")]) as flags:
        flags.load_from_config(pyproject, env=None)
        assert flags.enabled("beta") is True
        with pytest.raises(errors.InvalidFlagValue):
            flags.load_from_config({"beta": False, "gamma": 5}, env=None)
        assert flags.enabled("beta") is True
        assert flags.enabled("gamma") is False
