"""Fixtures of the RedisRegistry tests: registries that are always closed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from foundation.registry._redis import RedisRegistry
from tests.redis.support import NodeProcess, unique_namespace
from tests.redis_support import LIVE_SETS, RedisServer

MakeRegistry = Callable[..., RedisRegistry]


@pytest.fixture
def ns() -> str:
    return unique_namespace()


@pytest.fixture
def make_registry(redis_server: RedisServer, ns: str) -> Iterator[MakeRegistry]:
    """Build RedisRegistry nodes (default: session server, this test's namespace)."""
    made: list[RedisRegistry] = []

    def make(url: str | None = None, **kwargs: Any) -> RedisRegistry:
        kwargs.setdefault("namespace", ns)
        reg = RedisRegistry(url or redis_server.url, **kwargs)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.close()


@pytest.fixture
def make_node(ns: str) -> Iterator[Callable[..., NodeProcess]]:
    """Start RedisRegistry nodes in child processes (closed or killed at teardown)."""
    nodes: list[NodeProcess] = []

    def make(url: str, **kwargs: Any) -> NodeProcess:
        node = NodeProcess(url, kwargs.pop("namespace", ns), **kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.close()


@pytest.fixture
def agents() -> Iterator[Callable[[], Any]]:
    """``agents()`` starts a thread agent that runs until the test ends."""
    from foundation.liveness import spawn_thread

    stop = threading.Event()
    threads = []

    def make() -> Any:
        t = spawn_thread(stop.wait)
        threads.append(t)
        return t

    yield make
    stop.set()
    for t in threads:
        t.join(timeout=5)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test shows what became of the processes of every live Sentinel
    set (a module's fixture): which still run, how the others ended, their logs."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for live in list(LIVE_SETS):
            report.sections.append((f"Sentinel set {live.service}", live.evidence()))
