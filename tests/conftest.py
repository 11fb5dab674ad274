"""Shared fixtures. Area-specific fixtures live next to their tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_support import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A session-wide redis-server on a free port (do not kill it; use fresh_redis)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which the test may kill or restart."""
    with RedisServer() as server:
        yield server
