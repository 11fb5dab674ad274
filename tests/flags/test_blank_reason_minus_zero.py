"""The library refuses a blank emergency reason as it refuses ""; stores
-0.0 percent as 0.0; ``open_store`` writes nothing into a file that is not a
flag store."""

from __future__ import annotations

import hashlib
import math
import sqlite3
from pathlib import Path

import pytest

from foundation.errors import FlagError, MigrationError
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
    open_store,
)


@pytest.mark.parametrize("reason", ["", " ", "   ", "\n", "\t\r\n"])
def test_an_emergency_rollback_refuses_a_blank_reason(reason: str) -> None:
    flags = FeatureFlags(list(DEFAULT_FLAGS), store=MemoryFlagStore())
    try:
        migration = Migration(flags, MigrationPlan.default())
        migration.advance(by="ana")
        with pytest.raises(MigrationError, match=r"^an emergency rollback needs a reason$"):
            migration.emergency_rollback(reason, by="ana")
        assert migration.status().stage == 1
        assert [e.action for e in migration.history()] == ["advance"]
        migration.emergency_rollback(" fire ", by="ana")  # text around blanks is a reason
        assert migration.status().stage == 0
    finally:
        flags.close()


@pytest.mark.parametrize("minus_zero", [-0.0, -0, "-0"])
def test_minus_zero_percent_is_stored_as_zero(minus_zero: object) -> None:
    value = float(minus_zero) if isinstance(minus_zero, str) else minus_zero
    flags = FeatureFlags([Flag("new_parser")], store=MemoryFlagStore())
    try:
        flags.set_percentage("new_parser", value, by="ana")  # type: ignore[arg-type]
        p = flags.state("new_parser").percentage
        assert p == 0.0
        assert math.copysign(1.0, p) == 1.0
    finally:
        flags.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_open_store_writes_nothing_into_another_database(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    toml = tmp_path / "foundation.toml"
    toml.write_text("[cli]\nstore = 'x'\n")
    for target in (path, empty, toml):
        before = _digest(target)
        with pytest.raises(FlagError, match="usable flag store: not a Foundation flag store"):
            open_store(f"sqlite:///{target}")
        assert _digest(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db", "empty.db", "foundation.toml"]
    # A flag store opens; SQLiteFlagStore itself still creates one anywhere.
    SQLiteFlagStore(tmp_path / "flags.db").close()
    open_store(f"sqlite:///{tmp_path / 'flags.db'}").close()
    open_store(f"sqlite:///{tmp_path / 'new.db'}", create=True).close()


def test_open_store_refuses_a_newer_schema_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    SQLiteFlagStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE foundation_meta SET value = '99' WHERE key = 'schema'")
    conn.commit()
    conn.close()
    before = _digest(path)
    with pytest.raises(FlagError, match="schema '99'"):
        open_store(f"sqlite:///{path}")
    assert _digest(path) == before
