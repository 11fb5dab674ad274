"""Migration history retention on Redis: the migrations stream, ``mtrimmed``, node copies.

The migrations stream keeps the last ``history_limit`` events of all plans; meta's
``mtrimmed`` is the first id kept; every node copy holds the same events from
the same cut (what a restore puts back). The stage lives in the stages hash.

The outage scenario runs in a plain interpreter (``python -m
tests.redis_flags.test_migration_retention SCENARIO WORKDIR``), as those of
``_outages.py``: default ``sys.unraisablehook`` and ``threading.excepthook``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage
from tests.redis_flags._outages import NS, Seen, alive, must, server, store
from tests.redis_flags._support import REPO, raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

FLAGS = (Flag("a"), Flag("b"), Flag("c"))
LOOP = MigrationPlan([Stage(1, "one", ["a"]), Stage(2, "two", ["b"])], name="loop")
STEADY = MigrationPlan([Stage(1, "only", ["c"])], name="steady")


def _redis_events(url: str, namespace: str) -> tuple[list[tuple[str, str]], str | None]:
    """([(id, event JSON)] of the migrations stream, meta's mtrimmed)."""
    raw = raw_client(url)
    try:
        entries = raw.xrange(f"{{{namespace}}}:flags:migrations")
        cut = raw.hget(f"{{{namespace}}}:flags:meta", "mtrimmed")
    finally:
        raw.close()
    return [(i.decode(), f[b"event"].decode()) for i, f in entries], cut and cut.decode()


def _copy_events(path: Path) -> tuple[list[tuple[str, str]], str | None]:
    """The same of a node copy file."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT ms, seq, fields FROM migrations ORDER BY ms, seq").fetchall()
        cut = db.execute("SELECT value FROM meta WHERE key = 'mtrimmed'").fetchone()
    finally:
        db.close()
    return [(f"{ms}-{seq}", json.loads(f)["event"]) for ms, seq, f in rows], cut and cut[0]


def _loop(migration: Migration, n: int) -> None:
    for i in range(n):
        migration.advance(by="bot", reason=f"up {i}")
        migration.rollback_to(0, by="bot", reason=f"down {i}")


def test_the_stream_and_every_node_copy_stay_bounded_and_in_step(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str, tmp_path: Path
) -> None:
    """A plan looped on one node: the stream is bounded, ``mtrimmed`` names its first
    entry, and both the writer's copy (at once) and another node's copy (as soon as
    its listener sees the commits) hold exactly Redis' events and cut."""
    writer_copy, other_copy = tmp_path / "writer.sqlite3", tmp_path / "other.sqlite3"
    writer = open_store(redis_server.url, cache_path=writer_copy, history_limit=5)
    other = open_store(redis_server.url, cache_path=other_copy, history_limit=5)
    with FeatureFlags(FLAGS, store=writer) as flags:
        steady = Migration(flags, STEADY)
        steady.advance(by="ana")
        _loop(Migration(flags, LOOP), 20)
    entries, cut = _redis_events(redis_server.url, namespace)
    assert 5 <= len(entries) <= 6
    assert cut == entries[0][0]
    assert _copy_events(writer_copy) == (entries, cut)
    assert wait_until(lambda: _copy_events(other_copy) == (entries, cut), timeout=10)
    assert writer.migration_history("steady") == other.migration_history("steady") == []
    assert writer.migration_stage("steady") == other.migration_stage("steady") == 1


def test_a_node_with_a_smaller_limit_trims_for_everyone(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str, tmp_path: Path
) -> None:
    """Processes sharing a namespace trim with their own limit: the smallest in use
    wins, and a node with a larger one mirrors that cut (never re-adds events)."""
    big_copy = tmp_path / "big.sqlite3"
    big = open_store(redis_server.url, cache_path=big_copy, history_limit=50)
    small = open_store(redis_server.url, history_limit=4)
    with FeatureFlags(FLAGS, store=big) as flags:
        _loop(Migration(flags, LOOP), 10)  # 20 events: under 50
    assert len(big.migration_history("loop")) == 20
    with FeatureFlags(FLAGS, store=small) as flags:
        _loop(Migration(flags, LOOP), 1)  # 21 > 4 + 1: cut to 4, then one more
    entries, cut = _redis_events(redis_server.url, namespace)
    assert len(entries) == 5
    assert cut == entries[0][0]
    assert wait_until(lambda: _copy_events(big_copy) == (entries, cut), timeout=10)
    with FeatureFlags(FLAGS, store=big) as flags:
        Migration(flags, LOOP).advance(by="bot")  # 6: over 4 + 1, but big trims at 55
    assert len(big.migration_history("loop")) == 6
    assert _copy_events(big_copy) == _redis_events(redis_server.url, namespace)


# ---------------------------------------------------------------- outage (subprocess)


def restart_empty_events(work: Path, seen: Seen) -> None:
    """Redis restarts empty under a trimmed migrations stream: during the outage the
    copies answer the bounded history and the right stages; the restore puts back
    the same events and cut; an emergency rollback held through the outage is
    committed on it; trims go on."""
    with server() as srv:
        a = store(srv.url, work / "a.sqlite3", history_limit=6)
        b = store(srv.url, work / "b.sqlite3", history_limit=6)
        fa, fb = FeatureFlags(FLAGS, store=a), FeatureFlags(FLAGS, store=b)
        Migration(fa, STEADY).advance(by="ana")
        loop_a = Migration(fa, LOOP)
        _loop(loop_a, 10)
        loop_a.advance(by="bot", reason="parked")
        must(lambda: b.status().version == a.status().version, "b's copy caught up")
        expected = a.migration_history("loop")
        assert 6 <= len(expected) <= 7
        assert expected[-1].reason == "parked"
        entries, cut = _redis_events(srv.url, NS)
        must(lambda: _copy_events(work / "b.sqlite3") == (entries, cut), "b mirrors the cut")
        srv.kill()
        must(lambda: a.stale and b.stale, "both nodes stale")
        assert b.migration_history("loop") == expected, "from the (trimmed) copy"
        assert b.migration_stage("loop") == 1
        assert b.migration_stage("steady") == 1
        assert b.migration_history("steady") == []
        Migration(fb, LOOP).emergency_rollback("incident", by="oncall")  # held
        srv.start()  # EMPTY
        must(lambda: not b.pending(), "the emergency rollback was committed")
        must(lambda: a.synced and b.synced, "both back in sync")
        assert len(seen.named("restored")) == 1
        after = a.migration_history("loop")
        assert after[:-1] == expected[len(expected) - len(after) + 1 :]
        assert (after[-1].action, after[-1].reason) == ("emergency_rollback", "incident")
        assert a.migration_stage("loop") == 0
        assert a.migration_stage("steady") == 1
        entries, cut = _redis_events(srv.url, NS)
        assert 6 <= len(entries) <= 7
        assert cut is not None
        assert _copy_events(work / "b.sqlite3") == (entries, cut)
        for _ in range(5):  # life goes on: commits and trims
            _loop(Migration(fb, LOOP), 1)
        must(lambda: a.status().version == b.status().version, "a follows")
        entries, cut = _redis_events(srv.url, NS)
        assert 6 <= len(entries) <= 7
        assert cut == entries[0][0]
        for path in ("a.sqlite3", "b.sqlite3"):
            must(lambda p=path: _copy_events(work / p) == (entries, cut), f"{path} in step")
        alive(a, b)
        for f in (fa, fb):
            f.close()
        a.close()
        b.close()


def test_a_trimmed_migration_history_rides_out_redis_restarting_empty(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    out = subprocess.run(
        [sys.executable, "-m", "tests.redis_flags.test_migration_retention",
         "restart_empty_events", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    assert "OK restart_empty_events" in out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    assert "Exception in thread" not in out.stderr, out.stderr


def main(name: str, work: str) -> None:
    seen = Seen()
    {"restart_empty_events": restart_empty_events}[name](Path(work), seen)
    assert not seen.errors(), f"errors logged: {seen.errors()}"
    assert not seen.logged(logging.WARNING, "not trimmed"), "every trim went through"
    print(f"OK {name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
