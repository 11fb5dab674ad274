"""Redis Sentinel, reviewed adversarially: secrets in messages, forked children.

The message tests need no server (no Sentinel answers on a free port); the fork
scenario runs a real master, replica and Sentinel (``tests.redis_support``) in
a subprocess with the interpreter's default hooks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation import _redis_conn as rc
from foundation.errors import BackendUnavailable, FoundationError, InvalidConfig
from tests.faults._subprocess import run_scenario
from tests.redis.support import wait_until
from tests.redis_support import free_port

SECRET = "t0pS3cret"


@pytest.mark.parametrize(
    "query",
    [
        f"sentinel%5Fpassword={SECRET}",  # read by parse_qsl as sentinel_password
        f"sentinel_%70assword={SECRET}",
        f"Sentinel_Password={SECRET}",  # refused as unknown, but still a password
        f"password={SECRET}",
        f"namespace=n&sentinel%5fpassword={SECRET}&x=1",
    ],
)
def test_a_sentinel_password_spelled_otherwise_never_reaches_a_message(query: str) -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()}/cache/0?{query}"
    assert SECRET not in rc.redact_url(url)
    with pytest.raises(FoundationError) as info:
        rc.connect(url, op_timeout=0.3)
    assert isinstance(info.value, BackendUnavailable | InvalidConfig)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


def test_an_unknown_sentinel_parameter_names_the_url_once() -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()}/cache?sentinel_pasword=x"
    with pytest.raises(InvalidConfig) as info:
        rc.connect(url, op_timeout=0.3)
    assert str(info.value).count("invalid Redis URL") == 1, str(info.value)


_FORK = """
import os
from foundation import _redis_conn as rc
from tests.redis_support import SentinelSet

WATCH = "foundation-redis-sentinel"
with SentinelSet() as s:
    parent_client = rc.connect(s.url, op_timeout=0.5)   # stays open in the parent
    assert parent_client.ping()
    wait_for(lambda: WATCH in library_threads(), "the watch runs in the parent")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the parent's client is inherited, never used here
        code = 1
        try:
            client = rc.connect(s.url, op_timeout=0.5)
            client.set("from-child", "1")
            client.close()
            # Only the parent's pool (its sockets are the parent's) is left:
            # nothing of this process is connected, so the watch ends.
            wait_for(lambda: WATCH not in library_threads(), "the child's watch ends", 10)
            code = 0
        except BaseException as exc:
            os.write(w, repr(exc).encode())
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    why = os.read(r, 4096).decode()
    assert os.waitstatus_to_exitcode(status) == 0, why
    # The parent's client still works, and its watch still runs.
    assert parent_client.get("from-child") == b"1"
    assert WATCH in library_threads()
    parent_client.close()
    wait_for(lambda: WATCH not in library_threads(), "the parent's watch ends")
print("OK")
"""


def test_the_watch_of_a_forked_child_ends_when_the_child_has_no_connection() -> None:
    run_scenario(_FORK, timeout=90)


def test_a_call_on_a_connected_client_never_waits_for_the_watch_lock() -> None:
    # Before: every get_connection() ran SentinelConnection.connect() (redis-py
    # calls it on every checkout; it returns at once when connected), which took
    # the process-wide watch lock: every Redis call of every Sentinel client
    # contended on it, and waited while the watch walked all pools under it.
    import threading

    from foundation import _redis_sentinel as rs
    from tests.redis_support import SentinelSet

    with SentinelSet() as s:
        client = rc.connect(s.url, op_timeout=1.0)
        try:
            client.set("k", "v")
            done = threading.Event()

            def get() -> None:
                client.get("k")
                done.set()

            with rs._MASTER_WATCH._lock:  # the watch busy walking its pools
                getter = threading.Thread(target=get)
                getter.start()
                served = done.wait(10)
            getter.join(10)
            assert served, "a GET on a connected client waited for the watch lock"
        finally:
            client.close()


def test_a_url_that_is_not_utf8_is_invalid_config_not_a_unicode_error() -> None:
    # A command line's undecodable bytes arrive as surrogates (os.fsdecode).
    # Before: check_url passed it and a UnicodeEncodeError left connect().
    url = f"redis+sentinel://:{SECRET}@127.0.0.1:{free_port()}/s\udcff/0"
    with pytest.raises(InvalidConfig, match="not valid UTF-8") as info:
        rc.connect(url, op_timeout=0.3)
    assert SECRET not in str(info.value)


def test_no_master_found_says_what_each_sentinel_did_in_one_line() -> None:
    # Before: redis-py's text carried the repr of every Sentinel's client and
    # pool (a screenful each) into the BackendUnavailable message and the logs.
    p1, p2 = free_port(), free_port()
    url = f"redis+sentinel://127.0.0.1:{p1},127.0.0.1:{p2}/cache/0?sentinel_password={SECRET}"
    with pytest.raises(BackendUnavailable) as info:
        rc.connect(url, op_timeout=0.3)
    text = str(info.value)
    assert "ConnectionPool" not in text, text
    assert "No master found for 'cache' (" in text, text
    assert "\n" not in text
    assert SECRET not in text


def _sockets() -> set[str]:
    import os

    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_closing_a_client_wrapped_around_the_sentinel_pool_closes_every_socket() -> None:
    # What the flag store's listener does: a pinned client on connect()'s pool.
    # Before: its close() and pool.disconnect() left the Sentinel manager's
    # connection (used to discover the master) open until garbage collection;
    # connect()'s own client.close() likewise left the master connections open.
    import redis

    from tests.redis_support import SentinelSet

    with SentinelSet() as s:
        before = _sockets()
        base = rc.connect(s.url, op_timeout=1.0)
        pinned = redis.Redis(connection_pool=base.connection_pool, single_connection_client=True)
        pinned.set("k", "v")
        pinned.close()
        base.connection_pool.disconnect()
        # Polled: a discovery of the watch thread may be under way.
        assert wait_until(lambda: _sockets() - before == set(), timeout=10), _sockets() - before
        other = rc.connect(s.url, op_timeout=1.0)
        other.set("k", "w")
        other.close()  # close() alone, as for a redis:// client
        # Polled: a discovery of the watch thread may be under way.
        assert wait_until(lambda: _sockets() - before == set(), timeout=10), _sockets() - before
        assert base is not None  # alive: not collected
        assert other is not None


@pytest.mark.parametrize(
    "url",
    ["REDIS+SENTINEL://:s3cr3t@h:1/svc", "Redis://:s3cr3t@h:1/0", "redis+Sentinel://u:s3cr3t@h/s"],
)
def test_a_misspelt_scheme_never_shows_the_password(url: str) -> None:
    from foundation.flags import open_store

    with pytest.raises(InvalidConfig) as raised:
        open_store(url)
    assert "s3cr3t" not in str(raised.value)
    assert "unknown flag store scheme" in str(raised.value)


def test_the_command_line_never_shows_the_password_of_a_url_that_is_not_utf8(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    from tests.cli._support import cli_env

    url = "redis+sentinel://:s3cr3t@h:1/svc\udcff"
    for option in ("--store", "--redis"):
        done = subprocess.run(
            [sys.executable, "-m", "foundation.cli", option, url, "flags", "list"],
            capture_output=True,
            text=True,
            errors="surrogateescape",
            env=cli_env(),
            cwd=tmp_path,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0
        assert "not valid UTF-8" in done.stderr, done.stderr
        assert "s3cr3t" not in done.stderr, done.stderr
    assert os.listdir(tmp_path) == []
