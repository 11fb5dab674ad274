"""``flags disable`` and ``migration emergency`` on a SQLite store locked by another
process: exit 69 with the store's own line, and no advice about Redis.

Before the fix both commands appended the Redis outage advice to any
``BackendUnavailable``: "The command line cannot keep a kill switch until
Redis returns: use the admin page of a running node (POST ...), which applies
it there at once and commits it when Redis returns". A SQLite store has no
Redis and no outage to wait out (README: nothing changes anywhere; the same
store takes the next write once the file can be written again), and an admin
page over it would be refused the same way: the advice sent an operator the
wrong way. The lock is a real one: an exclusive transaction held by this
process on the store's file, for longer than the store's ``busy_timeout``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
)
from tests.cli._support import cli_env, ok_json, one_line_error, run_cli

UNAVAILABLE = 69


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "flags.db"
    store = SQLiteFlagStore(path)
    flags = FeatureFlags([Flag("beta"), *DEFAULT_FLAGS], store=store)
    migration = Migration(flags, MigrationPlan.default())
    flags.enable("beta", by="ana")
    migration.advance(by="ana")
    flags.close()
    store.close()
    return path


@pytest.fixture
def locked(store_path: Path) -> Iterator[Path]:
    holder = sqlite3.connect(store_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        yield store_path
    finally:
        holder.close()


@pytest.mark.parametrize(
    "args",
    [("flags", "disable", "beta"), ("migration", "emergency", "error spike")],
    ids=["flags disable", "migration emergency"],
)
def test_a_locked_sqlite_store_refuses_the_kill_switch_without_redis_advice(
    args: tuple[str, ...], locked: Path, tmp_path: Path
) -> None:
    env = cli_env(FOUNDATION_CACHE_DIR=str(tmp_path / "cache"))
    store = f"sqlite:///{locked}"
    line = one_line_error(run_cli(*args, "--store", store, cwd=tmp_path, env=env), UNAVAILABLE)
    assert line.startswith("BackendUnavailable: flag store "), line
    assert "locked" in line, line
    assert "Redis" not in line, line
    assert "admin page" not in line, line


def test_the_store_takes_the_kill_switch_once_the_lock_is_gone(
    store_path: Path, tmp_path: Path
) -> None:
    env = cli_env(FOUNDATION_CACHE_DIR=str(tmp_path / "cache"))
    store = f"sqlite:///{store_path}"
    holder = sqlite3.connect(store_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        run_cli("flags", "disable", "beta", "--store", store, cwd=tmp_path, env=env)
    finally:
        holder.close()
    shown = ok_json(run_cli("flags", "show", "beta", "--store", store, cwd=tmp_path, env=env))
    assert shown["switch"] is True, shown  # the refused disable changed nothing
    done = ok_json(run_cli("flags", "disable", "beta", "--store", store, cwd=tmp_path, env=env))
    assert done["state"]["switch"] is False, done
