"""One label value that is not valid Unicode never fails a whole scrape.

A ``SQLiteFlagStore`` on a file whose name is not UTF-8 (``os.fsdecode`` turns
the byte into a lone surrogate) is the ``namespace`` label of
``foundation_flag_store_stale``; a supervisor or child id can hold one too.
Such a value once made ``generate_latest()`` raise ``UnicodeEncodeError``: the
app's own metrics in the same registry were lost, and the admin server answered
``/metrics`` with a silent 422. It is now written with ``\\udcff`` escapes; a
scrape that fails for a reason of our own is a logged 500, not the client's fault.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from foundation import (
    ChildSpec,
    Entry,
    FeatureFlags,
    Flag,
    MemoryRegistry,
    SQLiteFlagStore,
    Supervisor,
    spawn_thread,
    telemetry,
)
from foundation.admin import AdminServer
from foundation.errors import InvalidConfig
from foundation.metrics import Metrics, Sample, prometheus_collector
from tests import _metrics_fixture

metrics = _metrics_fixture.metrics  # the fixture: installed, checked after


@pytest.fixture
def latin1_store(tmp_path: Path) -> Iterator[SQLiteFlagStore]:
    """A store on ``café.db`` written in Latin-1 (a byte that is not UTF-8)."""
    path = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9.db"))
    assert "\udce9" in path
    store = SQLiteFlagStore(path)
    yield store
    store.close()


def test_an_app_registry_keeps_its_own_metrics_and_ours(
    metrics: Metrics, latin1_store: SQLiteFlagStore
) -> None:
    registry = CollectorRegistry()
    app_requests = Counter("app_requests", "the app's own counter", registry=registry)
    app_requests.inc()
    registry.register(prometheus_collector(metrics))
    flags = FeatureFlags([Flag("f")], store=latin1_store)
    try:
        text = generate_latest(registry).decode()
    finally:
        flags.close()
    assert "app_requests_total 1.0" in text
    assert "caf\\\\udce9.db" in text  # the escape, itself escaped by the exposition format
    stale = [line for line in text.splitlines() if line.startswith("foundation_flag_store_stale{")]
    assert len(stale) == 1, stale
    assert stale[0].endswith(" 0.0"), stale


def test_snapshot_and_value_name_the_escaped_label(
    metrics: Metrics, latin1_store: SQLiteFlagStore
) -> None:
    flags = FeatureFlags([Flag("f")], store=latin1_store)
    try:
        samples = metrics.samples()["foundation_flag_store_stale"]
        namespaces = [s.labels["namespace"] for s in samples]
        assert [n for n in namespaces if n.endswith("caf\\udce9.db")], namespaces
        for n in namespaces:
            n.encode("utf-8")  # every label value encodes
    finally:
        flags.close()


@pytest.mark.parametrize(("name", "child_id"), [("s\udcff", "c"), ("s", "c\udcff")])
def test_a_supervisor_or_child_name_with_a_lone_surrogate(
    metrics: Metrics, name: str, child_id: str
) -> None:
    """Such a name is refused where it is given (``InvalidConfig``); a telemetry
    event carrying one anyway (emitted by other code) is still a label that
    encodes, escaped."""
    with pytest.raises(InvalidConfig):
        Supervisor([ChildSpec(child_id, lambda ctx: None)], name=name)
    registry = CollectorRegistry()
    registry.register(prometheus_collector(metrics))
    telemetry.emit("supervisor.child_restarted", {"supervisor": name, "child": child_id})
    text = generate_latest(registry).decode()
    row = [r for r in text.splitlines() if r.startswith("foundation_supervisor_restarts_total{")]
    assert len(row) == 1, row
    assert "\\\\udcff" in row[0], row


def _scrape(server: AdminServer) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        return c.get("metrics")


def test_the_admin_scrape_survives_a_non_utf8_file_name(
    metrics: Metrics, latin1_store: SQLiteFlagStore
) -> None:
    flags = FeatureFlags([Flag("f")], store=latin1_store)
    try:
        with AdminServer(flags=flags, metrics=metrics, bind="127.0.0.1:0") as server:
            r = _scrape(server)
    finally:
        flags.close()
    assert r.status_code == 200, r.text
    assert 'foundation_admin_flag_enabled{flag="f"}' in r.text
    assert "caf\\\\udce9.db" in r.text


class _BrokenMetrics(Metrics):
    """A collection that fails for a reason of the server's own (not the request's)."""

    def samples(self) -> dict[str, list[Sample]]:
        raise ValueError("a defect while collecting")


def test_a_scrape_failing_on_our_side_is_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="foundation.admin")
    flags = FeatureFlags([Flag("f")])
    try:
        with AdminServer(flags=flags, metrics=_BrokenMetrics(), bind="127.0.0.1:0") as server:
            r = _scrape(server)
    finally:
        flags.close()
    assert r.status_code == 500, (r.status_code, r.text)
    logged = [rec for rec in caplog.records if rec.name == "foundation.admin"]
    assert len(logged) == 1, [rec.getMessage() for rec in logged]
    assert logged[0].exc_info
    assert "/metrics" in logged[0].getMessage()


class _OddNodes(MemoryRegistry):
    """A registry whose entries name a node that is not valid Unicode (a custom one)."""

    def list_all(self) -> list[Entry]:
        return [dataclasses.replace(e, node="n\udcff") for e in super().list_all()]


def test_an_admin_node_label_with_a_lone_surrogate() -> None:
    registry, stop = _OddNodes(), threading.Event()
    registry.register("worker", spawn_thread(stop.wait))
    try:
        with AdminServer(registry=registry, bind="127.0.0.1:0") as server:
            r = _scrape(server)
    finally:
        stop.set()
        registry.close()
    assert r.status_code == 200, r.text
    rows = [
        row for row in r.text.splitlines() if row.startswith("foundation_admin_registry_entries")
    ]
    assert rows == ['foundation_admin_registry_entries{kind="thread",node="n\\\\udcff"} 1.0'], rows
