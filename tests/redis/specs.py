"""The RedisRegistry entry of the contract suite (``tests/contract/backends.py``).

Each registry gets a namespace of its own on the session redis-server, so
tests (and two registries of one test) never see each other; its keys are
deleted afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest
import redis

from foundation.registry import Registry
from foundation.registry._redis import RedisRegistry
from tests.redis_support import RedisServer

_count = itertools.count()


@contextlib.contextmanager
def make(request: pytest.FixtureRequest, indexed: tuple[str, ...]) -> Iterator[Registry]:
    server: RedisServer = request.getfixturevalue("redis_server")
    namespace = f"contract-{next(_count)}"
    with RedisRegistry(server.url, namespace=namespace, indexed=indexed) as registry:
        yield registry
    assert registry.manager.closed  # its own manager: closing it released every monitor
    with redis.Redis.from_url(server.url) as raw:
        stale = list(raw.scan_iter(match="{" + namespace + "}:*", count=1000))
        if stale:
            raw.delete(*stale)
