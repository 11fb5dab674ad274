"""Shared fixtures. Area-specific fixtures live next to their tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator

import pytest

from tests.redis_support import RedisServer


@pytest.fixture(scope="session", autouse=True)
def _private_flag_cache_dir() -> Iterator[str]:
    """Keep every RedisFlagStore node copy of this run in a directory of its own.

    The default location is the user's cache directory, shared across runs: a
    fresh redis-server of a later run would be "restored" from an earlier run's
    copy. Subprocesses inherit the variable.
    """
    path = tempfile.mkdtemp(prefix="foundation-flag-cache-")
    previous = os.environ.get("FOUNDATION_CACHE_DIR")
    os.environ["FOUNDATION_CACHE_DIR"] = path
    yield path
    if previous is None:
        os.environ.pop("FOUNDATION_CACHE_DIR", None)
    else:
        os.environ["FOUNDATION_CACHE_DIR"] = previous
    shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    """An event live agents wait on (``spawn_thread(stop.wait)``); set at teardown,
    so every agent a test made ends."""
    event = threading.Event()
    yield event
    event.set()
