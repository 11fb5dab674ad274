"""foundation.otel: instruments read back through the OpenTelemetry SDK's in-memory reader."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from foundation import MemoryRegistry, spawn_thread
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
)
from foundation.flags._flags import FeatureFlags as _FlagsClass
from foundation.otel import METER_NAME, OTelBridge, install
from foundation.supervision import Supervisor
from tests.flags._node_copy import to_memory, write_back_now
from tests.redis_support import RedisServer
from tests.supervision._support import Crew, run, until

ORIGINAL_ENABLED = _FlagsClass.__dict__["enabled"]


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Metric name -> SDK metric (with unit and data points) of the foundation meter."""
    data = reader.get_metrics_data()
    found: dict[str, Any] = {}
    if data is None:  # no instrument reported anything
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name == METER_NAME:
                for metric in scope.metrics:
                    found[metric.name] = metric
    return found


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}


@pytest.fixture
def sdk() -> Iterator[tuple[InMemoryMetricReader, OTelBridge]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge = install(provider)
    yield reader, bridge
    bridge.uninstall()
    provider.shutdown()
    assert _FlagsClass.__dict__["enabled"] is ORIGINAL_ENABLED


@pytest.fixture
def flags(tmp_path: Path) -> Iterator[FeatureFlags]:
    store = SQLiteFlagStore(tmp_path / "flags.sqlite3")
    f = FeatureFlags([*DEFAULT_FLAGS, Flag("beta")], store=store)
    yield f
    f.close()
    store.close()


def test_without_an_sdk_the_flag_hot_path_is_untouched(flags: FeatureFlags) -> None:
    for provider in (None, NoOpMeterProvider()):
        bridge = install(provider)
        try:
            flags.enabled("beta")
            assert _FlagsClass.__dict__["enabled"] is ORIGINAL_ENABLED
        finally:
            bridge.uninstall()


def test_an_sdk_bridge_without_evaluation_counting_leaves_enabled_untouched(
    flags: FeatureFlags,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge = install(provider, count_evaluations=False)
    try:
        flags.enabled("beta")
        flags.enable("beta")
        metrics = collect(reader)
        assert _FlagsClass.__dict__["enabled"] is ORIGINAL_ENABLED
        assert "foundation.flag.evaluations" not in metrics
        assert "foundation.flag.changes" in metrics
    finally:
        bridge.uninstall()
        provider.shutdown()


def test_flag_evaluations_and_changes_with_units_and_no_actor_attribute(
    sdk: tuple[InMemoryMetricReader, OTelBridge], flags: FeatureFlags
) -> None:
    reader, _ = sdk
    before = collect(reader).get("foundation.flag.evaluations")
    start = points(before).get((("flag", "beta"),)) if before is not None else None
    start_value = 0 if start is None else start.value  # process-wide counts only grow
    for _ in range(3):
        flags.enabled("beta")
    flags.enabled("beta", actor="user-99")
    flags.enable("beta", by="ana", reason="launch")
    metrics = collect(reader)
    evaluations = metrics["foundation.flag.evaluations"]
    assert evaluations.unit == "{evaluation}"
    (point,) = [p for k, p in points(evaluations).items() if k == (("flag", "beta"),)]
    assert point.value - start_value == 4
    assert all(set(dict(k)) == {"flag"} for k in points(evaluations))
    changes = metrics["foundation.flag.changes"]
    assert changes.unit == "{change}"
    assert points(changes)[(("flag", "beta"),)].value == 1
    assert not any(name.endswith("_total") for name in metrics)


def test_migration_stage_and_steps(
    sdk: tuple[InMemoryMetricReader, OTelBridge], flags: FeatureFlags
) -> None:
    reader, _ = sdk
    migration = Migration(flags, MigrationPlan.default())
    migration.advance(by="ops", reason="go")
    metrics = collect(reader)
    stage = metrics["foundation.migration.stage"]
    assert stage.unit == "{stage}"
    assert points(stage)[(("plan", "default"),)].value == 1
    migration.emergency_rollback("errors", by="oncall")
    metrics = collect(reader)
    assert points(metrics["foundation.migration.stage"])[(("plan", "default"),)].value == 0
    steps = points(metrics["foundation.migration.steps"])
    assert steps[(("action", "advance"), ("plan", "default"))].value == 1
    assert steps[(("action", "emergency_rollback"), ("plan", "default"))].value == 1


def test_registry_entries_operations_and_deaths(
    sdk: tuple[InMemoryMetricReader, OTelBridge],
) -> None:
    reader, bridge = sdk
    stop_a, stop_b = threading.Event(), threading.Event()
    with MemoryRegistry() as reg:
        bridge.watch_registry(reg, name="agents")
        reg.register("a", spawn_thread(stop_a.wait))
        reg.register("b", spawn_thread(stop_b.wait))
        entries = collect(reader)["foundation.registry.entries"]
        assert entries.unit == "{entry}"
        assert points(entries)[(("registry", "agents"),)].value == 2
        stop_b.set()
        deaths_key = (("reason", "normal"), ("registry", "agents"))

        def died() -> bool:
            metric = collect(reader).get("foundation.registry.deaths")
            found = {} if metric is None else points(metric)
            return deaths_key in found and found[deaths_key].value == 1

        deadline = time.monotonic() + 10
        while not died():
            assert time.monotonic() < deadline, "the death was never counted"
            time.sleep(0.005)  # sleep-ok: polling the monitor thread's effect with a deadline
        metrics = collect(reader)
        assert metrics["foundation.registry.deaths"].unit == "{death}"
        assert points(metrics["foundation.registry.entries"])[(("registry", "agents"),)].value == 1
        ops = points(metrics["foundation.registry.operations"])
        assert ops[(("operation", "registered"), ("registry", "agents"))].value == 2
        stop_a.set()


@run
async def test_supervisor_restarts() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge = install(provider)
    try:
        crew = Crew()
        sup = Supervisor([crew.spec("w")], max_restarts=5, name="otel-sup")
        await sup.start()
        crew.crash("w")
        await until(lambda: sup.which_children()[0].restarts == 1)
        await sup.stop()
        restarts = collect(reader)["foundation.supervisor.restarts"]
        assert restarts.unit == "{restart}"
        assert points(restarts)[(("child", "w"), ("supervisor", "otel-sup"))].value == 1
    finally:
        bridge.uninstall()
        provider.shutdown()


def test_redis_round_trip_histogram_in_seconds(
    sdk: tuple[InMemoryMetricReader, OTelBridge], tmp_path: Path
) -> None:
    reader, _ = sdk
    with RedisServer() as server:
        store = RedisFlagStore(server.url, namespace="otel-test", cache_path=tmp_path / "n.db")
        flags = FeatureFlags([Flag("beta")], store=store)
        try:
            flags.enable("beta", by="ana")
            hist = collect(reader)["foundation.redis.round_trip"]
            assert hist.unit == "s"
            (point,) = [p for k, p in points(hist).items() if k == (("outcome", "ok"),)]
            assert point.count >= 1
            assert 0 < point.sum < 60
        finally:
            flags.close()
            store.close()


def test_after_uninstall_the_instruments_report_nothing_new(
    flags: FeatureFlags,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge = install(provider)
    flags.enable("beta")
    assert "foundation.flag.changes" in collect(reader)
    bridge.uninstall()
    bridge.uninstall()  # idempotent
    flags.disable("beta")
    assert _FlagsClass.__dict__["enabled"] is ORIGINAL_ENABLED
    assert "foundation.flag.changes" not in collect(reader)
    provider.shutdown()


def test_registry_connected_gauge_follows_redis(
    sdk: tuple[InMemoryMetricReader, OTelBridge],
) -> None:
    """``foundation.registry.connected`` is 1 while the Redis registry is connected, 0 after
    the server is killed (an in-process registry reports nothing: it has no connection)."""
    from foundation import RedisRegistry

    reader, bridge = sdk
    with RedisServer() as server, RedisRegistry(server.url, namespace="otel-conn") as reg:
        bridge.watch_registry(reg, name="agents")
        gauge = collect(reader)["foundation.registry.connected"]
        assert gauge.unit == "1"
        assert points(gauge)[(("registry", "agents"),)].value == 1
        server.kill()
        deadline = time.monotonic() + 20

        def connected() -> float:
            gauge = collect(reader)["foundation.registry.connected"]
            return float(points(gauge)[(("registry", "agents"),)].value)

        while connected() != 0:
            assert time.monotonic() < deadline, "the outage never showed on the gauge"
            time.sleep(0.02)  # sleep-ok: polling the registry's listener thread, with a deadline


def test_copy_in_memory_gauge_follows_the_node_copy(
    sdk: tuple[InMemoryMetricReader, OTelBridge], redis_server: RedisServer, tmp_path: Path
) -> None:
    """``foundation.flag.store.copy_in_memory`` is 1 while a RedisFlagStore's node copy
    lives in memory (its file failed: entered as a failing disk leaves it), 0 once it
    is written back; read from the store's status() at each collection."""
    reader, _bridge = sdk
    key = (("namespace", "otel-copy"),)
    store = RedisFlagStore(redis_server.url, namespace="otel-copy", cache_path=tmp_path / "n.db")
    try:
        gauge = collect(reader)["foundation.flag.store.copy_in_memory"]
        assert gauge.unit == "1"
        assert points(gauge)[key].value == 0
        to_memory(store._cache)
        assert points(collect(reader)["foundation.flag.store.copy_in_memory"])[key].value == 1
        write_back_now(store._cache)
        assert points(collect(reader)["foundation.flag.store.copy_in_memory"])[key].value == 0
    finally:
        store.close()
