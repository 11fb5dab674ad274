"""History records hold the change, not two whole states: storage grows linearly with pins.

Each ``FlagChange`` used to be stored with its whole ``old`` and ``new``
``FlagState``, so n ``allow()`` calls on one flag stored O(n^2) actors. Records
are now deltas (``foundation.flags._history``); ``history()`` and listeners still
get whole states, equal to what the writer recorded. Sizes are compared as
growth per record at 3x the pins, never as absolute numbers or timings.
"""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from pathlib import Path

import pytest

from foundation.errors import FlagError
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    SQLiteFlagStore,
)
from foundation.flags._history import Replay, diff, encode, patch
from tests.flags._support import check_concurrent_pins_chain, wait_until

PINS = (300, 900)
GROWTH_BOUND = 1.5  # bytes per record at 900 pins / at 300 pins (was ~3: quadratic)
DECLARED = (
    Flag("beta"),
    Flag("dark", default=True),
    Flag("color", variants={"red": "#f00", "blue": "#00f", "green": "#0f0"}, default="red"),
)


def _pin(flags: FeatureFlags, n: int, flag: str = "beta") -> None:
    for i in range(n):
        flags.allow(flag, f"user{i}")


def _memory_bytes_per_record(n: int) -> float:
    store = MemoryFlagStore()
    with FeatureFlags([Flag("beta")], store=store) as flags:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            _pin(flags, n)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert len(flags.history("beta")) == n
    return grown / n


def _sqlite_bytes_per_record(path: Path, n: int) -> tuple[float, float]:
    """(file bytes, history record bytes) per record after ``n`` pins."""
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
        _pin(flags, n)
        assert len(flags.history("beta")) == n
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        records = db.execute("SELECT sum(length(record)) FROM flag_history").fetchone()[0]
    finally:
        db.close()
    return path.stat().st_size / n, records / n


def test_memory_store_history_grows_linearly_with_pins() -> None:
    small, large = (_memory_bytes_per_record(n) for n in PINS)
    assert large / small < GROWTH_BOUND, (small, large)


def test_sqlite_store_file_grows_linearly_with_pins(tmp_path: Path) -> None:
    (file_small, rec_small), (file_large, rec_large) = (
        _sqlite_bytes_per_record(tmp_path / f"{n}.db", n) for n in PINS
    )
    assert rec_large / rec_small < GROWTH_BOUND, (rec_small, rec_large)
    assert file_large / file_small < GROWTH_BOUND, (file_small, file_large)


def _exercise(flags: FeatureFlags) -> None:
    """Every kind of write, config loads between them, on boolean and typed flags."""
    _pin(flags, 40)
    flags.deny("beta", "user3", by="ops", reason="abuse")
    flags.set_percentage("beta", 12.5)
    flags.disable("beta")
    flags.load_from_config({"beta": "on", "dark": "30%"}, env=None)  # not recorded
    flags.enable("beta")
    flags.clear("beta", by="ops")  # runtime state deleted: config applies
    flags.allow("beta", "late")
    flags.allow("dark", "x")
    flags.load_from_config({"dark": "off"}, env=None)
    flags.deny("dark", "y")
    for i in range(10):
        flags.assign("color", f"c{i}", "blue" if i % 2 else "green")
    flags.set_split("color", {"red": 50, "blue": 30, "green": 20})
    flags.assign("color", "c1", None)
    flags.assign("color", "c2", "red")
    flags.reset_all(by="ops", reason="reset")
    flags.allow("beta", "again")
    flags.set("dark", True)


def test_history_equals_what_the_writer_recorded_on_every_store(store: FlagStore) -> None:
    heard: list[FlagChange] = []
    with FeatureFlags(DECLARED, store=store) as flags:
        flags.subscribe(heard.append)
        _exercise(flags)
        recorded = [c for c in heard if c.by != "config"]  # config loads are not history
        assert flags.history() == recorded
        for name in ("beta", "dark", "color"):
            assert flags.history(name) == [c for c in recorded if c.flag == name]
    # Every record's old is whole: the last one of beta holds the pins of its time.
    assert recorded[39].new.allow == frozenset(f"user{i}" for i in range(40))


def test_history_reads_the_same_after_reopening_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(DECLARED, store=store) as flags:
        _exercise(flags)
        expected = flags.history()
    with SQLiteFlagStore(path) as store:
        assert store.history() == expected
        assert store.history("color") == [c for c in expected if c.flag == "color"]


def _write_old_format(path: Path, changes: list[tuple[FlagChange, FlagState | None]]) -> None:
    """Rows as the previous version wrote them: whole FlagChange JSON, state alongside."""
    with SQLiteFlagStore(path):
        pass  # creates the schema
    db = sqlite3.connect(path)
    try:
        for change, state in changes:
            db.execute(
                "INSERT INTO flag_history (flag, origin, record) VALUES (?, 'old', ?)",
                (change.flag, change.to_json()),
            )
            if state is None:
                db.execute("DELETE FROM flag_state WHERE name = ?", (change.flag,))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO flag_state VALUES (?, ?)",
                    (change.flag, state.to_json()),
                )
        db.commit()
    finally:
        db.close()


def test_a_sqlite_file_written_in_the_whole_format_still_reads_and_extends(
    tmp_path: Path,
) -> None:
    """A rolling upgrade: old rows, then delta rows on top of them, in one history."""
    path = tmp_path / "flags.db"
    off, one = FlagState(False), FlagState(True, allow=frozenset({"a"}))
    two = FlagState(True, allow=frozenset({"a", "b"}))
    dark = FlagState(True, percentage=5.0)
    old_rows = [
        (FlagChange("beta", off, one, "old", None, 1.0), one),
        (FlagChange("beta", one, two, "old", None, 2.0), two),
        (FlagChange("dark", dark, FlagState(True), "old", "clear", 3.0), None),  # a clear
    ]
    _write_old_format(path, old_rows)
    with SQLiteFlagStore(path) as store, FeatureFlags(DECLARED, store=store) as flags:
        flags.allow("beta", "c")
        flags.deny("dark", "d")
        history = flags.history()
    assert history[:3] == [c for c, _ in old_rows]
    assert history[3] == FlagChange(
        "beta", two, FlagState(True, allow=frozenset({"a", "b", "c"})), None, None, history[3].at
    )
    assert history[4].old == FlagState(True)
    assert history[4].new == FlagState(True, deny=frozenset({"d"}))


def test_another_store_object_hears_whole_changes_from_delta_records(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path) as mine,
        SQLiteFlagStore(path) as theirs,
        FeatureFlags(DECLARED, store=mine) as watcher,
        FeatureFlags(DECLARED, store=theirs) as writer,
    ):
        writer.allow("beta", "first")  # the watcher starts from a state holding a pin
        wait_until(lambda: "first" in watcher.state("beta").allow)
        heard: list[FlagChange] = []
        watcher.subscribe(heard.append)
        _pin(writer, 50)
        writer.clear("beta")
        writer.allow("beta", "last")
        expected = writer.history()[1:]
        wait_until(lambda: len(heard) >= len(expected))
        assert heard == expected
        assert heard[49].new.allow == frozenset({"first", *(f"user{i}" for i in range(50))})


def test_a_corrupt_record_is_a_flag_error_and_the_watcher_says_reload(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path) as mine,
        SQLiteFlagStore(path) as theirs,
        FeatureFlags(DECLARED, store=mine) as watcher,
        FeatureFlags(DECLARED, store=theirs) as writer,
    ):
        batches: list[list[FlagChange]] = []
        mine.subscribe(batches.append)  # a second subscriber: first told to reload ([])
        writer.allow("beta", "a")
        wait_until(lambda: any(batch for batch in batches))
        mark = len(batches)
        bad = {"fmt": 2, "flag": "beta", "by": None, "reason": None, "at": 1.0, "nd": {"a+": "z"}}
        db = sqlite3.connect(path)
        try:  # a record another writer broke: the watcher cannot rebuild it
            db.execute(
                "INSERT INTO flag_history (flag, origin, record) VALUES ('beta', 'x', ?)",
                (json.dumps(bad),),
            )
            db.commit()
        finally:
            db.close()
        writer.allow("beta", "b")
        wait_until(lambda: [] in batches[mark:])  # reload
        with pytest.raises(FlagError, match="malformed"):
            mine.history()
        writer.allow("beta", "c")  # the watcher started again from a snapshot
        wait_until(lambda: any(c.new.allow == {"a", "b", "c"} for b in batches for c in b))
        last = batches[-1][-1]
        assert last.old.allow == {"a", "b"}
        assert last.new.allow == {"a", "b", "c"}
        assert watcher.state("beta").allow == {"a", "b", "c"}


def test_a_delta_record_whose_base_is_gone_is_a_flag_error(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(DECLARED, store=store) as flags:
        flags.allow("beta", "a")
        flags.allow("beta", "b")
    db = sqlite3.connect(path)
    try:
        db.execute("DELETE FROM flag_history WHERE id = (SELECT min(id) FROM flag_history)")
        db.commit()
    finally:
        db.close()
    with SQLiteFlagStore(path) as store, pytest.raises(FlagError, match="no earlier state"):
        store.history("beta")


def test_a_record_holds_the_change_not_the_state() -> None:
    big = FlagState(True, allow=frozenset(f"u{i}" for i in range(1000)))
    more = FlagState(True, allow=big.allow | {"new"})
    record = encode(FlagChange("beta", big, more, "ops", "why", 1.0), big, more)
    assert record["nd"] == {"a+": ["new"]}
    assert "old" not in record
    assert "od" not in record
    assert len(json.dumps(record)) < 200
    assert Replay({"beta": big}).feed(record) == FlagChange("beta", big, more, "ops", "why", 1.0)


@pytest.mark.parametrize(
    ("base", "target"),
    [
        (FlagState(False), FlagState(True, 0.0, frozenset({"a"}), frozenset({"b"}))),
        (FlagState(True, 5, frozenset({"a", "b", "c"})), FlagState(False, None, frozenset({"a"}))),
        (
            FlagState(True, allow=frozenset({"a"})),
            FlagState(True, allow=frozenset({"b"})),
        ),  # replaced: shorter
        (
            FlagState(True, assign={"a": "red", "b": "blue"}, split={"red": 100}),
            FlagState(True, assign={"a": "blue", "c": "red"}, split={"red": 40, "blue": 60}),
        ),
        (FlagState(True, split={"red": 100}), FlagState(True)),
    ],
)
def test_a_delta_rebuilds_the_target_exactly(base: FlagState, target: FlagState) -> None:
    delta = diff(base, target)
    assert patch(base, json.loads(json.dumps(delta))) == target
    assert diff(target, target) == {}


@pytest.mark.parametrize(
    "delta", [[], {"a+": "abc"}, {"s": "yes"}, {"p": 500}, {"g+": 3}, {"x": {"red": 3}}]
)
def test_a_malformed_delta_is_invalid_flag_value(delta: object) -> None:
    with pytest.raises(FlagError):
        patch(FlagState(True), delta)  # type: ignore[arg-type]


def test_concurrent_writers_on_one_sqlite_file_leave_one_replayable_chain(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.db"
    heard: list[FlagChange] = []
    with (
        SQLiteFlagStore(path) as first,
        SQLiteFlagStore(path) as second,
        SQLiteFlagStore(path) as third,
        FeatureFlags(DECLARED, store=first) as one,
        FeatureFlags(DECLARED, store=second) as two,
        FeatureFlags(DECLARED, store=third) as watcher,
    ):
        watcher.subscribe(heard.append)
        check_concurrent_pins_chain(one, two, watcher, heard)
