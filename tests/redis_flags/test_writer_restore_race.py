"""The WRITING node never serves a change its node copy does not hold (restore race).

The writer commits (``MULTI``/``EXEC``), then mirrors the commit into its copy.
If Redis restarts empty in between, and no other node's copy has the change,
the writer used to return (``FeatureFlags`` then serves the new value), restore
Redis from its OLDER copy and reload: the flag it had served reverted, and the
acknowledged write was lost everywhere. Here that interleaving is forced: a
subclass empties the namespace exactly between ``EXEC`` and the copy refresh,
holding the copy lock from before ``EXEC`` so the listener cannot refresh the
copy first (it wakes on the commit's own stream entry).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from foundation.errors import BackendUnavailable
from foundation.flags import FeatureFlags, FlagChange, FlagState, RedisFlagStore
from foundation.flags._store import StoreTransaction
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import FLAGS, StoreFactory
from tests.redis_support import RedisServer


class _EmptiedAfterExec(RedisFlagStore):
    """Empties its namespace in Redis right after its next commit's EXEC, once."""

    def arm(self, url: str) -> None:
        self._raw = raw_client(url)
        self._armed = threading.Event()
        self.emptied = threading.Event()
        self._armed.set()

    def _queue_writes(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_armed", None) is not None and self._armed.is_set():
            # Before EXEC: keep the listener from refreshing the copy in between.
            self._copy_lock.acquire()
        return super()._queue_writes(*args, **kwargs)

    def _confirm_in_copy(self, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_armed", None) is not None and self._armed.is_set():
            self._armed.clear()
            try:
                keys = [f"{{{self.namespace}}}:flags:{k}" for k in ("meta", "state", "history")]
                self._raw.delete(*keys, f"{{{self.namespace}}}:flags:stages")
                self.emptied.set()
            finally:
                self._copy_lock.release()
        return super()._confirm_in_copy(*args, **kwargs)


def test_a_restore_never_takes_back_what_the_writer_already_served(
    redis_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    store = _EmptiedAfterExec(
        redis_server.url,
        namespace=namespace,
        cache_path=tmp_path / "writer.sqlite3",
        resync_interval=0.2,
    )
    flags: FeatureFlags | None = None
    try:
        flags = FeatureFlags(FLAGS, store=store)
        flags.enable("beta", by="ana")
        assert store.status().version == 1  # the writer's copy: beta on
        seen: list[FlagChange] = []
        flags.subscribe(seen.append)
        # Subscribed after ``flags``: a reload ([]) reaches this once ``flags`` reloaded.
        reloads: list[list[FlagChange]] = []
        store.subscribe(lambda changes: reloads.append(changes) if not changes else None)
        store.arm(redis_server.url)

        flags.enable("gamma", by="ana")  # Redis "restarts empty" right after EXEC
        assert store.emptied.is_set()
        # The write returned: the writer serves gamma on from here on.
        assert flags.enabled("gamma")
        # The writer is the only node: it restores Redis from its copy.
        assert wait_until(lambda: store.status().restores == 1 and store.synced)
        assert wait_until(lambda: bool(reloads))  # and ``flags`` reloaded after it

        # Nothing took gamma back: not the restore, not the reload after it.
        assert flags.enabled("gamma")
        assert [c for c in seen if not c.new.switch] == []
        assert store.status().version == 2
        assert store.load_states()["gamma"] == FlagState(True)
        assert [c.flag for c in store.history()] == ["beta", "gamma"]
        raw = raw_client(redis_server.url)
        try:
            assert raw.hget(f"{{{namespace}}}:flags:meta", "version") == b"2"
        finally:
            raw.close()
    finally:
        if flags is not None:
            flags.close()
        store.close()
        if getattr(store, "_raw", None) is not None:
            store._raw.close()


def _put(flag: str, on: bool) -> Callable[[StoreTransaction], None]:
    def body(txn: StoreTransaction) -> None:
        txn.put(flag, FlagState(on), FlagChange(flag, FlagState(not on), FlagState(on), "ana"))

    return body


def test_a_commit_the_copy_cannot_take_is_not_acknowledged(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str, tmp_path: Path
) -> None:
    """The copy lagged Redis (another node's commit not pulled yet) when Redis
    restarted empty after EXEC: the write cannot be put in the copy, so it
    raises (outcome unknown, like a lost EXEC reply) and is never served."""
    store = _EmptiedAfterExec(
        redis_server.url,
        namespace=namespace,
        cache_path=tmp_path / "writer.sqlite3",
        resync_interval=0.2,
    )
    other = open_store(redis_server.url, cache_path=None, resync_interval=0.2)
    try:
        store.transaction(_put("beta", True))
        # Neither listener can refresh its copy while this thread holds the
        # locks (the stores' own calls, on this thread, re-enter them): the
        # writer's copy lags, and the other copy never sees version 3. No
        # FeatureFlags on the writer: its reload would wait for the lock too.
        with store._copy_lock, other._copy_lock:
            other.transaction(_put("beta", False))  # version 2: not in the writer's copy
            store.arm(redis_server.url)
            assert store.status().version == 1
            with pytest.raises(BackendUnavailable, match="right after a flag commit"):
                store.transaction(_put("gamma", True))
            assert store.emptied.is_set()
            assert store.status().version == 1  # the copy never took version 3
            assert "gamma" not in store.load_states()  # never served
        # The other node holds the newest copy (version 2): Redis ends up there.
        raw = raw_client(redis_server.url)
        try:
            meta = f"{{{namespace}}}:flags:meta"
            assert wait_until(lambda: raw.hget(meta, "version") == b"2")
        finally:
            raw.close()
        assert wait_until(lambda: store.synced and store.status().version == 2)
        assert "gamma" not in store.load_states()
        assert store.load_states()["beta"] == FlagState(False)
    finally:
        store.close()
        if getattr(store, "_raw", None) is not None:
            store._raw.close()
