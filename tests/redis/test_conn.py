"""The shared Redis connection layer: URLs, connecting, error mapping, NOSCRIPT, backoff.

Error replies are produced by a real redis-server where a test can make one
answer them (READONLY, OOM, MASTERDOWN, BUSY, NOAUTH/WRONGPASS, NOSCRIPT, DB
index); the rest (LOADING, TRYAGAIN, CLUSTERDOWN) are parsed from the server's
wire text by redis-py's own parser, exactly as a reply would be.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from foundation import _redis_conn as rc
from foundation.errors import BackendUnavailable, InvalidConfig
from tests.redis_support import RedisServer, free_port, running_redis

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ URLs


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/",
        "redis://user:pw@cache/15",
        "rediss://:pw@cache:6380/2",
        "redis://cache:6379?db=3",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=2",
    ],
)
def test_check_url_accepts_every_redis_py_url_form(url: str) -> None:
    rc.check_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "non-empty str"),
        (b"redis://h:1/0", "non-empty str"),
        (None, "non-empty str"),
        ("http://cache:6379/0", "scheme"),
        ("REDIS://cache:6379/0", "scheme"),
        ("cache:6379", "scheme"),
        ("redis://cache:port/0", "Port"),
        ("redis://cache:99999/0", "Port"),
        ("redis://cache:0/0", "port 0"),
        ("redis://cache:6379/x", "database must be a number"),
        ("redis://cache:6379/-1", "database must be a number"),
        ("redis://cache:6379/0?db=a", "database must be a number"),
        ("redis://cache:6379/0 ", "whitespace"),
        ("unix://", "socket path"),
    ],
)
def test_check_url_rejects_malformed_urls_with_invalid_config(url: object, why: str) -> None:
    with pytest.raises(InvalidConfig, match=why):
        rc.check_url(url)  # type: ignore[arg-type]


def test_check_url_never_shows_the_password() -> None:
    with pytest.raises(InvalidConfig) as info:
        rc.check_url("redis://app:s3cret@cache:6379/nope")
    assert "s3cret" not in str(info.value)
    assert "app:***@cache:6379" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://app:s3cret@cache:6379/0", "redis://app:***@cache:6379/0"),
        ("redis://:s3cret@cache/0", "redis://:***@cache/0"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url_replaces_only_the_password(url: str, shown: str) -> None:
    assert rc.redact_url(url) == shown


# ------------------------------------------------------------------ connect


def test_connect_returns_a_working_client(redis_server: RedisServer) -> None:
    client = rc.connect(redis_server.url, op_timeout=2.0, name="conn-test")
    try:
        assert client.ping() is True
        names = [c["name"] for c in client.client_list()]
        assert "conn-test" in names
    finally:
        client.close()


def test_connect_decodes_responses_when_asked(redis_server: RedisServer) -> None:
    client = rc.connect(redis_server.url, op_timeout=2.0, decode_responses=True)
    try:
        client.set("conn-test-decoded", "v")
        assert client.get("conn-test-decoded") == "v"
    finally:
        client.close()


def test_connect_to_a_database_the_server_lacks_is_invalid_config(
    redis_server: RedisServer,
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/99"
    with pytest.raises(InvalidConfig, match="database index is out of range") as info:
        rc.connect(url, op_timeout=2.0)
    assert isinstance(info.value.__cause__, redis.RedisError)


def test_connect_to_nothing_listening_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="unreachable"):
        rc.connect(f"redis://127.0.0.1:{free_port()}/0", op_timeout=1.0)


@pytest.fixture
def http_port() -> Iterator[int]:
    """A tiny HTTP server on a free port: not Redis."""

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, name="http-not-redis", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_connect_to_a_server_that_is_not_redis_is_backend_unavailable(http_port: int) -> None:
    with pytest.raises(BackendUnavailable, match="does not speak the Redis protocol"):
        rc.connect(f"redis://127.0.0.1:{http_port}/0", op_timeout=2.0)


def test_connect_with_a_wrong_or_missing_password_is_backend_unavailable() -> None:
    with running_redis(password="right") as server:
        for url in (
            f"redis://:wrong@127.0.0.1:{server.port}/0",
            f"redis://127.0.0.1:{server.port}/0",
        ):
            with pytest.raises(BackendUnavailable, match=r"credentials|password") as info:
                rc.connect(url, op_timeout=2.0)
            assert "wrong" not in str(info.value)
        rc.connect(server.url, op_timeout=2.0).close()


def test_connect_rejects_a_malformed_url_before_any_io() -> None:
    with pytest.raises(InvalidConfig):
        rc.connect("redis://cache:6379/x", op_timeout=1.0)


# ------------------------------------------------------------------ error replies (real server)


def _translated_error(url: str, fn: object) -> BaseException:
    with pytest.raises((BackendUnavailable, InvalidConfig)) as info, rc.translated(url, "testing"):
        fn()  # type: ignore[operator]
    assert isinstance(info.value.__cause__, redis.RedisError)
    return info.value


def test_readonly_replies_are_backend_unavailable_plain_and_in_scripts(
    fresh_redis: RedisServer,
) -> None:
    client = rc.connect(fresh_redis.url, op_timeout=2.0)
    script = client.register_script("redis.call('SET', KEYS[1], ARGV[1]) return 1")
    try:
        assert script(keys=["k"], args=["1"]) == 1
        fresh_redis.make_read_only()
        for call in (lambda: client.set("k", "2"), lambda: script(keys=["k"], args=["2"])):
            err = _translated_error(fresh_redis.url, call)
            assert isinstance(err, BackendUnavailable)
            assert "READONLY" in str(err)
        assert client.get("k") == b"1"  # reads still work: the data is kept
        fresh_redis.make_writable()
        assert script(keys=["k"], args=["3"]) == 1
    finally:
        client.close()


def test_oom_replies_are_backend_unavailable(fresh_redis: RedisServer) -> None:
    client = rc.connect(fresh_redis.url, op_timeout=2.0)
    script = client.register_script("redis.call('SET', KEYS[1], ARGV[1]) return 1")
    try:
        fresh_redis.oom_on()
        for call in (lambda: client.set("k", "2"), lambda: script(keys=["k"], args=["2"])):
            err = _translated_error(fresh_redis.url, call)
            assert isinstance(err, BackendUnavailable)
            assert "OOM" in str(err)
        fresh_redis.oom_off()
        assert client.set("k", "3") is True
    finally:
        client.close()


def test_masterdown_replies_are_backend_unavailable(fresh_redis: RedisServer) -> None:
    client = rc.connect(fresh_redis.url, op_timeout=2.0)
    try:
        fresh_redis.command("CONFIG", "SET", "replica-serve-stale-data", "no")
        fresh_redis.make_read_only()
        err = _translated_error(fresh_redis.url, lambda: client.get("k"))
        assert "MASTERDOWN" in str(err)
        fresh_redis.make_writable()
        assert client.get("k") is None
    finally:
        client.close()


def test_busy_replies_are_backend_unavailable(fresh_redis: RedisServer) -> None:
    fresh_redis.command("CONFIG", "SET", "busy-reply-threshold", "50")
    spinner = rc.connect(fresh_redis.url, op_timeout=30.0)
    client = rc.connect(fresh_redis.url, op_timeout=2.0)
    started = threading.Event()

    def spin() -> None:
        started.set()
        # Read-only, so SCRIPT KILL can stop it; its own error is expected.
        with pytest.raises(redis.RedisError):
            spinner.eval("local i = 0 while true do i = i + 1 end", 0)

    thread = threading.Thread(target=spin, name="busy-script", daemon=True)
    thread.start()
    started.wait(5)
    try:
        deadline_errors: list[BaseException] = []
        for _ in range(2000):  # until the server is past busy-reply-threshold
            try:
                client.get("k")
            except redis.RedisError as exc:
                deadline_errors.append(exc)
                break
        assert deadline_errors, "the server never answered BUSY"
        err = rc.translate_error(deadline_errors[0], url=fresh_redis.url, doing="testing")
        assert isinstance(err, BackendUnavailable)
        assert "BUSY" in str(err)
    finally:
        fresh_redis.command("SCRIPT", "KILL")
        thread.join(timeout=10)
        spinner.close()
        client.close()


# ------------------------------------------------------------------ error replies (wire text)


@pytest.mark.parametrize(
    ("wire", "kind"),
    [
        ("LOADING Redis is loading the dataset in memory", "LOADING"),
        ("READONLY You can't write against a read only replica.", "READONLY"),
        (
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "MASTERDOWN",
        ),
        ("BUSY Redis is busy running a script.", "BUSY"),
        ("OOM command not allowed when used memory > 'maxmemory'.", "OOM"),
        ("TRYAGAIN Multiple keys request during rehashing of slot", "TRYAGAIN"),
        ("CLUSTERDOWN The cluster is down", "CLUSTERDOWN"),
        ("NOAUTH Authentication required.", "auth"),
        ("WRONGPASS invalid username-password pair or user is disabled.", "auth"),
        ("NOPERM this user has no permissions to run the 'set' command", "NOPERM"),
        ("UNBLOCKED force unblock from blocking operation, instance state changed", "UNBLOCKED"),
        ("ERR unknown command 'FOO'", "response"),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", "response"),
    ],
)
def test_every_error_reply_becomes_backend_unavailable(wire: str, kind: str) -> None:
    from redis._parsers import _RESP2Parser

    parser = _RESP2Parser(socket_read_size=65536)  # type: ignore[no-untyped-call]
    exc = parser.parse_error(wire)  # type: ignore[no-untyped-call]
    assert isinstance(exc, redis.RedisError)
    assert rc.error_kind(exc) == kind
    err = rc.translate_error(exc, url="redis://h:1/0", doing="testing")
    assert type(err) is BackendUnavailable
    assert "redis://h:1/0" in str(err)
    assert "testing" in str(err)


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Error 111 connecting to h:1. Connection refused."),
        redis.TimeoutError("Timeout reading from socket"),
        redis.exceptions.InvalidResponse("Protocol Error: b'H'"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_transport_failures_become_backend_unavailable(exc: BaseException) -> None:
    err = rc.translate_error(exc, url="redis://h:1/0", doing="testing")
    assert type(err) is BackendUnavailable


def test_translated_leaves_foundation_errors_and_bugs_alone() -> None:
    with pytest.raises(InvalidConfig), rc.translated("redis://h:1/0", "testing"):
        raise InvalidConfig("mine")
    with pytest.raises(KeyError), rc.translated("redis://h:1/0", "testing"):
        raise KeyError("a bug is not an outage")


# ------------------------------------------------------------------ NOSCRIPT


def test_scripts_reload_after_a_server_restart_plain_and_in_pipelines(
    fresh_redis: RedisServer,
) -> None:
    client = rc.connect(fresh_redis.url, op_timeout=2.0)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    try:
        assert script(keys=["n"]) == 1
        fresh_redis.restart()  # the script cache is gone with the data
        assert fresh_redis.command("SCRIPT", "EXISTS", script.sha) == [0]
        assert script(keys=["n"]) == 1  # NOSCRIPT -> loaded again, retried once
        fresh_redis.restart()
        assert fresh_redis.command("SCRIPT", "EXISTS", script.sha) == [0]
        pipe = client.pipeline(transaction=False)
        script(keys=["n"], client=pipe)
        script(keys=["n"], client=pipe)
        assert pipe.execute() == [1, 2]  # the pipeline loads missing scripts first
        fresh_redis.command("SCRIPT", "FLUSH")
        assert script(keys=["n"]) == 3
    finally:
        client.close()


# ------------------------------------------------------------------ the extra is optional


def test_core_import_does_not_need_redis_and_import_redis_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "import foundation, foundation._redis_conn as rc\n"
        "try:\n"
        "    rc.import_redis()\n"
        "except ImportError as exc:\n"
        "    print('ImportError:', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "ImportError:" in out.stdout, out.stderr
    assert "foundation[redis]" in out.stdout


def test_an_internal_failure_of_redis_py_is_backend_unavailable_but_ours_is_not() -> None:
    """redis-py has internal races (a pooled socket cut by another thread can fail
    ``can_read`` with TypeError); raised from redis-py's own code, such an error is
    a backend failure. The same type raised by our code passes unchanged."""
    from redis._parsers import hiredis

    def broken_inside_redis_py() -> None:
        # The very function seen failing in an outage: polling a socket that
        # another thread has just dropped (None) raises TypeError inside redis-py.
        hiredis._socket_is_closed(None)

    with (
        pytest.raises(BackendUnavailable, match="redis-py failed internally"),
        rc.translated("redis://h:1/0", "testing"),
    ):
        broken_inside_redis_py()
    with pytest.raises(TypeError, match="ours"), rc.translated("redis://h:1/0", "testing"):
        raise TypeError("ours")
