"""Fixtures for the RedisFlagStore tests: stores that are always closed, fresh namespaces."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation.flags import FeatureFlags, Flag, RedisFlagStore

FLAGS = (Flag("beta"), Flag("gamma"), Flag("kill_switch", default=True))

StoreFactory = Callable[..., RedisFlagStore]


@pytest.fixture
def namespace() -> str:
    """A namespace of this test's own, so tests sharing the session server never meet."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def open_store(namespace: str, tmp_path: Path) -> Iterator[StoreFactory]:
    """``open_store(url, **kw)``: a RedisFlagStore closed (and its thread checked) at teardown.

    Each store gets a node copy of its own under ``tmp_path`` unless ``cache_path`` is given.
    """
    stores: list[RedisFlagStore] = []

    def factory(url: str, **kwargs: Any) -> RedisFlagStore:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("cache_path", tmp_path / f"node-{len(stores)}.sqlite3")
        store = RedisFlagStore(url, **kwargs)
        stores.append(store)
        return store

    before = set(threading.enumerate())
    yield factory
    for store in stores:
        store.close()
    leaked = [
        t for t in threading.enumerate() if t not in before and t.name.startswith("foundation")
    ]
    assert not leaked, f"listener threads left running: {leaked}"


@pytest.fixture
def open_flags() -> Iterator[Callable[[RedisFlagStore], FeatureFlags]]:
    """``open_flags(store)``: a FeatureFlags over ``store``, closed at teardown."""
    opened: list[FeatureFlags] = []

    def factory(store: RedisFlagStore) -> FeatureFlags:
        flags = FeatureFlags(FLAGS, store=store)
        opened.append(flags)
        return flags

    yield factory
    for flags in opened:
        flags.close()
