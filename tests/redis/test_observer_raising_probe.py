"""``RedisObserver.query`` with a value whose comparisons raise: ``InvalidCriteria``.

As every registry (tests/contract: ``test_a_probe_whose_comparison_raises_is_invalid_criteria``):
the caller's own error (not a ``TypeError``, which counts as no match) never
escapes; the error names the attribute.
"""

from __future__ import annotations

import threading

import pytest

from foundation import spawn_thread
from foundation.errors import InvalidCriteria
from foundation.registry._redis import RedisRegistry
from foundation.registry._redis._observer import RedisObserver
from tests.contract.test_registry_contract import RaisingProbe
from tests.redis.support import unique_namespace, wait_until
from tests.redis_support import RedisServer


def test_an_observer_query_whose_probe_raises_is_invalid_criteria(
    redis_server: RedisServer, stop: threading.Event
) -> None:
    namespace = unique_namespace("probe")
    with (
        RedisRegistry(redis_server.url, namespace=namespace) as node,
        RedisObserver(redis_server.url, namespace=namespace) as observer,
    ):
        node.register("k", spawn_thread(stop.wait), {"role": "io"})
        assert wait_until(lambda: observer.count() == 1)
        with pytest.raises(InvalidCriteria, match="'role'"):
            observer.query([("role", "eq", RaisingProbe("io"))])
        assert [e.key for e in observer.query([("role", "eq", "io")])] == ["k"]
