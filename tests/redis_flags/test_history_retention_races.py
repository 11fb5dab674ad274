"""History retention on Redis: two nodes whose commits make a trim due at once.

The interleaving is made exact with the ``foundation.redis.round_trip`` telemetry
event: it is emitted after a commit's EXEC returned and before the store
trims, so a listener holding node A's committing thread there lets node B
commit and trim first.
"""

from __future__ import annotations

import threading
from pathlib import Path

from foundation import telemetry
from foundation._redis_conn import ROUND_TRIP_EVENT
from foundation.flags import FlagChange, FlagState, RedisFlagStore, StoreTransaction
from foundation.flags._history import Replay, trim_slack
from foundation.flags._node_cache import NodeCache, Snapshot
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

LIMIT = 10


def _commit(store: RedisFlagStore, n: int) -> None:
    def fn(txn: StoreTransaction) -> None:
        old = txn.get("beta") or FlagState(False)
        new = FlagState(True, float(n % 100))
        txn.put("beta", new, FlagChange("beta", old, new, by=f"w{n}"))

    store.transaction(fn)


def test_two_nodes_due_at_once_keep_history_limit_records(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    """A's commit and B's commit both find the stream over the limit; B trims first,
    then A trims. A must count again: trimming by the length its own EXEC saw
    dropped another trim's worth, and the stream (so history()) fell below
    history_limit -- records the contract says are kept were lost."""
    a = open_store(redis_server.url, history_limit=LIMIT)
    b = open_store(redis_server.url, history_limit=LIMIT)
    for n in range(LIMIT + trim_slack(LIMIT)):  # at the threshold: the next commit trims
        _commit(a, n)
    stream = "{" + namespace + "}:flags:history"
    raw = raw_client(redis_server.url)
    assert raw.xlen(stream) == LIMIT + trim_slack(LIMIT)
    held, go = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def hold_after_exec(_name: str, data: object) -> None:
        assert isinstance(data, dict)
        if (
            threading.current_thread() is committer
            and data["doing"] == "committing a flag transaction"
            and data["ok"]
            and not held.is_set()
        ):
            held.set()  # A's EXEC is done (its XLEN says: trim); its trim has not begun
            go.wait(30)

    def commit_on_a() -> None:
        try:
            _commit(a, 100)
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    committer = threading.Thread(target=commit_on_a, name="node-a-commit")
    detach = telemetry.attach(ROUND_TRIP_EVENT, hold_after_exec)
    try:
        committer.start()
        assert held.wait(10), "A's commit reached Redis"
        _commit(b, 101)  # B's EXEC also finds it due, and B trims to the limit
        assert raw.xlen(stream) == LIMIT
    finally:
        go.set()
        committer.join(30)
        detach()
    assert not failures, failures
    assert raw.xlen(stream) >= LIMIT
    history = a.history()
    assert len(history) >= LIMIT
    assert [c.by for c in history][-2:] == ["w100", "w101"]
    assert history[-1].new == a.load_states()["beta"]
    raw.close()


def test_a_trim_after_the_last_commit_reaches_every_node_copy(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    """Node B mirrors A's commit into its copy before A trims (A is held right after
    its EXEC), and nothing is committed after: B's copy must still come to hold
    Redis' cut and base (its periodic check), not stay on the older cut until
    the next commit -- a restore from it would put back a stream Redis had
    trimmed, and B's copy would not be the suffix the docs promise."""
    a = open_store(redis_server.url, history_limit=LIMIT)
    b = open_store(redis_server.url, history_limit=None, resync_interval=0.2)
    for n in range(LIMIT + trim_slack(LIMIT)):
        _commit(a, n)
    held, go = threading.Event(), threading.Event()

    def hold_after_exec(_name: str, data: object) -> None:
        assert isinstance(data, dict)
        if (
            threading.current_thread() is committer
            and data["doing"] == "committing a flag transaction"
            and data["ok"]
            and not held.is_set()
        ):
            held.set()
            go.wait(30)

    committer = threading.Thread(target=_commit, args=(a, 50), name="node-a-commit")
    detach = telemetry.attach(ROUND_TRIP_EVENT, hold_after_exec)
    try:
        committer.start()
        assert held.wait(10), "A's commit reached Redis"
        # A's commit is the version Redis holds now (A is held, nobody else writes).
        # Not B's version + 1: B's listener may have mirrored it already (a loaded
        # machine wakes this thread late), and B would then wait for one more.
        raw = raw_client(redis_server.url)
        version = int(raw.hget("{" + namespace + "}:flags:meta", "version"))
        raw.close()
        assert wait_until(lambda: b.status().version >= version), "B mirrored the commit"
    finally:
        go.set()
        committer.join(30)
        detach()
    raw = raw_client(redis_server.url)
    meta = "{" + namespace + "}:flags:meta"
    trimmed = raw.hget(meta, "trimmed").decode()
    stream = [i.decode() for i, _ in raw.xrange("{" + namespace + "}:flags:history")]
    base = {
        k.decode(): v.decode() for k, v in raw.hgetall(meta.replace("meta", "history:base")).items()
    }
    raw.close()
    assert len(stream) == LIMIT

    def mirrored() -> bool:
        copy_base, copy_trimmed, entries = b._cache.history_with_base()
        return (copy_trimmed, [i for i, _ in entries], copy_base) == (trimmed, stream, base)

    assert wait_until(mirrored, timeout=10), b._cache.history_with_base()[:2]
    assert b.history() == a.history()


def test_a_shared_copy_file_never_takes_an_older_cut_back(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str, tmp_path: Path
) -> None:
    """Two processes share a copy file. Q reads Redis right after A's commit (A is held
    after its EXEC), before A's trim; A then trims and mirrors the new cut into the
    file; Q's refresh lands last. A trim changes no version, so the version check
    lets Q's older read through: its cut and base must not replace the file's newer
    ones (the file would pair the old base with entries from the new cut, and its
    history -- what a restore puts back -- would replay wrong)."""
    path = tmp_path / "shared.sqlite3"
    a = open_store(redis_server.url, history_limit=LIMIT, cache_path=path)
    for n in range(LIMIT + trim_slack(LIMIT)):  # each flag's first entry whole, then deltas
        _commit(a, n)
    raw = raw_client(redis_server.url)
    tag = "{" + namespace + "}"
    held, go = threading.Event(), threading.Event()

    def hold_after_exec(_name: str, data: object) -> None:
        assert isinstance(data, dict)
        if (
            threading.current_thread() is committer
            and data["doing"] == "committing a flag transaction"
            and data["ok"]
            and not held.is_set()
        ):
            held.set()
            go.wait(30)

    committer = threading.Thread(target=_commit, args=(a, 50), name="node-a-commit")
    detach = telemetry.attach(ROUND_TRIP_EVENT, hold_after_exec)
    try:
        committer.start()
        assert held.wait(10), "A's commit reached Redis"
        # Q's refresh reads Redis now: A's commit is in, A's trim is not.
        version, epoch, trimmed = (
            x and x.decode() for x in raw.hmget(f"{tag}:flags:meta", "version", "epoch", "trimmed")
        )
        assert trimmed is None
        states = {k.decode(): v.decode() for k, v in raw.hgetall(f"{tag}:flags:state").items()}
        last_id, last = raw.xrevrange(f"{tag}:flags:history", count=1)[0]
        entry = (last_id.decode(), {k.decode(): v.decode() for k, v in last.items()})
        q_read = Snapshot(
            int(version), epoch, states, {}, [entry], [], full=False, base={}, trimmed=trimmed
        )
    finally:
        go.set()
        committer.join(30)
        detach()
    cut = raw.hget(f"{tag}:flags:meta", "trimmed").decode()
    raw.close()
    q = NodeCache(path)  # process Q's handle on the shared file
    try:
        assert q.trimmed == cut  # A mirrored its trim
        q.apply(q_read)  # Q's refresh, last
        base, kept, entries = q.history_with_base()
    finally:
        q.close()
    assert kept == cut
    replay = Replay({name: FlagState.from_json(text) for name, text in base.items()})
    replayed = [replay.feed_json(fields["change"]) for _id, fields in entries]
    assert replayed == a.history()


def test_a_refresh_at_the_same_cut_does_not_read_the_base(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    """The base holds a state per flag ever trimmed: reading it on every refresh made
    each commit cost O(flags) on every node (2,000 flags in the base: 1.23x). At
    the cut a copy already holds, its base is the copy's: commits between trims
    read none (checked with MONITOR: every command the server ran)."""
    a = open_store(redis_server.url, history_limit=100)
    b = open_store(redis_server.url, history_limit=None, resync_interval=0.2)
    for n in range(111):  # one trim: a base, mirrored by both copies
        _commit(a, n)
    tag = "{" + namespace + "}"
    assert wait_until(lambda: b.status().version == a.status().version)
    assert wait_until(lambda: b._cache.trimmed == a._cache.trimmed is not None)
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()

    def watch() -> None:
        with raw_client(redis_server.url).monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                seen.append(command["command"])
                if "stop-watching" in command["command"]:
                    done.set()
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert ready.wait(10)
    for n in range(111, 116):  # no trim due: 105 entries at most
        _commit(a, n)
        assert wait_until(lambda: b.status().version == a.status().version)
    raw = raw_client(redis_server.url)
    raw.echo("stop-watching")
    assert done.wait(10)
    raw.close()
    commits = [c for c in seen if c.startswith("EXEC")]
    base_reads = [c for c in seen if f"{tag}:flags:history:base" in c]
    assert len(commits) >= 5
    assert base_reads == []
