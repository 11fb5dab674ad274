"""History retention (``history_limit``): the same rule on every store.

A store keeps the last ``history_limit`` records of all flags together, trimming
once it holds ``trim_slack`` more; what it keeps replays exactly as the same
records of a store that never trims (the model).
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation.errors import InvalidConfig
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    FlagStore,
    MemoryFlagStore,
    RedisFlagStore,
    SQLiteFlagStore,
)
from foundation.flags._history import DEFAULT_HISTORY_LIMIT, Replay, trim_slack
from tests.flags._support import wait_until

FLAGS = (Flag("a"), Flag("b"), Flag("c"))
Factory = Callable[[int | None], FlagStore]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """``make_store(history_limit)``: a fresh store of each kind, closed at teardown
    (the kinds of tests/flags/conftest.py's ``store``, with a history limit)."""
    stores: list[FlagStore] = []

    def factory(limit: int | None) -> FlagStore:
        n = len(stores)
        if request.param == "memory":
            s: FlagStore = MemoryFlagStore(history_limit=limit)
        elif request.param == "sqlite":
            s = SQLiteFlagStore(tmp_path / f"flags-{n}.db", history_limit=limit)
        else:
            server = request.getfixturevalue("redis_server")
            s = RedisFlagStore(
                server.url,
                namespace=f"t-{request.node.name}-{id(tmp_path)}-{n}",
                cache_path=tmp_path / f"node-copy-{n}.sqlite3",
                history_limit=limit,
            )
        stores.append(s)
        return s

    yield factory
    for s in stores:
        s.close()


def _key(change: FlagChange) -> tuple[object, ...]:
    return (change.flag, change.old, change.new, change.by, change.reason, change.at)


def _random_writes(rng: random.Random, flags: list[FeatureFlags], count: int) -> Iterator[int]:
    """``count`` random writes, each made alike on every ``flags``; yields after each."""
    for i in range(count):
        op, name, n = rng.choice("pacde"), rng.choice("abc"), rng.randint(0, 12)
        for f in flags:
            if op == "p":
                f.set_percentage(name, n * 8, by=f"w{i}")
            elif op == "a":
                f.allow(name, f"u{n}", by=f"w{i}")
            elif op == "d":
                f.deny(name, f"u{n}", by=f"w{i}")
            elif op == "c":
                f.clear(name, by=f"w{i}")
            else:
                f.enable(name, by=f"w{i}")
        yield i


@pytest.mark.parametrize("limit", [1, 4, 12])
def test_history_is_the_last_records_of_an_untrimmed_model(make_store: Factory, limit: int) -> None:
    """Randomized: after every write, history() (and history(flag)) is the model's last
    k records, limit <= k <= limit + trim_slack, replayed to the same whole states --
    including a flag whose records were all trimmed and that is written again."""
    model_store, store = MemoryFlagStore(history_limit=None), make_store(limit)
    model, flags = FeatureFlags(FLAGS, store=model_store), FeatureFlags(FLAGS, store=store)
    try:
        # Same `at` on both sides: the two FeatureFlags stamp their own clock reads.
        for i in _random_writes(random.Random(limit), [model, flags], 60):
            want = [(c.flag, c.old, c.new, c.by) for c in model_store.history()]
            got = [(c.flag, c.old, c.new, c.by) for c in store.history()]
            assert min(limit, i + 1) <= len(got) <= limit + trim_slack(limit)
            assert got == want[len(want) - len(got) :]
            for name in "abc":
                assert [(c.flag, c.old, c.new, c.by) for c in store.history(name)] == [
                    g for g in got if g[0] == name
                ]
    finally:
        model.close()
        flags.close()


def test_trims_bound_every_store_and_none_keeps_everything(make_store: Factory) -> None:
    limited, unlimited = make_store(10), make_store(None)
    for store in (limited, unlimited):
        with FeatureFlags(FLAGS, store=store) as flags:
            for i in range(40):
                flags.set_percentage("abc"[i % 3], i)
    assert 10 <= len(limited.history()) <= 11
    assert [c.new.percentage for c in limited.history()][-1] == 39.0
    assert len(unlimited.history()) == 40


def test_the_default_limit_and_bad_limits() -> None:
    assert MemoryFlagStore().history_limit == DEFAULT_HISTORY_LIMIT == 10_000
    for bad in (0, -1, True, 1.5, "10"):
        with pytest.raises(InvalidConfig, match="history_limit"):
            MemoryFlagStore(history_limit=bad)  # type: ignore[arg-type]


def test_sqlite_rows_stay_readable_from_their_first_row(tmp_path: Path) -> None:
    """A trimmed SQLite history starts each flag with a whole record: a reader that
    replays the rows from nothing (what every earlier version does) reads them all,
    and the file holds no more than limit + slack rows."""
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path, history_limit=5) as store,
        FeatureFlags(FLAGS, store=store) as flags,
    ):
        for i in range(30):
            flags.allow("abc"[i % 3], f"user{i}")
        expected = store.history()
    db = sqlite3.connect(path)
    try:
        rows = [r[0] for r in db.execute("SELECT record FROM flag_history ORDER BY id")]
    finally:
        db.close()
    assert 5 <= len(rows) <= 6
    replay = Replay()
    assert [replay.feed_json(r) for r in rows] == expected
    firsts = {json.loads(r)["flag"]: json.loads(r) for r in reversed(rows)}
    assert all("old" in record for record in firsts.values())


def test_a_sqlite_watcher_behind_a_trim_says_reload(tmp_path: Path) -> None:
    """Another process trims rows a watcher has not read yet (more than history_limit
    commits between two of its polls): its subscribers are told to reload ([]),
    never handed the changes after the gap as if they were all."""
    path = tmp_path / "flags.db"
    writer = SQLiteFlagStore(path, history_limit=3)
    reader = SQLiteFlagStore(path, poll_interval=0.5)
    heard: list[list[FlagChange]] = []
    reloaded = threading.Event()

    def listener(changes: list[FlagChange]) -> None:
        heard.append(changes)
        if not changes:
            reloaded.set()

    try:
        with FeatureFlags(FLAGS, store=writer) as flags:
            reader.load_states()
            reader.subscribe(listener)
            for i in range(30):  # ~10 ms: well within the watcher's first 0.5 s wait
                flags.set_percentage("a", i + 1)
            wait_until(lambda: reloaded.is_set() or sum(map(len, heard)) >= 30, timeout=10)
            # Either the watcher read every row (no gap) or it was told to reload.
            assert reloaded.is_set() or sum(map(len, heard)) == 30
            for change in itertools.chain.from_iterable(heard):
                assert change.new.percentage == (change.old.percentage or 0) + 1
    finally:
        reader.close()
        writer.close()


def test_a_trim_that_cannot_replay_keeps_the_rows_and_retries_sparingly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row written behind the store's back that no version can read: trims keep every
    row and say so (WARNING), commits go on, and the next attempt waits for
    ``trim_slack`` more rows (not one failing replay per commit)."""
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path, history_limit=50) as store, FeatureFlags(FLAGS, store=store) as f:
        db = sqlite3.connect(path)
        try:
            with db:
                db.execute(
                    "INSERT INTO flag_history (flag, origin, record) VALUES ('a', 'x', 'garbage')"
                )
        finally:
            db.close()
        with caplog.at_level("WARNING", logger="foundation.flags"):
            for i in range(100):
                f.set_percentage("b", i)
        assert f.state("b").percentage == 99.0
    # Due from 56 rows on: an attempt per 5 rows (10), not one per commit (46).
    warnings = [r for r in caplog.records if "history not trimmed" in r.getMessage()]
    assert 1 <= len(warnings) <= 100 // trim_slack(50) - 8
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT count(*) FROM flag_history").fetchone()[0] == 101
    finally:
        db.close()
