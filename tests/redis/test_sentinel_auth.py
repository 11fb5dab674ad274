"""Redis Sentinel with a login (``requirepass``, an ACL user), and the watch's cost.

One real set (master, replica, one Sentinel with ``requirepass`` and one more
ACL user; ``tests.redis_support.SentinelSet``) serves the module. A lone
Sentinel makes its own count of the commands it served a count of the
master discoveries its (idle) clients made: the watch's cost is measured there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
import redis

from foundation import _redis_conn as rc
from foundation import _redis_sentinel as rs
from foundation import spawn_thread
from foundation.errors import BackendUnavailable
from foundation.registry._redis import RedisRegistry
from tests.redis.support import unique_namespace, wait_until
from tests.redis_support import SentinelSet, running_redis

SENTINEL_PW = "s3ntinel-pw"
ACL_USER = ("app-sentinel", "acl-s3cret")


@pytest.fixture(scope="module")
def auth_set() -> Iterator[SentinelSet]:
    with SentinelSet(sentinel_password=SENTINEL_PW, acl_user=ACL_USER) as s:
        yield s


def _acl_url(s: SentinelSet, password: str = ACL_USER[1], *, db: int = 0) -> str:
    return s.url_with(f"?sentinel_username={ACL_USER[0]}&sentinel_password={password}", db=db)


def test_a_sentinel_password_in_the_url_logs_in(auth_set: SentinelSet) -> None:
    client = rc.connect(auth_set.url, op_timeout=0.5)
    try:
        client.set("auth-k", "v")
        assert client.get("auth-k") == b"v"
        assert auth_set.master.command("GET", "auth-k") == b"v"
    finally:
        client.close()


def test_an_acl_user_of_the_sentinels_logs_in(auth_set: SentinelSet) -> None:
    ns = unique_namespace("sentinel-acl")
    reg = RedisRegistry(_acl_url(auth_set), namespace=ns, op_timeout=0.5)
    stop = threading.Event()
    agent = spawn_thread(stop.wait)
    try:
        reg.register("k", agent)
        assert reg.lookup("k") is not None
    finally:
        stop.set()
        reg.close()


_WRONG = "WR0NG-pw-x"


@pytest.mark.parametrize(
    ("query", "why"),
    [
        (f"?sentinel_password={_WRONG}", "refused the login"),
        (f"?sentinel_username={ACL_USER[0]}&sentinel_password={_WRONG}", "refused the login"),
        (f"?sentinel_username=nobody&sentinel_password={_WRONG}", "refused the login"),
        ("", "requires a login"),
    ],
)
def test_a_refused_sentinel_login_is_backend_unavailable_saying_so_never_the_password(
    auth_set: SentinelSet, query: str, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: "no Sentinel answered with a healthy master for the service
    # (Sentinels unreachable, or a failover in progress): No master found ...
    # (auth:AuthenticationError)", which points at the network, not the login.
    caplog.set_level(logging.DEBUG)
    url = auth_set.url_with(query)
    with pytest.raises(BackendUnavailable) as info:
        RedisRegistry(url, namespace=unique_namespace("sentinel-wrong"), op_timeout=0.5)
    text = str(info.value)
    assert "the Sentinels refused the login (check the URL's sentinel_username" in text, text
    assert why in text, text
    assert f"127.0.0.1:{auth_set.sentinel.port}" in text
    assert not isinstance(info.value, redis.RedisError)
    chain: list[BaseException] = []
    cause: BaseException | None = info.value
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for secret in (_WRONG, SENTINEL_PW, ACL_USER[1]):
        assert all(secret not in f"{e} {e!r}" for e in chain), chain
        assert secret not in caplog.text


def test_a_server_that_is_not_a_sentinel_first_in_the_list_lets_the_next_answer(
    auth_set: SentinelSet,
) -> None:
    # Before: redis-py's discovery stopped at the first error reply (a plain
    # Redis answers SENTINEL with "unknown command"): BackendUnavailable,
    # although the next Sentinel of the URL knew the master.
    with running_redis() as plain:
        hosts = f"127.0.0.1:{plain.port},127.0.0.1:{auth_set.sentinel.port}"
        url = f"redis+sentinel://{hosts}/{auth_set.service}/0?sentinel_password={SENTINEL_PW}"
        client = rc.connect(url, op_timeout=0.5)
        try:
            assert client.connection_pool.master_address[1] == auth_set.master.port
        finally:
            client.close()


def test_the_watch_asks_the_sentinels_once_per_group_however_many_clients(
    auth_set: SentinelSet,
) -> None:
    # Two groups on one Sentinel: 12 clients logging in with the password
    # (half on db 0, half on db 1: one group, the db is the master's), 12 with
    # the ACL user. Before: one discovery per client and round (24), now one
    # per group (2). The Sentinel's own count of the commands it served tells.
    password_urls = [auth_set.url, auth_set.url_with(f"?sentinel_password={SENTINEL_PW}", db=1)]
    urls = password_urls * 6 + [_acl_url(auth_set)] * 12
    clients = [rc.connect(url, op_timeout=0.5) for url in urls]
    try:
        watch = rs._MASTER_WATCH
        start = watch.rounds
        assert wait_until(lambda: watch.rounds >= start + 2, timeout=20)  # settled
        rounds_before = watch.rounds
        served_before = auth_set.sentinel.commands_served()
        assert wait_until(lambda: watch.rounds >= rounds_before + 8, timeout=30)
        served = auth_set.sentinel.commands_served() - served_before
        rounds = watch.rounds - rounds_before
        print(f"MEASURE clients=24 groups=2 rounds={rounds} discoveries={served}")
        # A round may be under way at each end of the window.
        assert 2 * (rounds - 1) <= served <= 2 * (rounds + 1), (served, rounds)
        assert all(c.ping() for c in clients)
    finally:
        for client in clients:
            client.close()
