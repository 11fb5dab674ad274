"""Doctest support for ``src``: a private redis-server for examples that name ``redis_url``.

A docstring example that talks to Redis uses the name ``redis_url`` (its text
says so: "``redis_url`` names your server"), never a test-only import. For
those doctests only, this starts a real ``redis-server`` on a free loopback
port and puts its URL in the doctest namespace. A missing ``redis-server``
fails the example (``make test`` installs it); nothing is skipped.

This file lives beside the package, not in it: it is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from _pytest.doctest import DoctestItem

from foundation._demo._redis_server import RedisServerProcess


@pytest.fixture(autouse=True)
def _redis_url_for_doctests(
    request: pytest.FixtureRequest, doctest_namespace: dict[str, Any]
) -> Iterator[None]:
    item = request.node
    if not isinstance(item, DoctestItem) or item.dtest is None:
        yield
        return
    if not any("redis_url" in example.source for example in item.dtest.examples):
        yield
        return
    with RedisServerProcess() as server:
        doctest_namespace["redis_url"] = server.url
        try:
            yield
        finally:
            del doctest_namespace["redis_url"]
