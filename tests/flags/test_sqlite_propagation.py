"""SQLiteFlagStore between processes under load: the kill switch gets through.

Correctness only (with deadlines); how fast is measured by
``benchmarks/bench_sqlite_flags.py``.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    FlagState,
    MigrationEvent,
    SQLiteFlagStore,
    StoreTransaction,
)
from tests.flags._support import wait_until

DEADLINE = 60.0  # generous: the suite shares two cores; a miss is a lost change, not slowness

# A process that writes flat out from one thread and obeys commands on stdin:
# "set on|off" enables/disables the kill switch k, "watch on|off" waits (on a listener, no
# polling) until another process's change sets k so, "stop" ends the writes.
_WORKER = textwrap.dedent(
    """
    import queue, sys, threading
    from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore

    path, warmup, base = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    heard = queue.Queue()
    with SQLiteFlagStore(path) as store, FeatureFlags(
        [Flag("w"), Flag("k", default=True)], store=store
    ) as flags:
        main = threading.main_thread()

        def listen(change):
            # Our own set() notifies on the main thread: queue only the other's.
            if change.flag == "k" and threading.current_thread() is not main:
                heard.put(change.new.switch)

        flags.subscribe(listen)
        stop, warm, writes = threading.Event(), threading.Event(), [0]

        def write():
            while not stop.is_set():
                # Values of this process only (base, base + 1, ...): every write
                # changes the stored state, so each is one history entry.
                flags.set_percentage("w", base + writes[0] % 2, by="load")
                writes[0] += 1
                if writes[0] == warmup:
                    warm.set()

        writer = threading.Thread(target=write, name="load-writer")
        writer.start()
        warm.wait()
        print("writing", flush=True)
        for line in sys.stdin:
            verb, arg = (line.split() + [""])[:2]
            if verb == "set":
                # disable() is the kill switch; enable() turns it back for the next round.
                (flags.enable if arg == "on" else flags.disable)("k", by="oncall")
                print(f"did {arg}", flush=True)
            elif verb == "watch":
                want = arg == "on"
                while heard.get(timeout=60) is not want:  # a timeout is an error
                    pass
                print(f"seen {arg} enabled={flags.enabled('k')}", flush=True)
            elif verb == "stop":
                break
        stop.set()
        writer.join()
        print(f"wrote {writes[0]}", flush=True)
    """
)


class _Process:
    def __init__(self, path: Path, warmup: int, base: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), str(warmup), str(base)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("<eof>")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, prefix: str) -> str:
        try:
            line = self.lines.get(timeout=DEADLINE)
        except queue.Empty:
            raise AssertionError(f"no {prefix!r} line within {DEADLINE}s") from None
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line

    def finish(self) -> tuple[int, str]:
        """Stop the writes; (writes made, stderr) once the process exited cleanly."""
        self.send("stop")
        wrote = int(self.expect("wrote").split()[1])
        assert self.proc.stdin is not None
        assert self.proc.stderr is not None
        self.proc.stdin.close()
        stderr = self.proc.stderr.read()
        assert self.proc.wait(timeout=DEADLINE) == 0, stderr
        return wrote, stderr

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(DEADLINE)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def test_a_kill_switch_reaches_another_process_while_both_write_flat_out(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    warmup = 50
    # Both open the new file at once: its creation races are part of the scenario.
    # Each writes its own percentages (a write that stores the value already
    # stored records nothing: with the same values, their history could be short).
    a, b = _Process(path, warmup, 10), _Process(path, warmup, 20)
    try:
        a.expect("writing")  # both are now writing as fast as they can
        b.expect("writing")
        for flipper, watcher, value in ((a, b, "off"), (b, a, "on"), (a, b, "off")):
            watcher.send(f"watch {value}")
            flipper.send(f"set {value}")
            flipper.expect(f"did {value}")
            # The other's listener heard it, and its enabled() already answers it.
            expected = "False" if value == "off" else "True"
            assert watcher.expect("seen") == f"seen {value} enabled={expected}"
        results = [a.finish(), b.finish()]
    finally:
        a.close()
        b.close()
    for wrote, stderr in results:
        assert wrote >= warmup  # the load really ran in both
        assert "Traceback" not in stderr, stderr
        assert "Exception in thread" not in stderr, stderr
    with SQLiteFlagStore(path) as store:
        assert store.load_states()["k"] == FlagState(False)
        assert [c.new.switch for c in store.history("k")] == [False, True, False]
        assert {c.by for c in store.history("w")} == {"load"}
        assert len(store.history("w")) >= 2 * warmup


_OPENER = textwrap.dedent(
    """
    import os, sys, time
    from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
    path, ready, go, tag = sys.argv[1:5]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.0005)  # sleep-ok: polling for the start signal
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
        flags.allow("beta", tag)
    """
)


def test_processes_opening_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Switching a new file to WAL while another process opens it used to fail at
    # once with "database is locked" (SQLite calls no busy handler there).
    path = tmp_path / "flags.db"
    go = tmp_path / "go"
    procs = []
    for i in range(6):
        ready = tmp_path / f"ready-{i}"
        cmd = [sys.executable, "-c", _OPENER, str(path), str(ready), str(go), f"p{i}"]
        procs.append((ready, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)))
    wait_until(lambda: all(r.exists() for r, _ in procs), timeout=DEADLINE)
    go.touch()
    for _, proc in procs:
        _, stderr = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, stderr
    with SQLiteFlagStore(path) as store:
        assert store.load_states()["beta"].allow == {f"p{i}" for i in range(6)}


def test_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    with SQLiteFlagStore(tmp_path / "flags.db") as store:
        inside, release = threading.Event(), threading.Event()
        change = FlagChange("beta", FlagState(False), FlagState(True), "ana")
        event = MigrationEvent("plan", "advance", 0, 1, "ana", "go", 1.0)

        def body(txn: StoreTransaction) -> None:
            txn.put("beta", FlagState(True), change)
            txn.put_migration("plan", 1, event)
            inside.set()
            release.wait(DEADLINE)  # hold the write lock (and the store's) open

        writer = threading.Thread(target=store.transaction, args=(body,))
        writer.start()
        try:
            assert inside.wait(DEADLINE)
            seen: dict[str, object] = {}

            def read() -> None:
                seen["states"] = store.load_states()
                seen["history"] = store.history()
                seen["stage"] = store.migration_stage("plan")
                seen["events"] = store.migration_history("plan")

            reader = threading.Thread(target=read)
            reader.start()
            reader.join(DEADLINE)
            assert not reader.is_alive(), "a read waited for the write in progress"
            # The uncommitted write is invisible: the last committed snapshot.
            assert seen == {"states": {}, "history": [], "stage": 0, "events": []}
        finally:
            release.set()
            writer.join()
        assert store.load_states() == {"beta": FlagState(True)}
        assert store.history() == [change]
        assert store.migration_stage("plan") == 1


def test_a_subscriber_hears_only_rows_after_it_subscribed(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as other, FeatureFlags([Flag("beta")], store=other) as writer:
        writer.enable("beta", by="before")
        with SQLiteFlagStore(path) as store:
            heard: queue.Queue[list[FlagChange]] = queue.Queue()
            store.subscribe(heard.put)
            writer.disable("beta", by="after")
            batch = heard.get(timeout=DEADLINE)
            assert [c.by for c in batch] == ["after"]
            writer.allow("beta", "x", by="later")
            assert [c.by for c in heard.get(timeout=DEADLINE)] == ["later"]


def _event() -> object:
    from foundation.flags import MigrationEvent

    return MigrationEvent("plan", "advance", 0, 1, "ana", "go", 1.0)


def test_a_change_between_load_and_subscribe_is_reported(tmp_path: Path) -> None:
    # FeatureFlags loads, then subscribes: a commit by another process in between
    # used to be skipped (the watcher started from "now"), so that process kept
    # the old state, a kill switch included, until some later change.
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path) as other,
        FeatureFlags([Flag("beta", default=True)], store=other) as remote,
        SQLiteFlagStore(path) as store,
    ):
        assert store.load_states() == {}
        remote.disable("beta", by="oncall")  # lands between the load and the subscribe
        heard: queue.Queue[list[FlagChange]] = queue.Queue()
        store.subscribe(heard.put)
        assert [(c.flag, c.by) for c in heard.get(timeout=DEADLINE)] == [("beta", "oncall")]


def test_a_later_subscriber_is_told_to_reload(tmp_path: Path) -> None:
    # A second subscriber on a store whose watcher already runs may have loaded
    # before rows the watcher has delivered: it gets a "reload" (an empty batch).
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path) as other,
        FeatureFlags([Flag("beta")], store=other) as remote,
        SQLiteFlagStore(path) as store,
    ):
        first: queue.Queue[list[FlagChange]] = queue.Queue()
        store.subscribe(first.put)
        assert store.load_states() == {}  # the second subscriber's load
        remote.enable("beta")
        assert [c.flag for c in first.get(timeout=DEADLINE)] == ["beta"]  # already past it
        second: queue.Queue[list[FlagChange]] = queue.Queue()
        store.subscribe(second.put)
        assert second.get(timeout=DEADLINE) == []
        assert store.load_states() == {"beta": FlagState(True)}


def test_unsubscribe_removes_one_subscription_once(tmp_path: Path) -> None:
    # One listener subscribed twice: a second call of one unsubscribe does
    # nothing (it used to remove the other subscription too).
    path = tmp_path / "flags.db"
    with (
        SQLiteFlagStore(path) as other,
        FeatureFlags([Flag("beta")], store=other) as remote,
        SQLiteFlagStore(path) as store,
    ):
        heard: queue.Queue[list[FlagChange]] = queue.Queue()
        first = store.subscribe(heard.put)
        store.subscribe(heard.put)
        first()
        first()
        remote.enable("beta", by="one")
        remote.disable("beta", by="two")
        batches = [heard.get(timeout=DEADLINE)]
        while sum(len(b) for b in batches) < 2:  # the watcher may batch both rows or not
            batches.append(heard.get(timeout=DEADLINE))
        assert [c.by for b in batches for c in b] == ["one", "two"]
