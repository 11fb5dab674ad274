"""RedisFlagStore's options, as a careless operator passes them: every bad one is
refused at construction with a foundation error and a short message, and a
namespace Redis would not take as a client name still connects."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from foundation import errors
from foundation.flags import FeatureFlags, Flag, MigrationEvent, RedisFlagStore
from tests.redis_flags.conftest import StoreFactory
from tests.redis_support import RedisServer

BAD_OPTIONS: dict[str, dict[str, Any]] = {
    "timeout-nan": {"timeout": math.nan},
    "timeout-inf": {"timeout": math.inf},
    "timeout-huge-int": {"timeout": 10**400},
    "resync-nan": {"resync_interval": math.nan},
    "resync-inf": {"resync_interval": math.inf},
    "cache-path-int": {"cache_path": 5},
    "cache-path-bytes": {"cache_path": b"/tmp/copy"},
    "cache-path-nul": {"cache_path": "copy\x00.sqlite3"},
}


@pytest.mark.parametrize("option", list(BAD_OPTIONS))
def test_a_bad_option_is_refused_at_construction(
    redis_server: RedisServer, namespace: str, option: str
) -> None:
    """Was: ValueError (resync NaN), OverflowError (10**400), TypeError/ValueError (cache
    path), or BackendUnavailable 'timestamp out of range' (timeout inf), as if Redis
    were down."""
    with pytest.raises(errors.InvalidConfig) as info:
        RedisFlagStore(redis_server.url, namespace=namespace, **BAD_OPTIONS[option])
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("namespace", ["shop eu", "tab\there", "new\nline", "ünïcode"])
def test_a_namespace_with_spaces_or_unicode_connects(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    """Was: BackendUnavailable 'Client names cannot contain spaces, newlines or special
    characters' -- and over an existing node copy, a store stale for good."""
    store = open_store(redis_server.url, namespace=namespace)
    other = open_store(redis_server.url, namespace=namespace)
    assert store.synced
    with FeatureFlags([Flag("beta")], store=store) as flags:
        flags.enable("beta", by="ops")
    assert other.load_states()["beta"].switch is True


def test_a_stage_no_node_copy_can_hold_never_reaches_redis(
    redis_server: RedisServer, open_store: StoreFactory, tmp_path: Path
) -> None:
    """Was: put_migration(plan, 10**30, ...) was committed to Redis, then every node's
    copy (SQLite, 64-bit integers) failed to apply it: the writer got OverflowError
    and each listener went stale ('lost Redis'), for good."""
    store = open_store(redis_server.url)
    event = MigrationEvent("p", "advance", 0, 1)
    with pytest.raises(errors.InvalidFlagValue):
        store.transaction(lambda t: t.put_migration("p", 10**30, event))
    store.transaction(lambda t: t.put_migration("p", 1, event))
    later = open_store(redis_server.url, cache_path=tmp_path / "later.sqlite3")
    assert later.synced
    assert store.synced
    assert later.migration_stage("p") == store.migration_stage("p") == 1
