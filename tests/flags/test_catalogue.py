"""The flag catalogue and migration plans kept in the store; services built from a store alone."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from foundation import errors
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagInfo,
    FlagStore,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
    open_store,
)
from tests.redis_support import RedisServer

DECLARED = (
    Flag("beta", description="the beta checkout"),
    Flag("dark_mode", default=True, description="dark theme"),
    Flag("search_v2"),
)
PLAN = MigrationPlan(
    [Stage(1, "search", ["search_v2"]), Stage(2, "checkout", ["beta"], risk="high")],
    name="rollout",
)


def test_flag_info_round_trip() -> None:
    info = FlagInfo("beta", True, "x")
    assert FlagInfo.from_json(info.to_json()) == info
    assert FlagInfo.from_dict({"name": "b"}) == FlagInfo("b", False, "")
    with pytest.raises(errors.InvalidFlagValue):
        FlagInfo.from_dict({"default": True})
    with pytest.raises(errors.InvalidFlagValue):
        FlagInfo("b", default="yes")  # type: ignore[arg-type]


def test_plan_round_trip() -> None:
    again = MigrationPlan.from_dict(PLAN.to_dict())
    assert again.to_dict() == PLAN.to_dict()
    assert again.stages[1].risk == "high"
    with pytest.raises(errors.MigrationError):
        MigrationPlan.from_dict({"name": "x", "stages": [{"number": 1}]})


def test_feature_flags_records_its_declarations(store: FlagStore) -> None:
    assert store.catalogue() == {}
    FeatureFlags(DECLARED, store=store).close()
    assert store.catalogue() == {
        "beta": FlagInfo("beta", False, "the beta checkout"),
        "dark_mode": FlagInfo("dark_mode", True, "dark theme"),
        "search_v2": FlagInfo("search_v2", False, ""),
    }
    # Another application version: the catalogue is the union, the last record wins.
    FeatureFlags([Flag("beta", description="v2"), Flag("extra")], store=store).close()
    catalogue = store.catalogue()
    assert sorted(catalogue) == ["beta", "dark_mode", "extra", "search_v2"]
    assert catalogue["beta"].description == "v2"


def test_migration_records_its_plan(store: FlagStore) -> None:
    flags = FeatureFlags(DECLARED, store=store)
    Migration(flags, PLAN)
    plans = store.plans()
    assert list(plans) == ["rollout"]
    assert plans["rollout"].to_dict() == PLAN.to_dict()
    flags.close()


def test_a_tool_drives_flags_and_plan_from_the_store_alone(store: FlagStore) -> None:
    app = FeatureFlags(DECLARED, store=store)
    Migration(app, PLAN)

    tool = FeatureFlags.from_store(store)
    assert tool.names == ("beta", "dark_mode", "search_v2")
    assert tool.enabled("dark_mode") is True  # the declared default travels
    tool.enable("beta", by="ops", reason="launch")
    assert [(c.flag, c.by, c.reason) for c in store.history()] == [("beta", "ops", "launch")]
    with pytest.raises(errors.UnknownFlag) as caught:
        tool.disable("btea")
    assert "did you mean 'beta'" in str(caught.value)
    with pytest.raises(errors.UnknownFlag):
        tool.enable("never_declared")

    migration = Migration.from_store(tool)
    migration.advance(by="ops")
    assert store.migration_stage("rollout") == 1
    assert tool.enabled("search_v2") is True
    tool.close()
    app.close()


class _CountingStore(MemoryFlagStore):
    """A real memory store that counts the catalogue and plan records it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[str] = []

    def record_catalogue(self, flags: Iterable[FlagInfo]) -> None:
        self.records.append("catalogue")
        super().record_catalogue(flags)

    def record_plan(self, name: str, plan: MigrationPlan) -> None:
        self.records.append(f"plan {name}")
        super().record_plan(name, plan)


def test_tools_record_nothing() -> None:
    """A tool must not re-record (it could undo a newer application's declarations)."""
    store = _CountingStore()
    app = FeatureFlags(DECLARED, store=store)
    Migration(app, PLAN)
    assert store.records == ["catalogue", "plan rollout"]
    tool = FeatureFlags.from_store(store)
    Migration.from_store(tool)
    assert store.records == ["catalogue", "plan rollout"]
    tool.close()
    app.close()


def test_migration_from_store_picks_the_plan(store: FlagStore) -> None:
    flags = FeatureFlags(DECLARED, store=store)
    with pytest.raises(errors.MigrationError, match="no migration plan"):
        Migration.from_store(flags)
    Migration(flags, PLAN)
    Migration(flags, MigrationPlan([Stage(1, "dark", ["dark_mode"])], name="theme"))
    with pytest.raises(errors.MigrationError, match="several migration plans"):
        Migration.from_store(flags)
    assert Migration.from_store(flags, "theme").plan.name == "theme"
    with pytest.raises(errors.MigrationError, match="did you mean 'rollout'"):
        Migration.from_store(flags, "rolout")
    flags.close()


def test_open_store_never_creates_a_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(errors.InvalidConfig, match="does not exist"):
        open_store(f"sqlite:///{missing}")
    assert not missing.exists()
    with pytest.raises(errors.InvalidConfig, match="unknown flag store scheme"):
        open_store(f"postgres://{missing}")
    toml = tmp_path / "foundation.toml"
    toml.write_text('[flags]\nbeta = "on"\n')
    with pytest.raises(errors.FlagError, match="not a usable flag store"):
        open_store(str(toml))
    assert toml.read_text() == '[flags]\nbeta = "on"\n'
    store = open_store(f"sqlite:///{missing}", create=True)
    assert isinstance(store, SQLiteFlagStore)
    store.close()
    assert missing.exists()


def test_open_store_redis_namespace(redis_server: RedisServer, tmp_path: Path) -> None:
    url = f"{redis_server.url}?namespace=cat-{tmp_path.name}"
    with pytest.raises(errors.InvalidConfig, match="no flag store in namespace"):
        open_store(url)
    store = open_store(url, create=True)
    try:
        FeatureFlags(DECLARED, store=store).close()
    finally:
        store.close()
    again = open_store(url)
    try:
        assert sorted(again.catalogue()) == ["beta", "dark_mode", "search_v2"]
    finally:
        again.close()


def test_catalogue_unreachable_backend_does_not_stop_an_application(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    """An application starting during an outage (from its node copy) still starts, and
    its catalogue is recorded when Redis returns (even empty: the store records again)."""
    ns = f"cat-outage-{tmp_path.name}"
    copy = tmp_path / "copy.sqlite3"
    with RedisFlagStore(fresh_redis.url, namespace=ns, cache_path=copy) as store:
        FeatureFlags(DECLARED, store=store).enable("beta")
    fresh_redis.kill()
    with RedisFlagStore(
        fresh_redis.url, namespace=ns, cache_path=copy, timeout=0.5, resync_interval=0.2
    ) as store:
        flags = FeatureFlags([*DECLARED, Flag("late")], store=store)
        assert flags.enabled("beta") is True
        # Redis unreachable: the catalogue answers from the node copy (D4: the CLI lists it).
        assert sorted(store.catalogue()) == sorted(f.name for f in DECLARED)
        fresh_redis.start()  # back, empty: the node restores its copy and records again
        deadline = time.monotonic() + 30
        while True:
            try:
                if "late" in store.catalogue():
                    break
            except errors.BackendUnavailable:
                pass  # not reconnected yet
            assert time.monotonic() < deadline, "the catalogue was never recorded"
            time.sleep(0.02)  # sleep-ok: polling for the listener's resync with a deadline
        assert sorted(store.catalogue()) == ["beta", "dark_mode", "late", "search_v2"]
        flags.close()
