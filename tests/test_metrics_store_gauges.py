"""``foundation_flag_store_stale`` / ``_read_only`` (and their OTel twins) are read from
the open stores at collection: a ``Metrics`` installed during an outage shows it, and
a store closed while stale or read-only leaves no sample behind.

Redis is killed or made a replica here, so each scenario runs in a plain interpreter
(``run_scenario``), which also checks that no library thread died.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_COMMON = """
import tempfile, pathlib
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from foundation.metrics import Metrics
from foundation.otel import install
from tests.redis_support import RedisServer

def gauge(metrics, name):
    return [s.value for s in metrics.samples()[name] if s.labels == {"namespace": "g"}]

def otel(reader, name):
    found = []
    data = reader.get_metrics_data()  # None: no instrument reported anything
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found += [p.value for p in metric.data.data_points
                              if dict(p.attributes) == {"namespace": "g"}]
    return found

def late_readers():
    # Installed only now: no event they could have heard says the store's state.
    metrics = Metrics()
    metrics.install()
    reader = InMemoryMetricReader()
    bridge = install(MeterProvider(metric_readers=[reader]))
    return metrics, reader, bridge
"""

KILLED = (
    _COMMON
    + """
with tempfile.TemporaryDirectory() as tmp, RedisServer() as server:
    store = RedisFlagStore(server.url, namespace="g", timeout=0.5,
                           cache_path=pathlib.Path(tmp) / "n.db")
    flags = FeatureFlags([Flag("beta")], store=store)
    early = Metrics()  # installed before the outage: it hears the stale event
    early.install()
    server.kill()
    wait_for(lambda: store.status().stale, "the store stale")
    print("EARLY_STALE", gauge(early, "foundation_flag_store_stale"))
    metrics, reader, bridge = late_readers()
    print("LATE_STALE", gauge(metrics, "foundation_flag_store_stale"))
    print("LATE_OTEL", otel(reader, "foundation.flag.store.stale"))
    flags.close()
    store.close()  # closed while stale, Redis still down
    print("CLOSED_STALE", gauge(metrics, "foundation_flag_store_stale"))
    print("CLOSED_OTEL", otel(reader, "foundation.flag.store.stale"))
    print("CLOSED_EARLY", gauge(early, "foundation_flag_store_stale"))
    bridge.uninstall()
    metrics.uninstall()
    early.uninstall()
print("OK")
"""
)

READ_ONLY = (
    _COMMON
    + """
with RedisServer() as server:
    store = RedisFlagStore(server.url, namespace="g", timeout=1.0, resync_interval=0.3,
                           cache_path=None)
    flags = FeatureFlags([Flag("beta")], store=store)
    server.make_read_only()
    wait_for(lambda: store.status().read_only, "the store read-only (ROLE)")
    metrics, reader, bridge = late_readers()
    print("LATE_RO", gauge(metrics, "foundation_flag_store_read_only"))
    print("LATE_OTEL", otel(reader, "foundation.flag.store.read_only"))
    flags.close()
    store.close()  # closed while read-only
    print("CLOSED_RO", gauge(metrics, "foundation_flag_store_read_only"))
    print("CLOSED_OTEL", otel(reader, "foundation.flag.store.read_only"))
    bridge.uninstall()
    metrics.uninstall()
    server.make_writable()
print("OK")
"""
)


def _out(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines() if " " in line)


def test_stale_store_shows_to_late_readers_and_a_closed_one_drops_its_sample() -> None:
    out = _out(run_scenario(KILLED).stdout)
    assert out["EARLY_STALE"] == "[1.0]"
    assert out["LATE_STALE"] == "[1.0]"
    assert out["LATE_OTEL"] == "[1.0]"
    assert out["CLOSED_STALE"] == "[]"
    assert out["CLOSED_EARLY"] == "[]"  # not stuck at 1 for ever
    assert out["CLOSED_OTEL"] == "[]"


def test_read_only_store_shows_to_late_readers_and_a_closed_one_drops_its_sample() -> None:
    out = _out(run_scenario(READ_ONLY).stdout)
    assert out["LATE_RO"] == "[1.0]"
    assert out["LATE_OTEL"] == "[1.0]"
    assert out["CLOSED_RO"] == "[]"
    assert out["CLOSED_OTEL"] == "[]"


SQLITE_STALE = (
    _COMMON
    + """
import os
from foundation.flags import SQLiteFlagStore

def by_path(metrics, name, path):
    return [s.value for s in metrics.samples()[name] if s.labels == {"namespace": path}]

def otel_path(reader, name, path):
    found = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found += [p.value for p in metric.data.data_points
                              if dict(p.attributes) == {"namespace": path}]
    return found

with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(os.path.realpath(tmp), "flags.db")
    store = SQLiteFlagStore(path)
    flags = FeatureFlags([Flag("beta")], store=store)
    early = Metrics()
    early.install()
    print("FRESH", by_path(early, "foundation_flag_store_stale", path))
    for name in os.listdir(tmp):  # a tmp reaper: the file, its -wal and -shm
        os.remove(os.path.join(tmp, name))
    wait_for(lambda: store.stale, "the store stale")
    print("EARLY_STALE", by_path(early, "foundation_flag_store_stale", path))
    metrics, reader, bridge = late_readers()
    print("LATE_STALE", by_path(metrics, "foundation_flag_store_stale", path))
    print("LATE_OTEL", otel_path(reader, "foundation.flag.store.stale", path))
    print("NO_RO", by_path(metrics, "foundation_flag_store_read_only", path))
    print("NO_MEM", by_path(metrics, "foundation_flag_store_copy_in_memory", path))
    flags.close()
    store.close()
    print("CLOSED_STALE", by_path(metrics, "foundation_flag_store_stale", path))
    print("CLOSED_OTEL", otel_path(reader, "foundation.flag.store.stale", path))
    bridge.uninstall()
    metrics.uninstall()
    early.uninstall()
print("OK")
"""
)


def test_a_stale_sqlite_store_shows_in_the_stale_gauge_under_its_path() -> None:
    # The gauge read RedisFlagStores only: a SQLite store whose file was deleted
    # while in use (every write refused) showed nothing.
    out = _out(run_scenario(SQLITE_STALE).stdout)
    assert out["FRESH"] == "[0.0]"
    assert out["EARLY_STALE"] == "[1.0]"
    assert out["LATE_STALE"] == "[1.0]"
    assert out["LATE_OTEL"] == "[1.0]"
    assert out["NO_RO"] == out["NO_MEM"] == "[]"
    assert out["CLOSED_STALE"] == "[]"
    assert out["CLOSED_OTEL"] == "[]"
