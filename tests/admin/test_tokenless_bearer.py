"""An admin server started without a token answers a request carrying
``Authorization: Bearer ...`` as it answers one without it: a token it cannot
check grants nothing more and refuses nothing (reads open, writes 403).

Was: any Authorization header to a tokenless server was a 401 "send
Authorization: Bearer <token>" (the client had), so an ``OFREPProvider`` with a
``headers_factory`` read an enabled flag as False. Real HTTP against a real
``AdminServer`` (uvicorn, a free loopback port).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.flag_evaluation import Reason

from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag

BEARER = {"Authorization": "Bearer s3cret"}
JSON = {"Content-Type": "application/json"}
READS = ["api/flags", "api/flags/new_checkout", "api/status", "api/history", "metrics"]
OFREP = ["ofrep/v1/evaluate/flags/new_checkout", "ofrep/v1/evaluate/flags"]


@pytest.fixture
def tokenless() -> Iterator[str]:
    flags = FeatureFlags([Flag("new_checkout")])
    flags.enable("new_checkout", by="ana")
    try:
        with AdminServer(flags=flags, bind="127.0.0.1:0") as server:  # no token
            yield server.url
    finally:
        flags.close()


@pytest.mark.parametrize("sent", [BEARER, {"Authorization": "Basic YW5hOnMzY3JldA=="}])
def test_a_tokenless_server_answers_as_without_the_header(
    tokenless: str, sent: dict[str, str]
) -> None:
    with httpx.Client(base_url=tokenless, timeout=30) as c:
        for path in READS:
            bare, carried = c.get(path), c.get(path, headers=sent)
            assert (bare.status_code, carried.status_code) == (200, 200), (path, carried.text)
            assert "www-authenticate" not in carried.headers
        for path in OFREP:
            bare = c.post(path, json={"context": {"targetingKey": "u"}})
            carried = c.post(path, json={"context": {"targetingKey": "u"}}, headers=sent)
            assert carried.status_code == bare.status_code == 200, (path, carried.text)
            assert carried.json() == bare.json()
        # Writes keep their rule: no token configured, writes are off (403, no challenge).
        for headers in ({}, sent):
            r = c.post("api/flags/new_checkout/clear", json={}, headers={**headers, **JSON})
            assert (r.status_code, r.json()["error"]) == (403, "ReadOnly"), r.text
            assert "www-authenticate" not in r.headers


def test_whoami_says_no_token_is_configured(tokenless: str) -> None:
    with httpx.Client(base_url=tokenless, timeout=30) as c:
        for headers in ({}, BEARER):
            r = c.get("api/whoami", headers=headers)
            assert r.status_code == 200, r.text
            who = r.json()
            assert (who["operator"], who["token_configured"], who["writes"]) == (
                None,
                False,
                False,
            )


def test_a_configured_server_still_checks_the_token() -> None:
    flags = FeatureFlags([Flag("new_checkout")])
    try:
        with (
            AdminServer(flags=flags, token="ana:s3cret", bind="127.0.0.1:0") as server,
            httpx.Client(base_url=server.url, timeout=30) as c,
        ):
            who = c.get("api/whoami", headers=BEARER).json()
            assert (who["operator"], who["token_configured"]) == ("ana", True)
            r = c.get("api/whoami", headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
            r = c.post(OFREP[0], json={}, headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401
    finally:
        flags.close()


def test_an_ofrep_provider_sending_a_token_reads_the_flag(tokenless: str) -> None:
    provider = OFREPProvider(tokenless, headers_factory=lambda: dict(BEARER))
    api.shutdown()
    try:
        api.set_provider_and_wait(provider)
        client = api.get_client()
        for _ in range(3):
            d = client.get_boolean_details("new_checkout", False)
            assert (d.value, d.reason, d.error_code) == (True, Reason.STATIC, None)
    finally:
        api.shutdown()
        provider.session.close()
