"""Redis outage scenarios for RedisFlagStore, each run in a plain interpreter.

python -m tests.redis_flags._outages SCENARIO WORKDIR

Run by ``test_outages.py`` in a subprocess with the interpreter's DEFAULT hooks
(``sys.unraisablehook``, ``threading.excepthook``): nothing is installed here.
Each scenario starts its own redis-server, asserts, and prints ``OK <scenario>``
and the names of the library threads still alive; an AssertionError exits 1
with its traceback on stderr.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from foundation import errors, telemetry
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagState,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    Stage,
)
from tests._logs import keep_records
from tests.redis_flags._support import Node, raw_client, wait_until
from tests.redis_support import RedisServer

FLAGS = (Flag("beta"), Flag("gamma"), Flag("kill_switch", default=True))
NS = "outage"
EVENTS = (
    "stale",
    "started_from_cache",
    "restored",
    "pending_recorded",
    "pending_committed",
    "pending_superseded",
    "in_sync",
)


class Seen:
    """Every ``foundation.flags.*`` event and every log record under ``foundation``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[tuple[str, Mapping[str, Any]]] = []
        self.records = keep_records("foundation", level=logging.INFO)
        for name in EVENTS:
            telemetry.attach(f"foundation.flags.{name}", self._event)

    def _event(self, name: str, data: Mapping[str, Any]) -> None:
        with self._lock:
            self.events.append((name.removeprefix("foundation.flags."), data))

    def named(self, name: str) -> list[Mapping[str, Any]]:
        with self._lock:
            return [d for n, d in self.events if n == name]

    def logged(self, level: int, text: str) -> list[str]:
        return [
            r.getMessage()
            for r in list(self.records)
            if r.levelno == level and text in r.getMessage()
        ]

    def errors(self) -> list[str]:
        """Log records at ERROR or above (a listener bug logs its traceback there)."""
        return [r.getMessage() for r in list(self.records) if r.levelno >= logging.ERROR]


def must(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    if not wait_until(predicate, timeout):
        raise AssertionError(f"not within {timeout}s: {what}")


@contextmanager
def server() -> Iterator[RedisServer]:
    srv = RedisServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def store(url: str, path: Path, **kwargs: Any) -> RedisFlagStore:
    kwargs.setdefault("timeout", 0.5)
    kwargs.setdefault("resync_interval", 0.5)
    return RedisFlagStore(url, namespace=NS, cache_path=path, **kwargs)


def alive(*stores: RedisFlagStore) -> None:
    """Assert each store's listener thread is alive and print the library threads."""
    names = {t.name for t in threading.enumerate() if t.is_alive()}
    for s in stores:
        assert s._thread.is_alive(), f"listener of {s.cache_path} died"
    print("threads", sorted(n for n in names if n.startswith("foundation")), flush=True)


def redis_history(url: str) -> int:
    raw = raw_client(url)
    try:
        return int(raw.xlen(f"{{{NS}}}:flags:history"))
    finally:
        raw.close()


def redis_has(url: str, flag: str) -> bool:
    raw = raw_client(url)
    try:
        return raw.hget(f"{{{NS}}}:flags:state", flag) is not None
    except Exception:  # redis-py's own error: the server is not up yet
        return False
    finally:
        raw.close()


def copy_db(src: Path, dst: Path) -> None:
    """Copy a node's SQLite copy consistently (WAL included), even while it is open."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()


def history_of(flags: FeatureFlags) -> list[tuple[str, str | None, str | None, float]]:
    return [(c.flag, c.by, c.reason, c.at) for c in flags.history()]


# ------------------------------------------------------------------ scenarios


def restart_empty(work: Path, seen: Seen) -> None:
    """Redis SIGKILLed and restarted empty: no flag reverts, history comes back."""
    with server() as srv:
        sa, sb = store(srv.url, work / "a.sqlite3"), store(srv.url, work / "b.sqlite3")
        a, b = FeatureFlags(FLAGS, store=sa), FeatureFlags(FLAGS, store=sb)
        a.enable("beta", by="ana", reason="launch")
        a.set_percentage("gamma", 30, by="ana", reason="canary")
        a.disable("kill_switch", by="oncall", reason="incident")
        must(lambda: sb.status().version == 3, "b's copy holds all three commits")
        must(lambda: b.state("gamma").percentage == 30.0 and not b.enabled("kill_switch"), "b")
        expected = history_of(a)
        assert len(expected) == 3

        reverted: list[str] = []
        done = threading.Event()

        def watch() -> None:  # every read on both nodes, all through the outage
            while not done.is_set():
                for name, f in (("a", a), ("b", b)):
                    got = (f.enabled("beta"), f.state("gamma").percentage, f.enabled("kill_switch"))
                    if got != (True, 30.0, False):
                        reverted.append(f"{name}: {got}")
                done.wait(0.002)  # sleep-ok: sampling reads while the outage runs

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            srv.kill()
            must(lambda: sa.stale and sb.stale, "both nodes stale")
            assert history_of(b) == expected, "history from the copy while Redis is down"
            srv.start()  # EMPTY: no persistence
            must(lambda: sa.synced and sb.synced, "both back in sync")
            must(lambda: redis_has(srv.url, "beta"), "state restored into Redis")
        finally:
            done.set()
            watcher.join()
        assert not reverted, f"flags reverted: {reverted[:5]}"
        assert history_of(a) == expected, history_of(a)
        assert history_of(b) == expected, history_of(b)
        assert redis_history(srv.url) == 3, "history restored exactly once"
        restored = seen.named("restored")
        assert len(restored) == 1, restored
        assert restored[0]["version"] == 3
        assert len(seen.named("stale")) >= 2
        must(lambda: len(seen.named("in_sync")) >= 2, "in_sync told")  # (after `synced`)
        assert seen.logged(logging.WARNING, "restored"), "a WARNING says Redis was restored"
        # And life goes on from the restored version.
        a.allow("gamma", "zed", by="after", reason="restart")
        must(lambda: [c.by for c in b.history()][-1:] == ["after"], "b follows again")
        assert len(b.history()) == 4
        alive(sa, sb)
        for f in (a, b):
            f.close()
        sa.close()
        sb.close()


def concurrent_restore(work: Path, seen: Seen) -> None:
    """Four nodes restore an empty Redis at once; one copy is older. Newest wins, once."""
    with server() as srv:
        first = work / "first.sqlite3"
        s0 = store(srv.url, first)
        f0 = FeatureFlags(FLAGS, store=s0)
        for i in range(3):
            f0.set_percentage("beta", 10 * (i + 1), by="ana", reason=f"step {i}")
        older = work / "older.sqlite3"
        copy_db(first, older)  # a copy at version 3
        f0.set_percentage("gamma", 50, by="ana", reason="step 3")
        f0.allow("gamma", "alice", by="ana", reason="step 4")
        expected = history_of(f0)
        assert len(expected) == 5
        f0.close()
        s0.close()

        srv.kill()
        srv.start()  # empty
        paths = [work / f"n{i}.sqlite3" for i in range(3)]
        for p in paths:
            copy_db(first, p)
        paths.insert(1, older)
        barrier = threading.Barrier(len(paths))
        opened: list[RedisFlagStore] = []
        failures: list[BaseException] = []
        lock = threading.Lock()

        def open_one(path: Path) -> None:
            barrier.wait()
            try:
                s = store(srv.url, path)
            except BaseException as exc:  # reported below, in the main thread
                failures.append(exc)
                return
            with lock:
                opened.append(s)

        threads = [threading.Thread(target=open_one, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures
        must(lambda: all(s.synced for s in opened), "all in sync")
        assert redis_history(srv.url) == 5, f"history duplicated: {redis_history(srv.url)}"
        for s in opened:
            with FeatureFlags(FLAGS, store=s) as f:
                assert history_of(f) == expected
                assert f.state("beta") == FlagState(True, 30.0)
                assert f.state("gamma") == FlagState(True, 50.0, frozenset({"alice"}))
        restores = seen.named("restored")
        # The old copy may restore first (Redis is empty); a newer one then replaces it.
        assert 1 <= len(restores) <= 2, restores
        # (Events may be emitted in either order: they follow the scripts, unlocked.)
        assert sorted(r["version"] for r in restores) in ([5], [3, 5]), restores
        alive(*opened)
        for s in opened:
            s.close()


def kill_switch_in_outage(work: Path, seen: Seen) -> None:
    """disable() and emergency_rollback() during an outage: local at once, committed later."""
    with server() as srv:
        sa = store(srv.url, work / "a.sqlite3")
        a = FeatureFlags(FLAGS, store=sa)
        migration = Migration(a, MigrationPlan([Stage(1, "gamma", ["gamma"])], name="plan"))
        node_b = Node(srv.url, NS, work / "b.sqlite3")
        try:
            node_b.expect("ready")
            a.enable("beta", by="ana", reason="launch")
            migration.advance(by="ana", reason="stage 1")
            node_b.expect("change gamma True")

            srv.kill()
            must(lambda: sa.stale, "a stale")
            a.disable("beta", by="oncall", reason="incident")  # returns, no error
            assert a.enabled("beta") is False, "the kill switch applies locally at once"
            migration.emergency_rollback("error spike", by="oncall")
            assert a.enabled("gamma") is False
            assert migration.status().stage == 0
            pending = sa.pending()
            assert [(p.by, p.reason, p.flags) for p in pending] == [
                ("oncall", "incident", ("beta",)),
                ("oncall", "error spike", ("gamma",)),
            ], pending
            assert len(seen.named("pending_recorded")) == 2
            assert seen.logged(logging.WARNING, "kill switch by oncall")
            # Any other write fails fast and changes nothing.
            try:
                a.set_percentage("beta", 5)
            except errors.BackendUnavailable:
                pass
            else:
                raise AssertionError("a non-kill-switch write succeeded during the outage")
            assert a.state("beta") == FlagState(False)
            assert node_b.ask("enabled beta") == "True"  # B has not heard yet

            srv.start()  # empty: restored from a copy, then the kill switches committed
            must(lambda: sa.synced and not sa.pending(), "pending committed")
            assert len(seen.named("pending_committed")) == 2
            assert not seen.named("pending_superseded")
            # B's listeners hear both (from the stream, or from its resync's reload).
            node_b.expect("change beta False", timeout=30)
            node_b.expect("change gamma False", timeout=30)
            assert node_b.ask("enabled beta", timeout=30) == "False"
            assert node_b.ask("enabled gamma", timeout=30) == "False"
            history = a.history()
            assert [(c.flag, c.new.switch, c.by, c.reason) for c in history[-2:]] == [
                ("beta", False, "oncall", "incident"),
                ("gamma", False, "oncall", "error spike"),
            ], history
            assert history[0].by == "ana", "the older history was restored too"
            assert [e.action for e in migration.history()] == ["advance", "emergency_rollback"]
            assert migration.status().stage == 0
            assert a.enabled("beta") is False
            alive(sa)
        except BaseException:
            node_b.close()
            print("node B stderr:\n" + node_b.stderr(), file=sys.stderr)
            raise
        finally:
            node_b.close()
        assert node_b.process.returncode == 0, node_b.stderr()
        a.close()
        sa.close()


def superseded(work: Path, seen: Seen) -> None:
    """A pending kill switch loses to a newer committed change: WARNING + event, never silent."""
    with server() as srv:
        path_a = work / "a.sqlite3"
        sa, sb = store(srv.url, path_a), store(srv.url, work / "b.sqlite3")
        a, b = FeatureFlags(FLAGS, store=sa), FeatureFlags(FLAGS, store=sb)
        a.enable("beta", by="ana", reason="launch")
        must(lambda: b.enabled("beta") and sb.status().version == 1, "b sees beta, copied")

        srv.kill()
        must(lambda: sa.stale, "a stale")
        a.disable("beta", by="oncall", reason="incident")
        assert a.enabled("beta") is False
        a.close()
        sa.close()  # node A goes down with its kill switch pending in its copy

        srv.start()  # empty; B restores it
        must(lambda: sb.synced and redis_has(srv.url, "beta"), "b restored Redis")
        b.set_percentage("beta", 50, by="lead", reason="false alarm, resume at half")

        sa2 = store(srv.url, path_a)  # A comes back: its pending kill switch is older
        a2 = FeatureFlags(FLAGS, store=sa2)
        assert a2.state("beta") == FlagState(True, 50.0), a2.state("beta")
        assert sa2.pending() == []
        lost = seen.named("pending_superseded")
        assert len(lost) == 1, lost
        assert lost[0]["by"] == "oncall"
        assert lost[0]["flags"] == ["beta"]
        assert [c.by for c in lost[0]["superseded_by"]] == ["lead"]
        assert seen.logged(logging.WARNING, "SUPERSEDED"), "a WARNING says so"
        assert not seen.named("pending_committed")
        assert [c.by for c in a2.history()] == ["ana", "lead"]
        assert b.state("beta") == FlagState(True, 50.0)
        alive(sa2, sb)
        for f in (a2, b):
            f.close()
        sa2.close()
        sb.close()


def superseded_live(work: Path, seen: Seen) -> None:
    """Node A (another process, frozen while Redis comes back) loses its pending kill
    switch to B's newer change: its listeners hear beta come back, a WARNING says why."""
    with server() as srv:
        sb = store(srv.url, work / "b.sqlite3")
        b = FeatureFlags(FLAGS, store=sb)
        node_a = Node(srv.url, NS, work / "a.sqlite3")
        try:
            node_a.expect("ready")
            b.enable("beta", by="ana", reason="launch")
            node_a.expect("change beta True")

            srv.kill()
            assert node_a.ask("disable beta") == "done"  # recorded, not an error
            assert node_a.ask("enabled beta") == "False"
            node_a.process.send_signal(signal.SIGSTOP)  # A sleeps through Redis's return
            try:
                srv.start()
                must(lambda: sb.synced and redis_has(srv.url, "beta"), "b restored Redis")
                b.allow("beta", "zed", by="lead", reason="false alarm")
            finally:
                node_a.process.send_signal(signal.SIGCONT)
            node_a.expect("change beta True", timeout=20)  # the reload, told to listeners
            assert node_a.ask("enabled beta") == "True"
        finally:
            node_a.close()
        assert node_a.process.returncode == 0
        err = node_a.stderr()
        assert "SUPERSEDED" in err, err
        assert "Traceback" not in err, err
        assert [c.by for c in b.history()] == ["ana", "lead"]
        alive(sb)
        b.close()
        sb.close()


def error_replies(work: Path, seen: Seen) -> None:
    """READONLY (a demoted primary) then OOM: kill switches kept, other writes refused,
    everything committed once Redis is healthy; no thread dies."""
    with server() as srv:
        sa, sb = store(srv.url, work / "a.sqlite3"), store(srv.url, work / "b.sqlite3")
        a, b = FeatureFlags(FLAGS, store=sa), FeatureFlags(FLAGS, store=sb)
        a.enable("beta", by="ana")
        a.enable("gamma", by="ana")
        must(lambda: b.enabled("beta") and b.enabled("gamma"), "b sees both")
        raw = raw_client(srv.url)
        try:
            raw.execute_command("REPLICAOF", "127.0.0.1", str(srv.port + 1))  # nobody there
            a.disable("beta", by="oncall", reason="read-only")
            assert a.enabled("beta") is False
            refused: errors.BackendUnavailable | None = None
            try:
                a.allow("gamma", "zed")
            except errors.BackendUnavailable as exc:
                refused = exc
            assert refused is not None, "a write succeeded on a read-only replica"
            assert "READONLY" in str(refused), refused
            assert a.state("gamma").allow == frozenset()
            raw.execute_command("REPLICAOF", "NO", "ONE")
            must(lambda: not sa.pending() and sa.synced, "committed after REPLICAOF NO ONE")
            must(lambda: b.enabled("beta") is False, "b sees beta disabled")

            raw.config_set("maxmemory", "1")  # every write is now an OOM error reply
            a.disable("gamma", by="oncall", reason="oom")
            assert a.enabled("gamma") is False
            raw.config_set("maxmemory", "0")
            must(lambda: not sa.pending() and sa.synced, "committed after OOM")
            must(lambda: b.enabled("gamma") is False, "b sees gamma disabled")
        finally:
            raw.close()
        assert [c.reason for c in b.history()][-2:] == ["read-only", "oom"]
        assert len(seen.named("pending_committed")) == 2
        alive(sa, sb)
        for f in (a, b):
            f.close()
        sa.close()
        sb.close()


def restart_during_outage(work: Path, seen: Seen) -> None:
    """A node restarted while Redis is down starts from its copy, stale, not from defaults."""
    with server() as srv:
        path = work / "a.sqlite3"
        with store(srv.url, path) as sa, FeatureFlags(FLAGS, store=sa) as a:
            a.enable("beta", by="ana", reason="launch")
            a.set_percentage("gamma", 25, by="ana", reason="canary")
            expected = history_of(a)

        srv.kill()
        sa2 = store(srv.url, path)  # no error: it has a copy
        assert sa2.stale
        assert not sa2.synced
        status = sa2.status()
        assert status.stale, status
        assert status.version == 2, status
        assert status.last_error, status
        a2 = FeatureFlags(FLAGS, store=sa2)
        assert a2.enabled("beta") is True, "from the copy, not the default"
        assert a2.state("gamma") == FlagState(True, 25.0)
        assert history_of(a2) == expected
        assert seen.named("started_from_cache")
        assert seen.named("stale")
        # A node that never had a copy cannot start: nothing to serve.
        never = work / "never.sqlite3"
        try:
            store(srv.url, never)
        except errors.BackendUnavailable:
            pass
        else:
            raise AssertionError("a node without a copy started during an outage")
        assert not never.exists(), "no empty copy left behind"

        srv.start()  # empty: the restarted node restores it
        must(lambda: sa2.synced, "in sync")
        must(lambda: redis_has(srv.url, "gamma"), "restored")
        assert seen.named("restored")
        # "in_sync" is told after the reload that follows `synced` (a load flake:
        # 1/4 runs under load read it in between): waited for, not assumed.
        must(lambda: bool(seen.named("in_sync")), "in_sync told")
        assert redis_history(srv.url) == 2
        assert a2.enabled("beta") is True
        alive(sa2)
        a2.close()
        sa2.close()


SCENARIOS: dict[str, Callable[[Path, Seen], None]] = {
    f.__name__: f
    for f in (restart_empty, concurrent_restore, kill_switch_in_outage, superseded,
              superseded_live, error_replies, restart_during_outage)
}  # fmt: skip


def main(name: str, work: str) -> None:
    seen = Seen()
    SCENARIOS[name](Path(work), seen)
    assert not seen.errors(), f"errors logged: {seen.errors()}"
    print(f"OK {name}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
