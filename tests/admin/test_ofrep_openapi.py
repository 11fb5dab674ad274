"""The OFREP endpoints' answers checked against the OFREP OpenAPI document (0.3.0).

A real admin server (uvicorn, a free loopback port) answers real HTTP requests;
each body is validated against the response schemas of the protocol's
``service/openapi.yaml``, transcribed below (only the parts the two evaluation
endpoints use). No schema library is a dependency, so ``_check`` implements
the few JSON Schema keywords these schemas use.

Two readings of the document, both forced by it:

- ``evaluationSuccess`` picks the value's shape with ``oneOf``, but its
  alternatives overlap (an integer is also a ``number``; ``codeDefaultFlag``'s
  empty schema matches any object), so no body could match exactly one:
  the alternatives are read as "at least one", and ``codeDefaultFlag`` as
  "no ``value``", which is what its description says.
- ``reason`` is listed as ``STATIC, TARGETING_MATCH, SPLIT, DISABLED,
  UNKNOWN`` while the description defers to OpenFeature's reason codes;
  Foundation also answers ``DEFAULT`` (documented in docs/openfeature.md),
  so the enum is checked with ``DEFAULT`` added.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag

TOKEN = "ana:ana-secret"
ANA = {"Authorization": "Bearer ana-secret"}
SINGLE = "ofrep/v1/evaluate/flags/"
BULK = "ofrep/v1/evaluate/flags"

# --------------------------------------------------------- the OpenAPI schemas

_METADATA = {
    "type": "object",
    "additionalProperties": {
        "oneOf": [{"type": "boolean"}, {"type": "string"}, {"type": "number"}]
    },
}
_REASONS = ["STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "UNKNOWN", "DEFAULT"]


def _valued(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"value": {"type": kind, **extra}},
        "required": ["value"],
    }


_CODE_DEFAULT = {"type": "object", "not": {"required": ["value"]}}
EVALUATION_SUCCESS = {
    "type": "object",
    "required": ["key", "reason"],
    "allOf": [
        {
            "properties": {
                "key": {"type": "string"},
                "reason": {"type": "string", "enum": _REASONS},
                "variant": {"type": "string"},
                "metadata": _METADATA,
            }
        },
        {
            "anyOf": [
                _valued("boolean"),
                _valued("string"),
                _valued("integer"),
                _valued("number"),
                _valued("object", additionalProperties=True),
                _CODE_DEFAULT,
            ]
        },
    ],
}
EVALUATION_FAILURE = {
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "errorCode": {
            "type": "string",
            "enum": ["PARSE_ERROR", "TARGETING_KEY_MISSING", "INVALID_CONTEXT", "GENERAL"],
        },
        "errorDetails": {"type": "string"},
        "metadata": _METADATA,
    },
    "required": ["key", "errorCode"],
}
FLAG_NOT_FOUND = {
    "type": "object",
    "properties": {
        "key": {"type": "string"},
        "errorCode": {"type": "string", "enum": ["FLAG_NOT_FOUND"]},
        "errorDetails": {"type": "string"},
        "metadata": _METADATA,
    },
    "required": ["key", "errorCode"],
}
GENERAL_ERROR = {"type": "object", "properties": {"errorDetails": {"type": "string"}}}
BULK_SUCCESS = {
    "type": "object",
    "required": ["flags"],
    "properties": {
        "flags": {"type": "array", "items": {"oneOf": [EVALUATION_SUCCESS, EVALUATION_FAILURE]}},
        "metadata": _METADATA,
        "eventStreams": {"type": "array"},
    },
}
BULK_FAILURE = {
    "type": "object",
    "properties": {"errorCode": {"type": "string"}, "errorDetails": {"type": "string"}},
    "required": ["errorCode"],
}

# ------------------------------------------------------ a small JSON Schema check

_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def _errors(value: Any, schema: dict[str, Any], at: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (empty: it does)."""
    out: list[str] = []
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{at}: {value!r} is not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{at}: {value!r} is not one of {schema['enum']}")
    out += _object_errors(value, schema, at) if isinstance(value, dict) else []
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += _errors(item, schema["items"], f"{at}[{i}]")
    for sub in schema.get("allOf", ()):
        out += _errors(value, sub, at)
    for word, wanted in (("anyOf", range(1, 99)), ("oneOf", (1,))):
        if word in schema:
            matched = sum(not _errors(value, sub, at) for sub in schema[word])
            if matched not in wanted:
                out.append(f"{at}: {value!r} matches {matched} of {word}")
    if "not" in schema and not _errors(value, schema["not"], at):
        out.append(f"{at}: {value!r} matches 'not' {schema['not']}")
    return out


def _object_errors(value: dict[str, Any], schema: dict[str, Any], at: str) -> list[str]:
    out = [
        f"{at}: {name!r} is required" for name in schema.get("required", ()) if name not in value
    ]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            out += _errors(item, properties[name], f"{at}.{name}")
        elif isinstance(extra, dict):
            out += _errors(item, extra, f"{at}.{name}")
        elif extra is False:
            out.append(f"{at}: {name!r} is not allowed")
    return out


def _check(response: httpx.Response, status: int, schema: dict[str, Any]) -> Any:
    """The JSON body of ``response`` after checking status, content type and schema."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].split(";")[0] == "application/json"
    body = response.json()
    problems = _errors(body, schema)
    assert not problems, problems
    return body


def test_the_checker_refuses_what_the_schemas_refuse() -> None:
    assert _errors({"key": "k", "reason": "STATIC", "value": True}, EVALUATION_SUCCESS) == []
    assert _errors({"key": "k", "reason": "DISABLED"}, EVALUATION_SUCCESS) == []
    assert _errors({"key": "k", "value": 1}, EVALUATION_SUCCESS)  # no reason
    assert _errors({"key": "k", "reason": "NOPE", "value": 1}, EVALUATION_SUCCESS)
    assert _errors({"key": "k", "reason": "STATIC", "value": None}, EVALUATION_SUCCESS)
    assert _errors({"key": "k", "reason": "STATIC", "value": [1]}, EVALUATION_SUCCESS)
    bad_metadata = {"key": "k", "reason": "STATIC", "value": 1, "metadata": {"a": [1]}}
    assert _errors(bad_metadata, EVALUATION_SUCCESS)
    assert _errors({"errorCode": "FLAG_NOT_FOUND"}, FLAG_NOT_FOUND)  # no key
    assert _errors({"key": "k", "errorCode": "FLAG_NOT_FOUND"}, EVALUATION_FAILURE)
    assert _errors({"errorDetails": "x"}, BULK_SUCCESS)


# ---------------------------------------------------------------------- server

DECLARED = [
    Flag("on", default=True, description="an on switch"),
    Flag("off"),
    Flag("rollout", default=True),
    Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red"),
    Flag("retries", variants={"few": 2, "many": 9}, default="few"),
    Flag("ratio", variants={"low": 0.25, "high": 2.5}, default="low"),
    Flag("limits", variants={"free": {"rps": 5}, "pro": {"rps": 50}}, default="free"),
    Flag("zero", variants={"none": "", "some": "x"}, default="none"),
]


@pytest.fixture
def flags() -> Iterator[FeatureFlags]:
    f = FeatureFlags(DECLARED)
    yield f
    f.close()


@pytest.fixture
def http(flags: FeatureFlags) -> Iterator[httpx.Client]:
    with (
        AdminServer(flags=flags, token=TOKEN, bind="127.0.0.1:0") as server,
        httpx.Client(base_url=server.url, headers=ANA, timeout=30) as client,
    ):
        yield client


def _context(actor: str | None) -> dict[str, Any]:
    return {"context": {} if actor is None else {"targetingKey": actor, "plan": "pro"}}


def test_every_single_evaluation_matches_the_success_schema(
    flags: FeatureFlags, http: httpx.Client
) -> None:
    flags.set_percentage("rollout", 50)
    flags.assign("color", "vip", "blue")
    flags.set_split("retries", {"few": 50, "many": 50})
    flags.assign("limits", "big-co", "pro")
    seen: set[tuple[str, bool]] = set()
    for actor in (None, "vip", "big-co", "user-1", "user-2"):
        for name in flags.names:
            body = _check(http.post(SINGLE + name, json=_context(actor)), 200, EVALUATION_SUCCESS)
            assert body["key"] == name
            seen.add((body["reason"], "value" in body))
    # Each reason was checked, DISABLED (with no value) included.
    assert {reason for reason, _ in seen} >= {
        "STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "DEFAULT"
    }  # fmt: skip
    assert ("DISABLED", False) in seen
    assert not any(has_value for reason, has_value in seen if reason == "DISABLED")


def test_every_bulk_evaluation_matches_the_bulk_schema(
    flags: FeatureFlags, http: httpx.Client
) -> None:
    flags.assign("color", "vip", "blue")
    for actor in (None, "vip"):
        r = http.post(BULK, json=_context(actor))
        body = _check(r, 200, BULK_SUCCESS)
        assert [f["key"] for f in body["flags"]] == list(flags.names)
        etag = r.headers["ETag"]
        again = http.post(BULK, json=_context(actor), headers={"If-None-Match": etag})
        assert (again.status_code, again.content, again.headers["ETag"]) == (304, b"", etag)


def test_error_answers_match_their_schemas(flags: FeatureFlags, http: httpx.Client) -> None:
    raw = {"Content-Type": "application/json"}
    for content in (b"{nope", b"[1]", b'{"context": 3}', b'{"context": {"targetingKey": true}}'):
        body = _check(http.post(SINGLE + "on", content=content, headers=raw), 400,
                      EVALUATION_FAILURE)  # fmt: skip
        assert body["key"] == "on"
        _check(http.post(BULK, content=content, headers=raw), 400, BULK_FAILURE)
    body = _check(http.post(SINGLE + "missing", json=_context("u")), 404, FLAG_NOT_FOUND)
    assert body == {"key": "missing", "errorCode": "FLAG_NOT_FOUND", "errorDetails": body[
        "errorDetails"]}  # fmt: skip
    for path in (SINGLE + "on", BULK):
        assert (
            http.post(path, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
    flags.close()
    _check(http.post(SINGLE + "on", json=_context("u")), 500, GENERAL_ERROR)
    _check(http.post(BULK, json=_context("u")), 500, GENERAL_ERROR)


def test_a_server_without_flags_answers_flag_not_found_and_an_empty_bulk() -> None:
    # The single endpoint's 404 is flagNotFound (key and errorCode required); the
    # bulk endpoint has no 404 at all: no flags is an empty, successful evaluation.
    with (
        AdminServer(bind="127.0.0.1:0") as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        body = _check(http.post(SINGLE + "beta", json=_context("u")), 404, FLAG_NOT_FOUND)
        assert (body["key"], body["errorCode"]) == ("beta", "FLAG_NOT_FOUND")
        r = http.post(BULK, json=_context("u"))
        assert _check(r, 200, BULK_SUCCESS) == {"flags": []}
        again = http.post(BULK, json=_context("u"), headers={"If-None-Match": r.headers["ETag"]})
        assert again.status_code == 304


def test_documented_departures_from_the_document() -> None:
    """docs/openfeature.md, "OFREP": what is answered outside the OpenAPI shapes."""
    flags = FeatureFlags([Flag("pair", variants={"a": [1, 2], "b": {"x": 1}}, default="a"),
                          Flag("half", default=True)])  # fmt: skip
    flags.set_percentage("half", 50)
    try:
        with (
            AdminServer(flags=flags, bind="127.0.0.1:0") as server,
            httpx.Client(base_url=server.url, timeout=30) as http,
        ):
            # An object flag may hold a JSON array: served as it is.
            body = http.post(SINGLE + "pair", json=_context("u")).json()
            assert body["value"] == [1, 2]
            assert _errors(body, EVALUATION_SUCCESS)
            # No actor and a percentage: DEFAULT, an OpenFeature reason the enum omits.
            body = http.post(SINGLE + "half", json=_context(None)).json()
            assert (body["reason"], body["value"]) == ("DEFAULT", False)
            # The context and the targetingKey may be left out (the body may not: 400).
            assert http.post(SINGLE + "half", json={}).status_code == 200
            assert http.post(BULK, json={}).status_code == 200
            assert http.post(SINGLE + "half").json()["errorCode"] == "PARSE_ERROR"
            assert (
                http.post(SINGLE + "half", json={"context": {"targetingKey": 7}}).json()["reason"]
                == "SPLIT"
            )
    finally:
        flags.close()
