"""Every 401 of the admin API and of OFREP carries a ``WWW-Authenticate``
challenge (RFC 9110 11.6.1: a server generating a 401 MUST send one) naming the
one scheme the server takes: ``Bearer`` (RFC 6750), with ``error="invalid_token"``
when the token sent is unknown. Real HTTP against a real ``AdminServer``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from foundation import MemoryRegistry
from foundation.admin import create_app
from foundation.flags import FeatureFlags, Migration
from tests.admin._uvicorn import serving
from tests.admin._world import ANA, DECLARED, PLAN, TOKENS
from tests.admin.conftest import close_world, make_world

CHALLENGE = 'Bearer realm="foundation"'
INVALID = CHALLENGE + ', error="invalid_token"'

# (method, path, body): reads of the admin API and OFREP, a write, the event stream.
REQUESTS = [
    ("GET", "api/flags", None),
    ("GET", "api/whoami", None),
    ("GET", "api/status", None),
    ("GET", "api/agents", None),
    ("GET", "metrics", None),
    ("GET", "api/events", None),
    ("POST", "api/flags/search_v2/enable", {}),
    ("POST", "ofrep/v1/evaluate/flags/dark_mode", {}),
    ("POST", "ofrep/v1/evaluate/flags", {}),
]


@dataclass
class Guarded:
    url: str


@pytest.fixture
def guarded() -> Iterator[Guarded]:
    """The admin app with tokens, reads guarded too (as off loopback), under uvicorn
    on a free loopback port (``AdminServer`` makes loopback reads public)."""
    flags = FeatureFlags(DECLARED)
    migration = Migration(flags, PLAN)
    registry = MemoryRegistry()
    app = create_app(flags=flags, migration=migration, registry=registry, token=TOKENS)
    try:
        with serving(app) as url:
            yield Guarded(url)
    finally:
        registry.close()
        flags.close()


def _send(
    c: httpx.Client, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    if body is None:
        return c.request(method, path, headers=headers)
    return c.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), REQUESTS, ids=[r[1] for r in REQUESTS])
def test_every_401_carries_a_bearer_challenge(
    guarded: Guarded, method: str, path: str, body: Any
) -> None:
    cases = [
        ({}, CHALLENGE),  # no token
        ({"Authorization": "Basic YW5hOmFuYS1zZWNyZXQ="}, CHALLENGE),  # another scheme
        ({"Authorization": "Bearer wrong"}, INVALID),  # an unknown token
    ]
    if path == "api/whoami":
        cases = cases[1:]  # whoami answers an anonymous caller (it says who you are)
    with httpx.Client(base_url=guarded.url, timeout=30) as c:
        for headers, challenge in cases:
            r = _send(c, method, path, body, headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers.get("www-authenticate") == challenge, (path, headers)
        # The right token passes (the event stream is not read: it never ends).
        if path != "api/events":
            r = _send(c, method, path, body, {**ANA, "Content-Type": "application/json"})
            assert r.status_code == 200, (path, r.text)
            assert "www-authenticate" not in r.headers


def test_other_refusals_carry_no_challenge(tmp_path: Path) -> None:
    w = make_world(tmp_path, read_only=True)
    try:
        with httpx.Client(base_url=w.url, timeout=30, headers=ANA) as c:
            r = c.post("api/flags/search_v2/enable", json={})
            assert r.status_code == 403
            assert "www-authenticate" not in r.headers
            r = c.post("ofrep/v1/evaluate/flags/nope", json={})
            assert r.status_code == 404
            assert "www-authenticate" not in r.headers
    finally:
        close_world(w)
