"""The node copy keeps the migration plans as Redis holds them, read or not.

Before the fix the copy kept the plans hash only when a process on the machine
happened to read (or record) the plans while in sync: the sync and the resync
never fetched ``{ns}:plans``. In the usual layout (the service runs
``FeatureFlags`` only; the plan is recorded and advanced from another machine)
a process started here during an outage had no plans to answer from:
``plans()`` raised ``BackendUnavailable``, so ``foundation migration status``
and ``foundation admin`` exited 69. Now the copy keeps them at the first sync,
at every resync, and after migration events on the stream.

Each scenario runs in a plain interpreter (``run_scenario``): Redis is killed.
"""

from __future__ import annotations

import logging
from textwrap import dedent

import pytest
import redis

from foundation.flags import DEFAULT_FLAGS, FeatureFlags
from tests.faults._subprocess import run_scenario
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

_COMMON = """
import os, tempfile
import redis
from foundation import errors
from foundation.flags import (
    DEFAULT_FLAGS, FeatureFlags, Migration, MigrationPlan, RedisFlagStore, Stage,
)
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
NS = "ops"
here = os.path.join(tempfile.mkdtemp(), "copy.sqlite3")  # this machine's copy

def other_machine():
    # Another machine: no copy of its own here.
    store = RedisFlagStore(srv.url, namespace=NS, cache_path=None)
    return store, FeatureFlags(DEFAULT_FLAGS, store=store)

def kept_plans(store):
    return sorted(store._cache.plans())

def start_here_during_the_outage():
    # A new process on this machine's copy (the CLI, an admin node): plans() answer.
    late = RedisFlagStore(srv.url, namespace=NS, cache_path=here, timeout=0.5)
    try:
        assert late.stale
        return sorted(late.plans()), late.plans()["default"].to_dict()
    finally:
        late.close()
"""


def test_the_copy_keeps_plans_read_by_no_process_here() -> None:
    run_scenario(
        _COMMON
        + dedent(
            """
            # The plan recorded and advanced from another machine first.
            b_store, b_flags = other_machine()
            Migration(b_flags, MigrationPlan.default()).advance(by="ana", reason="go")

            # The service here: FeatureFlags only, plans() never called.
            service = RedisFlagStore(srv.url, namespace=NS, cache_path=here,
                                     timeout=0.5, resync_interval=0.3)
            flags = FeatureFlags(DEFAULT_FLAGS, store=service)
            assert kept_plans(service) == ["default"], "not kept at the first sync"

            # A plan advanced elsewhere while the service follows the stream.
            beta = MigrationPlan([Stage(1, "one", ["enable_migration_monitoring"])], name="beta")
            Migration(b_flags, beta).advance(by="ana", reason="go")
            wait_for(lambda: kept_plans(service) == ["beta", "default"],
                     "the plans kept after a migration event")

            # A plan only recorded (no event): kept at the next resync.
            gamma = MigrationPlan([Stage(1, "one", ["use_ets_agent_registry"])], name="gamma")
            b_store.record_plan("gamma", gamma)
            resyncs = service.status().resyncs
            redis.Redis.from_url(srv.url).client_kill_filter(_type="normal")
            wait_for(lambda: service.status().resyncs > resyncs and service.synced,
                     "the service resynced")
            assert kept_plans(service) == ["beta", "default", "gamma"], kept_plans(service)
            b_flags.close(); b_store.close()

            srv.kill()
            wait_for(lambda: service.stale, "the service is stale")
            names, default = start_here_during_the_outage()
            assert names == ["beta", "default", "gamma"], names
            assert default == MigrationPlan.default().to_dict(), default
            flags.close(); service.close()
            print("OK")
            """
        ),
    )


def test_an_empty_plans_hash_leaves_the_kept_plans() -> None:
    # Redis restarted empty (the plans not recorded again yet): the resync keeps
    # what the copy held, so a process started in the next outage still answers.
    run_scenario(
        _COMMON
        + dedent(
            """
            b_store, b_flags = other_machine()
            Migration(b_flags, MigrationPlan.default())
            b_flags.close(); b_store.close()
            service = RedisFlagStore(srv.url, namespace=NS, cache_path=here,
                                     timeout=0.5, resync_interval=0.3)
            flags = FeatureFlags(DEFAULT_FLAGS, store=service)
            assert kept_plans(service) == ["default"]

            resyncs = service.status().resyncs
            srv.kill(); srv.start()  # back empty: the service restores the flag states
            wait_for(lambda: service.status().resyncs > resyncs and service.synced,
                     "the service resynced")
            assert redis.Redis.from_url(srv.url).exists(f"{{{NS}}}:flags:plans") == 0
            assert kept_plans(service) == ["default"]
            srv.kill()
            wait_for(lambda: service.stale, "the service is stale")
            assert start_here_during_the_outage()[0] == ["default"]
            flags.close(); service.close()
            print("OK")
            """
        ),
    )


def test_a_plans_key_that_is_no_hash_does_not_stop_the_sync(
    redis_server: RedisServer,
    open_store: StoreFactory,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The sync reads the plans now: a key of another type there (a hand-made
    # mistake) is logged, and the store starts in sync, its catalogue kept.
    writer = open_store(redis_server.url, cache_path=None)
    FeatureFlags(DEFAULT_FLAGS, store=writer).close()
    client = redis.Redis.from_url(redis_server.url)
    client.set(f"{{{namespace}}}:flags:plans", "not a hash")
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        store = open_store(redis_server.url)
    assert store.synced
    assert {f.name for f in DEFAULT_FLAGS} <= set(store._cache.catalogue())
    assert any("flags:plans not kept in the copy" in r.getMessage() for r in caplog.records)
