"""A process (re)starting on a full disk cannot open its SQLite flag store, even to
read: WAL mode must grow the -shm file next to the database. The error says so
(SQLite's own words, ``disk I/O error``, named no cause). A real full disk: a
1 MB tmpfs, filled up."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest

from foundation.errors import FlagError
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests._ci import cannot_run, needs_root


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (needs root, as CI runs; else the test is skipped, saying why,
    or in CI fails: tests/_ci.py)."""
    where = tmp_path / "disk"
    where.mkdir()
    needs_root("to mount a 1 MB tmpfs, a disk to fill")
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        cannot_run(f"cannot run mount(8) to make a 1 MB tmpfs: {exc}")
    if done.returncode != 0:
        cannot_run(f"cannot mount a 1 MB tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, timeout=60)


def _fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    with suppress(OSError), open(path, "wb") as file:  # closing fails too: the disk is full
        while True:
            file.write(b"x" * 512)
            file.flush()


def test_opening_a_store_on_a_full_disk_says_the_disk_is_full(small_disk: Path) -> None:
    path = small_disk / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
        flags.enable("beta", by="ana")
    # The last close checkpointed and removed the -wal and -shm: a restart makes them.
    assert sorted(os.listdir(small_disk)) == ["flags.db"]
    _fill(small_disk / "filler")
    with pytest.raises(FlagError, match="is the disk full") as raised:
        SQLiteFlagStore(path)
    assert "flags.db" in str(raised.value), raised.value
    assert "while opening" in str(raised.value), raised.value
    os.remove(small_disk / "filler")  # room again: the same file opens, nothing lost
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
        assert flags.enabled("beta")
