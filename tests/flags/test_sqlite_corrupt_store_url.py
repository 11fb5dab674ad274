"""A corrupt SQLite flag store opened by URL (the ``foundation`` command, the admin
server) is reported as corrupt, left as it is, and never called "not a flag
store" with a hint to create one: that would invite replacing a damaged store
(its flags, its emergency rollbacks) with an empty one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from foundation.errors import FlagError
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
)
from foundation.flags._urls import open_store
from tests.cli._support import one_line_error, run_cli


def _corrupt_store(tmp_path: Path) -> Path:
    """A flag store with a migration under way, every page but the first overwritten."""
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path) as store,
        FeatureFlags([Flag("beta"), *DEFAULT_FLAGS], store=store) as flags,
    ):
        Migration(flags, MigrationPlan.default()).advance(by="ana")
        flags.enable("beta", by="ana")
    # The last close checkpointed everything into the file: garbage after its header
    # page (the schema) is where the tables are.
    data = path.read_bytes()
    path.write_bytes(data[:4096] + b"\xff" * (len(data) - 4096))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_corrupt_store_is_reported_corrupt_and_left_as_it_was(tmp_path: Path) -> None:
    path = _corrupt_store(tmp_path)
    before = _digest(path)
    with pytest.raises(FlagError) as raised:
        open_store(f"sqlite:///{path}")
    message = str(raised.value)
    assert "corrupt" in message, message
    assert "restore it from a backup" in message, message
    assert "creates it" not in message, message
    assert "not a Foundation flag store" not in message, message
    error = one_line_error(
        run_cli("--store", f"sqlite:///{path}", "migration", "status", cwd=tmp_path)
    )
    assert error.startswith("FlagError: "), error
    assert "corrupt" in error, error
    assert "creates it" not in error, error
    assert _digest(path) == before  # not a byte written (a read makes -wal and -shm)
