"""URL query parameters cannot override the bounds the connection layer sets.

redis-py's ``from_url`` lets a URL's options win over the client's: before
the fix ``?socket_timeout=600`` gave a client whose every call could wait ten
minutes although the caller asked for ``op_timeout=0.5``. ``check_url`` now
refuses those parameters (``BOUND_QUERY``), naming the one given, for every
scheme, and a ``redis+sentinel://`` URL's unknown parameters are refused at
the same place (they were refused only by ``connect``).
"""

from __future__ import annotations

import pytest

from foundation import _redis_conn as rc
from foundation.errors import InvalidConfig
from foundation.flags import open_store
from foundation.registry import RedisRegistry
from tests.redis_support import RedisServer, free_port

_VALUES = {
    "socket_timeout": "600",
    "socket_connect_timeout": "600",
    "timeout": "5",
    "retry_on_timeout": "true",
    "retry_on_error": "TimeoutError",
}


def test_every_bound_parameter_is_listed() -> None:
    assert set(rc.BOUND_QUERY) == set(_VALUES)
    assert set(rc.BOUND_QUERY) <= rc.url_query_keys()  # what redis-py would read


@pytest.mark.parametrize("key", sorted(_VALUES))
@pytest.mark.parametrize(
    "base",
    [
        "redis://127.0.0.1:{port}/0?{q}",
        "rediss://127.0.0.1:{port}/0?db=0&{q}",
        "unix:///run/redis.sock?{q}",
        "redis+sentinel://127.0.0.1:{port}/cache/0?{q}",
    ],
)
def test_check_url_refuses_a_bound_parameter_naming_it(base: str, key: str) -> None:
    url = base.format(port=free_port(), q=f"{key}={_VALUES[key]}")
    with pytest.raises(InvalidConfig, match=rf"'{key}' is not accepted.*op_timeout"):
        rc.check_url(url)
    with pytest.raises(InvalidConfig, match=rf"'{key}'"):
        rc.check_url(url + "&namespace=shop", store=True)


def test_connect_refuses_a_url_that_would_loosen_the_bounds(redis_server: RedisServer) -> None:
    # A live server: before the fix this connected, with socket_timeout 600.
    with pytest.raises(InvalidConfig, match="'socket_timeout'"):
        rc.connect(redis_server.url + "?socket_timeout=600", op_timeout=0.5)
    client = rc.connect(redis_server.url + "?health_check_interval=5", op_timeout=0.5)
    try:
        conn = client.connection_pool.get_connection()
        try:
            assert (conn.socket_timeout, conn.socket_connect_timeout) == (0.5, 0.5)
        finally:
            client.connection_pool.release(conn)
    finally:
        client.close()


def test_the_redis_classes_refuse_them_before_any_io() -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: only the check can fail
    with pytest.raises(InvalidConfig, match="'socket_connect_timeout'"):
        RedisRegistry(closed + "?socket_connect_timeout=600")
    with pytest.raises(InvalidConfig, match="'retry_on_timeout'"):
        open_store(closed + "?retry_on_timeout=true&namespace=shop")


@pytest.mark.parametrize(
    ("query", "store", "named"),
    [
        ("foo=1", False, "'foo'"),
        ("sentinel_username=u&bar=2", False, "'bar'"),
        ("namespace=shop&foo=1", False, "'namespace', 'foo'"),
        ("namespace=shop&foo=1", True, "'foo'"),
    ],
)
def test_a_sentinel_url_unknown_parameter_is_refused_by_check_url(
    query: str, store: bool, named: str
) -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()}/cache/0?{query}"
    with pytest.raises(InvalidConfig, match=rf"unknown query parameter\(s\) {named}"):
        rc.check_url(url, store=store)


def test_a_sentinel_store_url_with_its_namespace_passes_and_stores_refuse_others() -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()}/cache/0?sentinel_username=u"
    rc.check_url(url + "&namespace=shop", store=True)
    rc.check_url(url)
    with pytest.raises(InvalidConfig, match="'namespace': a Redis connection has no namespace"):
        rc.check_url(url + "&namespace=shop")  # as for a plain URL (RedisRegistry, --redis)
    with pytest.raises(InvalidConfig, match="'foo'"):
        open_store(url + "&namespace=shop&foo=1")  # before any I/O: nothing listens
