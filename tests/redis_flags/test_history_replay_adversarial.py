"""Adversarial checks of the Redis history replay (records are deltas, see ``_history``).

A delta is only right on the base it was written against, so every path that
moves history between Redis and a node copy must keep each flag's chain whole:
a copy refreshed after Redis came back from an older snapshot, a restore from
that copy, a read racing a FLUSHALL and a restore, typed flags and migrations,
two nodes writing at once, a subscriber joining mid-stream.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    FlagState,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    Stage,
)
from tests.flags.test_history_replay_adversarial import _drive
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

FLAGS = (Flag("beta"), Flag("color", default="red", variants={"red": 1, "blue": 2}))
KEYS = ("meta", "state", "stages", "history", "migrations")


def _keys(namespace: str) -> list[str]:
    return [f"{{{namespace}}}:flags:{k}" for k in KEYS]


def _chain_holds(history: list[FlagChange]) -> None:
    """Each change of a flag starts where the previous one ended (no clear in between)."""
    last: dict[str, FlagState] = {}
    for change in history:
        if change.flag in last:
            assert change.old == last[change.flag], change
        last[change.flag] = change.new


def _snapshot_keys(raw: Any, namespace: str) -> dict[str, bytes | None]:
    return {k: raw.dump(k) for k in _keys(namespace)}


def _restore_keys(raw: Any, dumps: dict[str, bytes | None]) -> None:
    """Put the keys back as dumped: Redis restarting from an older RDB file."""
    for key, blob in dumps.items():
        raw.delete(key)
        if blob is not None:
            raw.restore(key, 0, blob)


def test_a_copy_refreshed_after_redis_went_back_keeps_redis_history_whole(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str, tmp_path: Path
) -> None:
    """Redis restarts from an older RDB (same epoch), a fresh node commits new
    versions past the copy's, then the node with the copy refreshes it: the copy
    must take Redis' history, not append it after its own (lost) entries."""
    raw = raw_client(redis_server.url)
    copy = tmp_path / "a.sqlite3"
    a = open_store(redis_server.url, cache_path=copy)
    with FeatureFlags(FLAGS, store=a) as flags_a:
        flags_a.allow("beta", "u1")
        flags_a.allow("beta", "u2")
        old_rdb = _snapshot_keys(raw, namespace)  # version 2
        flags_a.allow("beta", "u3")
        flags_a.deny("beta", "u4")  # version 4: the copy's
    a.close()
    _restore_keys(raw, old_rdb)
    b = open_store(redis_server.url, cache_path=None)
    with FeatureFlags(FLAGS, store=b) as flags_b:
        for i in range(3):  # versions 3', 4', 5': past the copy's 4
            flags_b.allow("beta", f"v{i}")
    truth = b.history("beta")
    b.close()  # only a2's copy is left to restore from
    a2 = open_store(redis_server.url, cache_path=copy)  # refreshes the copy
    assert a2.status().version == 5
    raw.flushall()  # Redis restarts empty: a2 restores it from its copy
    assert wait_until(lambda: a2.status().restores == 1 and a2.synced)
    restored = a2.history("beta")
    _chain_holds(restored)
    assert restored == truth
    assert restored[-1].new == a2.load_states()["beta"]
    raw.close()


def test_a_read_never_mixes_a_flushall_and_a_restore_at_the_same_version(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str, tmp_path: Path
) -> None:
    """``_consistent_read``: meta before and after equal must mean one state. A
    FLUSHALL then a restore to the same version and epoch (another node's copy)
    between the two meta reads must not pass an empty read off as that version."""
    raw = raw_client(redis_server.url)
    other_copy = tmp_path / "other.sqlite3"
    other = open_store(redis_server.url, cache_path=other_copy)
    with FeatureFlags(FLAGS, store=other) as flags:
        flags.enable("beta")
    other.close()
    reader = open_store(redis_server.url, cache_path=None, timeout=15)
    gates = [f"gate-{namespace}-{i}" for i in (1, 2)]

    def blocked() -> bool:
        return any(c.get("cmd") == "blpop" for c in raw.client_list())

    def interfere() -> None:
        assert wait_until(blocked)  # the read sits between its first meta read and its data read
        raw.flushall()
        raw.lpush(gates[0], *["go"] * 3)  # one per attempt of the read
        assert wait_until(blocked)  # ... and now after its data read
        restorer = RedisFlagStore(redis_server.url, namespace=namespace, cache_path=other_copy)
        restorer.close()  # Redis restored from its copy: same version, same epoch
        raw.lpush(gates[1], *["go"] * 3)

    def queue(pipe: Any) -> None:
        pipe.blpop([gates[0]], 10)
        pipe.hgetall(f"{{{namespace}}}:flags:state")
        pipe.blpop([gates[1]], 10)

    thread = threading.Thread(target=interfere)
    thread.start()
    try:
        _version, _epoch, result = reader._consistent_read("reading", queue)
    finally:
        thread.join()
    assert result[1] == {"beta": FlagState(True).to_json()}  # not the flushed, empty hash
    raw.close()


def test_typed_flags_and_migrations_replay_on_every_node(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    """assign/set_split and migration steps through txn.put: history() on the
    writer, on a reader and from the copy alone, and the reader's feed, agree."""
    writer, reader = open_store(redis_server.url), open_store(redis_server.url)
    got: list[FlagChange] = []
    done = threading.Event()

    def listen(changes: list[FlagChange]) -> None:
        got.extend(changes)
        if changes and changes[-1].reason == "last":
            done.set()

    reader.subscribe(listen)
    plan = MigrationPlan([Stage(1, "one", ["beta"])])
    with FeatureFlags(FLAGS, store=writer) as flags:
        migration = Migration(flags, plan)
        flags.assign("color", "u1", "blue")
        flags.set_split("color", {"red": 70, "blue": 30})
        flags.assign("color", "u2", "red")
        migration.advance(by="ops")
        flags.allow("beta", "x")
        migration.rollback_to(0, by="ops")
        flags.clear("color")
        flags.assign("color", "u3", "blue", reason="last")
    assert done.wait(10)
    truth = writer.history()
    _chain_holds([c for c in truth if c.flag == "beta"])
    assert reader.history() == truth
    assert [c for c in got if c.flag in ("beta", "color")] == truth
    assert reader.history("color") == [c for c in truth if c.flag == "color"]


def test_pending_kill_switches_replay_into_one_chain_after_an_outage(
    fresh_redis: RedisServer, open_store: StoreFactory
) -> None:
    """Kill switches on a typed and a boolean flag during an outage: the local view
    keeps everything but the switch (``disable``: "nothing else changes"), and once
    Redis is back (empty, restored from a copy) the commits extend each flag's
    chain, read alike on both nodes and through the other node's listener."""
    writer = open_store(fresh_redis.url, resync_interval=0.2)
    other = open_store(fresh_redis.url, resync_interval=0.2)
    calls: list[list[FlagChange]] = []  # one per callback; [] tells it to reload
    view: dict[str, FlagState] = {}  # what a subscriber of `other` serves

    def listen(changes: list[FlagChange]) -> None:
        calls.append(list(changes))
        if not changes:
            view.clear()
            view.update(other.load_states())
        view.update((c.flag, c.new) for c in changes)

    other.subscribe(listen)
    with FeatureFlags(FLAGS, store=writer) as flags:
        flags.assign("color", "u1", "blue")
        flags.set_split("color", {"red": 40, "blue": 60})
        flags.allow("beta", "u2")
        flags.enable("beta")
        assert wait_until(lambda: other.status().version == writer.status().version == 4)
        before = writer.load_states()
        assert wait_until(lambda: view == before), (view, before)
        fresh_redis.kill()
        assert wait_until(lambda: writer.status().stale)
        flags.disable("color", by="ops", reason="outage")
        flags.disable("beta", by="ops", reason="outage")
        local = writer.load_states()
        for name in ("color", "beta"):
            assert local[name] == _replace_switch(before[name]), name
        fresh_redis.start()
        assert wait_until(lambda: writer.synced and not writer.pending(), timeout=20)
        assert wait_until(lambda: other.status().version == writer.status().version)
    history = writer.history()
    assert other.history() == history
    for name in ("color", "beta"):
        chain = [c for c in history if c.flag == name]
        _chain_holds(chain)
        assert chain[-1].reason == "outage"
        assert chain[-1].new == local[name] == writer.load_states()[name]
    # The other node's listener hears the changes before the outage, then the
    # outage commits, or a reload ([]: it lost Redis) and those after it: a
    # subscriber following it serves the writer's states.
    assert wait_until(lambda: view == local), (view, local, calls)
    heard = [c for call in calls for c in call]
    assert heard[:4] == history[:4]
    assert all(c in history for c in heard)  # whole, never a half-rebuilt state


def _replace_switch(state: FlagState) -> FlagState:
    return FlagState(False, state.percentage, state.allow, state.deny, state.assign, state.split)


def test_random_transactions_replay_alike_everywhere(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    """Random transactions (several puts of one flag, clears, a runtime state other
    than the change's new, typed fields): the changes put are what history() gives
    on the writer, on another node, from a copy alone, and what the other node's
    listener hears, whole and in order."""
    writer, reader = open_store(redis_server.url), open_store(redis_server.url)
    heard: list[FlagChange] = []
    reader.subscribe(heard.extend)
    model = _drive(writer, 5, 60)
    assert wait_until(lambda: len(heard) >= len(model))
    assert heard == model
    assert writer.history() == reader.history() == model
    copy_only = open_store("redis://127.0.0.1:1/0", cache_path=reader.cache_path, timeout=0.5)
    assert copy_only.stale
    assert copy_only.history() == model


def test_a_subscriber_joining_mid_stream_hears_later_changes_whole(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    """The other node's listener replays every entry, subscribed or not: a
    subscriber joining after 300 entries (more than one XREAD batch) hears the
    next changes with their whole states."""
    writer, reader = open_store(redis_server.url), open_store(redis_server.url)
    before = _drive(writer, 11, 300)
    assert wait_until(lambda: reader.status().version == writer.status().version)
    heard: list[FlagChange] = []
    reader.subscribe(heard.extend)
    after = _drive(writer, 12, 40)
    assert wait_until(lambda: len(heard) >= len(after))
    assert heard == after
    assert reader.history() == before + after
