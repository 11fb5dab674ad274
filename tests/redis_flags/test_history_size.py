"""The Redis history stream (also the change feed) and the node copy hold changes, not states.

Each stream entry's ``change`` used to be the whole ``FlagChange`` (two whole
states), so n ``allow()`` calls on one flag put O(n^2) actors in the stream and
in every node's copy. Entries are now deltas (``foundation.flags._history``);
``history()`` and every node's listeners still get whole states. Sizes are
compared as growth per entry at 3x the pins, never as absolute numbers.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import uuid
from pathlib import Path
from threading import current_thread

from foundation import telemetry
from foundation.flags import FeatureFlags, Flag, FlagChange, FlagState, RedisFlagStore
from tests.flags._support import check_concurrent_pins_chain
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

PINS = (300, 900)
GROWTH_BOUND = 1.5  # bytes per entry at 900 pins / at 300 pins (was ~3: quadratic)


def _pin(flags: FeatureFlags, n: int, flag: str = "beta") -> None:
    for i in range(n):
        flags.allow(flag, f"user{i}")


def _copy_history_bytes(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("SELECT sum(length(fields)) FROM history").fetchone()[0])
    finally:
        db.close()


def _bytes_per_entry(url: str, tmp_path: Path, n: int) -> tuple[float, float]:
    """(Redis MEMORY USAGE of the stream, node copy history bytes) per entry after n pins."""
    namespace = f"size-{n}-{uuid.uuid4().hex[:8]}"
    copy = tmp_path / f"copy-{n}.sqlite3"
    with (
        RedisFlagStore(url, namespace=namespace, cache_path=copy) as store,
        FeatureFlags([Flag("beta")], store=store) as flags,
    ):
        _pin(flags, n)
        assert len(flags.history("beta")) == n
    usage = raw_client(url).memory_usage("{" + namespace + "}:flags:history", samples=0)
    return usage / n, _copy_history_bytes(copy) / n


def test_the_history_stream_and_the_node_copy_grow_linearly_with_pins(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    (stream_small, copy_small), (stream_large, copy_large) = (
        _bytes_per_entry(redis_server.url, tmp_path, n) for n in PINS
    )
    assert stream_large / stream_small < GROWTH_BOUND, (stream_small, stream_large)
    assert copy_large / copy_small < GROWTH_BOUND, (copy_small, copy_large)


def _exercise(flags: FeatureFlags) -> None:
    _pin(flags, 30)
    flags.deny("beta", "user1")
    flags.set_percentage("beta", 40)
    flags.clear("beta")
    flags.allow("beta", "after-clear")
    flags.disable("gamma")
    flags.reset_all()
    flags.allow("gamma", "last")


def test_another_node_hears_whole_changes_and_reads_the_same_history(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    a = FeatureFlags([Flag("beta"), Flag("gamma")], store=open_store(redis_server.url))
    b = FeatureFlags([Flag("beta"), Flag("gamma")], store=open_store(redis_server.url))
    try:
        a.allow("beta", "first")  # b's listener starts from a state holding a pin
        assert wait_until(lambda: "first" in b.state("beta").allow)
        heard: list[FlagChange] = []
        b.subscribe(heard.append)
        _exercise(a)
        expected = a.history()[1:]
        assert wait_until(lambda: len(heard) >= len(expected))
        assert heard == expected
        assert b.history() == a.history()
        assert heard[29].new.allow == {"first", *(f"user{i}" for i in range(30))}
    finally:
        a.close()
        b.close()


def test_a_stream_written_in_the_whole_format_still_reads_and_extends(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    """A rolling upgrade: entries and state as the previous version wrote them first."""
    client = raw_client(redis_server.url)
    tag = "{" + namespace + "}"
    one, two = FlagState(True, allow=frozenset({"a"})), FlagState(True, allow=frozenset({"a", "b"}))
    old = [
        FlagChange("beta", FlagState(False), one, "old", None, 1.0),
        FlagChange("beta", one, two, "old", None, 2.0),
    ]
    for version, change in enumerate(old, start=1):
        client.xadd(
            f"{tag}:flags:history",
            {"change": change.to_json(), "origin": "old", "txn": str(version), "i": "0",
             "n": "1", "v": str(version)},
        )  # fmt: skip
    client.hset(f"{tag}:flags:state", "beta", two.to_json())
    client.hset(f"{tag}:flags:meta", mapping={"version": "2", "epoch": "e"})
    declared = [Flag("beta"), Flag("gamma")]
    with (
        FeatureFlags(declared, store=open_store(redis_server.url)) as writer,
        FeatureFlags(declared, store=open_store(redis_server.url)) as reader,
    ):
        heard: list[FlagChange] = []
        reader.subscribe(heard.append)
        writer.allow("beta", "c")
        writer.clear("beta")
        writer.allow("beta", "d")
        writer.allow("beta", "e")
        history = reader.history()
        assert history[:2] == old
        assert [(c.old, c.new) for c in history[2:]] == [
            (two, FlagState(True, allow=frozenset({"a", "b", "c"}))),
            (FlagState(True, allow=frozenset({"a", "b", "c"})), FlagState(False)),
            (FlagState(False), FlagState(False, allow=frozenset({"d"}))),
            (
                FlagState(False, allow=frozenset({"d"})),
                FlagState(False, allow=frozenset({"d", "e"})),
            ),
        ]
        assert wait_until(lambda: len(heard) >= 4)
        assert heard == history[2:]
    entry = client.xrevrange(f"{tag}:flags:history", count=1)[0][1]
    record = json.loads(entry[b"change"])
    assert record["nd"] == {"a+": ["e"]}
    assert "old" not in record


def test_history_survives_a_restore_from_the_node_copy_and_the_chain_goes_on(
    fresh_redis: RedisServer, open_store: StoreFactory
) -> None:
    declared = [Flag("beta"), Flag("gamma")]
    store_a = open_store(fresh_redis.url, timeout=1.0, resync_interval=0.2)
    store_b = open_store(fresh_redis.url, timeout=1.0, resync_interval=0.2)
    with FeatureFlags(declared, store=store_a) as a, FeatureFlags(declared, store=store_b) as b:
        _pin(a, 20)
        before = a.history()
        assert wait_until(lambda: b.history() == before)
        # B's "in_sync" (told on its listener thread after its resync's reload): a
        # resync sets `synced` before that reload, which could then tell the change
        # below as a "reload" (a load flake): each of B's resyncs waited for whole.
        told_b: list[int] = []
        detach = telemetry.attach(
            "foundation.flags.in_sync",
            lambda name, data: told_b.append(1) if current_thread() is store_b._thread else None,
        )
        try:
            resyncs_b = store_b.status().resyncs
            raw_client(fresh_redis.url).flushall()  # Redis lost everything
            assert wait_until(lambda: store_a.status().restores + store_b.status().restores == 1)
            assert wait_until(lambda: store_a.synced and store_b.synced)
            assert wait_until(lambda: len(told_b) == store_b.status().resyncs - resyncs_b)
        finally:
            detach()
        assert a.history() == before
        heard: list[FlagChange] = []
        b.subscribe(heard.append)
        a.allow("beta", "after")
        assert wait_until(lambda: any(c.new.allow >= {"after"} for c in heard))
        change = next(c for c in heard if "after" in c.new.allow)
        assert change.old.allow == {f"user{i}" for i in range(20)}
        assert b.history() == [*before, change]


def _reloaded_since(batches: list[list[FlagChange]], mark: int) -> bool:
    return [] in batches[mark:]


def _resynced_since(store: RedisFlagStore, resyncs: int) -> bool:
    return store.status().resyncs > resyncs


def _heard_allow(batches: list[list[FlagChange]], actor: str) -> FlagChange | None:
    return next((c for b in batches for c in b if actor in c.new.allow), None)


def test_an_entry_the_listener_cannot_replay_makes_it_reload_and_resync(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    """An entry older than the last replayed (a stream that went back), or a malformed
    delta: subscribers are told to reload, and later changes arrive whole again."""
    stream = "{" + namespace + "}:flags:history"
    client = raw_client(redis_server.url)
    writer_store, reader_store = open_store(redis_server.url), open_store(redis_server.url)
    with FeatureFlags([Flag("beta")], store=writer_store) as writer:
        batches: list[list[FlagChange]] = []
        reader_store.subscribe(batches.append)
        for actor in ("a", "b", "c"):  # versions 1..3
            writer.allow("beta", actor)
        assert wait_until(lambda: _heard_allow(batches, "c") is not None)
        older = FlagChange("beta", FlagState(False), FlagState(True), None, None, 1.0)
        malformed = {"fmt": 2, "flag": "beta", "by": None, "reason": None, "at": 1.0}
        malformed["nd"] = {"a+": "z"}
        for version, record in (("2", older.to_dict()), ("99", malformed)):
            resyncs, mark = reader_store.status().resyncs, len(batches)
            client.xadd(
                stream,
                {"change": json.dumps(record), "origin": "x", "txn": "x", "i": "0", "n": "1",
                 "v": version},
            )  # fmt: skip
            assert wait_until(functools.partial(_reloaded_since, batches, mark))
            assert wait_until(functools.partial(_resynced_since, reader_store, resyncs))
        writer.allow("beta", "d")
        assert wait_until(lambda: _heard_allow(batches, "d") is not None)
        change = _heard_allow(batches, "d")
        assert change is not None
        assert change.old.allow == {"a", "b", "c"}
        assert change.new.allow == {"a", "b", "c", "d"}


def test_concurrent_writers_on_two_nodes_leave_one_replayable_chain(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    declared = [Flag("beta")]
    stores = [open_store(redis_server.url) for _ in range(3)]
    heard: list[FlagChange] = []
    with (
        FeatureFlags(declared, store=stores[0]) as one,
        FeatureFlags(declared, store=stores[1]) as two,
        FeatureFlags(declared, store=stores[2]) as watcher,
    ):
        watcher.subscribe(heard.append)
        check_concurrent_pins_chain(one, two, watcher, heard)
