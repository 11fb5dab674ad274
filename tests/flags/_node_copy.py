"""Helpers of the node-copy write-back tests: two ``NodeCache`` objects on one real
file stand for two processes sharing it; the fall-back to memory is entered
through ``NodeCache._fall_back`` with the error a failing disk gives (the real
faults are in tests/faults/test_sqlite_faults.py)."""

from __future__ import annotations

import sqlite3

from foundation.flags._node_cache import NodeCache, PendingKillSwitch


def pending_op(reason: str) -> PendingKillSwitch:
    """A pending kill switch told apart by its ``reason``."""
    return PendingKillSwitch(0, (), {}, (), 1.0, "ops", reason)


def to_memory(cache: NodeCache) -> None:
    """Move ``cache`` into memory, as a failing file does."""
    with cache._lock:
        assert cache._fall_back(sqlite3.OperationalError("disk I/O error"))
    assert cache.in_memory


def write_back_now(cache: NodeCache) -> None:
    """Make the retry due, and write: the memory copy goes back to its file."""
    cache._retry_at = 0.0
    cache.set_catalogue({})
    assert not cache.in_memory
