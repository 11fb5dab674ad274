"""OFREP through the real ``openfeature-provider-ofrep`` against a real uvicorn server.

The OpenFeature SDK's client, with ``OFREPProvider`` as its provider, evaluates
flags over HTTP from the admin app (served by uvicorn on a free port, reads
guarded by a bearer token). The bulk endpoint (which the Python provider does
not use) is exercised with plain HTTP: ETag and ``If-None-Match``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from foundation.admin import AdminServer, create_app
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage
from foundation.openfeature import FoundationProvider
from tests.admin._uvicorn import serving

DECLARED = [
    Flag("new_checkout", description="the 2026 checkout"),
    Flag("dark_mode", default=True),
    Flag("search_v2", description="the rewritten search"),
    Flag("color", variants={"red": "#f00", "blue": "#00f", "green": "#0f0"}, default="red"),
    Flag("retries", variants={"few": 2, "many": 9}, default="few", description="client retries"),
    Flag("ratio", variants={"low": 0.25, "one": 1, "high": 2.5}, default="one"),
    Flag("limits", variants={"free": {"rps": 5, "tags": ["a"]}, "pro": [1, 2]}, default="free"),
]
PLAN = MigrationPlan([Stage(1, "search", ["search_v2"])])
TOKEN = "ana:ana-secret"
ANA = {"Authorization": "Bearer ana-secret"}


@dataclass
class Served:
    flags: FeatureFlags
    url: str

    def provider(self, headers: dict[str, str] | None = None) -> OFREPProvider:
        provider = OFREPProvider(
            self.url, headers_factory=lambda: dict(ANA if headers is None else headers)
        )
        _providers.append(provider)
        return provider

    def client(self, headers: dict[str, str] | None = None) -> Any:
        """An OpenFeature client whose provider is OFREP against this server."""
        api.set_provider_and_wait(self.provider(headers))
        return api.get_client()

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)


_providers: list[OFREPProvider] = []


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(autouse=True)
def openfeature_global_state() -> Iterator[None]:
    """The SDK keeps a global provider registry, hooks and context: reset around each test."""
    api.shutdown()
    try:
        yield
    finally:
        api.shutdown()
        for provider in _providers:
            provider.session.close()
        _providers.clear()


@pytest.fixture
def served() -> Iterator[Served]:
    """The admin app (token required for reads) under uvicorn on a thread, on a free port."""
    flags = FeatureFlags(DECLARED)
    migration = Migration(flags, PLAN)
    app = create_app(flags=flags, migration=migration, token=TOKEN)
    try:
        with serving(app) as url:
            yield Served(flags, url)
    finally:
        flags.close()


def ctx(actor: str | None = None, **attributes: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=actor, attributes=attributes)


# ----------------------------------------------------------------------- boolean


def test_boolean_flags_resolve_with_value_variant_reason_and_metadata(served: Served) -> None:
    flags = served.flags
    client = served.client()
    d = client.get_boolean_details("dark_mode", False)
    assert (d.value, d.variant, d.reason, d.error_code) == (True, "on", Reason.STATIC, None)
    assert d.flag_metadata == {}

    flags.set_percentage("new_checkout", 50)
    flags.allow("new_checkout", "qa")
    flags.deny("new_checkout", "bot")
    d = client.get_boolean_details("new_checkout", False, ctx("qa"))
    assert (d.value, d.variant, d.reason) == (True, "on", Reason.TARGETING_MATCH)
    assert d.flag_metadata == {"description": "the 2026 checkout"}
    d = client.get_boolean_details("new_checkout", True, ctx("bot"))
    assert (d.value, d.variant, d.reason) == (False, "off", Reason.TARGETING_MATCH)
    # A split answer is the same bucket answer as in process, for many actors.
    answers = set()
    for i in range(40):
        actor = f"user-{i}"
        d = client.get_boolean_details("new_checkout", False, ctx(actor, plan="free"))
        assert d.reason == Reason.SPLIT
        assert d.value is flags.enabled("new_checkout", actor)
        assert d.variant == ("on" if d.value else "off")
        answers.add(d.value)
    assert answers == {True, False}
    # Without an actor a percentage below 100 answers the default: off.
    d = client.get_boolean_details("new_checkout", True)
    assert (d.value, d.variant, d.reason) == (False, "off", Reason.DEFAULT)


def test_a_disabled_flag_gives_the_callers_default_with_reason_disabled(served: Served) -> None:
    served.flags.disable("dark_mode")
    client = served.client()
    for default in (True, False):
        d = client.get_boolean_details("dark_mode", default, ctx("user-1"))
        assert (d.value, d.variant, d.reason, d.error_code) == (
            default,
            "off",
            Reason.DISABLED,
            None,
        )
    # The answer over the wire has no value (OFREP's codeDefaultFlag).
    with served.http() as c:
        r = c.post("ofrep/v1/evaluate/flags/dark_mode", json={"context": {}}, headers=ANA)
    assert r.status_code == 200
    assert r.json() == {"key": "dark_mode", "reason": "DISABLED", "variant": "off", "metadata": {}}


def test_a_migration_flag_carries_its_stage_in_metadata(served: Served) -> None:
    client = served.client()
    d = client.get_boolean_details("search_v2", True)
    assert d.flag_metadata == {
        "description": "the rewritten search",
        "migration_plan": PLAN.name,
        "migration_stage": 1,
        "migration_stage_name": "search",
    }
    assert (d.value, d.reason) == (True, Reason.DISABLED)  # stage 0: off -> caller's default


def test_changes_are_seen_on_the_next_evaluation(served: Served) -> None:
    client = served.client()
    assert client.get_boolean_value("search_v2", True) is True  # disabled: the default
    served.flags.enable("search_v2")
    d = client.get_boolean_details("search_v2", False)
    assert (d.value, d.reason) == (True, Reason.STATIC)


def test_an_undeclared_flag_is_flag_not_found(served: Served) -> None:
    client = served.client()
    d = client.get_boolean_details("new_chekout", True)
    assert (d.value, d.reason, d.error_code) == (True, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)
    assert "new_checkout" in (d.error_message or "")  # the nearest declared name
    with served.http() as c:
        r = c.post("ofrep/v1/evaluate/flags/nope", json={"context": {}}, headers=ANA)
    assert r.status_code == 404
    assert r.json()["key"] == "nope"
    assert r.json()["errorCode"] == "FLAG_NOT_FOUND"


def test_a_boolean_flag_read_as_another_type_is_a_type_mismatch(served: Served) -> None:
    client = served.client()
    d = client.get_string_details("dark_mode", "fallback")
    assert (d.value, d.reason, d.error_code) == ("fallback", Reason.ERROR, ErrorCode.TYPE_MISMATCH)
    d = client.get_object_details("dark_mode", {"a": 1})
    assert (d.value, d.error_code) == ({"a": 1}, ErrorCode.TYPE_MISMATCH)
    d = client.get_float_details("dark_mode", 0.5)
    assert (d.value, d.error_code) == (0.5, ErrorCode.TYPE_MISMATCH)
    # Known limitation of openfeature-provider-ofrep 0.3 (documented in the README): it
    # type-checks with isinstance, and a Python bool is an int, so a boolean flag read as
    # an integer passes its check. The server cannot tell (OFREP requests carry no type).
    d = client.get_integer_details("dark_mode", 7)
    assert (d.value, d.error_code) == (True, None)


def test_a_missing_or_unknown_token_is_refused(served: Served) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YW5hOng="}):
        api.shutdown()
        client = served.client(headers)
        d = client.get_boolean_details("dark_mode", False)
        assert (d.value, d.reason, d.error_code) == (False, Reason.ERROR, ErrorCode.GENERAL)
        assert d.error_message == "unauthorized"
    with served.http() as c:
        r = c.post("ofrep/v1/evaluate/flags/dark_mode", json={"context": {}})
        assert r.status_code == 401
        assert "errorDetails" in r.json()
        assert c.post("ofrep/v1/evaluate/flags", json={"context": {}}).status_code == 401


def test_a_read_only_loopback_server_evaluates_without_a_token() -> None:
    flags = FeatureFlags(DECLARED)
    try:
        with AdminServer(flags=flags, token=TOKEN, read_only=True, bind="127.0.0.1:0") as server:
            served = Served(flags, server.url)
            d = served.client({}).get_boolean_details("dark_mode", False, ctx("u"))
            assert (d.value, d.reason) == (True, Reason.STATIC)
            # A read-scope request with the token works as well.
            d = served.client().get_boolean_details("dark_mode", False)
            assert d.value is True
    finally:
        flags.close()


def test_malformed_requests_are_parse_error_or_invalid_context(served: Served) -> None:
    url = "ofrep/v1/evaluate/flags/dark_mode"
    with served.http() as c:
        r = c.post(url, content=b"{not json", headers={**ANA, "Content-Type": "application/json"})
        assert r.status_code == 400
        assert r.json()["errorCode"] == "PARSE_ERROR"
        assert r.json()["key"] == "dark_mode"
        r = c.post(url, json=["context"], headers=ANA)
        assert (r.status_code, r.json()["errorCode"]) == (400, "PARSE_ERROR")
        r = c.post(url, json={"context": "user-1"}, headers=ANA)
        assert (r.status_code, r.json()["errorCode"]) == (400, "INVALID_CONTEXT")
        for bad in (True, 1.5, 2**63, ["u"], {"id": "u"}):
            r = c.post(url, json={"context": {"targetingKey": bad}}, headers=ANA)
            assert (r.status_code, r.json()["errorCode"]) == (400, "INVALID_CONTEXT"), bad
        # The body is required (as the OFREP document has it); {} is an empty context;
        # a context present is an object. Other attributes are accepted and ignored.
        r = c.post(url, headers=ANA)
        assert (r.status_code, r.json()["errorCode"]) == (400, "PARSE_ERROR")
        r = c.post(url, json={"context": None}, headers=ANA)
        assert (r.status_code, r.json()["errorCode"]) == (400, "INVALID_CONTEXT")
        assert c.post(url, json={}, headers=ANA).json()["value"] is True
        r = c.post(url, json={"context": {"targetingKey": "u", "plan": {"tier": 2}}}, headers=ANA)
        assert r.json()["value"] is True
        assert c.get(url, headers=ANA).status_code == 405


def test_a_flag_name_with_a_slash_is_reachable() -> None:
    flags = FeatureFlags([Flag("team/new-ui", default=True)])
    try:
        with AdminServer(flags=flags, bind="127.0.0.1:0") as server:
            d = Served(flags, server.url).client({}).get_boolean_details("team/new-ui", False)
            assert (d.value, d.reason, d.error_code) == (True, Reason.STATIC, None)
    finally:
        flags.close()


# ------------------------------------------------------------------------- typed


def test_typed_flags_resolve_every_type_through_the_sdk(served: Served) -> None:
    client = served.client()
    d = client.get_string_details("color", "none", ctx("user-1"))
    assert (d.value, d.variant, d.reason, d.error_code) == ("#f00", "red", Reason.STATIC, None)
    d = client.get_integer_details("retries", 0)
    assert (d.value, d.variant, d.reason) == (2, "few", Reason.STATIC)
    assert d.flag_metadata == {"description": "client retries"}
    d = client.get_float_details("ratio", 0.0)
    assert (d.value, d.variant, d.reason) == (1.0, "one", Reason.STATIC)
    assert isinstance(d.value, float)  # an int variant of a float flag is a float
    d = client.get_object_details("limits", {})
    assert (d.value, d.variant, d.reason) == ({"rps": 5, "tags": ["a"]}, "free", Reason.STATIC)
    served.flags.assign("limits", "big-co", "pro")
    d = client.get_object_details("limits", {}, ctx("big-co"))
    assert (d.value, d.variant, d.reason) == ([1, 2], "pro", Reason.TARGETING_MATCH)


def test_assignment_split_deny_and_kill_switch_of_a_typed_flag(served: Served) -> None:
    flags = served.flags
    client = served.client()
    flags.set_split("color", {"red": 20, "blue": 30, "green": 50})
    flags.assign("color", "vip", "blue")
    flags.deny("color", "bot")
    d = client.get_string_details("color", "none", ctx("vip"))
    assert (d.value, d.variant, d.reason) == ("#00f", "blue", Reason.TARGETING_MATCH)
    d = client.get_string_details("color", "none", ctx("bot"))
    assert (d.value, d.variant, d.reason) == ("#f00", "red", Reason.TARGETING_MATCH)
    seen = set()
    for i in range(60):
        actor = f"user-{i}"
        d = client.get_string_details("color", "none", ctx(actor))
        assert d.reason == Reason.SPLIT
        assert (d.variant, d.value) == (flags.variant("color", actor), flags.value("color", actor))
        seen.add(d.variant)
    assert seen == {"red", "blue", "green"}
    d = client.get_string_details("color", "none")  # no actor, no variant at 100%
    assert (d.value, d.variant, d.reason) == ("#f00", "red", Reason.DEFAULT)
    flags.set_split("color", {"green": 100})
    d = client.get_string_details("color", "none")
    assert (d.value, d.variant, d.reason) == ("#0f0", "green", Reason.SPLIT)
    # The kill switch: the caller's default, the off (default) variant, DISABLED.
    flags.disable("color")
    d = client.get_string_details("color", "caller", ctx("vip"))
    assert (d.value, d.variant, d.reason, d.error_code) == ("caller", "red", Reason.DISABLED, None)


def test_a_typed_flag_read_as_another_type_is_a_type_mismatch(served: Served) -> None:
    client = served.client()
    d = client.get_boolean_details("color", True)
    assert (d.value, d.reason, d.error_code) == (True, Reason.ERROR, ErrorCode.TYPE_MISMATCH)
    d = client.get_float_details("retries", 0.5)  # an integer flag read as float
    assert (d.value, d.error_code) == (0.5, ErrorCode.TYPE_MISMATCH)
    d = client.get_integer_details("ratio", 3)  # a float flag read as integer
    assert (d.value, d.error_code) == (3, ErrorCode.TYPE_MISMATCH)
    d = client.get_string_details("limits", "x")
    assert (d.value, d.error_code) == ("x", ErrorCode.TYPE_MISMATCH)


# -------------------------------------------------------------------------- bulk


def test_bulk_evaluates_every_flag_with_an_etag_and_answers_304(served: Served) -> None:
    flags = served.flags
    flags.set_percentage("new_checkout", 50)
    body = {"context": {"targetingKey": "user-7"}}
    with served.http() as c:
        r = c.post("ofrep/v1/evaluate/flags", json=body, headers=ANA)
        assert r.status_code == 200
        etag = r.headers["ETag"]
        assert etag[0] == etag[-1] == '"'
        answers = {f["key"]: f for f in r.json()["flags"]}
        assert tuple(answers) == flags.names
        want = flags.enabled("new_checkout", "user-7")
        assert answers["new_checkout"]["value"] is want
        assert answers["new_checkout"]["reason"] == "SPLIT"
        assert answers["dark_mode"] == {
            "key": "dark_mode",
            "reason": "STATIC",
            "variant": "on",
            "metadata": {},
            "value": True,
        }
        assert answers["limits"]["value"] == {"rps": 5, "tags": ["a"]}
        assert answers["ratio"]["value"] == 1.0
        assert "value" not in answers["search_v2"]  # disabled: the caller's default
        assert answers["search_v2"]["reason"] == "DISABLED"

        # Unchanged: 304 with no body, for the tag alone, in a list, or weak.
        for header in (etag, f'"other", {etag}', f"W/{etag}", "*"):
            r = c.post(
                "ofrep/v1/evaluate/flags", json=body, headers={**ANA, "If-None-Match": header}
            )
            assert r.status_code == 304, header
            assert r.content == b""
            assert r.headers["ETag"] == etag
        r = c.post("ofrep/v1/evaluate/flags", json=body, headers={**ANA, "If-None-Match": '"old"'})
        assert r.status_code == 200

        # A change that does not alter this actor's answer keeps the tag ...
        flags.deny("new_checkout", "someone-else")
        r = c.post("ofrep/v1/evaluate/flags", json=body, headers={**ANA, "If-None-Match": etag})
        assert r.status_code == 304
        # ... one that does changes it.
        flags.enable("search_v2")
        r = c.post("ofrep/v1/evaluate/flags", json=body, headers={**ANA, "If-None-Match": etag})
        assert r.status_code == 200
        assert r.headers["ETag"] != etag
        assert {f["key"]: f for f in r.json()["flags"]}["search_v2"]["value"] is True

        # Another actor's answer has its own tag whenever its body differs.
        other = next(
            f"user-{i}" for i in range(1000) if flags.enabled("new_checkout", f"user-{i}") != want
        )
        r2 = c.post(
            "ofrep/v1/evaluate/flags", json={"context": {"targetingKey": other}}, headers=ANA
        )
        assert r2.headers["ETag"] != r.headers["ETag"]


def test_bulk_errors_are_whole_request_failures(served: Served) -> None:
    with served.http() as c:
        r = c.post("ofrep/v1/evaluate/flags", json={"context": 3}, headers=ANA)
        assert r.status_code == 400
        assert r.json()["errorCode"] == "INVALID_CONTEXT"
        assert "key" not in r.json()
        r = c.post(
            "ofrep/v1/evaluate/flags",
            content=b"]",
            headers={**ANA, "Content-Type": "application/json"},
        )
        assert (r.status_code, r.json()["errorCode"]) == (400, "PARSE_ERROR")


def test_a_closed_flag_service_is_a_500_general_error(served: Served) -> None:
    served.flags.close()
    client = served.client()
    d = client.get_boolean_details("dark_mode", False)
    assert (d.value, d.reason, d.error_code) == (False, Reason.ERROR, ErrorCode.GENERAL)
    with served.http() as c:
        r = c.post("ofrep/v1/evaluate/flags", json={"context": {}}, headers=ANA)
        assert r.status_code == 500
        assert r.json()["errorDetails"].startswith("Closed")


# ------------------------------------------------------------- one answer, two bridges


def test_the_targeting_key_rule_is_foundation_providers(served: Served) -> None:
    """ "" or missing is no actor; a 64-bit int is str(int); anything else INVALID_CONTEXT."""
    flags = served.flags
    flags.set_split("color", {"red": 50, "blue": 50})
    flags.assign("color", "7", "green")
    flags.assign("color", str(-(2**63)), "green")
    in_process = FoundationProvider(flags)
    url = "ofrep/v1/evaluate/flags/color"
    with served.http() as c:

        def answer(context: dict[str, Any]) -> tuple[Any, ...]:
            r = c.post(url, json={"context": context}, headers=ANA)
            body = r.json()
            return r.status_code, body.get("variant"), body.get("reason"), body.get("errorCode")

        none = answer({})
        assert none == (200, "red", "DEFAULT", None)  # a split and no actor
        assert answer({"targetingKey": ""}) == none
        assert answer({"targetingKey": None}) == none
        assert answer({"targetingKey": 7}) == (200, "green", "TARGETING_MATCH", None)
        assert answer({"targetingKey": 7}) == answer({"targetingKey": "7"})
        assert answer({"targetingKey": -(2**63)})[1] == "green"
        for bad in (2**63, -(2**63) - 1, False, 7.0):
            assert answer({"targetingKey": bad}) == (400, None, None, "INVALID_CONTEXT"), bad
        # Bulk: the same rule for the whole request.
        r = c.post("ofrep/v1/evaluate/flags", json={"context": {"targetingKey": 7}}, headers=ANA)
        color = next(f for f in r.json()["flags"] if f["key"] == "color")
        assert (r.status_code, color["variant"]) == (200, "green")
        r = c.post("ofrep/v1/evaluate/flags", json={"context": {"targetingKey": ""}}, headers=ANA)
        color = next(f for f in r.json()["flags"] if f["key"] == "color")
        assert (r.status_code, color["variant"], color["reason"]) == (200, "red", "DEFAULT")
        r = c.post("ofrep/v1/evaluate/flags", json={"context": {"targetingKey": 1.5}}, headers=ANA)
        assert (r.status_code, r.json()["errorCode"]) == (400, "INVALID_CONTEXT")
    # Through the SDK: the OFREP provider and FoundationProvider give one answer.
    remote = served.provider()
    flags.assign("color", "0", "green")  # the SDK drops a falsy key (0) on both bridges
    for key in ("", None, 0, 7, -(2**63), "7", "someone"):
        context = EvaluationContext(targeting_key=key)  # type: ignore[arg-type]
        api.set_provider_and_wait(remote)
        over_http = api.get_client().get_string_details("color", "dflt", context)
        api.set_provider_and_wait(in_process)
        local = api.get_client().get_string_details("color", "dflt", context)
        assert (over_http.value, over_http.variant, over_http.reason, over_http.error_code) == (
            local.value,
            local.variant,
            local.reason,
            local.error_code,
        ), key
    for wrong in (2**63, 1.5):
        context = EvaluationContext(targeting_key=wrong)  # type: ignore[arg-type]
        api.set_provider_and_wait(remote)
        over_http = api.get_client().get_string_details("color", "dflt", context)
        api.set_provider_and_wait(in_process)
        local = api.get_client().get_string_details("color", "dflt", context)
        assert over_http.error_code == local.error_code == ErrorCode.INVALID_CONTEXT, wrong
        assert over_http.value == local.value == "dflt"


def test_an_unexpected_error_is_the_documented_json_500(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import foundation.admin._ofrep as ofrep

    with served.http() as c:
        # A failure while rendering (a value JSON cannot hold): a JSON 500, not a bare one.
        monkeypatch.setattr(ofrep, "_metadata", lambda *_: {"weight": float("nan")})
        for path in ("ofrep/v1/evaluate/flags/dark_mode", "ofrep/v1/evaluate/flags"):
            r = c.post(path, json={}, headers=ANA)
            assert r.status_code == 500, r.text
            assert r.headers["content-type"] == "application/json"
            assert r.json() == {"errorDetails": "internal error (logged by the server)"}
        monkeypatch.undo()

        # A failure while building the answer (a fault injected into the metadata step).
        def broken(*_: Any) -> Any:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(ofrep, "_metadata", broken)
        for path in ("ofrep/v1/evaluate/flags/dark_mode", "ofrep/v1/evaluate/flags"):
            r = c.post(path, json={}, headers=ANA)
            assert r.status_code == 500, r.text
            assert r.json() == {"errorDetails": "internal error (logged by the server)"}
    assert "disk on fire" in caplog.text  # logged, never sent
    d = served.client().get_boolean_details("dark_mode", False)
    assert (d.value, d.reason, d.error_code) == (False, Reason.ERROR, ErrorCode.GENERAL)
