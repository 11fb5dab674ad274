"""A node copy that fell back to memory and writes itself back to a SHARED file.

Several processes of one deployment share the node copy file. While one of
them keeps its copy in memory (its file failed), another may record a kill
switch in the file, or sync a later version. Writing the memory copy back must
lose neither: pending kill switches are the union of both sides, and the file's
mirror stays when it is newer. Two ``NodeCache`` objects on one real file stand
for the two processes; the fall-back is entered through ``_fall_back`` with the
error a failing disk gives (the real faults are in tests/faults/test_sqlite_faults.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags._node_cache import NodeCache, PendingKillSwitch, Snapshot


def _op(reason: str) -> PendingKillSwitch:
    return PendingKillSwitch(0, (), {}, (), 1.0, "ops", reason)


def _snapshot(version: int, state: str) -> Snapshot:
    return Snapshot(version, "e1", {"f": state}, {}, [], [], full=True)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeCache, NodeCache]]:
    path = tmp_path / "copy.sqlite3"
    a, b = NodeCache(path), NodeCache(path)
    yield a, b
    a.close()
    b.close()


def _to_memory(cache: NodeCache) -> None:
    with cache._lock:
        assert cache._fall_back(sqlite3.OperationalError("disk I/O error"))
    assert cache.in_memory


def _write_back_now(cache: NodeCache) -> None:
    cache._retry_at = 0.0  # the retry is due: the next write tries the file
    cache.set_catalogue({})
    assert not cache.in_memory


def test_pending_kill_switches_of_both_sides_survive_the_write_back(
    pair: tuple[NodeCache, NodeCache],
) -> None:
    a, b = pair
    a.add_pending(_op("before"))
    _to_memory(a)
    b.add_pending(_op("by b, in the file"))
    a.add_pending(_op("by a, in memory"))
    _write_back_now(a)
    reasons = sorted(op.reason or "" for op in b.pending())
    assert reasons == ["before", "by a, in memory", "by b, in the file"]
    assert [op.reason for op in a.pending()] == [op.reason for op in b.pending()]
    ids = [op.id for op in b.pending()]
    assert ids == sorted(ids)
    assert len(set(ids)) == 3


def test_a_removed_kill_switch_is_removed_by_its_id_after_the_write_back(
    pair: tuple[NodeCache, NodeCache],
) -> None:
    a, b = pair
    _to_memory(a)
    a.add_pending(_op("mine"))
    b.add_pending(_op("theirs"))
    (mine,) = a.pending()  # read in memory; removed after the copy went back to its file
    _write_back_now(a)
    a.remove_pending(mine.id)
    assert [op.reason for op in b.pending()] == ["theirs"]


@pytest.mark.parametrize(("file_version", "kept"), [(7, "from b"), (3, "from a")])
def test_the_newer_mirror_stays(
    pair: tuple[NodeCache, NodeCache], file_version: int, kept: str
) -> None:
    a, b = pair
    a.apply(_snapshot(5, "from a"))
    _to_memory(a)
    b.apply(_snapshot(file_version, "from b"))
    _write_back_now(a)
    assert b.states() == {"f": kept}
    assert b.version == max(5, file_version)
