"""Slow and idle clients against a real admin server on a free loopback port.

A client that connects and sends nothing, or half a request head, or its head a
byte at a time, or a complete head then its body a byte at a time (answered
early or not), is closed after ``header_timeout`` (uvicorn alone held it
forever: its keep-alive timeout starts after a first response, and every byte
stops it). A complete request is never cut, however long its answer lasts. Beyond
``max_connections`` a new connection is closed at once, and one WARNING says
so. The pause between two requests of a keep-alive connection stays uvicorn's.

Every wait is a ``recv()`` (or a retry loop) with a deadline: a connection the
server keeps open fails the test by a socket timeout, not by a hang.
"""

from __future__ import annotations

import http.client
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from foundation import spawn_thread
from foundation.admin import AdminServer, _slow_clients, serve
from foundation.errors import InvalidConfig
from tests._logs import captured
from tests.admin._world import ANA, open_world
from tests.admin.conftest import World, close_world, make_world
from tests.admin.test_api import event_stream, next_event
from tests.cli._support import Running, one_line_error, run_cli

WAIT = 20.0  # seconds a test waits for the server before failing
SHORT = 1.0  # the header_timeout of the tests that wait for it
GET = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"


def _post_head(path: str, length: int) -> bytes:
    """The head of a POST (with ana's token) announcing a ``length``-byte body."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: {ANA['Authorization']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture
def short(tmp_path: Path) -> Iterator[World]:
    """A server closing connections without a complete head after SHORT s."""
    world = make_world(tmp_path, header_timeout=SHORT)
    try:
        yield world
    finally:
        close_world(world)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


def _connect(url: str) -> socket.socket:
    return socket.create_connection(_address(url), timeout=WAIT)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes ``sock`` with no answer, within WAIT s (a
    socket timeout, raised, fails the test: the server kept it open)."""
    sock.settimeout(WAIT)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:  # closed with our bytes unread: RST
        return True


def _status(sock: socket.socket) -> int:
    """Send GET /healthz on ``sock``; the status of the answer (the body read)."""
    sock.settimeout(WAIT)
    sock.sendall(GET)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


def _answer(sock: socket.socket) -> int:
    """The status of the next answer on ``sock`` (its body read)."""
    sock.settimeout(WAIT)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


@contextmanager
def _trickling(sock: socket.socket, data: bytes) -> Iterator[None]:
    """Send ``data`` on ``sock`` a byte at a time, on a thread, until the
    server closes it or the block ends."""
    done = threading.Event()

    def trickle() -> None:
        for byte in data:
            if done.wait(SHORT / 5):  # sleep-ok: a slow client's pace, well under SHORT
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return  # closed by the server

    sender = threading.Thread(target=trickle, daemon=True)
    sender.start()
    try:
        yield
    finally:
        done.set()
        sender.join(WAIT)


def _long_keep_alive(world: World) -> None:
    """Give the connections ``world``'s server accepts from now on a 600 s
    keep-alive (uvicorn's default is 5 s): a kept connection asked again after
    header_timeout passed must still be open however slow the machine."""
    server = world.server._server
    assert server is not None
    server.config.timeout_keep_alive = 600  # read by each new connection's protocol


def _get(url: str, path: str = "/healthz") -> int:
    """A real request on a new connection: its status."""
    host, port = _address(url)
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# ------------------------------------------------------------------ header_timeout


def test_an_idle_connection_is_closed_after_header_timeout(short: World) -> None:
    # Was: held forever (a slowloris connection costs a descriptor for good).
    with _connect(short.url) as idle:
        assert _closed_by_server(idle)
    assert _get(short.url) == 200


@pytest.mark.parametrize(
    "partial",
    [
        b"G",
        b"GET /healthz HTTP/1.1\r\nHo",
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n",  # no blank line: the head never ends
    ],
)
def test_a_partial_request_head_is_closed_after_header_timeout(
    short: World, partial: bytes
) -> None:
    with _connect(short.url) as sock:
        sock.sendall(partial)
        assert _closed_by_server(sock)


def test_a_head_sent_a_byte_at_a_time_is_closed_at_its_deadline(short: World) -> None:
    # Each byte does not extend the deadline: it counts from the connection.
    with (
        _connect(short.url) as sock,
        _trickling(sock, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 10_000),
    ):
        assert _closed_by_server(sock)


def test_a_body_sent_a_byte_at_a_time_is_closed_at_the_requests_deadline(
    short: World,
) -> None:
    # Was: held forever. The deadline ended with the head, and each body byte
    # stopped uvicorn's keep-alive timer; 1,000 such clients held every place
    # under max_connections, so every real client was refused.
    with _connect(short.url) as sock:
        sock.sendall(_post_head("/api/flags/new_checkout/enable", 100_000))
        with _trickling(sock, b" " * 10_000):
            assert _closed_by_server(sock)  # and unanswered: the write never ran
    assert _get(short.url) == 200


def test_a_body_still_sent_after_an_early_answer_is_closed_at_the_deadline(
    short: World,
) -> None:
    # Unauthenticated: POST /healthz is answered 405 before its body is read,
    # and the connection stayed open as long as body bytes kept arriving.
    with _connect(short.url) as sock:
        sock.sendall(b"POST /healthz HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\n")
        assert _answer(sock) == 405
        with _trickling(sock, b"a" * 10_000):
            assert _closed_by_server(sock)


def test_a_post_with_its_body_is_served_and_kept_alive_past_the_deadline(
    short: World,
) -> None:
    body = b"{}"
    _long_keep_alive(short)
    with _connect(short.url) as kept:
        kept.sendall(_post_head("/api/flags/search_v2/enable", len(body)))
        kept.sendall(body)  # head and body apart: the request completes on its body
        assert _answer(kept) == 200
        # An idle connection opened after that answer is closed after
        # header_timeout: once it is, that much has passed for the kept one too,
        # whose deadline ended with its complete request.
        with _connect(short.url) as idle:
            assert _closed_by_server(idle)
        assert _status(kept) == 200
    assert short.flags.enabled("search_v2")


def test_an_event_stream_outlives_the_deadline(short: World) -> None:
    # GET /api/events is complete with its head: its answer, the page's event
    # stream, lasts as long as the page, never cut by header_timeout.
    with event_stream(short.url, {}) as events:
        with _connect(short.url) as idle:  # header_timeout passes for the stream too
            assert _closed_by_server(idle)
        short.registry.register("late", spawn_thread(short.stop.wait, name="late"))
        assert next_event(events, "agent", lambda d: d["entry"]["key"] == "late")


def test_a_partial_head_after_a_keep_alive_pause_is_closed(short: World) -> None:
    # uvicorn stops its keep-alive timer on the first byte of the next request;
    # the head deadline takes over from there.
    with _connect(short.url) as sock:
        assert _status(sock) == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
        assert _closed_by_server(sock)


def test_keep_alive_between_requests_stays_uvicorns(short: World) -> None:
    # A keep-alive connection idles past header_timeout (uvicorn's keep-alive,
    # here 600 s: a loaded machine may take 5 s, uvicorn's default, between two
    # lines) and serves its next request. The idle connection opened after the
    # first answer is closed after header_timeout: once it is, that much has
    # passed for the keep-alive one too.
    _long_keep_alive(short)
    with _connect(short.url) as kept:
        assert _status(kept) == 200
        with _connect(short.url) as idle:
            assert _closed_by_server(idle)
        assert _status(kept) == 200
        assert _status(kept) == 200


def test_a_request_is_answered_while_many_idle_connections_are_open(tmp_path: Path) -> None:
    world = make_world(tmp_path, header_timeout=600, max_connections=500)
    try:
        with ExitStack() as stack:
            for i in range(300):
                sock = stack.enter_context(_connect(world.url))
                if i % 2:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")
            assert _get(world.url) == 200
            assert _get(world.url, "/api/flags") == 200
            with _connect(world.url) as sock:  # and keep-alive works among them
                assert _status(sock) == 200
                assert _status(sock) == 200
    finally:
        close_world(world)


# ------------------------------------------------------------------ max_connections


def _refused(url: str) -> bool:
    """Whether a new connection sending a request is closed without an answer."""
    with _connect(url) as sock:
        try:
            sock.sendall(GET)
        except (BrokenPipeError, ConnectionResetError):
            return True  # closed before our request was sent
        return _closed_by_server(sock)


def _answered_once_freed(url: str) -> int:
    """The status of the first request answered, retried while the server has
    not yet seen the clients' closes (a refused connection: closed unanswered)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return _get(url)
        except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
            if time.monotonic() > deadline:
                raise


def test_beyond_max_connections_new_ones_are_closed_and_one_warning_says_so(
    tmp_path: Path,
) -> None:
    world = make_world(tmp_path, header_timeout=600, max_connections=5)
    try:
        with captured("foundation.admin", level=logging.WARNING) as records:
            with ExitStack() as stack:
                held = [stack.enter_context(_connect(world.url)) for _ in range(4)]
                with _connect(world.url) as fifth:  # the fifth is still served
                    assert _status(fifth) == 200
                    # Accepted in order: the five above are the server's before these.
                    assert _refused(world.url)
                    assert _refused(world.url)
                    assert _refused(world.url)
                    assert _status(fifth) == 200  # the open ones keep working
                assert len(held) == 4
            # Every connection above is closed: once the server has seen it, a
            # request is answered again.
            assert _answered_once_freed(world.url) == 200
        warnings = records.messages(name="foundation.admin")
        assert len(warnings) == 1, warnings  # once, not per connection
        assert "5 connections open (max_connections)" in warnings[0], warnings
    finally:
        close_world(world)


def test_the_cap_warning_repeats_after_its_interval_with_a_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_slow_clients, "WARNING_INTERVAL", 0.0)  # "a minute" is now
    world = make_world(tmp_path, header_timeout=600, max_connections=1)
    try:
        with (
            captured("foundation.admin", level=logging.WARNING) as records,
            _connect(world.url) as only,
        ):
            assert _status(only) == 200
            assert _refused(world.url)
            assert _refused(world.url)
        warnings = records.messages(name="foundation.admin")
        assert len(warnings) == 2, warnings
        assert "max_connections" in warnings[0], warnings
        assert "at max_connections=1 again: 1 connections closed" in warnings[1], warnings
    finally:
        close_world(world)


# ------------------------------------------------------------------ options


BAD = [
    {"header_timeout": 0},
    {"header_timeout": -1.5},
    {"header_timeout": math.nan},
    {"header_timeout": math.inf},
    {"header_timeout": "10"},
    {"header_timeout": True},
    {"header_timeout": None},
    {"max_connections": 0},
    {"max_connections": -3},
    {"max_connections": 10.0},
    {"max_connections": "100"},
    {"max_connections": True},
]


@pytest.mark.parametrize("options", BAD)
def test_bad_slow_client_options_are_invalid_config(options: dict[str, object]) -> None:
    with pytest.raises(InvalidConfig, match=next(iter(options))):
        AdminServer(**options)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match=next(iter(options))):
        serve(bind="127.0.0.1:0", **options)  # type: ignore[arg-type]


def test_the_default_cap_leaves_half_the_descriptors_to_the_process() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = 1000 if soft == resource.RLIM_INFINITY else min(1000, soft // 2)
    assert _slow_clients.check_max_connections(None) == expected


def _store(tmp_path: Path) -> str:
    store, flags, _ = open_world(tmp_path / "flags.db")
    flags.close()
    store.close()
    return f"sqlite:///{tmp_path / 'flags.db'}"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--header-timeout", "0"), ("--header-timeout", "nan"), ("--max-connections", "0")],
)
def test_the_admin_command_refuses_a_bad_value_as_a_usage_error(
    tmp_path: Path, option: str, value: str
) -> None:
    result = run_cli("admin", "--store", _store(tmp_path), option, value, cwd=tmp_path)
    line = one_line_error(result, exit_code=2)
    assert line.startswith(f"InvalidConfig: {option}: "), line


def test_the_admin_command_passes_its_options_to_the_server(tmp_path: Path) -> None:
    admin = Running(
        "admin", "--store", _store(tmp_path), "--bind", "127.0.0.1:0",
        "--header-timeout", str(SHORT), "--max-connections", "2", cwd=tmp_path,
    )  # fmt: skip
    try:
        url = admin.wait_for("admin page: http://").split("admin page: ", 1)[1]
        with _connect(url) as idle:
            assert _closed_by_server(idle)  # --header-timeout
        with _connect(url) as first, _connect(url) as second:
            assert _status(first) == 200
            assert _status(second) == 200
            assert _refused(url)  # --max-connections
        admin.send(signal.SIGTERM)
        assert admin.finish() == 0, (admin.stdout, admin.stderr)
        assert any("max_connections" in line for line in admin.stderr), admin.stderr
    finally:
        admin.close()
