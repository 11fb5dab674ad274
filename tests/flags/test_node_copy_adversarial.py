"""Adversarial tests of the node copy's fall-back to memory and its write-back.

Two ``NodeCache`` objects on one real file stand for two processes sharing it
(one test uses real processes). The fall-back is entered through
``NodeCache._fall_back`` with the error a failing disk gives, the state a real
fault reaches (the real faults are in tests/faults/test_sqlite_faults.py); the
retry is made due by setting ``_retry_at`` (what ``RETRY_FILE_AFTER`` elapsing does).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from foundation.flags import FeatureFlags, Flag, FlagState, RedisFlagStore
from foundation.flags._node_cache import NodeCache, PendingKillSwitch, Snapshot, _transaction
from tests._frames import thread_frame
from tests.flags._node_copy import pending_op, to_memory, write_back_now
from tests.redis_support import RedisServer


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # sleep-ok: polling with a deadline


def test_a_kill_switch_committed_while_in_memory_is_not_resurrected(
    pair: tuple[NodeCache, NodeCache],
) -> None:
    """The replay commits a pending kill switch and drops it from the memory copy;
    the write-back must drop it from the file too. Otherwise every process sharing
    the file keeps overlaying it (load_states applies pending ops even while
    connected): the flag reads off after anyone re-enables it, until some later
    replay, which nothing triggers."""
    a, b = pair
    a.add_pending(pending_op("recorded in the file"))
    to_memory(a)
    (op,) = a.pending()
    a.remove_pending(op)  # committed by the replay while the copy is in memory
    write_back_now(a)
    assert b.pending() == []
    assert a.pending() == []


def test_a_kill_switch_another_process_committed_comes_back_and_is_dropped(
    tmp_path: Path,
) -> None:
    """A kill switch of process B pending in the shared file; A's copy moves to memory
    (with it); B commits it and drops it from the file; the flag is re-enabled (a
    newer decision). A's write-back puts it back (the union: nothing of another
    process is ever lost), so A must replay at once and drop it as superseded.
    Before, it stayed pending and A served the flag OFF until its next resync."""
    path = tmp_path / "copy.sqlite3"
    with RedisServer() as server:
        store = RedisFlagStore(server.url, namespace="adv", cache_path=path)
        flags = FeatureFlags([Flag("f")], store=store)
        b = NodeCache(path)  # process B's copy
        try:
            flags.enable("f", by="ana")
            op = PendingKillSwitch(
                0, (), {"f": FlagState(False)}, (), time.time() - 60, "b", "outage"
            )
            b.add_pending(op)
            (op,) = b.pending()
            to_memory(store._cache)
            flags.disable("f", by="b")  # B commits its kill switch...
            b.remove_pending(op)  # ... and drops it from the file
            flags.enable("f", by="ana")  # a newer decision
            store._cache._retry_at = 0.0  # the retry is due: A's next write writes back
            flags.allow("f", "someone", by="ana")
            assert not store._cache.in_memory
            _wait_for(lambda: not store.pending(), "the resurrected kill switch dropped")
            assert store.load_states()["f"].switch
            assert b.pending() == []
        finally:
            b.close()
            flags.close()
            store.close()


def test_a_replaced_file_gets_every_pending_kill_switch_of_the_memory_copy(
    tmp_path: Path,
) -> None:
    """The file deleted (a new, empty one at the path): the absence of our pending
    ops there says nothing about their being committed; all are written back."""
    path = tmp_path / "copy.sqlite3"
    a = NodeCache(path)
    try:
        first = a.add_pending(pending_op("first"))
        to_memory(a)
        second = a.add_pending(pending_op("second"))
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        write_back_now(a)
        b = NodeCache(path)
        try:
            assert [o.id for o in b.pending()] == [first, second]
        finally:
            b.close()
    finally:
        a.close()


def test_an_unreadable_copy_does_not_wipe_the_files_newer_mirror(
    pair: tuple[NodeCache, NodeCache],
) -> None:
    """The file unreadable at the fall-back (the copy starts empty: no version, no
    epoch) and readable again at the retry: the empty memory copy must not replace
    the file's mirror (the deployment's states and whole history, which restore
    Redis). White-box: the file's connection is closed before ``_fall_back`` so that
    its read fails, as an I/O error on read does."""
    a, b = pair
    a.apply(Snapshot(5, "e1", {"f": "on"}, {}, [("1-0", {"v": "1"})], [], full=True))
    with a._lock:
        a._db.close()
        assert a._fall_back(sqlite3.OperationalError("disk I/O error"))
    assert a.version == 0
    write_back_now(a)
    assert (b.version, b.epoch, b.states()) == (5, "e1", {"f": "on"})
    assert b.history() == [("1-0", {"v": "1"})]


def test_the_copy_back_in_its_file_waits_for_another_processes_lock(
    pair: tuple[NodeCache, NodeCache], tmp_path: Path
) -> None:
    """After the write-back the copy used its retry connection, which has no busy
    timeout: any write of another process sharing the file then made it fall back
    to memory again (a WARNING, not durable) instead of waiting its 5 s."""
    a, _b = pair
    to_memory(a)
    write_back_now(a)
    holder = sqlite3.connect(tmp_path / "copy.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing
    done = threading.Event()
    writer = threading.Thread(
        target=lambda: (a.add_pending(pending_op("while locked")), done.set()), daemon=True
    )
    writer.start()

    def waiting_for_the_lock() -> bool:
        # Its innermost Python frame is _transaction: in BEGIN IMMEDIATE (SQLite's
        # busy wait), the only one of its calls the holder can keep waiting.
        frame = thread_frame(writer.ident)
        return frame is not None and frame.f_code is _transaction.__code__

    # Within the 5 s busy timeout, so the wait itself is what is seen.
    _wait_for(waiting_for_the_lock, "the write to wait for the other process's lock", 4.0)
    assert not done.is_set()
    assert not a.in_memory
    holder.execute("COMMIT")
    holder.close()
    writer.join(10.0)
    assert done.is_set()
    assert not a.in_memory


_PROCESS = """
import sqlite3, sys, time
from pathlib import Path
from foundation.flags._node_cache import NodeCache, PendingKillSwitch
path, name, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
cache = NodeCache(path)
with cache._lock:
    assert cache._fall_back(sqlite3.OperationalError("disk I/O error"))
for i in range(20):
    cache.add_pending(PendingKillSwitch(0, (), {}, (), 1.0, name, f"{name}-{i}"))
print("ready", flush=True)
sys.stdin.readline()  # both processes write back at once
deadline = time.monotonic() + 30
while cache.in_memory:  # the other one may hold the file: retried (not waited for)
    assert time.monotonic() < deadline
    cache._retry_at = 0.0
    cache.set_catalogue({})
cache.close()
print("done", flush=True)
"""


def test_two_processes_writing_back_at_once_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    """Real processes, each with pending kill switches in its memory copy, write back
    at once: every one is in the file once (a retry finding the file locked is the
    next retry's, as RETRY_FILE_AFTER elapsing)."""
    path = tmp_path / "copy.sqlite3"
    NodeCache(path).close()
    script = textwrap.dedent(_PROCESS)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(path), name, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("p", "q")
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
            assert out.strip() == "done", out
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    cache = NodeCache(path)
    try:
        reasons = sorted(op.reason or "" for op in cache.pending())
    finally:
        cache.close()
    assert reasons == sorted(f"{n}-{i}" for n in ("p", "q") for i in range(20))


def test_closing_a_copy_in_memory_writes_it_back_if_the_file_works_again(tmp_path: Path) -> None:
    """A kill switch recorded while the copy was in memory (the file failed: locked
    beyond 5 s by another process, say) was lost when the process stopped before the
    next retry, though the file could be written again by then. ``close`` now tries
    the file once more."""
    path = tmp_path / "copy.sqlite3"
    a = NodeCache(path)
    to_memory(a)
    op_id = a.add_pending(pending_op("recorded in memory"))
    a.close()
    b = NodeCache(path)
    try:
        assert [op.id for op in b.pending()] == [op_id]
    finally:
        b.close()


def test_a_deleted_cache_directory_is_made_again_for_the_write_back(tmp_path: Path) -> None:
    """A cleaner (systemd-tmpfiles, ``rm -rf ~/.cache/...``) deletes the copy's
    directory: the copy moved into memory and stayed there for good (every retry
    failed to create the file), its pending kill switches lost at exit. The
    directory is made again, as at start."""
    directory = tmp_path / "cache"
    path = directory / "copy.sqlite3"
    a = NodeCache(path)
    try:
        op_id = a.add_pending(pending_op("recorded in the file"))
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
        a.set_catalogue({})  # a write notices the file gone and writes the copy back
        assert not a.in_memory
        b = NodeCache(path)
        try:
            assert [op.id for op in b.pending()] == [op_id]
        finally:
            b.close()
    finally:
        a.close()
