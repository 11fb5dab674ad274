"""The node copy of the catalogue and plans: merged with Redis' hash, one warning when unread.

Redis restarted empty and one plan recorded again (with other stages, by a new
deploy): the next keep replaced the copy's whole plans hash with Redis' partial
one, so the other plans were gone for the next outage (``foundation migration
status`` failed for them). The copy now keeps its other entries, Redis' values
winning. And a plans key the service's ACL cannot HGETALL logged a WARNING at
start and after every migration event; now once, until it is read again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
import redis

from foundation.flags import DEFAULT_FLAGS, FeatureFlags, Migration, MigrationPlan, Stage
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

_MON = "enable_migration_monitoring"


def _plan(name: str, stage: str) -> MigrationPlan:
    return MigrationPlan([Stage(1, stage, [_MON])], name=name)


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)  # sleep-ok: polling with a deadline


def test_a_partial_plans_hash_adds_to_the_kept_plans(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    boss = open_store(redis_server.url, cache_path=None)
    boss_flags = FeatureFlags(DEFAULT_FLAGS, store=boss)
    Migration(boss_flags, MigrationPlan.default()).advance(by="ana", reason="go")
    Migration(boss_flags, _plan("p1", "one")).advance(by="ana", reason="go")
    Migration(boss_flags, _plan("p2", "one")).advance(by="ana", reason="go")
    service = open_store(redis_server.url)
    flags = FeatureFlags(DEFAULT_FLAGS, store=service)
    assert sorted(service._cache.plans()) == ["default", "p1", "p2"]
    old_p1 = service._cache.plans()["p1"]

    # As after Redis restarted empty: the plans hash gone, then p1 recorded
    # again with another stage by a new deploy (no event yet).
    redis.Redis.from_url(redis_server.url).delete(f"{{{namespace}}}:flags:plans")
    boss.record_plan("p1", _plan("p1", "uno"))
    assert sorted(service.plans()) == ["p1"]  # in sync: Redis' answer ...
    kept = service._cache.plans()
    assert sorted(kept) == ["default", "p1", "p2"], sorted(kept)  # ... the copy keeps all
    assert kept["p1"] != old_p1  # Redis' value wins

    # A migration event brings the plans into the copy too (_keep_records).
    Migration(boss_flags, _plan("p3", "one")).advance(by="ana", reason="go")
    _wait_for(lambda: "p3" in service._cache.plans(), "the plans kept after the event")
    kept = service._cache.plans()
    assert sorted(kept) == ["default", "p1", "p2", "p3"], sorted(kept)
    assert kept["p1"] != old_p1
    flags.close()
    boss_flags.close()


def _denied(caplog: pytest.LogCaptureFixture, level: int) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelno == level and "flags:plans not kept in the copy" in r.getMessage()
    )


def test_a_plans_key_the_acl_denies_warns_once_until_it_is_read_again(
    redis_server: RedisServer,
    open_store: StoreFactory,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = redis.Redis.from_url(redis_server.url)
    boss = open_store(redis_server.url, cache_path=None)
    boss_flags = FeatureFlags(DEFAULT_FLAGS, store=boss)
    Migration(boss_flags, MigrationPlan.default()).advance(by="ana", reason="go")
    user = f"svc-{namespace}"
    flags_keys = f"{{{namespace}}}:flags:"
    # HGETALL on every key but {ns}:flags:plans (a FeatureFlags-only service's ACL).
    selector = (
        f"(~{flags_keys}[a-o]* ~{flags_keys}[q-z]* ~{flags_keys}p[a-k]* "
        f"~{flags_keys}p[m-z]* +hgetall)"
    )
    admin.acl_setuser(user, reset=True)
    admin.execute_command(
        "ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", "-hgetall", selector
    )
    try:
        url = redis_server.url.replace("redis://", f"redis://{user}:pw@", 1)
        with caplog.at_level(logging.DEBUG, logger="foundation.flags"):
            service = open_store(url)
            flags = FeatureFlags(DEFAULT_FLAGS, store=service)
            assert service.synced
            assert _denied(caplog, logging.WARNING) == 1
            for i in range(3):  # each migration event reads the plans again
                repeats = _denied(caplog, logging.DEBUG)
                Migration(boss_flags, _plan(f"b{i}", "one")).advance(by="ana", reason="go")
                _wait_for(lambda n=repeats: _denied(caplog, logging.DEBUG) > n, "a repeat")
            assert _denied(caplog, logging.WARNING) == 1

            admin.execute_command("ACL", "SETUSER", user, "+hgetall")  # fixed
            Migration(boss_flags, _plan("fixed", "one")).advance(by="ana", reason="go")
            _wait_for(lambda: "fixed" in service._cache.plans(), "the plans kept")
            admin.execute_command("ACL", "SETUSER", user, "-hgetall")  # denied again
            Migration(boss_flags, _plan("again", "one")).advance(by="ana", reason="go")
            _wait_for(lambda: _denied(caplog, logging.WARNING) == 2, "a new WARNING")
            assert service.synced
            flags.close()
    finally:
        admin.acl_deluser(user)
    boss_flags.close()
