"""Fixtures of the flag tests: every store kind, and FeatureFlags over each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags import (
    FeatureFlags,
    FlagStore,
    MemoryFlagStore,
    RedisFlagStore,
    SQLiteFlagStore,
)
from foundation.flags._node_cache import NodeCache
from tests.flags._support import FLAGS


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlagStore]:
    """A fresh, empty store of each kind."""
    if request.param == "memory":
        s: FlagStore = MemoryFlagStore()
    elif request.param == "sqlite":
        s = SQLiteFlagStore(tmp_path / "flags.db")
    else:
        server = request.getfixturevalue("redis_server")
        s = RedisFlagStore(
            server.url,
            namespace=f"t-{request.node.name}-{id(tmp_path)}",
            cache_path=tmp_path / "node-copy.sqlite3",  # never a copy left by an earlier run
        )
    yield s
    s.close()


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    """FeatureFlags over the default memory store."""
    f = FeatureFlags(FLAGS)
    yield f
    f.close()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeCache, NodeCache]]:
    """Two node copies on one file: two processes sharing it (tests/flags/_node_copy.py)."""
    path = tmp_path / "copy.sqlite3"
    a, b = NodeCache(path), NodeCache(path)
    yield a, b
    a.close()
    b.close()
