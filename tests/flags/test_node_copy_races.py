"""Races of processes sharing one node copy file: pending-id clashes and refreshes.

A process whose copy lives in memory numbers its pending kill switches without
seeing the file, so another process sharing the file may give one of its own
the same id (same microsecond, same random bits). The clash is forced here by
writing a row with the chosen id into the real file from another SQLite
connection. Removing a pending kill switch must then never remove the other
process's one (never committed: its kill switch would be lost), whether the
replay drops it after the write-back renumbered it or the write-back drops what
the replay committed meanwhile.

Two processes refreshing the copy at once: one read an older Redis snapshot and
writes it after the other wrote a newer one. The copy's version must not go
back. The interleaving is forced with a hook that holds the refresh between its
read of Redis and its write to the copy, on two real connections to the file.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from foundation.flags import FeatureFlags, Flag, FlagState, RedisFlagStore
from foundation.flags._node_cache import NodeCache, PendingKillSwitch, Snapshot
from foundation.flags._store import FlagChange
from tests.flags._node_copy import pending_op, to_memory, write_back_now
from tests.redis_support import RedisServer

_WAIT = 20.0  # seconds: a bound on waits for another thread, never a timing


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # sleep-ok: polling with a deadline


def _kill(flag: str, by: str) -> PendingKillSwitch:
    """A pending kill switch of ``flag`` as ``kill_switch`` records it (id 0)."""
    at = time.time()
    change = FlagChange(flag, FlagState(True), FlagState(False), by, f"outage {by}", at)
    return PendingKillSwitch(0, (change,), {flag: FlagState(False)}, (), at, by, f"outage {by}")


def _put_row(path: Path, op_id: int, op: PendingKillSwitch) -> None:
    """Another process records ``op`` under ``op_id`` in the file (its own connection)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("INSERT INTO pending (id, op) VALUES (?, ?)", (op_id, op.to_json()))
    finally:
        db.close()


def _file_version(path: Path) -> int:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    finally:
        db.close()
    return int(value)


# ------------------------------------------------------------ pending-id clashes


def test_a_clashing_id_removes_only_the_kill_switch_it_was_given(
    pair: tuple[NodeCache, NodeCache], tmp_path: Path
) -> None:
    """A's memory copy and process B both record a kill switch under one id. The
    write-back renumbers A's; A's replay, which read it under the old id, then
    removed B's (never committed) instead. It removes its own, renumbered."""
    a, b = pair
    to_memory(a)
    mine_id = a.add_pending(pending_op("mine"))
    (mine,) = a.pending()  # the replay's read, before the write-back
    _put_row(tmp_path / "copy.sqlite3", mine_id, pending_op("theirs"))
    write_back_now(a)
    assert sorted(op.reason or "" for op in b.pending()) == ["mine", "theirs"]
    assert a.remove_pending(mine)
    assert [(op.id, op.reason) for op in b.pending()] == [(mine_id, "theirs")]
    assert not a.remove_pending(mine)  # gone: removing it again removes nothing


def test_a_stale_id_never_removes_another_kill_switch(
    pair: tuple[NodeCache, NodeCache], tmp_path: Path
) -> None:
    """Removal is by id AND content: an op read before another process replaced
    the row under its id (its own committed and dropped, a clashing one written
    back) leaves that row alone."""
    a, b = pair
    op_id = a.add_pending(pending_op("committed by b"))
    (read,) = a.pending()
    b.remove_pending(read)  # B commits it and drops it
    _put_row(tmp_path / "copy.sqlite3", op_id, pending_op("written back by c"))
    assert not a.remove_pending(read)
    assert [(op.id, op.reason) for op in b.pending()] == [(op_id, "written back by c")]


def test_the_write_back_drops_only_the_kill_switch_this_process_committed(
    pair: tuple[NodeCache, NodeCache], tmp_path: Path
) -> None:
    """A's copy moves to memory holding kill switch X; A commits it and drops it in
    memory. Meanwhile B committed X too and dropped it from the file, and C wrote
    back its own under the same id. A's write-back drops what A committed: by id
    only, that was C's kill switch, lost uncommitted."""
    a, b = pair
    op_id = a.add_pending(pending_op("x"))
    to_memory(a)
    (x,) = a.pending()
    a.remove_pending(x)  # committed by A's replay while in memory
    b.remove_pending(x)  # committed by B too
    _put_row(tmp_path / "copy.sqlite3", op_id, pending_op("c's, same id"))
    write_back_now(a)
    assert [(op.id, op.reason) for op in b.pending()] == [(op_id, "c's, same id")]


def test_a_replay_across_a_renumbering_write_back_commits_both_kill_switches(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The replay reads A's pending kill switch (copy in memory), commits it, and
    its refresh writes the copy back to the file, where process B holds another
    kill switch under the same id: A's is renumbered. The replay then dropped B's
    by the old id: B's kill switch (flag g) was never committed and g stayed on."""
    path = tmp_path / "copy.sqlite3"
    store = RedisFlagStore(redis_server.url, namespace="clash", cache_path=path)
    flags = FeatureFlags([Flag("f"), Flag("g")], store=store)
    try:
        flags.enable("f", by="ana")
        flags.enable("g", by="ana")
        cache = store._cache
        to_memory(cache)
        mine = cache.add_pending(_kill("f", "a"))
        _put_row(path, mine, _kill("g", "b"))  # process B, same id
        cache._retry_at = 0.0  # the replay's refresh writes the copy back
        store._replay_wanted.set()
        store._wake_listener()
        _wait_for(lambda: not store.pending(), "both kill switches committed")
        states = store.load_states()
        assert not cache.in_memory
        assert (states["f"].switch, states["g"].switch) == (False, False)
    finally:
        flags.close()
        store.close()


# ------------------------------------------------------------ refresh races


def _snapshot(version: int, state: str) -> Snapshot:
    return Snapshot(version, "e1", {"f": state}, {}, [(f"{version}-0", {"v": "x"})], [], True)


def test_an_older_snapshot_never_sets_the_copy_back(pair: tuple[NodeCache, NodeCache]) -> None:
    """A read Redis at version 5; B applied version 6 to the shared file; A's write
    of version 5 came after and set the copy back (until the next refresh)."""
    a, b = pair
    b.apply(_snapshot(6, "from b"))
    a.apply(_snapshot(5, "from a"))
    assert (a.version, a.states(), a.history()) == (6, {"f": "from b"}, [("6-0", {"v": "x"})])
    a.apply(_snapshot(6, "again"))  # the same version: applied (idempotent)
    a.apply(Snapshot(2, "e2", {"f": "new epoch"}, {}, [], [], full=True))  # another deployment
    assert (b.version, b.epoch, b.states()) == (2, "e2", {"f": "new epoch"})


class _HeldApply:
    """A hook on a ``NodeCache``'s ``apply``: the first call waits at ``reached``
    until ``go``, then applies and records the file's version right after (while
    the store still holds its copy lock: its next refresh has not run)."""

    def __init__(self, cache: NodeCache, path: Path) -> None:
        self.reached, self.go = threading.Event(), threading.Event()
        self.version_after: int | None = None
        self._apply, self._path, self._armed = cache.apply, path, True
        cache.apply = self  # type: ignore[method-assign]

    def __call__(self, snap: Snapshot) -> bool:
        if not self._armed:
            return self._apply(snap)
        self._armed = False
        self.reached.set()
        self.go.wait(_WAIT)
        applied = self._apply(snap)
        self.version_after = _file_version(self._path)
        return applied


def test_a_refresh_held_past_another_processes_newer_one_keeps_the_newer_version(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Store A's listener read Redis at version 1 and is held before writing its
    copy; meanwhile version 2 is committed and store B (same file) writes it to the
    copy. A's write of version 1 then set the shared copy back to 1."""
    url, path = redis_server.url, tmp_path / "copy.sqlite3"
    a = RedisFlagStore(url, namespace="race", cache_path=path)
    writer = RedisFlagStore(url, namespace="race", cache_path=None)
    flags = FeatureFlags([Flag("f")], store=writer)
    hook = _HeldApply(a._cache, path)
    b = None
    try:
        flags.enable("f", by="ana")  # version 1: A's listener refreshes its copy
        assert hook.reached.wait(_WAIT), "A's refresh never reached the copy"
        flags.allow("f", "someone", by="ana")  # version 2
        b = RedisFlagStore(url, namespace="race", cache_path=path)  # syncs version 2
        assert _file_version(path) == 2
        hook.go.set()
        _wait_for(lambda: hook.version_after is not None, "A's held refresh")
        assert hook.version_after == 2
    finally:
        hook.go.set()
        flags.close()
        for store in (writer, a, b):
            if store is not None:
                store.close()
