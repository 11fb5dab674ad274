"""foundation.otel with a real SDK: round-trip buckets, one Metrics read per collection, families.

Each collection is one ``InMemoryMetricReader`` read; the reads of the
Metrics are counted through a real ``MemoryRegistry`` (watched registries are
sized once per ``Metrics.samples()``).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import foundation.metrics
import foundation.otel
from foundation import MemoryRegistry, RedisRegistry, spawn_thread, telemetry
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.metrics import REDIS_ROUND_TRIP_BUCKETS, Metrics
from foundation.otel import METER_NAME, ROUND_TRIP_INSTRUMENT, install
from tests.redis_support import RedisServer

README = Path(__file__).resolve().parents[1] / "README.md"


class CountingRegistry(MemoryRegistry):
    """A MemoryRegistry that counts how often it was sized."""

    def __init__(self) -> None:
        super().__init__()
        self._sized = itertools.count()
        self.sized = 0

    def count(self) -> int:
        self.sized = next(self._sized) + 1  # next() on itertools.count is atomic
        return super().count()


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """Metric name -> SDK metric of the foundation meter, for one collection."""
    data = reader.get_metrics_data()
    found: dict[str, Any] = {}
    for resource in [] if data is None else data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name == METER_NAME:
                found.update({metric.name: metric for metric in scope.metrics})
    return found


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], float]:
    return {tuple(sorted(p.attributes.items())): p.value for p in metric.data.data_points}


class Sdk:
    """A real SDK meter provider with two in-memory readers."""

    def __init__(self) -> None:
        self.readers = [InMemoryMetricReader(), InMemoryMetricReader()]
        self.provider = MeterProvider(metric_readers=self.readers)


@pytest.fixture
def sdk() -> Iterator[Sdk]:
    enabled = FeatureFlags.__dict__["enabled"]
    sdk = Sdk()
    yield sdk
    sdk.provider.shutdown()
    assert FeatureFlags.__dict__["enabled"] is enabled  # no evaluation counting left behind


def test_round_trips_use_the_library_buckets(
    sdk: Sdk, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Not the SDK's default buckets (0, 5, 10, ... 10000 s): a round trip of a
    few milliseconds lands in a bucket of its own size, as in Prometheus."""
    bridge = install(sdk.provider)
    store = RedisFlagStore(redis_server.url, namespace="otel-buckets", cache_path=tmp_path / "n.db")
    flags = FeatureFlags([Flag("beta")], store=store)
    try:
        flags.enable("beta", by="ana")
        metric = collect(sdk.readers[0])[ROUND_TRIP_INSTRUMENT]
        (point,) = [p for p in metric.data.data_points if p.attributes == {"outcome": "ok"}]
        assert tuple(point.explicit_bounds) == REDIS_ROUND_TRIP_BUCKETS
        assert sum(point.bucket_counts) == point.count >= 1
        # Each observation sits in the first bucket whose bound is >= its value.
        assert point.bucket_counts[0] == 0 or point.min <= REDIS_ROUND_TRIP_BUCKETS[0]
    finally:
        flags.close()
        store.close()
        bridge.uninstall()


def test_one_collection_reads_the_metrics_once(sdk: Sdk) -> None:
    """All the observable instruments of one collection come from one
    ``Metrics.samples()``: the watched registry is sized once per collection
    (it was once per instrument), and the next collection reads afresh."""
    bridge = install(sdk.provider)
    reader = sdk.readers[0]
    stops = [threading.Event(), threading.Event()]
    with CountingRegistry() as reg:
        try:
            bridge.watch_registry(reg, name="agents")
            reg.register("a", spawn_thread(stops[0].wait))
            before = reg.sized
            first = collect(reader)
            assert reg.sized - before == 1
            assert points(first["foundation.registry.entries"]) == {(("registry", "agents"),): 1}
            reg.register("b", spawn_thread(stops[1].wait))
            second = collect(reader)
            assert reg.sized - before == 2
            assert points(second["foundation.registry.entries"]) == {(("registry", "agents"),): 2}
            assert points(second["foundation.registry.operations"]) == {
                (("operation", "registered"), ("registry", "agents")): 2
            }
        finally:
            for stop in stops:
                stop.set()
            bridge.uninstall()


def test_concurrent_collections_each_read_once(sdk: Sdk) -> None:
    """Two readers collecting at once from two threads: one read per collection,
    each reporting its own read (never a read left over from another)."""
    bridge = install(sdk.provider)
    rounds = 25
    start = threading.Barrier(2)
    seen: list[dict[tuple[tuple[str, Any], ...], float]] = []
    failures: list[BaseException] = []

    def collector(reader: InMemoryMetricReader) -> None:
        try:
            start.wait(timeout=10)
            for _ in range(rounds):
                seen.append(points(collect(reader)["foundation.registry.entries"]))
        except BaseException as exc:  # reported by the test below
            failures.append(exc)

    with CountingRegistry() as reg:
        try:
            bridge.watch_registry(reg, name="agents")
            before = reg.sized
            threads = [threading.Thread(target=collector, args=(r,)) for r in sdk.readers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not failures, failures
            assert not any(thread.is_alive() for thread in threads)
            assert len(seen) == 2 * rounds
            assert reg.sized - before == 2 * rounds
            assert all(entries == {(("registry", "agents"),): 0} for entries in seen)
        finally:
            bridge.uninstall()


def test_every_metrics_family_is_an_instrument_with_the_same_numbers(
    sdk: Sdk, redis_server: RedisServer
) -> None:
    """Each family of foundation.metrics has an OTel instrument reporting its
    samples (the four that had none included), and the docs list them all."""
    observed = {otel_name: family for otel_name, *_, family in foundation.otel._OBSERVED}
    families = set(Metrics(count_evaluations=False).samples())
    assert set(observed.values()) | {"foundation_redis_round_trip_seconds"} == families
    metrics = Metrics()
    bridge = install(sdk.provider, metrics=metrics)
    with RedisRegistry(redis_server.url, namespace="otel-families") as reg:
        try:
            bridge.watch_registry(reg, name="agents")
            # The library's own events for the families with no object to read.
            telemetry.emit("registry.divergence", {"key": "k", "error": "x"})
            telemetry.emit(
                "foundation.supervision.registration_degraded", {"supervisor": "s", "child": "c"}
            )
            telemetry.emit("foundation.flags.stale", {"namespace": "n"})
            exported = collect(sdk.readers[0])
            expected = metrics.samples()
            for otel_name, family in observed.items():
                want = {tuple(sorted(s.labels.items())): s.value for s in expected[family]}
                got = points(exported[otel_name]) if otel_name in exported else {}
                assert got == want, otel_name
            state = points(exported["foundation.registry.state"])
            assert state[(("registry", "agents"), ("state", "connected"))] == 1
            assert points(exported["foundation.registry.divergences"]) == {(): 1}
            assert points(exported["foundation.supervisor.registration_degraded"]) == {
                (("supervisor", "s"),): 1
            }
            assert points(exported["foundation.flag.store.events"]) == {(("event", "stale"),): 1}
        finally:
            bridge.uninstall()
            metrics.uninstall()  # not the bridge's: ours to uninstall
    otel_names = [*observed, ROUND_TRIP_INSTRUMENT]
    doc = foundation.otel.__doc__ or ""
    assert all(f"``{name}``" in doc for name in otel_names)
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("**OpenTelemetry**") :]
    section = section[: section.index("\n\n")]
    assert sorted(set(re.findall(r"`(foundation\.[a-z_.]+)`", section))) == sorted(otel_names)
    metrics_doc = foundation.metrics.__doc__ or ""
    assert all(f"``{family}``" in metrics_doc for family in families)


class CutAt(ExemplarFilter):
    """Raises (once, when armed) on the first measurement with ``attributes``:
    the SDK's collection stops there, after only some of the callbacks ran."""

    def __init__(self, attributes: dict[str, str]) -> None:
        self.attributes = attributes
        self.armed = threading.Event()

    def should_sample(self, value: Any, time_unix_nano: Any, attributes: Any, context: Any) -> bool:
        if self.armed.is_set() and dict(attributes or {}) == self.attributes:
            self.armed.clear()
            raise CollectionCut
        return False


class CollectionCut(Exception):
    pass


class FailingRegistry(MemoryRegistry):
    """A registry whose ``count()`` raises a non-foundation error while ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = threading.Event()

    def count(self) -> int:
        if self.failing.is_set():
            raise RuntimeError("count failed")
        return super().count()


def test_a_failed_read_never_serves_an_earlier_collections_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A collection cut short leaves its read behind; when the next read raises,
    no instrument reports that earlier read (it did: every callback the cut one
    had not reached took its part of it), and the read is tried once, not per
    instrument."""
    cut = CutAt({"registry": "agents"})
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], exemplar_filter=cut)
    bridge = install(provider)
    stop = threading.Event()
    with FailingRegistry() as reg:
        try:
            bridge.watch_registry(reg, name="agents")
            reg.register("a", spawn_thread(stop.wait))
            cut.armed.set()
            with pytest.raises(CollectionCut):  # stops at foundation.registry.entries
                reader.get_metrics_data()
            reg.failing.set()
            failed = collect(reader)
            assert "foundation.registry.operations" not in failed  # not the cut read's 1
            failures = [r for r in caplog.records if r.getMessage().startswith("Callback failed")]
            assert len(failures) == 1  # one read tried, not one per instrument
            reg.failing.clear()
            fresh = collect(reader)
            assert points(fresh["foundation.registry.operations"]) == {
                (("operation", "registered"), ("registry", "agents")): 1
            }
        finally:
            stop.set()
            bridge.uninstall()
            provider.shutdown()
