"""History retention on Redis with real processes: three writers trimming one stream
with their own ``history_limit``, a slow subscriber in a fourth, and Redis
restarting EMPTY in the middle (restored from the node copies).

Each node runs in a plain interpreter (``python -m
tests.redis_flags.test_history_retention_processes URL NS COPY LIMIT SEED N``):
default ``sys.unraisablehook`` and ``threading.excepthook``; each checks that its
listener thread is alive at the end.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from tests.redis_flags._support import REPO, raw_client, wait_until
from tests.redis_support import RedisServer

NS = "retention-procs"


def node(url: str, copy: str, limit_text: str, seed: int, count: int) -> None:
    """One node: ``count`` random writes (0: a watcher with a slow subscriber), then,
    on the driver's word, its checks as one JSON line."""
    from foundation.errors import BackendUnavailable, FlagError
    from foundation.flags import FeatureFlags, Flag, FlagChange, FlagState, RedisFlagStore
    from foundation.flags._history import Replay

    limit = None if limit_text == "none" else int(limit_text)
    store = RedisFlagStore(
        url, namespace=NS, cache_path=copy, history_limit=limit, timeout=0.5,
        resync_interval=0.5,
    )  # fmt: skip
    flags = FeatureFlags([Flag(n) for n in "abcd"], store=store)
    bad: list[str] = []
    heard: dict[str, FlagState] = {}
    reloads = [0]
    lock = threading.Lock()
    slow = threading.Event()
    pace = random.Random(seed)

    def listener(changes: list[FlagChange]) -> None:
        with lock:
            if not changes:
                reloads[0] += 1
                heard.clear()
            for c in changes:  # a watcher hears every change: each one's old is the last new
                if count == 0 and c.flag in heard and heard[c.flag] != c.old:
                    bad.append(f"heard {c.flag}: {heard[c.flag]} then a change from {c.old}")
                heard[c.flag] = c.new
        if count == 0 and pace.random() < 0.1:
            slow.wait(0.1)  # a slow subscriber: the stream runs ahead of this listener

    store.subscribe(listener)
    print("ready", flush=True)
    sys.stdin.readline()
    rng = random.Random(seed)
    failed = 0
    for i in range(count):
        op, name, n, by = (
            rng.choice("padcek"),
            rng.choice("abcd"),
            rng.randint(0, 30),
            f"{seed}-{i}",
        )
        try:
            if op == "p":
                flags.set_percentage(name, n * 3, by=by)
            elif op == "a":
                flags.allow(name, f"u{n}", by=by)
            elif op == "d":
                flags.deny(name, f"u{n}", by=by)
            elif op == "c":
                flags.clear(name, by=by)
            elif op == "e":
                flags.enable(name, by=by)
            else:
                flags.disable(name, by=by, reason="kill")  # held through the outage
        except BackendUnavailable:
            failed += 1
            slow.wait(0.01)  # Redis is down: pace the attempts, not a busy loop
    print(f"written {failed}", flush=True)

    def settled() -> bool:
        return store.synced and not store.stale and not store.pending()

    assert wait_until(settled, timeout=60), "back in sync, kill switches committed"
    print("settled", flush=True)
    target, cut = sys.stdin.readline().split()
    assert wait_until(lambda: store.status().version >= int(target), timeout=30), "caught up"
    # The last trim may follow the last commit: the listener's periodic check mirrors it.
    assert wait_until(lambda: (store._cache.trimmed or "-") == cut, timeout=30), "copy trimmed"
    out: dict[str, Any] = {"version": store.status().version}
    try:
        history = store.history()
        out["history"] = [[c.flag, c.by, c.at, c.old.to_json(), c.new.to_json()] for c in history]
        states = store.load_states()
        for name in "abcd":
            mine = store.history(name)
            for before, after in itertools.pairwise(mine):
                if after.old != before.new:
                    bad.append(f"history({name}) breaks: {before} then {after}")
            if mine and name in states and mine[-1].new != states[name]:
                bad.append(f"history({name}) ends in {mine[-1].new}, state {states[name]}")
    except FlagError as exc:
        bad.append(f"history: {exc!r}")
    # The node copy: its base and entries replay alone (what a restore puts back).
    base, trimmed, entries = store._cache.history_with_base()
    try:
        replay = Replay({n: FlagState.from_json(t) for n, t in base.items()})
        for _id, fields in entries:
            replay.feed_json(fields["change"])
    except FlagError as exc:
        bad.append(f"node copy: {exc!r}")
    out["copy"] = {"trimmed": trimmed, "ids": [i for i, _ in entries], "base": base}

    def heard_all() -> bool:
        with lock:
            return all(heard.get(n, flags.state(n)) == flags.state(n) for n in "abcd")

    if count == 0 and not wait_until(heard_all, timeout=20):
        bad.append(f"the watcher ended on {heard}, not {[flags.state(n) for n in 'abcd']}")
    out["reloads"] = reloads[0]
    out["bad"] = bad
    assert store._thread.is_alive(), "the listener thread died"
    slow.set()
    flags.close()
    store.close()
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(url: str, copy: Path, limit: str, seed: int, count: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "src")]))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.redis_flags.test_history_retention_processes",
         url, str(copy), limit, str(seed), str(count)],
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def _say(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(text + "\n")
    proc.stdin.flush()


def test_three_limits_a_slow_watcher_and_redis_restarting_empty(tmp_path: Path) -> None:
    """Writers with history_limit 3, 7 and 40 commit at once (kill switches among their
    writes), a watcher (limit 3) has a slow subscriber, and Redis restarts EMPTY a
    third of the way in. Afterwards every node's history replays without FlagError,
    each flag's records chain and end in its state, all nodes answer the same
    suffix, every node copy holds exactly Redis' stream from the same cut with the
    same base, and the watcher was only ever handed exact changes or told to reload."""
    srv = RedisServer()
    srv.start()
    specs = [("3", 1, 300), ("7", 2, 300), ("40", 3, 300), ("3", 4, 0)]
    procs = [_spawn(srv.url, tmp_path / f"copy-{s}.sqlite3", lim, s, n) for lim, s, n in specs]
    results: list[dict[str, Any]] = []
    try:
        for proc in procs:
            assert _line(proc) == "ready"
        for proc in procs:
            _say(proc, "go")
        raw = raw_client(srv.url)
        meta = "{" + NS + "}:flags:meta"
        assert wait_until(lambda: int(raw.hget(meta, "version") or 0) >= 200, timeout=60)
        raw.close()
        srv.kill()
        srv.start()  # EMPTY: the nodes restore it from their copies
        refused = 0  # writes that met the outage (kill switches among them are held)
        for proc in procs:
            line = _line(proc)
            assert line.startswith("written"), proc.stderr and proc.stderr.read()
            refused += int(line.split()[1])
        assert refused > 0, "the outage fell between the writes"
        for proc in procs:
            assert _line(proc) == "settled", proc.stderr and proc.stderr.read()
        raw = raw_client(srv.url)
        version = int(raw.hget(meta, "version"))
        cut = (raw.hget(meta, "trimmed") or b"-").decode()
        for proc in procs:
            _say(proc, f"{version} {cut}")
        for proc in procs:
            line = _line(proc)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert line.startswith("RESULT"), f"{line}\n{out}\n{err}"
            assert "Traceback" not in err, err
            results.append(json.loads(line[len("RESULT ") :]))
        stream = [i.decode() for i, _ in raw.xrange("{" + NS + "}:flags:history")]
        base = {
            k.decode(): v.decode()
            for k, v in raw.hgetall("{" + NS + "}:flags:history:base").items()
        }
        trimmed, restored = raw.hmget(meta, "trimmed", "restored")
        raw.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        srv.stop()
    assert restored is not None  # a node's copy put the data back
    assert 3 <= len(stream) <= 40 + 4  # the last trimmer's limit, plus its slack
    for result in results:
        assert result["bad"] == [], result["bad"][:3]
        assert result["version"] >= version
        # Every copy: exactly Redis' stream, from the same cut, with the same base.
        assert result["copy"]["ids"] == stream
        assert result["copy"]["base"] == base
        assert result["copy"]["trimmed"] == (trimmed and trimmed.decode())
        assert result["history"] == results[0]["history"]
        assert len(result["history"]) == len(stream)
    assert results[-1]["reloads"] >= 1  # the watcher fell behind a trim, and was told


if __name__ == "__main__":
    node(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
