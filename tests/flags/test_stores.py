"""One behavioural suite over every FlagStore, then what is specific to SQLite."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from foundation import errors
from foundation.flags import (
    FeatureFlags,
    FlagChange,
    FlagState,
    FlagStore,
    MigrationEvent,
    SQLiteFlagStore,
    StoreTransaction,
    open_store,
)
from tests.flags._support import FLAGS, wait_until

ON = FlagState(True)
OFF = FlagState(False)


def change(flag: str, old: FlagState = OFF, new: FlagState = ON) -> FlagChange:
    return FlagChange(flag, old, new, "test", "because", 1.0)


# ------------------------------------------------------------ store contract


def test_a_transaction_writes_state_and_history_together(store: FlagStore) -> None:
    def body(txn: StoreTransaction) -> str:
        assert txn.get("beta") is None
        txn.put("beta", ON, change("beta"))
        assert txn.get("beta") == ON  # sees its own write
        txn.put_migration("plan", 1, MigrationEvent("plan", "advance", 0, 1, at=2.0))
        return "done"

    assert store.transaction(body) == "done"
    assert store.load_states() == {"beta": ON}
    assert store.history() == [change("beta")]
    assert store.history("other") == []
    assert store.migration_stage("plan") == 1
    assert store.migration_history("plan") == [MigrationEvent("plan", "advance", 0, 1, at=2.0)]


def test_a_transaction_that_raises_writes_nothing(store: FlagStore) -> None:
    def body(txn: StoreTransaction) -> None:
        txn.put("beta", ON, change("beta"))
        txn.put_migration("plan", 1, MigrationEvent("plan", "advance", 0, 1))
        raise errors.MigrationError("refused")

    with pytest.raises(errors.MigrationError):
        store.transaction(body)
    assert store.load_states() == {}
    assert store.history() == []
    assert store.migration_stage("plan") == 0


def test_putting_none_deletes_the_runtime_state(store: FlagStore) -> None:
    store.transaction(lambda t: t.put("beta", ON, change("beta")))
    store.transaction(lambda t: t.put("beta", None, change("beta", ON, OFF)))
    assert store.load_states() == {}
    assert len(store.history("beta")) == 2


def test_concurrent_read_modify_write_transactions_lose_nothing(store: FlagStore) -> None:
    def add(actor: str) -> None:
        def body(txn: StoreTransaction) -> None:
            old = txn.get("beta") or OFF
            new = FlagState(old.switch, None, old.allow | {actor})
            txn.put("beta", new, change("beta", old, new))

        store.transaction(body)

    def worker(n: int) -> None:
        for i in range(10):
            add(f"t{n}-{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.load_states()["beta"].allow == {f"t{n}-{i}" for n in range(4) for i in range(10)}
    assert len(store.history("beta")) == 40


def test_feature_flags_work_over_every_store(store: FlagStore) -> None:
    with FeatureFlags(FLAGS, store=store) as flags:
        flags.set_percentage("beta", 50, by="ana")
        flags.deny("beta", "bob")
        assert flags.enabled("beta", actor="bob") is False
        assert [c.by for c in flags.history("beta")] == ["ana", None]
    with FeatureFlags(FLAGS, store=store) as again:  # a second instance reads it back
        assert again.state("beta") == FlagState(True, 50.0, frozenset(), frozenset({"bob"}))


def test_a_closed_store_refuses_calls(store: FlagStore) -> None:
    store.close()
    with pytest.raises(errors.Closed):
        store.load_states()
    store.close()  # idempotent


# ----------------------------------------------------------------- SQLite


def test_state_and_history_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(FLAGS, store=store) as flags:
        flags.set_percentage("beta", 20, by="ana", reason="canary")
        flags.allow("beta", "vip")
        flags.disable("dark_mode", by="ops")
    with SQLiteFlagStore(path) as store, FeatureFlags(FLAGS, store=store) as flags:
        assert flags.state("beta") == FlagState(True, 20.0, frozenset({"vip"}))
        assert flags.enabled("dark_mode") is False
        assert [(c.flag, c.by) for c in flags.history()] == [
            ("beta", "ana"),
            ("beta", None),
            ("dark_mode", "ops"),
        ]


_WRITER = """
import sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
path, tag, ready, go = sys.argv[1:5]
with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
    open(ready, "w").close()
    while not __import__("os").path.exists(go):
        __import__("time").sleep(0.001)  # sleep-ok: polling for the start signal
    for i in range(60):
        flags.allow("beta", f"{tag}-{i}", by=tag)
"""


def test_two_processes_writing_one_file_lose_no_update(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    SQLiteFlagStore(path).close()  # create the schema once
    go = tmp_path / "go"
    procs = []
    for tag in ("p1", "p2"):
        ready = tmp_path / f"ready-{tag}"
        procs.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", _WRITER, str(path), tag, str(ready), str(go)]
                ),
            )
        )
    wait_until(lambda: all(r.exists() for r, _ in procs), timeout=30)
    go.touch()  # both start writing at once
    for _, proc in procs:
        assert proc.wait(timeout=60) == 0
    with SQLiteFlagStore(path) as store:
        allow = store.load_states()["beta"].allow
        history = store.history("beta")
    assert allow == {f"{t}-{i}" for t in ("p1", "p2") for i in range(60)}
    assert len(history) == 120
    assert {c.by for c in history} == {"p1", "p2"}


def test_a_change_by_another_process_reaches_this_cache_and_listeners(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path, poll_interval=0.01) as store,
        FeatureFlags(FLAGS, store=store) as flags,
    ):
        seen: list[FlagChange] = []
        flags.subscribe(seen.append)
        flags.enable("new_checkout")  # our own change: delivered once, locally
        script = textwrap.dedent(
            """
            import sys
            from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
            with SQLiteFlagStore(sys.argv[1]) as s, FeatureFlags([Flag("beta")], store=s) as f:
                f.set_percentage("beta", 100, by="other-process")
            """
        )
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
        wait_until(lambda: flags.enabled("beta"))
        wait_until(lambda: len(seen) == 2)
        assert [(c.flag, c.by) for c in seen] == [("new_checkout", None), ("beta", "other-process")]


def test_a_corrupt_file_is_a_flag_error(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(errors.FlagError, match="not a usable flag store"):
        SQLiteFlagStore(path)
    assert path.read_bytes() == b"this is not a database" * 100


def test_a_corrupt_record_is_a_flag_error_and_the_cache_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(FLAGS, store=store) as flags:
        flags.enable("beta")
        raw = sqlite3.connect(path)
        raw.execute("UPDATE flag_state SET state = '{garbage' WHERE name = 'beta'")
        raw.commit()
        raw.close()
        with pytest.raises(errors.FlagError):
            flags.allow("beta", "x")
        assert flags.state("beta") == FlagState(True)


def test_a_locked_file_is_backend_unavailable_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path, busy_timeout=0.05) as store,
        FeatureFlags(FLAGS, store=store) as flags,
    ):
        flags.enable("beta")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(errors.BackendUnavailable, match="locked"):
                flags.disable("beta")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert flags.enabled("beta") is True
        assert len(flags.history()) == 1
        flags.disable("beta")  # and it works again once the lock is gone
        assert flags.enabled("beta") is False


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    SQLiteFlagStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE foundation_meta SET value = '99' WHERE key = 'schema'")
    raw.commit()
    raw.close()
    with pytest.raises(errors.FlagError, match="schema"):
        SQLiteFlagStore(path)


def test_closing_stops_the_watcher_thread(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    store = SQLiteFlagStore(tmp_path / "flags.db")
    flags = FeatureFlags(FLAGS, store=store)
    assert len(set(threading.enumerate()) - before) == 1
    flags.close()
    store.close()
    assert set(threading.enumerate()) - before == set()


@pytest.mark.parametrize("path", [":memory:", "", "file::memory:?cache=shared"])
def test_an_in_memory_sqlite_path_is_refused_at_construction(path: str) -> None:
    """Its writer, reader and watcher would each get a database of their own: the
    store constructed, and every FeatureFlags over it failed later."""
    with pytest.raises(errors.InvalidConfig, match="use MemoryFlagStore"):
        SQLiteFlagStore(path)
    with pytest.raises(errors.InvalidConfig):
        open_store(f"sqlite:///{path}")
