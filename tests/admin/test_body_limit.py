"""Request bodies over real HTTP: the size limit and a client that leaves mid-body.

A real uvicorn admin server on a free loopback port. Oversized bodies are sent
over a raw socket so the test controls what is sent: a ``Content-Length`` over
``MAX_BODY_BYTES`` with no body at all, and a chunked body past the limit that
never ends. Both are answered 413 only if the server refuses without reading
the whole body (otherwise it waits for the rest, and the read times out).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from foundation.admin import AdminServer
from foundation.admin._http import MAX_BODY_BYTES
from foundation.flags import FeatureFlags, Flag
from tests._logs import Records, captured

TOKEN = "ana:ana-secret"
ANA = {"Authorization": "Bearer ana-secret"}
SINGLE = "/ofrep/v1/evaluate/flags/beta"
BULK = "/ofrep/v1/evaluate/flags"
WRITE = "/api/flags/beta/enable"
PATHS = [SINGLE, BULK, WRITE]
WAIT = 30.0  # seconds a test waits for the server before failing


@pytest.fixture
def url() -> Iterator[str]:
    flags = FeatureFlags([Flag("beta", description="the beta")])
    server = AdminServer(flags=flags, token=TOKEN, bind="127.0.0.1:0").start()
    try:
        yield server.url.rstrip("/")
    finally:
        server.close()
        flags.close()


def _head(path: str, framing: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: test",
        "Authorization: Bearer ana-secret",
        "Content-Type: application/json",
        framing,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_body(response: http.client.HTTPResponse, raw: bytes) -> dict[str, object]:
    assert response.getheader("Content-Type", "").split(";")[0] == "application/json"
    body = json.loads(raw)
    assert isinstance(body, dict)
    return body


def _check_413(path: str, status: int, body: dict[str, object]) -> None:
    """The usual error shape of the route: OFREP's (GENERAL), or the admin API's."""
    assert status == 413, body
    message = f"larger than {MAX_BODY_BYTES} bytes"
    if path == WRITE:
        assert body["error"] == "BodyTooLarge"
        assert message in str(body["message"])
        return
    assert body["errorCode"] == "GENERAL"
    assert message in str(body["errorDetails"])
    assert body.get("key") == ("beta" if path == SINGLE else None)


def _raw_exchange(url: str, data: bytes) -> tuple[int, dict[str, object]]:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()  # socket.timeout here: the server waits for the whole body
        raw = response.read()
        return response.status, _json_body(response, raw)


@pytest.mark.parametrize("path", PATHS)
def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(
    url: str, path: str
) -> None:
    # Only the headers are sent: the answer cannot wait for the body.
    status, body = _raw_exchange(url, _head(path, f"Content-Length: {MAX_BODY_BYTES + 1}"))
    _check_413(path, status, body)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


@pytest.mark.parametrize("path", PATHS)
def test_a_chunked_body_is_refused_once_it_passes_the_limit(url: str, path: str) -> None:
    # 17 chunks of 64 KiB (1 MiB + 64 KiB), and never the last chunk: the body
    # does not end, so only a server that stops at the limit can answer.
    piece = b" " * 65536
    data = _head(path, "Transfer-Encoding: chunked") + _chunk(piece) * 17
    status, body = _raw_exchange(url, data)
    _check_413(path, status, body)


def _padded(prefix: bytes, suffix: bytes, size: int, fill: bytes = b"x") -> bytes:
    """A JSON body of exactly ``size`` bytes: ``prefix``, ``fill`` padding, ``suffix``."""
    body = prefix + fill * (size - len(prefix) - len(suffix)) + suffix
    assert len(body) == size
    return body


@pytest.mark.parametrize("path", PATHS)
def test_the_limit_is_exactly_max_body_bytes(url: str, path: str) -> None:
    # A write takes no field but its own: padded with JSON whitespace, not a "pad" field.
    prefix = b'{"reason": "r"' if path == WRITE else b'{"context": {"pad": "'
    suffix = b"}" if path == WRITE else b'"}}'
    fill = b" " if path == WRITE else b"x"
    headers = {**ANA, "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers, timeout=WAIT) as client:
        at_limit = client.post(path, content=_padded(prefix, suffix, MAX_BODY_BYTES, fill))
        assert at_limit.status_code == 200, at_limit.text
        over = client.post(path, content=_padded(prefix, suffix, MAX_BODY_BYTES + 1, fill))
        _check_413(path, over.status_code, over.json())
        # The connection is still usable after a refusal (the rest was discarded).
        again = client.post(path, content=b"{}")
        assert again.status_code == 200, again.text


def _first_admin_record(records: Records) -> logging.LogRecord:
    """The first record of ``foundation.admin``, polled for with a deadline."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        mine = records.named("foundation.admin")
        if mine:
            return mine[0]
        time.sleep(0.01)  # sleep-ok: polling the server thread's log with a deadline
    raise AssertionError(f"the server logged nothing about the disconnect: {records}")


@pytest.mark.parametrize("path", PATHS)
def test_a_client_that_leaves_mid_body_is_not_an_error(url: str, path: str) -> None:
    with captured("foundation", "uvicorn", level=logging.DEBUG) as records:
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=WAIT) as sock:
            sock.sendall(_head(path, "Content-Length: 1000") + b'{"context"')
        record = _first_admin_record(records)
        assert record.levelno == logging.DEBUG, record.getMessage()
        assert record.exc_info is None
        assert "disconnected before the end of its body" in record.getMessage()
        # The server still answers, on a new connection.
        answer = httpx.post(url + path, json={}, headers=ANA, timeout=WAIT)
        assert answer.status_code == 200, answer.text
    loud = [r for r in records if r.levelno >= logging.WARNING or r.exc_info]
    assert not loud, [r.getMessage() for r in loud]
