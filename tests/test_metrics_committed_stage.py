"""The stage a metrics scrape reads (``foundation.metrics._committed_stage``, which
evaluates no flag) is the one ``Migration.status().stage`` reads, for every
built-in store: memory, SQLite, and Redis connected, through an outage (the
gauge keeps its last value, a pending emergency rollback reads 0) and after it;
a closed ``FeatureFlags`` is ``Closed`` for both.

Real stores; the Redis case is a real redis-server killed and restarted, in a
subprocess with default hooks (``run_scenario``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation.errors import Closed
from foundation.flags import (
    FeatureFlags,
    Flag,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    SQLiteFlagStore,
    Stage,
)
from foundation.metrics import Metrics, _committed_stage
from tests.faults._subprocess import run_scenario

PLAN = MigrationPlan([Stage(1, "one", ("cs_a",)), Stage(2, "two", ("cs_b",))])
DECLARED = [Flag("cs_a"), Flag("cs_b")]


@pytest.fixture(params=["memory", "sqlite"])
def migration(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Migration]:
    store = MemoryFlagStore() if request.param == "memory" else SQLiteFlagStore(tmp_path / "f.db")
    flags = FeatureFlags(DECLARED, store=store)
    try:
        yield Migration(flags, PLAN)
    finally:
        flags.close()
        store.close()


def _outcome(fn: Callable[[], int]) -> int | str:
    try:
        return fn()
    except Closed as exc:
        return type(exc).__name__


def test_the_scrape_reads_the_stage_status_reads(migration: Migration) -> None:
    metrics = Metrics()
    metrics.watch_migration(migration)
    steps = [
        lambda: migration.advance(by="ops"),
        lambda: migration.advance(by="ops"),
        lambda: migration.rollback_to(1, by="ops"),
        lambda: migration.emergency_rollback("incident", by="oncall"),
    ]
    for step in [lambda: None, *steps]:
        step()
        stage = migration.status().stage
        assert _committed_stage(migration) == stage
        assert metrics.value("foundation_migration_stage", plan="default") == float(stage)
    migration.advance(by="ops")
    assert metrics.value("foundation_migration_stage", plan="default") == 1.0
    migration.flags.close()  # the store (passed in) stays open: Closed all the same
    assert _outcome(migration.status) == _outcome(lambda: _committed_stage(migration)) == "Closed"
    assert metrics.value("foundation_migration_stage", plan="default") == 1.0  # the last value


_REDIS = """
import os, tempfile
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
from foundation.metrics import Metrics, _committed_stage
from tests.redis_support import RedisServer

def outcome(fn):
    try:
        return fn()
    except Exception as exc:
        return type(exc).__name__

server = RedisServer()
server.start()
opened = []
try:
    d = tempfile.mkdtemp()
    plan = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",))])
    def node(name):
        store = RedisFlagStore(server.url, namespace="cs", timeout=0.5,
                               cache_path=os.path.join(d, name))
        flags = FeatureFlags([Flag("a"), Flag("b")], store=store)
        opened.extend([flags, store])
        return store, Migration(flags, plan)
    here, mig = node("here")
    _, other = node("there")
    metrics = Metrics()
    metrics.watch_migration(mig)
    gauge = lambda: metrics.value("foundation_migration_stage", plan="default")
    both = lambda: (outcome(lambda: mig.status().stage), outcome(lambda: _committed_stage(mig)))

    other.advance(by="ops")  # committed by another node: read from Redis
    print("CONNECTED", both(), gauge())
    server.kill()
    wait_for(lambda: here.stale, "the store stale")
    print("OUTAGE", both(), gauge())
    mig.emergency_rollback("incident", by="oncall")  # a pending kill switch
    print("PENDING", both(), gauge())
    server.start()
    wait_for(lambda: here.synced and not here.pending(), "the store back in sync")
    print("AFTER", both(), gauge())
    print("OK")
finally:
    for x in reversed(opened):
        x.close()
    server.stop()
"""


def test_redis_through_an_outage_reads_as_status() -> None:
    result = run_scenario(_REDIS)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["CONNECTED"] == "(1, 1) 1.0", result.stdout
    status, scraped = lines["OUTAGE"].rsplit(" ", 1)[0], lines["OUTAGE"].rsplit(" ", 1)[1]
    assert status in ("(1, 1)", "('BackendUnavailable', 'BackendUnavailable')"), result.stdout
    assert scraped == "1.0", result.stdout  # the last value stays through the outage
    assert lines["PENDING"] == "(0, 0) 0.0", result.stdout
    assert lines["AFTER"] == "(0, 0) 0.0", result.stdout
