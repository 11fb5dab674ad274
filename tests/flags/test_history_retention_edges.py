"""History retention at the edges: a full file, the cost of a commit, many flags in
one commit, flags trimmed away, old-format rows, several processes on one file.

The full-file scenario runs in a plain interpreter (``python -m
tests.flags.test_history_retention_edges full_file WORKDIR``): default
``sys.unraisablehook`` and ``threading.excepthook``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    SQLiteFlagStore,
    StoreTransaction,
)
from foundation.flags._history import trim_slack
from tests._logs import captured
from tests._together import run_together
from tests.flags._support import wait_until
from tests.flags.test_history_retention import Factory, make_store

__all__ = ["make_store"]  # the fixture, for the tests below

REPO = Path(__file__).resolve().parents[2]
FLAGS = (Flag("a"), Flag("b"), Flag("c"))


def _chain_ends_in_states(store: FlagStore, names: list[str]) -> None:
    """Each flag's history replays (no FlagError), is one chain, and ends in its state."""
    states = store.load_states()
    for name in names:
        history = store.history(name)
        for before, after in itertools.pairwise(history):
            assert after.old == before.new, (name, before, after)
        if history and name in states:
            assert history[-1].new == states[name], name


# ------------------------------------------------------------- a full file (subprocess)


def _fill_then_cap(path: Path, limit: int | None, extra_pages: int) -> tuple[int, list[str]]:
    """100 large changes, then the file may grow by ``extra_pages`` pages only
    (``max_page_count``: SQLite's "database or disk is full", what a full disk or a
    file size limit gives), then 40 small changes: (how many committed, the
    messages logged). Checks that what is kept replays and ends in the states."""
    from foundation.errors import FlagError

    names = [f"f{i}" for i in range(30)]
    with captured("foundation.flags", level=logging.WARNING) as logged:
        store = SQLiteFlagStore(path, history_limit=limit)

        def allow(i: int, actor: str) -> None:  # a fixed `at`: rows of the same size every run
            def fn(txn: StoreTransaction) -> None:
                name = names[i % 30]
                old = txn.get(name) or FlagState(False)
                new = FlagState(True, allow=old.allow | {actor})
                txn.put(name, new, FlagChange(name, old, new, at=1_764_000_000.123457 + i))

            store.transaction(fn)

        try:
            for i in range(100):  # large rows: a whole record of a flag is ~3 of them
                allow(i, f"user-{i}-" + "x" * 200)
            pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
            # Fault injection: the writer connection's own cap (per connection in SQLite).
            store._conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")
            done = 0
            for i in range(100, 140):
                try:
                    allow(i, f"u{i}")
                except FlagError:
                    break
                done += 1
            _chain_ends_in_states(store, names)
            if limit is not None and done == 40:
                history = store.history()
                assert len(history) <= limit + trim_slack(limit) or any(
                    "history not trimmed" in m for m in logged.messages()
                ), (len(history), logged.messages())
                assert history[-1].new.allow >= {"u139"}
        finally:
            store.close()
    return done, logged.messages()


def full_file(work: Path) -> None:
    """The smallest room in which a store that never trims commits all 40 changes (the
    control): in it, the store that trims (history_limit=100, due at the 111th row)
    must commit the change that makes the trim due, and every change until the
    trim's own rewrites (whole first records) take the room. A trim rewrites rows,
    so it needs room the commit alone does not; it must never fail (or undo) the
    commit that found it due. (PYTHONHASHSEED is fixed by the test: the order of
    the rewrites, so the pages they take, follows a set of flag names.)"""
    for extra in range(1, 30):
        control, _ = _fill_then_cap(work / f"control-{extra}.db", None, extra)
        if control == 40:
            break
    else:
        raise AssertionError("no room found where the untrimmed store commits")
    done, seen = _fill_then_cap(work / "trimmed.db", 100, extra)
    assert done > 10, (extra, done, seen)  # the 111th row: the trim was due
    assert not [t for t in threading.enumerate() if t.name.startswith("foundation")]
    print(f"OK full_file (room: {extra} pages, {done} changes committed)", flush=True)


def test_a_trim_on_a_full_file_never_fails_the_commit(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]),
        PYTHONHASHSEED="0",
    )
    out = subprocess.run(
        [sys.executable, "-m", "tests.flags.test_history_retention_edges", "full_file",
         str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert "OK full_file" in out.stdout
    assert "Traceback" not in out.stderr, out.stderr


# ------------------------------------------------------------------ the cost of a commit


def _vm_steps(store: SQLiteFlagStore, fn: Callable[[], None]) -> int:
    """SQLite VM instructions the store's writer connection runs during ``fn`` (in
    thousands: the progress handler's granularity). Deterministic, unlike a timing."""
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0  # go on

    store._conn.set_progress_handler(tick, 1000)
    try:
        fn()
    finally:
        store._conn.set_progress_handler(None, 0)
    return steps[0]


def test_a_sqlite_commit_checks_the_history_size_without_a_scan(tmp_path: Path) -> None:
    """Every commit asks whether a trim is due (``max - min + 1`` of the ids): two
    B-tree descents, not a scan of the history. ``SELECT min(id), max(id)`` in one
    query scanned every row: a commit at the default limit cost 4x one without."""
    store = SQLiteFlagStore(tmp_path / "flags.db", history_limit=10**6)
    with store, FeatureFlags(FLAGS, store=store) as flags:

        def commits() -> None:
            for i in range(20):
                flags.set_percentage("a", i)

        flags.set_percentage("b", 1)
        small = _vm_steps(store, commits)
        db = sqlite3.connect(tmp_path / "flags.db")
        try:
            with db:  # a long history (rows the store itself could have written)
                row = db.execute("SELECT record FROM flag_history ORDER BY id LIMIT 1").fetchone()
                db.executemany(
                    "INSERT INTO flag_history (flag, origin, record) VALUES ('b', 'x', ?)",
                    [row] * 20_000,
                )
        finally:
            db.close()
        large = _vm_steps(store, commits)
    assert large <= 2 * small + 2, (small, large)


class _CountedName(str):
    """A flag name that counts the comparisons made with it."""

    __slots__ = ()
    compared = 0

    def __eq__(self, other: object) -> bool:
        _CountedName.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_a_memory_commit_of_many_new_flags_is_linear() -> None:
    """One commit writing n new flags (a migration stage, a bulk load) compares each
    name O(1) times: scanning the transaction's records per put made it O(n^2)
    (20,000 flags: 11.5 s)."""
    n = 2000
    names = [_CountedName(f"f{i}") for i in range(n)]

    def bulk(txn: StoreTransaction) -> None:
        for name in names:
            txn.put(name, FlagState(True), FlagChange(name, FlagState(False), FlagState(True)))

    for limit in (None, 100):
        with MemoryFlagStore(history_limit=limit) as store:
            _CountedName.compared = 0
            store.transaction(bulk)
            assert _CountedName.compared <= 10 * n, (limit, _CountedName.compared)
            assert len(store.load_states()) == n


# --------------------------------------------------------------- every store, edge cases


def _bulk(names: list[str], tag: str) -> Callable[[StoreTransaction], None]:
    def fn(txn: StoreTransaction) -> None:
        for name in names:
            old = txn.get(name) or FlagState(False)
            new = FlagState(True, allow=old.allow | {tag})
            txn.put(name, new, FlagChange(name, old, new, by=tag))

    return fn


@pytest.mark.parametrize("limit", [1, 10])
def test_one_commit_larger_than_the_limit(make_store: Factory, limit: int) -> None:
    """A commit of 25 flags with history_limit 1 or 10: the commit itself is cut; what
    is kept replays, each flag's kept records end in its state, and later single
    changes (deltas of trimmed records) replay too."""
    store = make_store(limit)
    names = [f"f{i:02}" for i in range(25)]
    for round_ in range(3):
        store.transaction(_bulk(names, f"t{round_}"))
        history = store.history()
        assert limit <= len(history) <= limit + trim_slack(limit)
        assert [c.by for c in history] == ["t" + str(round_)] * len(history)
        _chain_ends_in_states(store, names)
    assert store.load_states()["f00"].allow == {"t0", "t1", "t2"}
    with FeatureFlags([Flag(n) for n in names], store=store) as flags:
        for i in range(30):
            flags.deny(names[i % 25], f"d{i}")
        _chain_ends_in_states(store, names)
        assert flags.history()[-1].new.deny == {"d4", "d29"}
        assert flags.history()[-1].new.allow == {"t0", "t1", "t2"}


def test_a_flag_trimmed_away_then_cleared_reset_and_changed_again(make_store: Factory) -> None:
    """ "a"'s records are all trimmed (other flags' changes); then it is cleared,
    everything is reset, and it changes again: each of those records replays on its
    own (no base left in any record), history("a") never raises."""
    store = make_store(3)
    with FeatureFlags(FLAGS, store=store) as flags:
        flags.allow("a", "keep")
        flags.set_percentage("a", 5)
        for i in range(10):
            flags.set_percentage("b", i)
        assert store.history("a") == []
        flags.allow("a", "again")  # a delta of a state no kept record holds
        old = store.history("a")[-1].old
        assert old.percentage == 5.0
        assert old.allow == frozenset({"keep"})
        assert store.history("a")[-1].new.allow == {"keep", "again"}
        for i in range(10):
            flags.set_percentage("c", i)
        flags.clear("a")
        assert store.history("a")[-1].new == flags.state("a")
        assert store.load_states().get("a") is None
        for i in range(10):
            flags.set_percentage("b", 50 + i)
        flags.reset_all(by="ops")
        flags.allow("a", "third")
        flags.deny("a", "x")
        for name in ("a", "b", "c"):
            store.history(name)  # replays
        last = store.history("a")[-1]
        assert last.old.allow == frozenset({"third"})
        assert not last.old.deny
        assert last.new.allow == frozenset({"third"})
        assert last.new.deny == frozenset({"x"})
        assert last.new.percentage is None
        _chain_ends_in_states(store, ["a", "b", "c"])
        assert flags.history() == store.history()


# ----------------------------------------------------------------------------- SQLite


def _write_old_format(path: Path, changes: list[tuple[FlagChange, FlagState | None]]) -> None:
    """Rows as the previous version wrote them: whole FlagChange JSON, state alongside."""
    with SQLiteFlagStore(path):
        pass  # creates the schema
    db = sqlite3.connect(path)
    try:
        with db:
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
    finally:
        db.close()


def _key(change: FlagChange) -> tuple[Any, ...]:
    return (change.flag, change.old, change.new, change.by, change.reason)


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_old_format_rows_mixed_with_trims(tmp_path: Path, limit: int) -> None:
    """A file an earlier version wrote (whole records, a clear among them), upgraded to
    a store that trims: cuts fall among the old rows, between old and new rows, and
    among new ones; the kept rows always replay to the untrimmed model's last
    records, and the first kept row of each flag reads whole (earlier versions too)."""
    off, one = FlagState(False), FlagState(True, allow=frozenset({"x"}))
    two = FlagState(True, allow=frozenset({"x", "y"}))
    old_rows = [
        (FlagChange("a", off, one, "old", None, 1.0), one),
        (FlagChange("b", FlagState(True, 5.0), FlagState(True), "old", "clear", 2.0), None),
        (FlagChange("a", one, two, "old", None, 3.0), two),
        (FlagChange("c", off, FlagState(True, 9.0), "old", None, 4.0), FlagState(True, 9.0)),
    ]
    trimmed_path, model_path = tmp_path / "trimmed.db", tmp_path / "model.db"
    _write_old_format(trimmed_path, old_rows)
    shutil.copy(trimmed_path, model_path)
    with (
        SQLiteFlagStore(trimmed_path, history_limit=limit) as store,
        SQLiteFlagStore(model_path, history_limit=None) as model_store,
    ):
        both = [FeatureFlags(FLAGS, store=store), FeatureFlags(FLAGS, store=model_store)]
        ops: list[Callable[[FeatureFlags], None]] = [
            lambda f: f.allow("a", "z"),
            lambda f: f.deny("b", "d"),
            lambda f: f.set_percentage("c", 10),
            lambda f: f.allow("a", "w"),
            lambda f: f.clear("c"),
            lambda f: f.allow("c", "q"),
        ]
        for step, op in enumerate(ops):
            for f in both:
                op(f)
            model = [_key(c) for c in model_store.history()]
            kept = [_key(c) for c in store.history()]
            assert limit <= len(kept) <= limit + trim_slack(limit) or len(model) == len(kept)
            assert kept == model[-len(kept) :], step
            _chain_ends_in_states(store, ["a", "b", "c"])
        for f in both:
            f.close()
    db = sqlite3.connect(trimmed_path)
    try:
        rows = [json.loads(r) for (r,) in db.execute("SELECT record FROM flag_history ORDER BY id")]
    finally:
        db.close()
    firsts = {r["flag"]: r for r in reversed(rows)}
    assert all(r.get("fmt") is None or "old" in r for r in firsts.values())


_SQLITE_WRITER = """
import random, sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
path, limit, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
with SQLiteFlagStore(path, history_limit=limit) as s, \\
        FeatureFlags([Flag("a"), Flag("b"), Flag("c")], store=s) as f:
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(200):
        op, name, n = rng.choice("padce"), rng.choice("abc"), rng.randint(0, 12)
        by = f"{seed}-{i}"
        if op == "p": f.set_percentage(name, n * 8, by=by)
        elif op == "a": f.allow(name, f"u{n}", by=by)
        elif op == "d": f.deny(name, f"u{n}", by=by)
        elif op == "c": f.clear(name, by=by)
        else: f.enable(name, by=by)
print("done", flush=True)
"""


def test_two_processes_with_their_own_limits_and_a_slow_watcher(tmp_path: Path) -> None:
    """Two processes write one file at once, trimming with limits 3 and 40, while a
    third store's subscriber is slow: the kept history is one exact chain per flag
    ending in the states, bounded by the smaller limit, and the subscriber is either
    handed each change in order (each ``old`` the ``new`` it last heard) or told to
    reload -- never a change replayed on a state it missed."""
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path):
        pass  # the schema, before the writers race to create it
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    observer = SQLiteFlagStore(path, history_limit=3)
    model: dict[str, FlagState] = {}
    wrong: list[str] = []
    reloads = [0]
    slow = threading.Event()

    def listener(changes: list[FlagChange]) -> None:
        if not changes:
            reloads[0] += 1
            model.clear()
        for c in changes:
            if c.flag in model and model[c.flag] != c.old:
                wrong.append(f"{c.flag}: heard {model[c.flag]}, then a change from {c.old}")
            model[c.flag] = c.new
        slow.wait(0.05)  # a slow subscriber: the writers run ahead of the watcher

    observer.load_states()
    observer.subscribe(listener)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SQLITE_WRITER, str(path), str(limit), str(seed)],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed, limit in ((1, 3), (2, 40))
    ]
    outs = run_together(procs)  # all start at once
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
        assert "done" in out, err
        assert "Traceback" not in err, err
    try:
        history = observer.history()
        assert 3 <= len(history) <= 40 + trim_slack(40)  # the last trimmer's limit
        _chain_ends_in_states(observer, ["a", "b", "c"])
        with SQLiteFlagStore(path, history_limit=None) as fresh:
            assert fresh.history() == history
        states = observer.load_states()

        def caught_up() -> bool:
            return all(model.get(n, states.get(n)) == states.get(n) for n in states)

        wait_until(caught_up, timeout=20)
        assert not wrong, wrong[:3]
        assert reloads[0] >= 1  # 400 commits, limit 3, a slow subscriber: rows were lost
    finally:
        slow.set()
        observer.close()


def main(name: str, work: str) -> None:
    {"full_file": full_file}[name](Path(work))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
