"""OFREP's request body as the protocol's OpenAPI document (0.3.0) has it: the
body is required (none answers 400 ``PARSE_ERROR``) and a ``context`` present
is an object (``null`` answers 400 ``INVALID_CONTEXT``); ``{}`` stays an empty
context (the Python OFREP client sends it for no evaluation context).

Was: an empty body and ``{"context": null}`` answered 200. Real HTTP against a
real ``AdminServer``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag

SINGLE = "ofrep/v1/evaluate/flags/beta"
BULK = "ofrep/v1/evaluate/flags"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    flags = FeatureFlags([Flag("beta", default=True)])
    try:
        with (
            AdminServer(flags=flags, bind="127.0.0.1:0") as server,
            httpx.Client(base_url=server.url, timeout=30) as c,
        ):
            yield c
    finally:
        flags.close()


@pytest.mark.parametrize("content", [b"", b"  \n", None], ids=["empty", "blank", "none"])
def test_no_body_is_a_parse_error(http: httpx.Client, content: bytes | None) -> None:
    headers = JSON if content is not None else {}
    r = http.post(SINGLE, content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json() == {"key": "beta", "errorCode": "PARSE_ERROR", "errorDetails": r.json()[
        "errorDetails"]}  # fmt: skip
    assert "required" in r.json()["errorDetails"]
    r = http.post(BULK, content=content, headers=headers)
    assert (r.status_code, r.json()["errorCode"]) == (400, "PARSE_ERROR"), r.text
    assert "ETag" not in r.headers


@pytest.mark.parametrize("context", [None, [], "u", 3, True])
def test_a_context_that_is_no_object_is_invalid_context(
    http: httpx.Client, context: object
) -> None:
    for path in (SINGLE, BULK):
        r = http.post(path, json={"context": context})
        assert (r.status_code, r.json()["errorCode"]) == (400, "INVALID_CONTEXT"), r.text
    r = http.post(SINGLE, json={"context": None})
    assert "not null" in r.json()["errorDetails"]


def test_an_empty_object_or_context_is_no_actor(http: httpx.Client) -> None:
    for body in ({}, {"context": {}}, {"context": {"targetingKey": ""}}):
        r = http.post(SINGLE, json=body)
        assert (r.status_code, r.json()["value"], r.json()["reason"]) == (200, True, "STATIC")
        assert http.post(BULK, json=body).status_code == 200
