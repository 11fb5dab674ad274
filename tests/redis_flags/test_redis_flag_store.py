"""RedisFlagStore under FeatureFlags, against a real redis-server (see tests/conftest.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from foundation import errors
from foundation.flags import (
    FeatureFlags,
    FlagChange,
    FlagState,
    MemoryFlagStore,
    MigrationEvent,
    RedisFlagStore,
)
from tests.redis_flags._support import REPO, Node, raw_client, wait_until
from tests.redis_flags.conftest import FLAGS, StoreFactory
from tests.redis_support import RedisServer

OpenFlags = Callable[[RedisFlagStore], FeatureFlags]


class Recorder:
    """A store subscriber that records every delivery."""

    def __init__(self) -> None:
        self.deliveries: list[list[FlagChange]] = []
        self._lock = threading.Lock()

    def __call__(self, changes: list[FlagChange]) -> None:
        with self._lock:
            self.deliveries.append(changes)

    def flags(self) -> list[str]:
        with self._lock:
            return [c.flag for batch in self.deliveries for c in batch]

    def count(self) -> int:
        with self._lock:
            return len(self.deliveries)


# ----------------------------------------------------------------- persistence


def test_state_and_history_persist_across_a_new_feature_flags(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    first = open_flags(open_store(redis_server.url))
    first.set_percentage("beta", 25, by="ana", reason="ramp")
    first.allow("beta", "alice")
    first.disable("kill_switch", by="oncall", reason="incident")
    first.close()

    again = open_flags(open_store(redis_server.url))
    assert again.state("beta") == FlagState(True, 25.0, frozenset({"alice"}))
    assert again.enabled("beta", actor="alice") is True
    assert again.enabled("kill_switch") is False
    history = again.history()
    assert [(c.flag, c.by, c.reason) for c in history] == [
        ("beta", "ana", "ramp"),
        ("beta", None, None),
        ("kill_switch", "oncall", "incident"),
    ]
    assert again.history("kill_switch")[0].old == FlagState(True)
    assert again.history("kill_switch")[0].new == FlagState(False)


def test_clear_deletes_the_runtime_state_in_redis(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    store = open_store(redis_server.url)
    flags = open_flags(store)
    flags.enable("beta")
    assert "beta" in store.load_states()
    flags.clear("beta")
    assert "beta" not in store.load_states()
    assert flags.enabled("beta") is False
    assert [c.new.switch for c in store.history("beta")] == [True, False]


def test_migration_stages_and_events_persist(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    store = open_store(redis_server.url)
    event = MigrationEvent("default", "advance", 0, 1, "ops", "go", 1.0)

    def advance(txn: Any) -> int:
        stage = int(txn.migration_stage("default"))
        txn.put_migration("default", stage + 1, event)
        return stage + 1

    assert store.transaction(advance) == 1
    other = open_store(redis_server.url)
    assert other.migration_stage("default") == 1
    assert other.migration_stage("never_started") == 0
    assert other.migration_history("default") == [event]
    assert other.migration_history("another_plan") == []


# ----------------------------------------------------------------- propagation


def test_a_change_on_one_store_reaches_another_store_in_the_same_process(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    a = open_flags(open_store(redis_server.url))
    b = open_flags(open_store(redis_server.url))
    heard: list[FlagChange] = []
    b.subscribe(heard.append)
    assert b.enabled("beta") is False

    a.enable("beta", by="ana")
    assert wait_until(lambda: b.enabled("beta"))
    assert wait_until(lambda: [c.flag for c in heard] == ["beta"])
    assert heard[0].by == "ana"

    a.deny("beta", "mallory")
    assert wait_until(lambda: b.enabled("beta", actor="mallory") is False)
    assert b.enabled("beta", actor="alice") is True


def test_a_store_reports_its_own_commits_to_its_other_subscribers_only(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    mine = open_store(redis_server.url)
    other = open_store(redis_server.url)
    mine_heard, other_heard = Recorder(), Recorder()
    mine.subscribe(mine_heard)
    other.subscribe(other_heard)
    flags = open_flags(mine)
    flags_heard: list[FlagChange] = []
    flags.subscribe(flags_heard.append)

    flags.enable("beta")
    flags.reset_all(by="ops")  # one transaction, several changes
    # other hears both transactions, each as one delivery, in commit order.
    assert wait_until(lambda: other_heard.count() == 2)
    assert other_heard.deliveries[0][0].flag == "beta"
    assert [c.flag for c in other_heard.deliveries[1]] == ["beta"]
    # The same stream carried both to `mine`: told to its other subscriber (a
    # FeatureFlags sharing the store object would be one), not back to `flags`,
    # which wrote them and heard them at the write.
    assert wait_until(lambda: mine_heard.count() == 2)
    assert mine_heard.flags() == ["beta", "beta"]
    open_flags(other).enable("gamma")  # a fence: delivered after any second copy
    assert wait_until(lambda: any(c.flag == "gamma" for c in flags_heard))
    assert [c.flag for c in flags_heard] == ["beta", "beta", "gamma"]


def test_a_commit_between_load_and_subscribe_makes_the_store_send_a_reload(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    a, b = open_store(redis_server.url), open_store(redis_server.url)
    probe = Recorder()
    b.subscribe(probe)
    change = FlagChange("beta", FlagState(False), FlagState(True))

    def write(txn: Any) -> None:
        txn.put("beta", FlagState(True), change)

    # Load, then a commit elsewhere is delivered (to the probe only), then subscribe:
    # the late subscriber missed it, so the store sends it one "reload".
    assert b.load_states() == {}
    a.transaction(write)
    assert wait_until(lambda: probe.count() == 1)
    late = Recorder()
    b.subscribe(late)
    assert wait_until(lambda: late.count() == 1)
    assert late.deliveries == [[]]

    # Load after the delivery, then subscribe: nothing was missed, no reload.
    b.load_states()
    on_time = Recorder()
    b.subscribe(on_time)
    a.transaction(write)
    assert wait_until(lambda: on_time.count() == 1)
    assert on_time.flags() == ["beta"]


def test_a_change_on_node_a_is_seen_by_node_b_in_another_process(
    redis_server: RedisServer,
    open_store: StoreFactory,
    open_flags: OpenFlags,
    namespace: str,
    tmp_path: Path,
) -> None:
    node_b = Node(redis_server.url, namespace, tmp_path / "node-b.sqlite3")
    try:
        node_b.expect("ready")
        a = open_flags(open_store(redis_server.url))
        assert node_b.ask("enabled beta") == "False"

        a.enable("beta", by="node-a")
        node_b.expect("change beta True")
        assert node_b.ask("enabled beta") == "True"

        a.disable("kill_switch", by="node-a")  # a kill switch reaches B too
        node_b.expect("change kill_switch False")
        assert node_b.ask("enabled kill_switch") == "False"

        # And the other way: B writes, A's local cache follows.
        assert node_b.ask("enable gamma") == "done"
        assert wait_until(lambda: a.enabled("gamma"))
        assert a.history("gamma")[-1].by == "node-b"
    finally:
        node_b.close()
    assert node_b.process.returncode == 0, node_b.stderr()


def test_namespaces_isolate_deployments(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    blue_store = open_store(redis_server.url, namespace="blue-" + str(id(open_store)))
    green_store = open_store(redis_server.url, namespace="green-" + str(id(open_store)))
    green_heard = Recorder()
    green_store.subscribe(green_heard)
    blue, green = open_flags(blue_store), open_flags(green_store)
    # A store in blue's namespace hears blue's change: proof that it was delivered...
    blue_peer = open_store(redis_server.url, namespace=blue_store.namespace)
    blue_heard = Recorder()
    blue_peer.subscribe(blue_heard)

    blue.enable("beta")
    assert wait_until(lambda: blue_heard.count() == 1)
    # ...while green saw nothing and stores nothing of it.
    assert green_heard.count() == 0
    assert green.enabled("beta") is False
    assert green_store.load_states() == {}
    assert green_store.history() == []


def test_many_writers_on_two_stores_never_lose_an_update(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    nodes = [open_flags(open_store(redis_server.url)) for _ in range(2)]
    start = threading.Barrier(4)

    def writer(flags: FeatureFlags, prefix: str) -> None:
        start.wait()
        for i in range(15):
            flags.allow("beta", f"{prefix}{i}")

    threads = [threading.Thread(target=writer, args=(nodes[i % 2], f"w{i}-")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {f"w{i}-{j}" for i in range(4) for j in range(15)}
    # Each allow read-modify-wrote the same record: WATCH made the losers retry.
    assert nodes[0].store.load_states()["beta"].allow == expected
    assert len(nodes[0].history("beta")) == 60
    assert wait_until(lambda: all(n.state("beta").allow == expected for n in nodes))


# ----------------------------------------------------------------- outages


def test_an_outage_fails_writes_fast_keeps_reads_and_restores_after_restart(
    fresh_redis: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    store_a = open_store(fresh_redis.url, timeout=1.0)
    store_b = open_store(fresh_redis.url, timeout=1.0)
    a, b = open_flags(store_a), open_flags(store_b)
    a.enable("beta")
    assert wait_until(lambda: b.enabled("beta") and store_b.status().version == 1)

    fresh_redis.kill()
    with pytest.raises(errors.BackendUnavailable, match="unreachable"):
        a.enable("gamma")
    with pytest.raises(ConnectionError):  # BackendUnavailable is a ConnectionError
        b.allow("beta", "alice")
    # Nothing changed locally, and the caches keep answering.
    assert a.enabled("gamma") is False
    assert a.enabled("beta") is True
    assert b.enabled("beta") is True
    assert b.state("beta").allow == frozenset()
    assert wait_until(lambda: not store_b.synced)
    assert store_b.stale
    assert [c.flag for c in b.history()] == ["beta"]  # from the node copy

    # Redis comes back EMPTY (no persistence): the nodes restore it from their copies.
    fresh_redis.start()
    assert wait_until(lambda: store_a.synced and store_b.synced)
    assert store_a.load_states()["beta"] == FlagState(True)
    assert a.enabled("beta") is True
    assert b.enabled("beta") is True
    # And propagation works again, on top of the restored history.
    a.enable("gamma", by="after-restart")
    assert wait_until(lambda: b.enabled("gamma"))
    assert [c.by for c in b.history()] == [None, "after-restart"]


def test_a_frozen_redis_fails_a_write_after_the_timeout_instead_of_hanging(
    fresh_redis: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    store = open_store(fresh_redis.url, timeout=0.3)
    flags = open_flags(store)
    flags.enable("beta")
    assert fresh_redis.process is not None
    fresh_redis.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        with pytest.raises(errors.BackendUnavailable, match="no answer in time"):
            flags.enable("gamma")
        assert flags.enabled("beta") is True
        assert flags.enabled("gamma") is False
    finally:
        fresh_redis.process.send_signal(signal.SIGCONT)
    # Redis answers again (and kept its data): writes go through again by
    # themselves. One within ``timeout`` of the write that timed out, before the
    # store heard Redis again, fails at once (docs/flags-outages.md), never waits.
    failures: list[str] = []

    def enable_gamma() -> bool:
        try:
            flags.enable("gamma")
        except errors.BackendUnavailable as exc:
            failures.append(str(exc))
            return False
        return True

    assert wait_until(enable_gamma)
    assert all("not answering" in why for why in failures), failures  # fast ones only
    assert store.load_states()["gamma"].switch is True


def test_keys_deleted_without_a_disconnect_are_noticed_and_restored(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    a = open_flags(open_store(redis_server.url))
    store_b = open_store(redis_server.url, resync_interval=0.2)
    b = open_flags(store_b)
    a.enable("beta")
    assert wait_until(lambda: b.enabled("beta"))

    # Someone deletes the deployment's keys behind everybody's back (FLUSHDB, a
    # failover to an empty replica...): B's connection never drops.
    raw = raw_client(redis_server.url)
    try:
        keys = ("state", "history", "meta")
        raw.delete(*(f"{{{store_b.namespace}}}:flags:{k}" for k in keys))
        # The listener notices within resync_interval and restores from its copy.
        assert wait_until(lambda: raw.hget(f"{{{store_b.namespace}}}:flags:state", "beta"))
    finally:
        raw.close()
    assert store_b.history("beta")[0].new == FlagState(True)
    assert b.enabled("beta") is True
    assert a.enabled("beta") is True


def test_a_subscriber_that_raises_does_not_stop_propagation(
    redis_server: RedisServer,
    open_store: StoreFactory,
    open_flags: OpenFlags,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))
    store_b = open_store(redis_server.url)

    def broken(changes: list[FlagChange]) -> None:
        raise RuntimeError("subscriber bug")

    store_b.subscribe(broken)
    a, b = open_flags(open_store(redis_server.url)), open_flags(store_b)
    a.enable("beta")
    a.enable("gamma")
    assert wait_until(lambda: b.enabled("beta") and b.enabled("gamma"))
    assert wait_until(lambda: len(reported) == 2)
    assert all(isinstance(e, RuntimeError) for e in reported)


# ----------------------------------------------------------------- connections


def test_an_unreachable_redis_is_a_clear_backend_unavailable(open_store: StoreFactory) -> None:
    dead = RedisServer()  # a free port that nobody listens on
    with pytest.raises(errors.BackendUnavailable, match=rf"127\.0\.0\.1:{dead.port}.*unreachable"):
        open_store(dead.url, timeout=0.5)


def test_a_wrong_password_is_a_clear_error_that_hides_the_password(
    open_store: StoreFactory,
) -> None:
    with RedisServer(password="s3cret-pass") as server:
        wrong = server.url.replace("s3cret-pass", "guessed-pass")
        with pytest.raises(errors.BackendUnavailable, match="credentials") as caught:
            open_store(wrong)
        assert "guessed-pass" not in str(caught.value)
        missing = server.url.replace(":s3cret-pass@", "")
        with pytest.raises(errors.BackendUnavailable, match="requires a password and the URL"):
            open_store(missing)
        # The right one works, through AUTH in the URL.
        store = open_store(server.url)
        assert store.load_states() == {}
        store.close()


def test_a_malformed_url_is_a_clear_error(open_store: StoreFactory) -> None:
    with pytest.raises(errors.InvalidConfig, match="invalid Redis URL"):
        open_store("http://127.0.0.1:1/0")
    with pytest.raises(errors.InvalidConfig, match="url"):
        open_store("")
    with pytest.raises(errors.InvalidFlagValue, match="namespace"):
        open_store("redis://127.0.0.1:1/0", namespace="")


def test_constructing_without_the_redis_extra_names_foundation_redis() -> None:
    # A real interpreter where `import redis` fails, as without the extra.
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "from foundation import RedisFlagStore\n"
        "try:\n"
        "    RedisFlagStore('redis://127.0.0.1:1/0')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "foundation[redis]" in out.stdout, out.stderr


def test_close_stops_the_listener_and_later_calls_raise(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    store = open_store(redis_server.url)
    assert any(t.name.startswith("foundation-flags-redis") for t in threading.enumerate())
    store.close()
    store.close()  # idempotent
    assert not store.synced
    assert not any(
        t.name == f"foundation-flags-redis[{store.namespace}]" for t in threading.enumerate()
    )
    with pytest.raises(errors.Closed, match="closed"):
        store.load_states()
    with pytest.raises(errors.Closed, match="closed"):
        store.transaction(lambda txn: None)
    with pytest.raises(errors.Closed, match="closed"):
        store.subscribe(lambda changes: None)


# ----------------------------------------------------------------- bad input

BAD_CALLS: list[tuple[str, Callable[[FeatureFlags], object], type[Exception]]] = [
    ("unknown flag", lambda f: f.enable("btea"), errors.UnknownFlag),
    ("percentage above 100", lambda f: f.set_percentage("beta", 101), errors.InvalidFlagValue),
    ("percentage NaN", lambda f: f.set_percentage("beta", float("nan")), errors.InvalidFlagValue),
    ("non-bool set", lambda f: f.set("beta", "yes"), errors.InvalidFlagValue),  # type: ignore[arg-type]
    ("unknown read", lambda f: f.enabled("gama"), errors.UnknownFlag),
    ("unknown history", lambda f: f.history("nope"), errors.UnknownFlag),
]


@pytest.mark.parametrize(("case", "call", "error"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_the_same_typed_error_as_the_memory_store_and_stores_nothing(
    redis_server: RedisServer,
    open_store: StoreFactory,
    open_flags: OpenFlags,
    case: str,
    call: Callable[[FeatureFlags], object],
    error: type[Exception],
) -> None:
    store = open_store(redis_server.url)
    on_redis = open_flags(store)
    with (
        MemoryFlagStore() as memory,
        FeatureFlags(FLAGS, store=memory) as in_memory,
        pytest.raises(error) as from_memory,
    ):
        call(in_memory)
    with pytest.raises(error) as from_redis:
        call(on_redis)
    assert type(from_redis.value) is type(from_memory.value)
    assert str(from_redis.value) == str(from_memory.value)
    assert store.load_states() == {}
    assert store.history() == []


def test_store_level_bad_input_raises_before_anything_is_written(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    store = open_store(redis_server.url)
    good = FlagChange("beta", FlagState(False), FlagState(True))

    def half_bad(txn: Any) -> None:
        txn.put("beta", FlagState(True), good)
        txn.put("gamma", {"switch": True}, good)  # not a FlagState

    with pytest.raises(errors.InvalidFlagValue):
        store.transaction(half_bad)
    with pytest.raises(errors.InvalidFlagValue):
        store.transaction(lambda txn: txn.put_migration("default", -1, None))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidFlagValue):
        store.history(42)  # type: ignore[arg-type]
    assert store.load_states() == {}
    assert store.history() == []
    assert store.migration_stage("default") == 0


def test_an_exception_inside_a_transaction_writes_nothing(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    store = open_store(redis_server.url)

    class Boom(Exception):
        pass

    def body(txn: Any) -> None:
        txn.put("beta", FlagState(True), FlagChange("beta", FlagState(False), FlagState(True)))
        raise Boom

    with pytest.raises(Boom):
        store.transaction(body)
    assert store.load_states() == {}
    assert store.history() == []


def test_corrupt_state_in_redis_is_a_flag_error(
    redis_server: RedisServer, open_store: StoreFactory
) -> None:
    store = open_store(redis_server.url)
    raw = raw_client(redis_server.url)
    try:
        raw.hset(f"{{{store.namespace}}}:flags:state", "beta", "{not json")
    finally:
        raw.close()
    with pytest.raises(errors.FlagError, match="corrupt"):
        store.load_states()


def test_the_change_feed_is_delivered_in_commit_order(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    b_store = open_store(redis_server.url)
    heard = Recorder()
    b_store.subscribe(heard)
    a = open_flags(open_store(redis_server.url))
    for i in range(20):
        a.set_percentage("beta", i)
    assert wait_until(lambda: heard.count() == 20)
    assert [batch[0].new.percentage for batch in heard.deliveries] == [float(i) for i in range(20)]
