"""Flag services, flag stores and Redis registries inherited across fork() are
closed in the child, and nothing the child does with them reaches the parent.

Before, a preloaded app's worker (gunicorn, celery, ``multiprocessing`` with
``fork``) served the fork-time flags for ever (the store's thread does not
exist in a child), its writes carried the parent store's origin (the parent's
watcher dropped them as its own), its ``close()`` or ``unregister()`` on an
inherited ``RedisRegistry`` deleted the parent's lease and registrations in
Redis cluster-wide, and its first flag write hung for ever when a parent
thread held (or waited for) the ``FeatureFlags`` lock at the fork. Now every
call in the child raises ``errors.Closed`` naming fork(), ``close()`` there
does nothing on the shared backend, and objects created in the child work.
Real ``os.fork()``, real redis-server and SQLite files; a child that does not
answer within its deadline is killed and fails the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

from foundation import (
    FeatureFlags,
    Flag,
    RedisFlagStore,
    RedisRegistry,
    SQLiteFlagStore,
    _fork,
    _unraisable,
    errors,
    liveness,
    metrics,
    spawn_thread,
    telemetry,
)
from foundation.flags import FlagStore, MemoryFlagStore, MigrationEvent, StoreTransaction
from foundation.flags._redis_store import _status
from foundation.flags._redis_store._status import store_gauges
from foundation.liveness import _threads, monitor
from foundation.registry import RegistryEvent, _async
from foundation.registry._redis._observer import RedisObserver
from foundation.supervision import _runs
from tests.redis_support import RedisServer

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
    # Python >= 3.12 warns on fork() in a threaded process: forking one is the point.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

FLAGS = [Flag("a", default=True), Flag("b", default=True)]
DEADLINE = 30.0  # seconds a child may take before it counts as hung


def in_child(action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``action`` in a forked child; its result (JSON) comes back on a pipe.

    The child never returns into pytest. One that sends nothing within
    ``DEADLINE`` (hung) is killed and fails the test.
    """
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(rd)
        child_reports(wr, action)
    os.close(wr)
    return child_result(pid, rd)


def child_reports(wr: int, action: Callable[[], dict[str, Any]]) -> NoReturn:
    """In a forked child: run ``action``, send its result (JSON) on ``wr``, exit."""
    code = 1
    try:
        try:
            out = action()
        except BaseException as exc:  # reported to the parent, which fails the test
            out = {"child raised": f"{type(exc).__name__}: {exc}"}
        os.write(wr, json.dumps(out).encode())
        code = 0
    finally:
        os._exit(code)


def child_result(pid: int, rd: int) -> dict[str, Any]:
    """The result the forked child ``pid`` sends on ``rd`` (see ``in_child``)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + DEADLINE
    try:
        while True:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([rd], [], [], max(left, 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child hung for {DEADLINE:g} s (killed)")
            chunk = os.read(rd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    assert "child raised" not in result, result
    return result


def outcome(call: Callable[[], object]) -> str:
    """What ``call`` did, as text: ``Closed: <message>``, or what it returned/raised."""
    try:
        return f"returned {call()!r}"
    except errors.Closed as exc:
        return f"Closed: {exc}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def assert_closed_by_fork(outcomes: dict[str, str]) -> None:
    for call, text in outcomes.items():
        assert text.startswith("Closed: "), (call, text)
        assert "inherited across fork()" in text, (call, text)
        assert "in the child" in text, (call, text)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)  # sleep-ok: polling with a deadline


# ----------------------------------------------------------------------- flags


@pytest.fixture(params=["redis", "sqlite"])
def new_store(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Callable[[], FlagStore]]:
    """A maker of stores on one shared backend (a Redis namespace, an SQLite file)."""
    made: list[FlagStore] = []
    namespace = f"fork-{uuid.uuid4().hex[:8]}"

    def make() -> FlagStore:
        store: FlagStore
        if request.param == "redis":
            store = RedisFlagStore(redis_server.url, namespace=namespace, cache_path=None)
        else:
            store = SQLiteFlagStore(tmp_path / "flags.db")
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def test_a_forked_childs_flags_and_store_are_closed_and_the_parent_keeps_working(
    new_store: Callable[[], FlagStore],
) -> None:
    store = new_store()
    flags = FeatureFlags(FLAGS, store=store)
    assert flags.enabled("a")
    other = FeatureFlags(FLAGS, store=new_store())  # another process's stand-in

    def child() -> dict[str, Any]:
        calls: dict[str, Callable[[], object]] = {
            "flags.enabled": lambda: flags.enabled("a"),
            "flags.enabled(actor)": lambda: flags.enabled("a", "u1"),
            "flags.state": lambda: flags.state("a"),
            "flags.names": lambda: flags.names,
            "flags.disable": lambda: flags.disable("a", by="child"),
            "flags.history": flags.history,
            "store.load_states": store.load_states,
            "store.history": store.history,
            "store.subscribe": lambda: store.subscribe(lambda changes: None),
            "with store": store.__enter__,
        }
        closed = {name: outcome(call) for name, call in calls.items()}
        # close() in the child: no error, nothing written to the shared backend.
        closes = {"flags.close": outcome(flags.close), "store.close": outcome(store.close)}
        # What the message says to do works: a store and flags created in the child.
        with new_store() as mine, FeatureFlags(FLAGS, store=mine) as fresh:
            fresh.disable("b", by="child", reason="written by a store made in the child")
            seen = fresh.enabled("b")
        return {"closed": closed, "closes": closes, "fresh sees b": seen}

    result = in_child(child)
    assert_closed_by_fork(result["closed"])
    assert result["closes"] == {"flags.close": "returned None", "store.close": "returned None"}
    assert result["fresh sees b"] is False
    # The child's own store wrote under an origin of its own: the parent hears it.
    wait_for(lambda: not flags.enabled("b"), "the parent to see the child's own store's write")
    wait_for(lambda: not other.enabled("b"), "another store to see it")
    # Nothing of the inherited copy's attempted write landed; the parent still
    # writes, reads its own writes and hears other writers.
    assert flags.enabled("a")
    flags.enable("b", by="parent")
    assert flags.enabled("b")
    other.disable("a", by="ops", reason="kill switch")
    wait_for(lambda: not flags.enabled("a"), "the parent to hear another writer")
    flags.close()
    other.close()


def test_a_forked_child_never_hangs_on_a_flag_lock_a_parent_thread_held(
    new_store: Callable[[], FlagStore],
) -> None:
    """A parent thread holds the FeatureFlags lock at the fork (inside a write)
    and another waits for it: the child's calls return at once (Closed)."""
    flags = FeatureFlags(FLAGS, store=new_store())
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with flags._lock:  # the lock each write holds around its store transaction
            holding.set()
            release.wait()

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(10)
    queued = threading.Thread(target=lambda: flags.disable("b", by="queued"))
    threads.append(queued)
    queued.start()
    wait_for(lambda: len(flags._lock._waiters) == 1, "a writer queued behind the holder")
    try:

        def child() -> dict[str, Any]:
            closed = {
                "flags.disable": outcome(lambda: flags.disable("a", by="child")),
                "flags.enable": outcome(lambda: flags.enable("a", by="child")),
            }
            return {"closed": closed, "close": outcome(flags.close)}

        result = in_child(child)
        assert_closed_by_fork(result["closed"])
        assert result["close"] == "returned None"
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert not flags.enabled("b")  # the parent's queued write went through
    flags.disable("a", by="parent")
    assert not flags.enabled("a")
    flags.close()


def test_a_flag_lock_the_forking_thread_held_stays_its_own_in_the_child() -> None:
    """The forking thread itself holds the FeatureFlags lock (a fork inside a
    write): in the child its calls raise Closed, its release works (its ``with``
    block ends normally), and the lock is free for the child's threads after.
    The lock is the same object, reset in place (a new one cost tens of
    microseconds per object in every ``preexec_fn`` child)."""
    flags = FeatureFlags(FLAGS)
    lock = flags._lock
    leave = lock.__exit__  # what the `with` below calls as it ends (bound now)

    def child() -> dict[str, Any]:
        closed = {"flags.disable": outcome(lambda: flags.disable("a", by="child"))}
        released = outcome(lambda: leave(None, None, None))  # the `with` block ending
        taken = threading.Event()

        def take() -> None:
            with flags._lock:
                taken.set()

        thread = threading.Thread(target=take)
        thread.start()
        thread.join(DEADLINE)
        same = flags._lock is lock
        return {"closed": closed, "released": released, "taken": taken.is_set(), "same": same}

    with lock:
        result = in_child(child)
    assert_closed_by_fork(result["closed"])
    assert result["released"] == "returned None"
    assert result["taken"] is True
    assert result["same"] is True
    flags.disable("a", by="parent")
    assert not flags.enabled("a")
    flags.close()


T = TypeVar("T")


class _ForkInWriteStore(MemoryFlagStore):
    """A store whose transaction forks first, once armed: a fork inside a
    ``FeatureFlags`` write (its thread holds the flags' lock through the fork)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.child_wr: int | None = None  # set in the child only
        self.parent_end: tuple[int, int] | None = None  # (pid, read end), in the parent

    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        if self.armed:
            self.armed = False
            rd, wr = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rd)
                self.child_wr = wr
            else:
                os.close(wr)
                self.parent_end = (pid, rd)
        return super().transaction(fn)


def test_a_write_the_forking_thread_finishes_in_the_child_leaves_the_flags_closed() -> None:
    """The write goes on in the child after the fork and rebuilds the tables:
    before, that put live tables back in place of the fork's closed ones, so
    the child's ``enabled()`` answered from a copy nothing updates."""
    store = _ForkInWriteStore()
    flags = FeatureFlags(FLAGS, store=store)
    store.armed = True
    try:
        wrote = outcome(lambda: flags.disable("a", by="writer"))  # forks inside
    finally:
        if store.child_wr is not None:  # the child, back from the write: never returns
            child_reports(store.child_wr, lambda: {"enabled": outcome(lambda: flags.enabled("a"))})
    assert store.parent_end is not None
    result = child_result(*store.parent_end)
    assert_closed_by_fork(result)
    assert wrote == "returned None"
    assert not flags.enabled("a")  # the parent's write
    flags.close()
    store.close()


def test_a_forked_child_of_an_owned_memory_store_flags_is_closed_without_a_hang() -> None:
    flags = FeatureFlags(FLAGS)  # its own MemoryFlagStore
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with flags._lock:
            holding.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)
    try:
        result = in_child(
            lambda: {
                "closed": {"flags.disable": outcome(lambda: flags.disable("a"))},
                "close": outcome(flags.close),
            }
        )
    finally:
        release.set()
        thread.join(10)
    assert_closed_by_fork(result["closed"])
    assert result["close"] == "returned None"
    flags.disable("a")
    assert not flags.enabled("a")
    flags.close()


# -------------------------------------------------------------------- registry


def test_a_forked_childs_close_and_unregister_leave_the_parents_registrations(
    redis_server: RedisServer, stop: threading.Event
) -> None:
    namespace = f"fork-{uuid.uuid4().hex[:8]}"
    # A long lease: nothing expires by itself during the test.
    parent = RedisRegistry(redis_server.url, namespace=namespace, lease_ttl=30.0)
    for i in range(3):
        parent.register(("job", i), spawn_thread(stop.wait))
    watcher = RedisRegistry(redis_server.url, namespace=namespace)
    observer = RedisObserver(redis_server.url, namespace=namespace)
    events: list[RegistryEvent] = []
    watcher.subscribe(events.append)
    assert watcher.wait_for_version(parent.status().written)
    assert watcher.count() == 3

    def child() -> dict[str, Any]:
        calls: dict[str, Callable[[], object]] = {
            "unregister": lambda: parent.unregister(("job", 0)),
            "update_metadata": lambda: parent.update_metadata(("job", 1), {"by": "child"}),
            "register": lambda: parent.register("child", spawn_thread(stop.wait)),
            "register_many": lambda: parent.register_many([("c", spawn_thread(stop.wait))]),
            "lookup": lambda: parent.lookup(("job", 0)),
            "count": parent.count,
            "list_all": parent.list_all,
            "status": parent.status,
            "subscribe": lambda: parent.subscribe(lambda event: None),
            "observer.count": observer.count,
            "observer.list_all": observer.list_all,
        }
        closed = {name: outcome(call) for name, call in calls.items()}
        closes = {
            "close": outcome(parent.close),
            "watcher.close": outcome(watcher.close),
            "observer.close": outcome(observer.close),
        }
        return {"closed": closed, "closes": closes}

    result = in_child(child)
    # The parent's next write lands after anything the child could have sent:
    # once the watcher has applied it, it has seen every change of the child.
    parent.register("after", spawn_thread(stop.wait))
    assert watcher.wait_for_version(parent.status().written)
    assert [e for e in events if e.kind != "registered"] == []
    assert watcher.count() == 4
    assert watcher.lookup(("job", 0)) is not None
    wait_for(lambda: observer.count() == 4, "the observer to see the parent's 4 entries")
    # The parent's lease was never released by the child: its write needed no
    # recovery, and it still says connected with every entry.
    status = parent.status()
    assert status.connected
    assert status.recoveries == 0
    assert status.entries == 4
    assert parent.lookup(("job", 0)) is not None
    # Checked last: without the fix, the parent's checks above fail first.
    assert_closed_by_fork(result["closed"])
    assert set(result["closes"].values()) == {"returned None"}
    observer.close()
    watcher.close()
    parent.close()


@pytest.mark.parametrize("held_by", ["nobody", "the forking thread"])
def test_an_inherited_memory_store_is_the_childs_own_copy_when_no_parent_thread_held_it(
    held_by: str,
) -> None:
    """The child builds flags over its copy of the store and writes; a lock the
    forking thread itself held (reentrant) does not close it."""
    store = MemoryFlagStore()
    FeatureFlags(FLAGS, store=store).disable("a", by="parent")

    def child() -> dict[str, Any]:
        with FeatureFlags(FLAGS, store=store) as flags:
            before = flags.enabled("a")  # the parent's state at the fork
            flags.disable("b", by="child")
            return {"a": before, "b": flags.enabled("b")}

    if held_by == "nobody":
        result = in_child(child)
    else:
        with store._lock:
            result = in_child(child)
    assert result == {"a": False, "b": False}
    assert FeatureFlags(FLAGS, store=store).enabled("b")  # the child's write stayed there
    store.close()


def test_an_inherited_memory_store_is_closed_in_the_child_if_a_parent_thread_was_in_a_commit() -> (
    None
):
    """A parent thread is inside a transaction at the fork (it holds the store's
    lock): the child's copy may hold that commit half-applied (states without
    the migration stage), so the child's store is closed, naming fork(), and
    nothing hangs; a store made in the child works, and the parent's commit lands."""
    store = MemoryFlagStore()
    flags = FeatureFlags(FLAGS, store=store)
    holding, release = threading.Event(), threading.Event()

    def commit(txn: Any) -> None:
        txn.put_migration("plan", 1, MigrationEvent("plan", "advance", 0, 1))
        holding.set()
        release.wait()

    thread = threading.Thread(target=lambda: store.transaction(commit))
    thread.start()
    assert holding.wait(10)

    def child() -> dict[str, Any]:
        calls: dict[str, Callable[[], object]] = {
            "load_states": store.load_states,
            "transaction": lambda: store.transaction(lambda txn: None),
            "history": store.history,
            "migration_stage": lambda: store.migration_stage("plan"),
            "migration_history": lambda: store.migration_history("plan"),
            "catalogue": store.catalogue,
            "plans": store.plans,
            "subscribe": lambda: store.subscribe(lambda changes: None),
            "FeatureFlags(store=)": lambda: FeatureFlags(FLAGS, store=store),
        }
        closed = {name: outcome(call) for name, call in calls.items()}
        with FeatureFlags(FLAGS) as fresh:  # what the message says to do
            fresh.disable("b", by="child")
            seen = fresh.enabled("b")
        return {"closed": closed, "close": outcome(store.close), "fresh b": seen}

    try:
        result = in_child(child)
    finally:
        release.set()
        thread.join(10)
    assert_closed_by_fork(result["closed"])
    assert "was using it at the fork" in result["closed"]["load_states"]
    assert result["close"] == "returned None"
    assert result["fresh b"] is False
    assert store.migration_stage("plan") == 1  # the parent's commit landed
    flags.disable("a", by="parent")
    assert not flags.enabled("a")
    flags.close()
    store.close()


# ---------------------------------------------------------------- module locks


def _new_redis_flag_store(redis: RedisServer) -> dict[str, Any]:
    # What the Closed message advises; its constructor adds it to the live
    # stores under _status._live_lock, which a metrics scrape also takes.
    namespace = f"fork-{uuid.uuid4().hex[:8]}"
    with RedisFlagStore(redis.url, namespace=namespace, cache_path=None):
        return {"gauged": namespace in store_gauges()}


def _async_register(redis: RedisServer) -> dict[str, Any]:
    async def main() -> int:
        namespace = f"fork-{uuid.uuid4().hex[:8]}"
        # Its writes block: the first async one makes its executor under _executor_lock.
        with RedisRegistry(redis.url, namespace=namespace) as registry:
            await registry.register_async("me", asyncio.current_task())
            return registry.count()

    return {"count": asyncio.run(main())}


def _attach_telemetry(redis: RedisServer) -> dict[str, Any]:
    heard: list[str] = []
    detach = telemetry.attach("test.fork", lambda name, data: heard.append(name))
    telemetry.emit("test.fork", {})
    detach()
    return {"heard": heard}


def _abandon_a_thread(redis: RedisServer) -> dict[str, Any]:
    # What a supervisor in a process child does with a thread child that ignores stopping.
    return {"abandoned": _runs._count_abandoned("tree", "child", threading.current_thread())}


def _monitor_a_thread(redis: RedisServer) -> dict[str, Any]:
    # The default manager is made under liveness._default_lock; watching a plain
    # thread installs the excepthook under _threads._hook_lock.
    done = threading.Event()
    downs: list[str] = []
    thread = threading.Thread(target=done.wait)
    thread.start()
    monitor(thread, lambda down: downs.append(down.reason))
    done.set()
    thread.join()
    wait_for(lambda: bool(downs), "the child's thread to be seen down")
    return {"downs": downs}


def _count_evaluations(redis: RedisServer) -> dict[str, Any]:
    # What a metrics reader's first collect does: start counting (under the lock).
    metrics._evaluations.start()
    try:
        with FeatureFlags(FLAGS) as flags:
            flags.enabled("a")
        return {"counted": metrics.evaluation_counts().get("a", 0) > 0}
    finally:
        metrics._evaluations.stop()


@pytest.mark.parametrize(
    ("lock", "action", "expected"),
    [
        pytest.param(
            lambda: metrics._evaluations._lock,
            _count_evaluations,
            {"counted": True},
            id="evaluations",
        ),
        pytest.param(
            lambda: _status._live_lock, _new_redis_flag_store, {"gauged": True}, id="flag-stores"
        ),
        pytest.param(lambda: _async._executor_lock, _async_register, {"count": 1}, id="executor"),
        pytest.param(
            lambda: telemetry._lock, _attach_telemetry, {"heard": ["test.fork"]}, id="telemetry"
        ),
        pytest.param(
            lambda: _runs._abandoned_lock, _abandon_a_thread, {"abandoned": 1}, id="abandoned"
        ),
        pytest.param(
            lambda: liveness._default_lock,
            _monitor_a_thread,
            {"downs": ["normal"]},
            id="default-manager",
        ),
        pytest.param(
            lambda: _threads._hook_lock, _monitor_a_thread, {"downs": ["normal"]}, id="excepthook"
        ),
    ],
)
def test_a_module_lock_a_parent_thread_held_at_the_fork_is_free_in_the_child(
    lock: Callable[[], Any],
    action: Callable[[RedisServer], dict[str, Any]],
    expected: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    """A parent thread holds a module-level lock at the fork (a metrics scrape
    holds the flag stores' lock, a registry makes its executor...): the child's
    own use of it (a new store, as the Closed message advises) does not hang."""
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock():
            holding.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)
    try:
        result = in_child(lambda: action(redis_server))
    finally:
        release.set()
        thread.join(10)
    assert result == expected
    with lock():  # the parent's lock works as before
        pass


class _BrokenOnFork:
    """A tracked object whose fork hook fails: ``_fork`` reports it in the child."""

    def _inherited_by_fork(self) -> None:
        raise RuntimeError("broken on purpose")


def test_a_failing_fork_hook_is_reported_in_the_child_though_a_parent_thread_held_the_report_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """_fork's own error path forwards the report to an installed unraisablehook,
    capturing its argument type under _unraisable's lock the first time: a
    parent thread held that lock at the fork, and the child hung inside fork()."""
    reports: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda args: reports.append(str(args.exc_value)))
    # Not captured yet in this process (a box, refilled on the next report).
    monkeypatch.setattr(_unraisable, "_args_type", [])
    broken = _BrokenOnFork()
    _fork.track(broken)
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with _unraisable._type_lock:
            holding.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    assert holding.wait(10)
    try:
        result = in_child(lambda: {"reports": reports})
    finally:
        release.set()
        thread.join(10)
        _fork._LIVE.discard(broken)
    assert result == {"reports": ["broken on purpose"]}
    assert reports == []  # the parent's object was never touched


def test_a_module_rlock_the_forking_thread_held_stays_its_own_in_the_child() -> None:
    """The forking thread goes on in the child: the RLock it held at the fork is
    still its own there, so its ``with`` block releases it as in the parent."""

    def child() -> dict[str, Any]:
        _unraisable._type_lock.release()  # what the forking thread's `with` does next
        with _unraisable._type_lock:
            return {"released and taken again": True}

    with _unraisable._type_lock:
        result = in_child(child)
    assert result == {"released and taken again": True}
