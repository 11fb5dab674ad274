"""Adversarial checks of the history replay (records are deltas, see ``_history``).

Each store keeps a change as a delta of the runtime state it replaced, and
``history()`` and the change feeds rebuild whole ``FlagChange``s by replay. A
model holding every ``FlagChange`` as it was put is compared with what comes
back: random transactions (several puts of one flag in one transaction, clears,
a runtime state that differs from the change's ``new``, typed fields), records
of the earlier whole-state format between delta records (a file an earlier
version also writes to), a subscriber that joins mid-stream, corrupt records.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation.errors import FlagError
from foundation.flags import (
    FlagChange,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    SQLiteFlagStore,
    StoreTransaction,
)
from tests.flags._support import wait_until

NAMES = ("beta", "color", "gamma")
ACTORS = tuple(f"u{i}" for i in range(12))
SPLITS = (None, {"red": 50.0, "blue": 50.0}, {"red": 100.0}, {"red": 20.0, "blue": 80.0})


def _mutated(rng: random.Random, state: FlagState) -> FlagState:
    """``state`` with one to three random edits (switch, percentage, sets, assign, split)."""
    s, p = state.switch, state.percentage
    allow, deny, assign, split = set(state.allow), set(state.deny), dict(state.assign), state.split
    for _ in range(rng.randint(1, 3)):
        edit = rng.randrange(7)
        if edit == 0:
            s = not s
        elif edit == 1:
            p = rng.choice((None, 0, 12.5, 100))
        elif edit == 2:
            allow ^= {rng.choice(ACTORS)}
        elif edit == 3:
            deny ^= set(rng.sample(ACTORS, rng.randint(0, 6)))
        elif edit == 4:
            assign[rng.choice(ACTORS)] = rng.choice(("red", "blue"))
        elif edit == 5:
            assign.pop(rng.choice(ACTORS), None)
        else:
            split = rng.choice(SPLITS)
    return FlagState(s, p, frozenset(allow), frozenset(deny), assign, split)


def _one_txn(rng: random.Random, out: list[FlagChange]) -> Callable[[StoreTransaction], None]:
    """A transaction body of 1-3 puts; ``out`` becomes the changes it put (last run)."""
    plan = [(rng.choice(NAMES), rng.random(), rng.random(), rng.random()) for _ in range(3)]
    del plan[rng.randint(1, 3) :]
    seed = rng.random()

    def body(txn: StoreTransaction) -> None:
        local = random.Random(seed)  # a store may run the body again: same puts
        changes: list[FlagChange] = []
        for name, clear, odd, _ in plan:
            stored = txn.get(name)
            old = stored if stored is not None else FlagState(name == "gamma")
            new = _mutated(local, old)
            state: FlagState | None = new
            if clear < 0.15:
                state, new = None, FlagState(name == "gamma")  # clear: back to the default
            elif odd < 0.1:
                state = _mutated(local, new)  # a runtime state other than the change's new
            change = FlagChange(name, old, new, "ops", f"{seed}-{len(changes)}", 1.0)
            txn.put(name, state, change)
            changes.append(change)
        out[:] = changes

    return body


def _drive(store: FlagStore, seed: int, n: int) -> list[FlagChange]:
    rng = random.Random(seed)
    model: list[FlagChange] = []
    for _ in range(n):
        put: list[FlagChange] = []
        store.transaction(_one_txn(rng, put))
        model.extend(put)
    return model


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlagStore]:
    made: FlagStore = (
        MemoryFlagStore() if request.param == "memory" else SQLiteFlagStore(tmp_path / "f.db")
    )
    yield made
    made.close()


@pytest.mark.parametrize("seed", range(6))
def test_history_replays_to_the_changes_put(store: FlagStore, seed: int) -> None:
    model = _drive(store, seed, 120)
    assert store.history() == model
    for name in NAMES:
        assert store.history(name) == [c for c in model if c.flag == name]


def test_a_subscriber_hears_exactly_the_changes_whole_and_in_order(tmp_path: Path) -> None:
    """Another store object on the file, subscribed mid-stream (after a load)."""
    path = tmp_path / "f.db"
    with SQLiteFlagStore(path) as writer, SQLiteFlagStore(path, poll_interval=0.01) as reader:
        before = _drive(writer, 99, 40)
        reader.load_states()
        heard: list[FlagChange] = []
        reader.subscribe(heard.extend)
        after = _drive(writer, 7, 80)
        wait_until(lambda: len(heard) >= len(after), timeout=30)
        assert heard == after
        assert reader.history() == before + after


def _legacy_put(path: Path, name: str, state: FlagState | None, change: FlagChange) -> None:
    """What an earlier version wrote: the state and the WHOLE change, in one transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        if state is None:
            db.execute("DELETE FROM flag_state WHERE name = ?", (name,))
        else:
            db.execute("INSERT OR REPLACE INTO flag_state VALUES (?, ?)", (name, state.to_json()))
        db.execute(
            "INSERT INTO flag_history (flag, origin, record) VALUES (?, 'old-version', ?)",
            (name, change.to_json()),
        )
        db.execute("COMMIT")
    finally:
        db.close()


def _put(txn: StoreTransaction, name: str, state: FlagState | None, change: FlagChange) -> None:
    txn.put(name, state, change)


def test_old_format_records_between_deltas_replay(tmp_path: Path) -> None:
    """An earlier version writing the same file: a whole record after deltas, a
    whole-format clear followed by deltas, all read back whole, on history()
    and on a subscriber's feed."""
    path = tmp_path / "f.db"
    default = FlagState(False)
    s1 = FlagState(True, allow=frozenset({"a"}))
    s2 = FlagState(True, 10, allow=frozenset({"a", "b"}), assign={"x": "blue"})
    s3 = FlagState(False, 10, allow=frozenset({"a", "b", "c"}), split={"red": 50, "blue": 50})
    s4 = FlagState(True, 10, allow=frozenset({"c"}))
    with SQLiteFlagStore(path) as store, SQLiteFlagStore(path, poll_interval=0.01) as reader:
        heard: list[FlagChange] = []
        reader.subscribe(heard.extend)
        model = [
            FlagChange("beta", default, s1, "new", None, 1.0),
            FlagChange("beta", s1, s2, "new", None, 2.0),
            FlagChange("beta", s2, s3, "old", None, 3.0),  # whole record after deltas
            FlagChange("beta", s3, s4, "new", None, 4.0),
            FlagChange("beta", s4, default, "old", "clear", 5.0),  # whole-format clear
            FlagChange("beta", default, s2, "new", None, 6.0),
            FlagChange("beta", s2, s3, "new", None, 7.0),
        ]
        for change in model:
            state = None if change.reason == "clear" else change.new
            if change.by == "old":
                _legacy_put(path, "beta", state, change)
            else:
                store.transaction(functools.partial(_put, name="beta", state=state, change=change))
        assert store.history("beta") == model
        assert reader.history() == model
        wait_until(lambda: len(heard) >= len(model))
        assert heard == model


def test_a_corrupt_record_is_a_flag_error_and_the_feed_reloads(tmp_path: Path) -> None:
    """history() raises FlagError (never a wrong state); the subscriber is told to
    reload ([]) and then follows later deltas whole again."""
    path = tmp_path / "f.db"
    with SQLiteFlagStore(path) as store, SQLiteFlagStore(path, poll_interval=0.01) as reader:
        heard: list[list[FlagChange]] = []
        reader.subscribe(heard.append)
        first = FlagChange("beta", FlagState(False), FlagState(True), None, None, 1.0)
        store.transaction(lambda txn: txn.put("beta", first.new, first))
        wait_until(lambda: [first] in heard)
        db = sqlite3.connect(path)
        with db:
            db.execute(
                "INSERT INTO flag_history (flag, origin, record) VALUES "
                '(\'beta\', \'x\', \'{"fmt": 2, "flag": "beta", "at": 2, "nd": {"a": 5}}\')'
            )
        db.close()
        second = FlagChange(
            "beta", FlagState(True), FlagState(True, allow=frozenset({"z"})), None, None, 3
        )
        store.transaction(lambda txn: txn.put("beta", second.new, second))
        wait_until(lambda: [] in heard)
        with pytest.raises(FlagError):
            store.history("beta")
        third = FlagChange(
            "beta", second.new, FlagState(False, allow=frozenset({"z"})), None, None, 4.0
        )
        store.transaction(lambda txn: txn.put("beta", third.new, third))

        def after_reload() -> list[FlagChange]:
            return [c for batch in heard[heard.index([]) + 1 :] for c in batch]

        # The watcher batches what it reads: `second` comes after the reload unless
        # the reload's snapshot already held it; either way the changes are whole.
        wait_until(lambda: third in after_reload())
        assert after_reload() in ([third], [second, third])


def test_two_store_objects_writing_one_flag_at_once_keep_one_chain(tmp_path: Path) -> None:
    """Writers on two connections (the write lock serialises them): every record's
    base is the previous commit's state, whoever wrote it."""
    path = tmp_path / "f.db"
    with SQLiteFlagStore(path) as one, SQLiteFlagStore(path) as two:

        def toggle(store: SQLiteFlagStore, actor: str) -> None:
            def body(txn: StoreTransaction) -> None:
                stored = txn.get("beta") or FlagState(False)
                new = FlagState(not stored.switch, allow=stored.allow ^ {actor})
                txn.put("beta", new, FlagChange("beta", stored, new, actor, None, 1.0))

            for _ in range(60):
                store.transaction(body)

        threads = [
            threading.Thread(target=toggle, args=(s, a)) for s, a in ((one, "a"), (two, "b"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        history = one.history("beta")
        assert len(history) == 120
        state = FlagState(False)
        for change in history:
            assert change.old == state
            state = change.new
        assert one.load_states()["beta"] == state
