"""The admin server says that the flag history is bounded (``history_limit``).

Real stores (SQLite, in-memory, Redis on a real redis-server), a real uvicorn
``AdminServer`` and real HTTP. ``GET /api/history`` carries ``history_limit``
and ``retention`` next to its ``changes`` (unchanged); the page shows the
retention sentence over the audit trail (the browser check is in
``test_history_limit_browser.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from foundation.admin import AdminServer
from foundation.admin._routes_flags import history_retention
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagStore,
    MemoryFlagStore,
    RedisFlagStore,
    SQLiteFlagStore,
)
from foundation.flags._store import DEFAULT_HISTORY_LIMIT, trim_slack
from tests.admin._world import ANA, TOKENS
from tests.redis_support import RedisServer

WRITES = 8


def _stores(redis: RedisServer, tmp_path: Path) -> dict[str, Callable[[], FlagStore]]:
    ns = f"hist-{uuid.uuid4().hex[:8]}"
    return {
        "sqlite-3": lambda: SQLiteFlagStore(tmp_path / "flags.db", history_limit=3),
        "sqlite-default": lambda: SQLiteFlagStore(tmp_path / "flags.db"),
        "memory-unlimited": lambda: MemoryFlagStore(history_limit=None),
        "memory-1": lambda: MemoryFlagStore(history_limit=1),
        "redis-4": lambda: RedisFlagStore(
            redis.url, namespace=ns, cache_path=None, timeout=2.0, history_limit=4
        ),
    }


EXPECTED: dict[str, tuple[int | None, str | None]] = {
    "sqlite-3": (3, "the store keeps the last 3 records of all flags (older records are trimmed)"),
    "sqlite-default": (
        DEFAULT_HISTORY_LIMIT,
        f"the store keeps the last {DEFAULT_HISTORY_LIMIT:,} records of all flags "
        "(older records are trimmed)",
    ),
    "memory-unlimited": (None, "the store keeps every record"),
    "memory-1": (1, "the store keeps the last 1 record of all flags (older records are trimmed)"),
    "redis-4": (4, "the store keeps the last 4 records of all flags (older records are trimmed)"),
}


@pytest.fixture
def served(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> Iterator[httpx.Client]:
    store = _stores(redis_server, tmp_path)[request.param]()
    flags = FeatureFlags([Flag("checkout"), Flag("search")], store=store)
    server = AdminServer(flags=flags, token=TOKENS, bind="127.0.0.1:0").start()
    try:
        for i in range(WRITES):  # more records than the smallest limits keep
            flags.enable("checkout", by="ana") if i % 2 else flags.disable("checkout", by="ana")
        flags.enable("search", by="bo")
        with httpx.Client(base_url=server.url, headers=ANA, timeout=20.0) as http:
            yield http
    finally:
        server.close()
        flags.close()
        store.close()


@pytest.mark.parametrize("served", list(EXPECTED), indirect=True)
def test_api_history_says_how_much_history_the_store_keeps(
    served: httpx.Client, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["served"]
    limit, retention = EXPECTED[kind]
    for query in ("api/history", "api/history?flag=checkout&limit=2", "api/history?flag=search"):
        r = served.get(query)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"changes", "history_limit", "retention"}, body
        assert (body["history_limit"], body["retention"]) == (limit, retention)
    changes = served.get("api/history").json()["changes"]
    assert changes
    assert changes[0]["flag"] == "search"  # newest first, as before
    assert {"at", "flag", "by", "old", "new"} <= set(changes[0])
    if limit is not None:  # what the sentence says is true (a store trims in batches)
        assert len(changes) <= min(limit + trim_slack(limit), 100)


def test_retention_of_odd_attributes() -> None:
    """A store without an int or None ``history_limit`` (a third-party store) states
    no bound: both fields are None and the page shows no sentence."""

    class Odd:
        history_limit = "unlimited"

    class Flagged:
        history_limit = True

    assert history_retention(Odd()) == {"history_limit": None, "retention": None}
    assert history_retention(Flagged())["history_limit"] is None
    assert history_retention(object()) == {"history_limit": None, "retention": None}
