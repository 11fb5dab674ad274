"""Two versions of one migration plan in play (a rolling deploy): the store keeps every
flag any version named, a rollback from either deploy turns them all off, and
``status()`` reports the skew (stage beyond the plan, or another version recorded)."""

from __future__ import annotations

import itertools
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation import errors
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagStore,
    HealthSample,
    HealthThresholds,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
)
from foundation.flags._migration_json import migration_json
from tests._ci import needs_root
from tests.faults._subprocess import run_scenario
from tests.flags._support import wait_until

DECLARED = (Flag("a"), Flag("b"), Flag("c"))
NEW = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",), "high")], name="p")
OLD = MigrationPlan([Stage(1, "one", ("a",))], name="p")
# An older deploy's version whose stage 2 turned on another flag (c).
V1 = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("c",), "high")], name="p")


@pytest.fixture(params=["memory", "sqlite", "redis"])
def nodes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[FeatureFlags, FeatureFlags]]:
    """Two nodes on one store: the new deploy's flags and the old deploy's."""
    stores: list[FlagStore]
    if request.param == "memory":
        shared = MemoryFlagStore()
        stores = [shared, shared]
    elif request.param == "sqlite":
        stores = [SQLiteFlagStore(tmp_path / "flags.db") for _ in range(2)]
    else:
        server = request.getfixturevalue("redis_server")
        namespace = f"versions-{request.node.name}-{id(tmp_path)}"
        stores = [
            RedisFlagStore(server.url, namespace=namespace, cache_path=tmp_path / f"c{i}.sqlite3")
            for i in range(2)
        ]
    new, old = (FeatureFlags(DECLARED, store=s) for s in stores)
    yield new, old
    new.close()
    old.close()
    for s in {id(s): s for s in stores}.values():
        s.close()


def _new_at_stage_two_then_old_records(
    nodes: tuple[FeatureFlags, FeatureFlags],
) -> tuple[Migration, Migration]:
    new_flags, old_flags = nodes
    new = Migration(new_flags, NEW)
    new.advance(by="deploy")
    new.advance(by="deploy")
    wait_until(lambda: old_flags.enabled("a") and old_flags.enabled("b"))  # heard it
    old = Migration(old_flags, OLD)  # the older node starts: records its 1-stage plan
    return new, old


def test_the_store_keeps_every_flag_any_version_named(
    nodes: tuple[FeatureFlags, FeatureFlags],
) -> None:
    _new_at_stage_two_then_old_records(nodes)
    store = nodes[1].store
    assert store.plans()["p"].to_dict() == OLD.to_dict()  # the last record wins ...
    assert store.plan_flags("p") == {"a": 1, "b": 2}  # ... the flags it named stay
    assert nodes[0].store.plan_flags("p") == {"a": 1, "b": 2}
    assert store.plan_flags("q") == {}


def test_an_old_deploys_emergency_rollback_turns_off_the_newer_stages_flag(
    nodes: tuple[FeatureFlags, FeatureFlags],
) -> None:
    new, old = _new_at_stage_two_then_old_records(nodes)
    event = old.emergency_rollback("error spike", by="oncall")
    assert (event.from_stage, event.to_stage) == (2, 0)
    old_flags = nodes[1]
    assert (old_flags.enabled("a"), old_flags.enabled("b")) == (False, False)
    assert new.status().stage == 0
    wait_until(lambda: not nodes[0].enabled("a") and not nodes[0].enabled("b"))


def test_an_old_deploys_rollback_to_turns_off_later_stages_of_any_version(
    nodes: tuple[FeatureFlags, FeatureFlags],
) -> None:
    _, old = _new_at_stage_two_then_old_records(nodes)
    old.rollback_to(1, by="oncall")
    assert (nodes[1].enabled("a"), nodes[1].enabled("b")) == (True, False)


def test_status_reports_the_skew_and_logs_it_once(
    nodes: tuple[FeatureFlags, FeatureFlags], caplog: pytest.LogCaptureFixture
) -> None:
    new, old = _new_at_stage_two_then_old_records(nodes)
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        status = old.status()
        assert old.status() == status  # the second time: nothing more logged
    assert (status.stage, status.total) == (2, 1)
    assert status.skew is not None
    assert "stage 2 is beyond this plan's 1" in status.skew
    assert "on now: b;" in status.skew
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "'p'" in r.message]
    assert [r.getMessage() for r in warned] == [status.skew]
    # The new deploy is told another version is recorded.
    skew = new.status().skew
    assert skew is not None
    assert "the store records another version of it (1 stages)" in skew
    assert migration_json(old, history=5, newest_first=False, problems=False)["skew"] == (
        status.skew
    )


def test_no_skew_with_one_version(nodes: tuple[FeatureFlags, FeatureFlags]) -> None:
    new = Migration(nodes[0], NEW)
    new.advance(by="deploy")
    assert new.status().skew is None
    assert Migration(nodes[1], NEW).status().skew is None


def test_a_tool_driving_the_recorded_older_plan_turns_off_every_flag(tmp_path: Path) -> None:
    """The CLI's path: ``FeatureFlags.from_store`` + ``Migration.from_store`` (the
    recorded plan is the older deploy's)."""
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(DECLARED, store=store)
        new = Migration(flags, NEW)
        new.advance(by="deploy")
        new.advance(by="deploy")
        Migration(flags, OLD)
        flags.close()
    with SQLiteFlagStore(path) as store:
        tool = FeatureFlags.from_store(store)
        migration = Migration.from_store(tool, "p")
        assert migration.plan.to_dict() == OLD.to_dict()
        migration.emergency_rollback("error spike", by="oncall")
        assert (tool.enabled("a"), tool.enabled("b")) == (False, False)
        tool.close()


def test_an_older_library_overwriting_the_plan_record_does_not_shrink_the_flags(
    tmp_path: Path,
) -> None:
    """A library version that knows nothing of the plan flags replaces only the plan
    record (as it always did): the flags named before are still known."""
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(DECLARED, store=store)
        new = Migration(flags, NEW)
        new.advance(by="deploy")
        new.advance(by="deploy")
        flags.close()
    with sqlite3.connect(path) as db:  # what the older library's record_plan writes
        db.execute(
            "INSERT OR REPLACE INTO migration_plan (name, plan) VALUES (?, ?)",
            ("p", '{"name": "p", "stages": [{"flags": ["a"], "name": "one", '
             '"number": 1, "risk": "low"}]}'),
        )  # fmt: skip
    db.close()
    with SQLiteFlagStore(path) as store:
        assert store.plans()["p"].to_dict() == OLD.to_dict()
        assert store.plan_flags("p") == {"a": 1, "b": 2}
        tool = FeatureFlags.from_store(store)
        Migration.from_store(tool, "p").emergency_rollback("error spike", by="oncall")
        assert tool.enabled("b") is False
        tool.close()


def test_a_flag_the_old_deploy_does_not_declare_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryFlagStore()
    new_flags = FeatureFlags(DECLARED, store=store)
    old_flags = FeatureFlags((Flag("a"),), store=store)
    new = Migration(new_flags, NEW)
    new.advance(by="deploy")
    new.advance(by="deploy")
    wait_until(lambda: old_flags.enabled("a"))
    old = Migration(old_flags, OLD)
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        old.emergency_rollback("error spike", by="oncall")
    assert old_flags.enabled("a") is False
    messages = [r.getMessage() for r in caplog.records]
    assert any("flags b of another version" in m and "not declared here" in m for m in messages)
    # The tool's FeatureFlags (the catalogue: every flag declared) turns it off.
    tool = FeatureFlags.from_store(store)
    wait_until(lambda: tool.enabled("b"))
    Migration.from_store(tool, "p").emergency_rollback("again", by="oncall")
    assert tool.enabled("b") is False
    for f in (tool, old_flags, new_flags):
        f.close()
    store.close()


def test_an_old_deploys_automatic_rollback_steps_back_over_the_newer_stage(
    nodes: tuple[FeatureFlags, FeatureFlags],
) -> None:
    new_flags, old_flags = nodes
    new = Migration(new_flags, NEW)
    new.advance(by="deploy")
    new.advance(by="deploy")
    wait_until(lambda: old_flags.enabled("a") and old_flags.enabled("b"))
    old = Migration(
        old_flags,
        OLD,
        health=lambda: HealthSample(error_rate=0.5),
        thresholds=HealthThresholds(max_error_rate=0.05),
    )
    report = old.check_health()
    assert (report.rolled_back_from, report.rolled_back_to) == (2, 1)
    assert (old_flags.enabled("a"), old_flags.enabled("b")) == (True, False)


@pytest.mark.parametrize(
    ("result", "problems"),
    [
        ("registry not drained", ["registry not drained"]),
        ("", []),
        (["one", "two"], ["one", "two"]),
        ((), []),
    ],
)
def test_a_readiness_check_returning_a_str_reports_one_problem(
    result: object, problems: list[str]
) -> None:
    flags = FeatureFlags(DECLARED)
    migration = Migration(flags, NEW, readiness=[lambda: result])
    assert migration.problems() == problems
    if problems:
        with pytest.raises(errors.MigrationError, match=r"not ready to advance: (registry|one)"):
            migration.advance(by="deploy")
    flags.close()


# ------------------------------------------- plans an older library recorded


class _Backend:
    """One SQLite file or Redis namespace; fresh stores on it (each Redis store its own
    copy), and what an older library leaves there, written directly."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind, self.tmp_path = kind, tmp_path
        self._copies = itertools.count()
        self.server = request.getfixturevalue("redis_server") if kind == "redis" else None
        self.namespace = f"older-{request.node.name}-{id(tmp_path)}"
        self.stores: list[FlagStore] = []

    def open(self) -> FlagStore:
        store: FlagStore
        if self.server is None:
            store = SQLiteFlagStore(self.tmp_path / "flags.db")
        else:
            copy = self.tmp_path / f"copy{next(self._copies)}.sqlite3"
            store = RedisFlagStore(self.server.url, namespace=self.namespace, cache_path=copy)
        self.stores.append(store)
        return store

    def sql(self, statement: str, *args: object) -> None:
        db = sqlite3.connect(self.tmp_path / "flags.db")
        with db:
            db.execute(statement, args)
        db.close()

    def key(self, name: str) -> str:
        return "{" + self.namespace + "}:flags:" + name

    def forget_plan_flags(self) -> None:
        """As a file or namespace the older library wrote: no plan flags at all."""
        if self.server is None:
            self.sql("DROP TABLE IF EXISTS migration_plan_flag")
        else:
            self.server.command("DEL", self.key("plan_flags"))

    def old_record(self, plan: MigrationPlan) -> None:
        """The older library's ``record_plan``: the plan record only."""
        text = json.dumps(plan.to_dict())
        if self.server is None:
            self.sql("INSERT OR REPLACE INTO migration_plan (name, plan) VALUES (?, ?)", "p", text)
        else:
            self.server.command("HSET", self.key("plans"), plan.name, text)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_Backend]:
    made = _Backend(request.param, tmp_path, request)
    yield made
    for store in made.stores:
        store.close()


def test_a_plan_an_older_library_recorded_is_rolled_back_too(backend: _Backend) -> None:
    """The older library ran plan V1 (stage 2: c) to stage 2 and wrote no plan flags;
    the upgraded deploy (stage 2: b) records its plan: V1's flags are added."""
    flags = FeatureFlags(DECLARED, store=backend.open())
    older = Migration(flags, V1)
    older.advance(by="old")
    older.advance(by="old")
    flags.close()
    backend.forget_plan_flags()
    store = backend.open()
    flags = FeatureFlags(DECLARED, store=store)
    assert flags.enabled("c")
    new = Migration(flags, NEW)
    assert store.plan_flags("p") == {"a": 1, "b": 2, "c": 2}  # before the fix: no c
    new.emergency_rollback("error spike", by="oncall")
    assert [flags.enabled(f) for f in "abc"] == [False, False, False]
    flags.close()


def test_a_plan_an_older_node_records_later_is_rolled_back_too(backend: _Backend) -> None:
    """A node of the older library records its plan (no plan flags) after this deploy
    started, and turns on its stage-2 flag: the recorded plan's flags go off too."""
    store = backend.open()
    flags = FeatureFlags(DECLARED, store=store)
    new = Migration(flags, NEW)
    backend.old_record(V1)
    flags.enable("c", by="old node")
    wait_until(lambda: store.plans()["p"].to_dict() == V1.to_dict())
    assert "c" not in store.plan_flags("p")
    new.emergency_rollback("error spike", by="oncall")
    assert [flags.enabled(f) for f in "abc"] == [False, False, False]  # before the fix: c on
    flags.close()


def _corrupt(backend: _Backend) -> None:
    if backend.server is None:  # a stage that is no number
        backend.sql("INSERT INTO migration_plan_flag VALUES ('p', 'b', 'x')")
    else:  # a field nested too deep for the JSON decoder (RecursionError)
        backend.server.command("HSET", backend.key("plan_flags"), "[" * 100_000, "1")


def test_a_corrupt_plan_flag_entry_does_not_stop_the_kill_switch(backend: _Backend) -> None:
    store = backend.open()
    flags = FeatureFlags(DECLARED, store=store)
    new = Migration(flags, NEW)
    new.advance(by="deploy")
    new.advance(by="deploy")
    _corrupt(backend)
    # Before the fix: ValueError (SQLite) / RecursionError (Redis) from each of these.
    assert new.status().stage == 2
    assert store.plan_flags("p") == {"a": 1, "b": 2}
    Migration(flags, NEW)
    new.emergency_rollback("error spike", by="oncall")
    assert (flags.enabled("a"), flags.enabled("b")) == (False, False)
    flags.close()


class _UnreadablePlanFlags(MemoryFlagStore):
    """A store whose plan flags cannot be read (any error: a builtin one here)."""

    def plan_flags(self, name: str) -> dict[str, int]:
        raise ValueError("invalid literal for int() with base 10: 'x'")


def test_any_error_reading_the_plan_flags_is_a_warning_and_the_rollback_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _UnreadablePlanFlags()
    flags = FeatureFlags(DECLARED, store=store)
    new = Migration(flags, NEW)
    new.advance(by="deploy")
    store.record_plan("p", V1)  # another version recorded since: its flag c is on
    flags.enable("c", by="old node")
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        assert new.status().skew is not None
        new.emergency_rollback("error spike", by="oncall")
    assert [flags.enabled(f) for f in "abc"] == [False, False, False]
    warned = [r.getMessage() for r in caplog.records if "are unknown" in r.getMessage()]
    assert len(warned) == 1, warned  # once, not at each read
    assert "ValueError" in warned[0]
    flags.close()
    store.close()


def test_an_older_writable_file_gets_the_plan_flags_table_at_the_first_record(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        FeatureFlags(DECLARED, store=store).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("DROP TABLE IF EXISTS migration_plan_flag")  # as an older library made it
    db.close()
    with SQLiteFlagStore(path) as store:
        assert store.plan_flags("p") == {}
        flags = FeatureFlags(DECLARED, store=store)
        Migration(flags, NEW)
        assert store.plan_flags("p") == {"a": 1, "b": 2}
        flags.close()


_READ_ONLY_OLDER_FILE = """
import os, sqlite3, tempfile
from foundation import errors
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore, Stage
d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")
DECLARED = [Flag("a"), Flag("b")]
NEW = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",), "high")], name="p")
with SQLiteFlagStore(path) as setup, FeatureFlags(DECLARED, store=setup) as f:
    Migration(f, NEW).advance(by="root")
db = sqlite3.connect(path)
with db:
    db.execute("DROP TABLE IF EXISTS migration_plan_flag")  # a file of the older library
db.close()
os.chmod(d, 0o755)
os.chown(d, 65534, 65534)  # the directory is nobody's, the file stays root's
os.chmod(path, 0o644)
os.setgid(65534)
os.setuid(65534)  # from here on, permissions apply
store = SQLiteFlagStore(path, busy_timeout=1.0)  # before the fix: FlagError (readonly)
flags = FeatureFlags(DECLARED, store=store)
assert flags.enabled("a") and not flags.enabled("b")
assert list(store.plans()) == ["p"]
assert store.plan_flags("p") == {}
migration = Migration(flags, NEW)  # its record is refused: a WARNING
assert migration.status().stage == 1
flags.close()
store.close()
print("OK")
"""


def test_a_read_only_older_file_opens_and_reads_its_plan_flags_as_none() -> None:
    needs_root("to make a file this process may not write, as uid nobody")
    result = run_scenario(_READ_ONLY_OLDER_FILE)
    assert "migration plan 'p' not recorded" in result.stderr, result.stderr
