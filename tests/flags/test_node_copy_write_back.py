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

import pytest

from foundation.flags._node_cache import NodeCache, Snapshot
from tests.flags._node_copy import pending_op, to_memory, write_back_now


def _snapshot(version: int, state: str) -> Snapshot:
    return Snapshot(version, "e1", {"f": state}, {}, [], [], full=True)


def test_pending_kill_switches_of_both_sides_survive_the_write_back(
    pair: tuple[NodeCache, NodeCache],
) -> None:
    a, b = pair
    a.add_pending(pending_op("before"))
    to_memory(a)
    b.add_pending(pending_op("by b, in the file"))
    a.add_pending(pending_op("by a, in memory"))
    write_back_now(a)
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
    to_memory(a)
    a.add_pending(pending_op("mine"))
    b.add_pending(pending_op("theirs"))
    (mine,) = a.pending()  # read in memory; removed after the copy went back to its file
    write_back_now(a)
    a.remove_pending(mine)
    assert [op.reason for op in b.pending()] == ["theirs"]


@pytest.mark.parametrize(("file_version", "kept"), [(7, "from b"), (3, "from a")])
def test_the_newer_mirror_stays(
    pair: tuple[NodeCache, NodeCache], file_version: int, kept: str
) -> None:
    a, b = pair
    a.apply(_snapshot(5, "from a"))
    to_memory(a)
    b.apply(_snapshot(file_version, "from b"))
    write_back_now(a)
    assert b.states() == {"f": kept}
    assert b.version == max(5, file_version)
