"""Fixtures for the MigratingRegistry tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.migrating.support import Agents, Worker


@pytest.fixture
def agents() -> Iterator[Agents]:
    pool = Agents()
    yield pool
    pool.close()


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.stop()
