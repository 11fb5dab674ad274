"""Fixtures of the contract suite: the backend, a fresh registry, and real agents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from foundation.registry import Registry
from tests.contract.agents import Agents, LoopThread
from tests.contract.backends import BackendSpec, backend_params

INDEXED = ("role", "tags")


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> BackendSpec:
    """Each backend under the contract (tests may narrow this by parametrising it)."""
    spec: BackendSpec = request.param
    return spec


@pytest.fixture
def registry(backend: BackendSpec, request: pytest.FixtureRequest) -> Iterator[Registry]:
    """A fresh registry of ``backend`` indexed on ``INDEXED``; closed afterwards."""
    with backend.make(request, INDEXED) as reg:
        yield reg


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    """One asyncio loop in a background thread, for task agents."""
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture
def agents(loop_thread: LoopThread) -> Iterator[Agents]:
    """Makes and kills real agents; every one is stopped and reaped afterwards."""
    made = Agents(loop_thread)
    yield made
    made.close()
