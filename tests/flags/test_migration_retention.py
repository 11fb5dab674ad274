"""Migration history retention: ``history_limit`` bounds the migration events too.

A plan stepped in a loop (automation advancing and rolling back, repeated
emergency rollbacks) appended one event per step forever: every store grew
without bound (measured ~115-170 bytes per event). Each store now keeps the last
``history_limit`` events of all plans together, with the flag history's rule
(trimmed once ``trim_slack`` over), counted apart from the flag history. The
stage is stored apart from the events: it stays right whatever was trimmed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagStore,
    MemoryFlagStore,
    Migration,
    MigrationEvent,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
)
from foundation.flags._store import trim_slack

FLAGS = (Flag("a"), Flag("b"), Flag("c"))
LOOP = MigrationPlan([Stage(1, "one", ["a"]), Stage(2, "two", ["b"])], name="loop")
STEADY = MigrationPlan([Stage(1, "only", ["c"])], name="steady")
Factory = Callable[[int | None], FlagStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """``make_store(history_limit)``: a store of each kind, closed at teardown. SQLite
    and Redis stores made by one test share their file / namespace (a reopen)."""
    stores: list[FlagStore] = []
    namespace = f"t-mig-{uuid.uuid4().hex[:12]}"

    def factory(limit: int | None) -> FlagStore:
        n = len(stores)
        if request.param == "memory":
            s: FlagStore = MemoryFlagStore(history_limit=limit)
        elif request.param == "sqlite":
            s = SQLiteFlagStore(tmp_path / "flags.db", history_limit=limit)
        else:
            server = request.getfixturevalue("redis_server")
            s = RedisFlagStore(
                server.url,
                namespace=namespace,
                cache_path=tmp_path / f"node-copy-{n}.sqlite3",
                history_limit=limit,
            )
        stores.append(s)
        return s

    yield factory
    for s in stores:
        s.close()


def _cycle(migration: Migration, n: int) -> list[tuple[str, int, int, str | None]]:
    """``n`` advance + rollback pairs (automation in a loop); the events as expected."""
    out: list[tuple[str, int, int, str | None]] = []
    for i in range(n):
        migration.advance(by="bot", reason=f"up {i}")
        migration.rollback_to(0, by="bot", reason=f"down {i}")
        out += [("advance", 0, 1, f"up {i}"), ("rollback", 1, 0, f"down {i}")]
    return out


def _key(e: MigrationEvent) -> tuple[str, int, int, str | None]:
    return (e.action, e.from_stage, e.to_stage, e.reason)


@pytest.mark.parametrize("limit", [1, 10])
def test_a_plan_stepped_in_a_loop_keeps_the_last_events(make_store: Factory, limit: int) -> None:
    """After every step the history is the last k events (limit <= k <= limit + slack),
    exactly the model's tail, and the stage is the one last committed."""
    store = make_store(limit)
    with FeatureFlags(FLAGS, store=store) as flags:
        migration = Migration(flags, LOOP)
        model: list[tuple[str, int, int, str | None]] = []
        for i in range(3 * limit + 5):
            model += _cycle(migration, 1)
            got = [_key(e) for e in migration.history()]
            assert min(limit, len(model)) <= len(got) <= limit + trim_slack(limit), i
            assert got == model[len(model) - len(got) :]
            assert migration.status().stage == 0
        migration.advance(by="bot", reason="last")
        assert migration.status().stage == store.migration_stage("loop") == 1
        assert _key(migration.history()[-1]) == ("advance", 0, 1, "last")
        assert flags.enabled("a")
        assert not flags.enabled("b")


def test_a_stage_outlives_every_event_of_its_plan(make_store: Factory) -> None:
    """Plan "steady" reached stage 1 long ago; another plan's loop trims every one of
    its events away. Its stage is still 1 (stored apart, never derived from events),
    here and in a store opened afterwards, and it still rolls back from there."""
    store = make_store(4)
    with FeatureFlags(FLAGS, store=store) as flags:
        steady = Migration(flags, STEADY)
        steady.advance(by="ana", reason="go")
        _cycle(Migration(flags, LOOP), 10)
        assert steady.history() == []
        assert 4 <= len(store.migration_history("loop")) <= 4 + trim_slack(4)
        assert steady.status().stage == 1
        assert flags.enabled("c")
    again = make_store(4) if not isinstance(store, MemoryFlagStore) else store
    with FeatureFlags(FLAGS, store=again) as flags:
        steady = Migration(flags, STEADY)
        assert again.migration_stage("steady") == steady.status().stage == 1
        steady.rollback_to(0, by="ana")
        assert steady.status().stage == 0
        assert not flags.enabled("c")
        assert [_key(e) for e in steady.history()] == [("rollback", 1, 0, None)]


def test_emergency_rollbacks_in_a_loop_are_bounded(make_store: Factory) -> None:
    """Repeated emergency rollbacks (each one recorded, even at stage 0) are bounded
    like any step, and counted apart from the flag history."""
    store = make_store(6)
    with FeatureFlags(FLAGS, store=store) as flags:
        migration = Migration(flags, LOOP)
        for i in range(30):
            migration.emergency_rollback(f"incident {i}", by="oncall")
        events = migration.history()
        assert 6 <= len(events) <= 6 + trim_slack(6)
        assert [e.reason for e in events] == [f"incident {i}" for i in range(30 - len(events), 30)]
        assert migration.status().stage == 0


def test_history_limit_none_keeps_every_event(make_store: Factory) -> None:
    store = make_store(None)
    with FeatureFlags(FLAGS, store=store) as flags:
        model = _cycle(Migration(flags, LOOP), 30)
    assert [_key(e) for e in store.migration_history("loop")] == model


def test_the_first_events_trim_is_logged_once_at_info(
    make_store: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(3)
    with caplog.at_level("DEBUG", logger="foundation.flags"), FeatureFlags(FLAGS, store=store) as f:
        _cycle(Migration(f, LOOP), 10)
    trims = [r for r in caplog.records if "migration history trimmed" in r.getMessage()]
    assert trims
    assert [r.levelname for r in trims] == ["INFO"] + ["DEBUG"] * (len(trims) - 1)
