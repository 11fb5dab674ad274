"""foundation.metrics: counters and gauges fed by real flags, migrations, registries,
supervisors and a real redis-server; the Prometheus collector parsed back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from foundation import MemoryRegistry, spawn_thread
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
)
from foundation.flags._flags import FeatureFlags as _FlagsClass
from foundation.metrics import Metrics, evaluation_counts, prometheus_collector
from foundation.supervision import Supervisor
from tests import _metrics_fixture
from tests._metrics_fixture import ORIGINAL_ENABLED
from tests.faults._subprocess import run_scenario
from tests.flags._node_copy import to_memory, write_back_now
from tests.redis_support import RedisServer
from tests.supervision._support import Crew, run, until


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)  # sleep-ok: polling a background thread's effect with a deadline


metrics = _metrics_fixture.metrics  # the fixture: installed, checked after


@pytest.fixture
def sqlite_flags(tmp_path: Path) -> Iterator[FeatureFlags]:
    store = SQLiteFlagStore(tmp_path / "flags.sqlite3")
    flags = FeatureFlags([*DEFAULT_FLAGS, Flag("beta"), Flag("gamma")], store=store)
    yield flags
    flags.close()
    store.close()


def test_evaluations_are_not_counted_until_a_reader_collects(
    metrics: Metrics, sqlite_flags: FeatureFlags
) -> None:
    assert _FlagsClass.__dict__["enabled"] is ORIGINAL_ENABLED
    before = evaluation_counts().get("beta", 0)
    sqlite_flags.enabled("beta")
    assert evaluation_counts().get("beta", 0) == before  # nobody reads: no counting
    metrics.snapshot()
    assert _FlagsClass.__dict__["enabled"] is not ORIGINAL_ENABLED
    for _ in range(5):
        sqlite_flags.enabled("beta")
    sqlite_flags.enabled("beta", actor="user-1")
    assert metrics.value("foundation_flag_evaluations_total", flag="beta") == before + 6


def test_unknown_flags_are_not_counted_and_actors_never_become_labels(
    metrics: Metrics, sqlite_flags: FeatureFlags
) -> None:
    metrics.count_evaluations()
    sqlite_flags.enabled("beta", actor="user-42")
    with pytest.raises(KeyError):
        sqlite_flags.enabled("no_such_flag")
    samples = metrics.samples()["foundation_flag_evaluations_total"]
    assert "no_such_flag" not in {s.labels["flag"] for s in samples}
    assert all(set(s.labels) == {"flag"} for s in samples)
    assert "user-42" not in repr(metrics.snapshot())


def test_concurrent_evaluations_lose_no_count(metrics: Metrics) -> None:
    metrics.count_evaluations()
    flags = FeatureFlags([Flag("hot_flag_for_threads")])
    threads_n, per_thread = 8, 20_000
    start = threading.Barrier(threads_n)

    def reader() -> None:
        start.wait()
        for _ in range(per_thread):
            flags.enabled("hot_flag_for_threads")

    threads = [threading.Thread(target=reader) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flags.close()
    counted = metrics.value("foundation_flag_evaluations_total", flag="hot_flag_for_threads")
    assert counted == threads_n * per_thread


def test_two_readers_share_counting_until_the_last_one_stops(metrics: Metrics) -> None:
    other = Metrics()
    other.install()
    metrics.count_evaluations()
    other.count_evaluations()
    other.uninstall()
    assert _FlagsClass.__dict__["enabled"] is not ORIGINAL_ENABLED  # `metrics` still reads


def test_flag_changes_and_migration_steps_and_stage(
    metrics: Metrics, sqlite_flags: FeatureFlags
) -> None:
    plan = MigrationPlan(
        [Stage(1, "registry", ("use_ets_agent_registry",)), Stage(2, "gamma", ("gamma",))]
    )
    migration = Migration(sqlite_flags, plan)
    metrics.watch_migration(migration)
    assert metrics.value("foundation_migration_stage", plan="default") == 0.0
    sqlite_flags.enable("beta", by="ana", reason="launch")
    sqlite_flags.disable("beta", by="ana", reason="oops")
    assert metrics.value("foundation_flag_changes_total", flag="beta") == 2.0
    migration.advance(by="ops", reason="staging looks good")
    assert metrics.value("foundation_migration_stage", plan="default") == 1.0
    migration.advance(by="ops", reason="go")
    migration.rollback_to(1, by="ops", reason="slow")
    migration.emergency_rollback("errors spiking", by="oncall")
    steps = "foundation_migration_steps_total"
    assert metrics.value(steps, plan="default", action="advance") == 2.0
    assert metrics.value(steps, plan="default", action="rollback") == 1.0
    assert metrics.value(steps, plan="default", action="emergency_rollback") == 1.0
    assert metrics.value("foundation_migration_stage", plan="default") == 0.0
    # The plan's flags changed too, each counted.
    assert metrics.value("foundation_flag_changes_total", flag="use_ets_agent_registry") >= 2.0


def test_the_stage_gauge_follows_a_step_another_process_commits(
    metrics: Metrics, sqlite_flags: FeatureFlags, tmp_path: Path
) -> None:
    # Was: set once by watch_migration, then only by this process's own events:
    # after `foundation migration advance` elsewhere, status() said 1, the gauge 0.
    from tests.cli._support import run_cli

    plan = MigrationPlan([Stage(1, "registry", ("use_ets_agent_registry",))])
    migration = Migration(sqlite_flags, plan)
    metrics.watch_migration(migration)
    assert metrics.value("foundation_migration_stage", plan="default") == 0.0
    store = f"sqlite:///{tmp_path / 'flags.sqlite3'}"
    done = run_cli("migration", "advance", "--store", store, "--by", "ops", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert migration.status().stage == 1
    assert metrics.value("foundation_migration_stage", plan="default") == 1.0
    sqlite_flags.close()  # a closed store: the watch ends, the last value stays
    assert metrics.value("foundation_migration_stage", plan="default") == 1.0


def test_registry_operations_deaths_by_reason_and_entries(metrics: Metrics) -> None:
    stop_a, stop_b = threading.Event(), threading.Event()
    with MemoryRegistry() as reg:
        metrics.watch_registry(reg, name="agents")
        reg.register("a", spawn_thread(stop_a.wait), {"role": "io"})
        reg.register("b", spawn_thread(stop_b.wait))
        reg.update_metadata("a", {"role": "cpu"})
        assert metrics.value("foundation_registry_entries", registry="agents") == 2.0
        reg.unregister("a")
        stop_b.set()  # b's thread returns: its entry leaves with Down("normal")
        wait_for(lambda: reg.count() == 0)
        ops = "foundation_registry_operations_total"
        wait_for(lambda: metrics.value(ops, registry="agents", operation="unregistered") == 2.0)
        assert metrics.value(ops, registry="agents", operation="registered") == 2.0
        assert metrics.value(ops, registry="agents", operation="updated") == 1.0
        deaths = "foundation_registry_deaths_total"
        assert metrics.value(deaths, registry="agents", reason="normal") == 1.0
        assert metrics.value("foundation_registry_entries", registry="agents") == 0.0
        stop_a.set()
    # A closed registry reports no size rather than failing the scrape.
    assert metrics.samples()["foundation_registry_entries"] == []


def test_a_name_is_watched_once_and_unwatch_stops_counting(metrics: Metrics) -> None:
    stop = threading.Event()
    with MemoryRegistry() as reg:
        unwatch = metrics.watch_registry(reg, name="r")
        with pytest.raises(ValueError, match="already watched"):
            metrics.watch_registry(reg, name="r")
        unwatch()
        reg.register("x", spawn_thread(stop.wait))
        ops = "foundation_registry_operations_total"
        assert metrics.value(ops, registry="r", operation="registered") == 0.0
        stop.set()


@run
async def test_supervisor_restarts_and_exits_are_counted() -> None:
    metrics = Metrics()
    metrics.install()
    try:
        crew = Crew()
        sup = Supervisor([crew.spec("worker")], max_restarts=5, name="metered")
        await sup.start()
        crew.crash("worker")
        await until(lambda: sup.which_children()[0].restarts == 1)
        await sup.stop()
        restarts = "foundation_supervisor_restarts_total"
        assert metrics.value(restarts, supervisor="metered", child="worker") == 1.0
        exits = "foundation_supervisor_child_exits_total"
        assert metrics.value(exits, supervisor="metered", reason="exception") == 1.0
    finally:
        metrics.uninstall()


def test_redis_round_trips_are_timed(metrics: Metrics, tmp_path: Path) -> None:
    with RedisServer() as server:
        store = RedisFlagStore(
            server.url, namespace="metrics-test", cache_path=tmp_path / "node.sqlite3"
        )
        flags = FeatureFlags([Flag("beta")], store=store)
        try:
            flags.enable("beta", by="ana")
            hist = "foundation_redis_round_trip_seconds"
            assert metrics.value(hist, outcome="ok") > 0
            (sample,) = [s for s in metrics.samples()[hist] if s.labels["outcome"] == "ok"]
            assert sample.buckets[-1] == (float("inf"), int(sample.value))
            assert 0 < sample.sum < 60
        finally:
            flags.close()
            store.close()


FLAG_STORE_OUTAGE = """
import tempfile, pathlib
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.metrics import Metrics
from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer

metrics = Metrics()
metrics.install()
stale = "foundation_flag_store_stale"
events = "foundation_flag_store_events_total"
with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
    store = RedisFlagStore(server.url, namespace="outage", cache_path=pathlib.Path(tmp) / "n.db")
    flags = FeatureFlags([Flag("beta")], store=store)
    flags.enable("beta", by="ana")
    print("BEFORE", metrics.value(stale, namespace="outage"))
    server.kill()
    wait_for(lambda: metrics.value(stale, namespace="outage") == 1.0, "stale gauge")
    print("DURING", metrics.value(stale, namespace="outage"))
    flags.disable("beta", by="oncall")  # the kill switch is kept through the outage
    try:
        flags.enable("beta", by="ana")  # any other write tries Redis and fails
    except ConnectionError:
        pass
    print("ERRORS", metrics.value("foundation_redis_round_trip_seconds", outcome="error"))
    server.restart()
    wait_for(lambda: metrics.value(stale, namespace="outage") == 0.0, "gauge back to 0", 30)
    print("AFTER", metrics.value(stale, namespace="outage"))
    for what in ("stale", "pending_recorded", "in_sync", "restored", "pending_committed"):
        print("EVENT", what, metrics.value(events, event=what))
    flags.close()
    store.close()
metrics.uninstall()
print("OK")
"""


def test_flag_store_outage_moves_the_stale_gauge_and_counts_events() -> None:
    result = run_scenario(FLAG_STORE_OUTAGE)
    out = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert (out["BEFORE"], out["DURING"], out["AFTER"]) == ("0.0", "1.0", "0.0")
    assert float(out["ERRORS"]) >= 1.0  # failed round trips are timed too
    counted = dict(line.split()[1:] for line in result.lines("EVENT "))
    assert float(counted["stale"]) >= 1.0
    assert float(counted["pending_recorded"]) == 1.0
    assert float(counted["in_sync"]) + float(counted["restored"]) >= 1.0


def test_prometheus_collector_output_parses_with_prometheus_client(
    metrics: Metrics, sqlite_flags: FeatureFlags
) -> None:
    registry = CollectorRegistry()
    registry.register(prometheus_collector(metrics))
    generate_latest(registry)  # the first scrape starts evaluation counting
    sqlite_flags.enabled("beta")
    sqlite_flags.enabled("beta")
    sqlite_flags.enable("beta", by="ana")
    migration = Migration(sqlite_flags, MigrationPlan.default())
    migration.advance(by="ops")
    metrics._on_round_trip("test", {"seconds": 0.003, "ok": True})
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["foundation_flag_evaluations"].type == "counter"
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert values[("foundation_flag_evaluations_total", (("flag", "beta"),))] >= 2.0
    assert values[("foundation_flag_changes_total", (("flag", "beta"),))] == 1.0
    assert values[("foundation_migration_stage", (("plan", "default"),))] == 1.0
    assert families["foundation_migration_stage"].type == "gauge"
    assert families["foundation_redis_round_trip_seconds"].type == "histogram"
    bucket = (("le", "0.005"), ("outcome", "ok"))
    assert values[("foundation_redis_round_trip_seconds_bucket", bucket)] == 1.0
    assert values[("foundation_redis_round_trip_seconds_count", (("outcome", "ok"),))] == 1.0
    # No family is emitted twice and every name is in the foundation_ namespace.
    assert all(name.startswith("foundation_") for name in families)


def test_blocking_stream_reads_are_not_reported_as_round_trips() -> None:
    from foundation import _redis_conn, telemetry

    seen: list[str] = []
    detach = telemetry.attach(_redis_conn.ROUND_TRIP_EVENT, lambda _n, d: seen.append(d["doing"]))
    try:
        for doing in ("following the change stream", "reading the change stream", "a write"):
            with _redis_conn.translated("redis://h:1/0", doing):
                pass
    finally:
        detach()
    assert seen == ["a write"]


COPY_GAUGE = "foundation_flag_store_copy_in_memory"


def copy_gauge(metrics: Metrics, namespace: str) -> list[float]:
    """The gauge's samples for ``namespace`` (none: no open store of that namespace)."""
    return [s.value for s in metrics.samples()[COPY_GAUGE] if s.labels["namespace"] == namespace]


def test_the_copy_in_memory_gauge_reads_each_open_stores_status(
    metrics: Metrics, redis_server: RedisServer, tmp_path: Path
) -> None:
    """0 while the node copy is in its file, 1 while it lives in memory (its file
    failed: entered as a failing disk leaves it), 0 once written back; no sample
    once the store is closed. Read from status() at each collection."""
    store = RedisFlagStore(redis_server.url, namespace="copy-gauge", cache_path=tmp_path / "n.db")
    try:
        assert copy_gauge(metrics, "copy-gauge") == [0.0]
        to_memory(store._cache)
        assert store.status().copy_in_memory
        assert copy_gauge(metrics, "copy-gauge") == [1.0]
        registry = CollectorRegistry()
        registry.register(prometheus_collector(metrics))
        families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
        family = families[COPY_GAUGE]
        assert family.type == "gauge"
        assert [s.value for s in family.samples if s.labels == {"namespace": "copy-gauge"}] == [1.0]
        write_back_now(store._cache)
        assert copy_gauge(metrics, "copy-gauge") == [0.0]
    finally:
        store.close()
    assert copy_gauge(metrics, "copy-gauge") == []


COPY_IN_MEMORY_ON_A_FULL_DISK = """
import os, pathlib, resource, signal, tempfile
from foundation.flags import FeatureFlags, Flag, RedisFlagStore, _node_cache
from foundation.metrics import Metrics

_node_cache.RETRY_FILE_AFTER = 0.2
metrics = Metrics()
metrics.install()
gauge = "foundation_flag_store_copy_in_memory"

def value():
    return metrics.value(gauge, namespace="full-disk")

with tempfile.TemporaryDirectory() as tmp:
    store = RedisFlagStore(URL, namespace="full-disk", cache_path=pathlib.Path(tmp) / "n.db")
    flags = FeatureFlags([Flag("beta")], store=store)
    flags.enable("beta", by="ana")
    print("BEFORE", value())
    # The disk is full: writes past the limit fail with EFBIG (SIGXFSZ ignored).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))
    for i in range(200):  # until the copy's file cannot grow
        flags.allow("beta", "user-" + "x" * 500 + str(i), by="ana")
        if store.status().copy_in_memory:
            break
    print("DURING", value())
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    count = iter(range(10**6))

    def written_back():  # a write lets the copy try its file again
        flags.allow("beta", "later-%d" % next(count), by="ana")
        return value() == 0.0

    wait_for(written_back, "the copy written back")
    print("AFTER", value())
    flags.close()
    store.close()
    print("CLOSED", [s.value for s in metrics.samples()[gauge]])
metrics.uninstall()
print("OK")
"""


def test_a_full_disk_moves_the_copy_in_memory_gauge(fresh_redis: RedisServer) -> None:
    """The real fault, in a plain interpreter: the gauge is 1 while the copy's file
    cannot be written, 0 once the copy is written back, gone once the store closed."""
    result = run_scenario(f"URL = {fresh_redis.url!r}\n" + COPY_IN_MEMORY_ON_A_FULL_DISK)
    out = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert (out["BEFORE"], out["DURING"], out["AFTER"]) == ("0.0", "1.0", "0.0")
    assert out["CLOSED"] == "[]"
    assert "in memory, not durable until" in result.stderr
