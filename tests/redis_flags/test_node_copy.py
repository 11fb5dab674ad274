"""The node copy of RedisFlagStore: where it lives, what it holds (no faults here;
the outage scenarios are in test_outages.py, in subprocesses)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from foundation.errors import Closed
from foundation.flags import FlagState
from foundation.flags._node_cache import NodeCache, default_cache_path
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer


def test_the_default_copy_lives_in_foundation_cache_dir(
    redis_server: RedisServer,
    open_store: StoreFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOUNDATION_CACHE_DIR", str(tmp_path / "cache"))
    store = open_store(redis_server.url, cache_path=True)
    assert store.cache_path == default_cache_path(store.namespace, redis_server.url)
    assert store.cache_path is not None
    assert store.cache_path.parent == tmp_path / "cache"
    assert store.cache_path.exists()
    # The password never reaches the file name's input: only the redacted URL does.
    assert default_cache_path("ns", "redis://:a@h:1/0") == default_cache_path(
        "ns", "redis://:***@h:1/0"
    )


def test_a_copy_follows_every_commit_with_its_version(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, tmp_path: Path
) -> None:
    writer = open_flags(open_store(redis_server.url))
    reader_store = open_store(redis_server.url, cache_path=tmp_path / "reader.sqlite3")
    writer.enable("beta", by="ana")
    writer.set_percentage("gamma", 20, by="ana")
    assert wait_until(lambda: reader_store.status().version == 2)
    copy = NodeCache(tmp_path / "reader.sqlite3")
    try:
        assert FlagState.from_json(copy.states()["gamma"]) == FlagState(True, 20.0)
        assert [fields["v"] for _id, fields in copy.history()] == ["1", "2"]
    finally:
        copy.close()
    status = reader_store.status()
    assert status.connected
    assert not status.stale
    assert status.pending == 0
    assert status.last_error is None


def test_without_a_file_the_copy_in_memory_still_restores(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    store = open_store(redis_server.url, cache_path=None, resync_interval=0.2)
    assert store.cache_path is None
    flags = open_flags(store)
    flags.enable("beta", by="ana")
    raw = raw_client(redis_server.url)
    try:
        raw.delete(*(f"{{{store.namespace}}}:flags:{k}" for k in ("state", "history", "meta")))
        assert wait_until(lambda: raw.hget(f"{{{store.namespace}}}:flags:state", "beta"))
    finally:
        raw.close()
    assert [c.by for c in store.history()] == ["ana"]
    # The restore script writes the state before the listener counts the restore.
    assert wait_until(lambda: store.status().restores == 1)


def test_an_unreadable_copy_is_moved_aside_and_replaced(
    redis_server: RedisServer, open_store: StoreFactory, tmp_path: Path
) -> None:
    path = tmp_path / "broken.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = open_store(redis_server.url, cache_path=path)
    assert store.cache_path == path
    assert list(tmp_path.glob("broken.sqlite3.corrupt-*"))
    with contextlib.closing(sqlite3.connect(path)) as db:  # a real database again
        assert db.execute("SELECT count(*) FROM meta").fetchone()[0] >= 1
    assert store.load_states() == {}


def test_kill_switch_commits_at_once_while_redis_answers(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    store = open_store(redis_server.url)
    flags = open_flags(store)
    flags.enable("beta")
    flags.disable("beta", by="oncall", reason="incident")
    assert store.pending() == []
    assert store.load_states()["beta"] == FlagState(False)
    assert [c.by for c in store.history("beta")] == [None, "oncall"]


def test_a_closed_store_refuses_pending_and_status(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    store = open_store(redis_server.url)
    store.close()
    with pytest.raises(Closed, match="closed"):
        store.pending()
    with pytest.raises(Closed, match="closed"):
        store.status()
