"""A metrics scrape reads the migration stage without evaluating a flag:
``foundation_flag_evaluations_total`` counts the application's evaluations only.

Was: with ``Metrics.watch_migration``, each collection read ``migration.status()``,
whose plan-flag answers are ``enabled()`` calls: 4 scrapes and no evaluation by
the application counted 1, 2, 3, 4 for every plan flag (the admin server's own
stage gauge did the same on its ``/metrics``, and its page's polls of
``GET /api/migration``, which reads ``migration.status()``). Real Prometheus collection, a
real ``AdminServer``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage
from foundation.metrics import Metrics, evaluation_counts, prometheus_collector
from tests import _metrics_fixture

PLAN = MigrationPlan([Stage(1, "one", ("scrape_a",)), Stage(2, "two", ("scrape_b",))])


metrics = _metrics_fixture.metrics  # the fixture: installed, checked after


@pytest.fixture
def migration() -> Iterator[Migration]:
    flags = FeatureFlags([Flag("scrape_a"), Flag("scrape_b"), Flag("scrape_other")])
    yield Migration(flags, PLAN)
    flags.close()


def _evaluations(text: str) -> dict[str, float]:
    return {
        s.labels["flag"]: s.value
        for family in text_string_to_metric_families(text)
        if family.name == "foundation_flag_evaluations"
        for s in family.samples
        if s.name.endswith("_total") and s.labels.get("flag", "").startswith("scrape_")
    }


def test_scrapes_of_a_watched_migration_count_no_evaluation(
    metrics: Metrics, migration: Migration
) -> None:
    start = evaluation_counts()  # (cumulative for the process: other tests' counts)
    metrics.watch_migration(migration)
    registry = CollectorRegistry()
    registry.register(prometheus_collector(metrics))
    base = _evaluations(generate_latest(registry).decode())
    for _ in range(4):
        assert _evaluations(generate_latest(registry).decode()) == base
    assert evaluation_counts().get("scrape_a") == start.get("scrape_a")
    for _ in range(3):
        migration.flags.enabled("scrape_a")  # the application's evaluations: counted
    got = _evaluations(generate_latest(registry).decode())
    assert got.get("scrape_a", 0) == base.get("scrape_a", 0) + 3
    assert got.get("scrape_b", 0) == base.get("scrape_b", 0)
    # The stage still follows the store (what the scrape reads).
    migration.advance(by="ops")
    assert metrics.value("foundation_migration_stage", plan="default") == 1.0


@pytest.fixture
def admin(metrics: Metrics, migration: Migration) -> Iterator[httpx.Client]:
    """A client of a real AdminServer over ``migration`` (not watched: the admin
    server's own stage gauge reads the migration)."""
    with (
        AdminServer(
            flags=migration.flags, migration=migration, metrics=metrics, bind="127.0.0.1:0"
        ) as server,
        httpx.Client(base_url=server.url, timeout=30) as c,
    ):
        yield c


def test_admin_metrics_scrapes_count_no_evaluation(
    admin: httpx.Client, migration: Migration
) -> None:
    base = _evaluations(admin.get("metrics").text)
    for _ in range(4):
        r = admin.get("metrics")
        assert r.status_code == 200
        assert _evaluations(r.text) == base
    assert "foundation_admin_migration_stage" in r.text
    migration.flags.enabled("scrape_b")
    assert _evaluations(admin.get("metrics").text).get("scrape_b", 0) == base.get("scrape_b", 0) + 1


def test_migration_status_reads_count_no_evaluation(
    admin: httpx.Client, migration: Migration
) -> None:
    # The admin page polls GET /api/migration (Migration.status(): the plan
    # flags' answers); before, each poll counted one evaluation per plan flag.
    base = _evaluations(admin.get("metrics").text)
    for _ in range(4):
        r = admin.get("api/migration")
        assert r.status_code == 200, r.text
        assert r.json()["flags"] == {"scrape_a": False, "scrape_b": False}
        assert migration.status().flags == {"scrape_a": False, "scrape_b": False}
    assert _evaluations(admin.get("metrics").text) == base
    migration.flags.enabled("scrape_a")  # the application's evaluation: counted
    assert _evaluations(admin.get("metrics").text).get("scrape_a", 0) == base.get("scrape_a", 0) + 1
