"""FoundationProvider through the real OpenFeature client: values, variants, reasons, errors.

Every evaluation goes through ``api.get_client()`` and the SDK's own
``get_*_details`` (so the SDK's type checks, context merging and error
handling are part of what is tested), except where the provider is called
directly to show that it never raises.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagEvaluationDetails, Reason

from foundation.flags import FeatureFlags
from foundation.openfeature import PROVIDER_NAME, FoundationProvider

ACTORS = [f"user-{i}" for i in range(200)]


def ctx(actor: Any) -> EvaluationContext:
    return EvaluationContext(targeting_key=actor)


def details(client: OpenFeatureClient, kind: str, key: str, default: Any,
            context: EvaluationContext | None = None) -> FlagEvaluationDetails[Any]:  # fmt: skip
    getter = getattr(client, f"get_{kind}_details")
    result: FlagEvaluationDetails[Any] = getter(key, default, context)
    return result


def assert_ok(d: FlagEvaluationDetails[Any], value: Any, variant: str | None, reason: str) -> None:
    assert (d.value, d.variant, d.reason) == (value, variant, reason), d
    if isinstance(value, dict | list):  # read-only dict/list subclasses
        assert isinstance(d.value, type(value)), d
    else:
        assert type(d.value) is type(value), d
    assert (d.error_code, d.error_message) == (None, None), d


def assert_error(d: FlagEvaluationDetails[Any], default: Any, code: ErrorCode) -> None:
    assert (d.value, type(d.value)) == (default, type(default)), d
    assert (d.reason, d.error_code, d.variant) == (Reason.ERROR, code, None), d
    assert d.error_message, d


def test_metadata_names_the_provider(client: OpenFeatureClient) -> None:
    assert PROVIDER_NAME == "foundation"
    assert api.get_provider_metadata().name == "foundation"
    assert client.provider.get_metadata().name == "foundation"


# ------------------------------------------------------------------ boolean


def test_boolean_reasons(client: OpenFeatureClient, flags: FeatureFlags) -> None:
    # Switch off: the caller's default, whichever it is, with the off variant.
    for default in (True, False):
        assert_ok(details(client, "boolean", "beta", default), default, "off", "DISABLED")
    flags.enable("beta")
    assert_ok(details(client, "boolean", "beta", False), True, "on", "STATIC")
    assert_ok(details(client, "boolean", "beta", False, ctx("ana")), True, "on", "STATIC")
    flags.deny("beta", "ana")
    flags.allow("beta", "bob")
    assert_ok(details(client, "boolean", "beta", True, ctx("ana")), False, "off", "TARGETING_MATCH")
    flags.set_percentage("beta", 50)
    assert_ok(details(client, "boolean", "beta", False, ctx("bob")), True, "on", "TARGETING_MATCH")
    assert_ok(details(client, "boolean", "beta", True), False, "off", "DEFAULT")
    answers = set()
    for actor in ACTORS:
        d = details(client, "boolean", "beta", False, ctx(actor))
        if actor not in ("ana", "bob"):
            assert d.reason == "SPLIT", d
            assert d.value is flags.enabled("beta", actor=actor)
            assert d.variant == ("on" if d.value else "off")
            answers.add(d.value)
    assert answers == {True, False}
    flags.set_percentage("beta", 100)
    assert_ok(details(client, "boolean", "beta", False), True, "on", "SPLIT")
    flags.disable("beta")  # the kill switch wins over deny, allow and percentage
    for actor in ("ana", "bob", "carl"):
        assert_ok(details(client, "boolean", "beta", True, ctx(actor)), True, "off", "DISABLED")


def test_targeting_key_may_be_an_int_and_empty_means_none(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    flags.allow("beta", "42")
    flags.set_percentage("beta", 0)
    assert_ok(details(client, "boolean", "beta", False, ctx(42)), True, "on", "TARGETING_MATCH")
    assert_ok(details(client, "boolean", "beta", True, ctx("")), False, "off", "DEFAULT")


def test_global_and_client_contexts_supply_the_actor(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    flags.allow("beta", "global-user")
    flags.allow("beta", "client-user")
    flags.set_percentage("beta", 0)
    api.set_evaluation_context(ctx("global-user"))
    assert details(client, "boolean", "beta", False).reason == "TARGETING_MATCH"
    client.context = ctx("client-user")
    assert details(client, "boolean", "beta", False).value is True
    # The invocation's key wins over the client's and the global one.
    assert details(client, "boolean", "beta", True, ctx("nobody")).value is False


# ------------------------------------------------------------------- typed


def test_string_flag_reasons(client: OpenFeatureClient, flags: FeatureFlags) -> None:
    flags.disable("color")
    assert_ok(details(client, "string", "color", "caller"), "caller", "red", "DISABLED")
    flags.enable("color")
    assert_ok(details(client, "string", "color", "x"), "#f00", "red", "STATIC")
    flags.assign("color", "ana", "blue")
    assert_ok(
        details(client, "string", "color", "x", ctx("ana")), "#00f", "blue", "TARGETING_MATCH"
    )
    flags.deny("color", "bob")  # denied: the default variant, as a targeting decision
    assert_ok(details(client, "string", "color", "x", ctx("bob")), "#f00", "red", "TARGETING_MATCH")
    flags.set_split("color", {"red": 50, "green": 50})
    assert_ok(details(client, "string", "color", "x"), "#f00", "red", "DEFAULT")
    seen = set()
    for actor in ACTORS:
        d = details(client, "string", "color", "x", ctx(actor))
        assert d.reason == "SPLIT", d
        assert d.variant in ("red", "green"), d
        evaluation = flags.evaluate("color", actor)
        assert (d.value, d.variant) == (evaluation.value, evaluation.variant)
        seen.add(d.variant)
    assert seen == {"red", "green"}
    assert details(client, "string", "color", "x", ctx("ana")).variant == "blue"  # still pinned
    flags.set_split("color", {"green": 100})
    assert_ok(details(client, "string", "color", "x"), "#0f0", "green", "SPLIT")
    flags.disable("color")
    assert_ok(details(client, "string", "color", "caller", ctx("ana")), "caller", "red", "DISABLED")


def test_integer_float_and_object_flags(client: OpenFeatureClient, flags: FeatureFlags) -> None:
    for name in ("limit", "ratio", "layout"):
        flags.enable(name)
    assert_ok(details(client, "integer", "limit", 1), 10, "low", "STATIC")
    assert_ok(details(client, "float", "ratio", 0.1), 0.5, "half", "STATIC")
    d = details(client, "object", "layout", {})
    assert_ok(d, {"cols": 3, "tags": ["a"]}, "grid", "STATIC")
    assert isinstance(d.value, dict)
    flags.assign("layout", "ana", "list")
    d = details(client, "object", "layout", {}, ctx("ana"))
    assert (d.value, d.variant, d.reason) == ([1, 2], "list", "TARGETING_MATCH")
    assert isinstance(d.value, list)
    flags.assign("limit", "ana", "high")
    assert_ok(details(client, "integer", "limit", 1, ctx("ana")), 1000, "high", "TARGETING_MATCH")
    flags.disable("layout")
    assert_ok(details(client, "object", "layout", {"x": 1}), {"x": 1}, "grid", "DISABLED")


def test_object_values_are_read_only(client: OpenFeatureClient, flags: FeatureFlags) -> None:
    flags.enable("layout")
    value = details(client, "object", "layout", {}).value
    with pytest.raises(TypeError):
        value["cols"] = 4
    assert details(client, "object", "layout", {}).value == {"cols": 3, "tags": ["a"]}


def test_falsy_values_and_large_integers_resolve_as_values() -> None:
    from foundation.flags import Flag

    zeros = FeatureFlags([
        Flag("s", variants={"empty": "", "x": "x"}, default="empty"),
        Flag("i", variants={"zero": 0, "max": 2**53 - 1, "i32": 2**31 - 1}, default="zero"),
        Flag("f", variants={"zero": 0.0, "x": 1.5}, default="zero"),
        Flag("o", variants={"empty": {}, "x": {"a": 1}}, default="empty"),
        Flag("b", default=True),
    ])  # fmt: skip
    try:
        for name in zeros.names:
            zeros.enable(name)
        zeros.assign("i", "ana", "max")
        zeros.assign("i", "bob", "i32")
        api.set_provider_and_wait(FoundationProvider(zeros))
        client = api.get_client()
        assert_ok(details(client, "string", "s", "fallback"), "", "empty", "STATIC")
        assert_ok(details(client, "integer", "i", 7), 0, "zero", "DEFAULT")
        assert_ok(
            details(client, "integer", "i", 7, ctx("ana")), 2**53 - 1, "max", "TARGETING_MATCH"
        )
        assert_ok(
            details(client, "integer", "i", 7, ctx("bob")), 2**31 - 1, "i32", "TARGETING_MATCH"
        )
        assert_ok(details(client, "float", "f", 0.5), 0.0, "zero", "STATIC")
        assert_ok(details(client, "object", "o", {"d": 1}), {}, "empty", "STATIC")
        zeros.disable("b")
        assert_ok(details(client, "boolean", "b", True), True, "off", "DISABLED")
        zeros.enable("b")
        zeros.deny("b", "ana")
        assert_ok(
            details(client, "boolean", "b", True, ctx("ana")), False, "off", "TARGETING_MATCH"
        )
    finally:
        zeros.close()


# ------------------------------------------------------- numeric coercion


def test_numbers_convert_only_when_exact(client: OpenFeatureClient, flags: FeatureFlags) -> None:
    flags.enable("limit")
    flags.enable("ratio")
    # An integer flag read as a float: exact, so converted.
    assert_ok(details(client, "float", "limit", 0.1), 10.0, "low", "STATIC")
    # A float flag read as an integer: 0.5 would be narrowed, so TYPE_MISMATCH...
    assert_error(details(client, "integer", "ratio", 7), 7, ErrorCode.TYPE_MISMATCH)
    # ...but an integral value (10.0, and 1 declared as an int) answers as an int.
    flags.assign("ratio", "ana", "ten")
    flags.assign("ratio", "bob", "one")
    assert_ok(details(client, "integer", "ratio", 7, ctx("ana")), 10, "ten", "TARGETING_MATCH")
    assert_ok(details(client, "integer", "ratio", 7, ctx("bob")), 1, "one", "TARGETING_MATCH")


def test_a_huge_integer_is_not_converted_to_an_inexact_float(flags: FeatureFlags) -> None:
    from foundation.flags import Flag

    exact, inexact = 2**53, 2**53 + 1
    big = FeatureFlags([Flag("big", variants={"a": exact, "b": inexact}, default="a")])
    try:
        big.enable("big")
        big.assign("big", "ana", "b")
        api.set_provider_and_wait(FoundationProvider(big))
        client = api.get_client()
        assert_ok(details(client, "float", "big", 0.0), float(exact), "a", "DEFAULT")
        assert_error(details(client, "float", "big", 0.0, ctx("ana")), 0.0, ErrorCode.TYPE_MISMATCH)
        assert_ok(details(client, "integer", "big", 0, ctx("ana")), inexact, "b", "TARGETING_MATCH")
    finally:
        big.close()


def test_numbers_convert_when_exact_and_within_64_bits() -> None:
    # Was: an exact 2**62 refused as a float (a magnitude bound, 2**53, not
    # exactness) while a float 1e300 answered as a 301-digit integer.
    from foundation.flags import Flag

    huge = FeatureFlags([
        Flag("i", variants={"exact": 2**62, "top": 2**63 - 1}, default="exact"),
        Flag("f", variants={"big": 1e300, "edge": -(2.0**63), "over": 2.0**63}, default="big"),
    ])  # fmt: skip
    try:
        for name in ("i", "f"):
            huge.enable(name)
        huge.assign("i", "ana", "top")
        huge.assign("f", "ana", "edge")
        huge.assign("f", "bob", "over")
        api.set_provider_and_wait(FoundationProvider(huge))
        client = api.get_client()
        assert_ok(details(client, "float", "i", 0.0), float(2**62), "exact", "DEFAULT")
        # 2**63 - 1 rounds to 2.0**63 as a float: not exact.
        assert_error(details(client, "float", "i", 0.0, ctx("ana")), 0.0, ErrorCode.TYPE_MISMATCH)
        assert_error(details(client, "integer", "f", 7), 7, ErrorCode.TYPE_MISMATCH)
        assert_ok(details(client, "integer", "f", 7, ctx("ana")), -(2**63), "edge",
                  "TARGETING_MATCH")  # fmt: skip
        assert_error(details(client, "integer", "f", 7, ctx("bob")), 7, ErrorCode.TYPE_MISMATCH)
    finally:
        huge.close()


# --------------------------------------------------------------- mismatches


KINDS = {"boolean": False, "string": "fallback", "integer": 1, "float": 0.1, "object": {"d": 1}}
FLAG_KIND = {"beta": "boolean", "color": "string", "limit": "integer", "ratio": "float",
             "layout": "object"}  # fmt: skip
NUMERIC = {("limit", "float"), ("ratio", "integer")}  # ratio's default variant is 0.5: mismatch


MISMATCHES = [
    (flag, kind, switch)
    for flag in sorted(FLAG_KIND)
    for kind in sorted(KINDS)
    for switch in ("on", "off")
    if FLAG_KIND[flag] != kind and (flag, kind) not in NUMERIC
] + [("ratio", "integer", "on")]


@pytest.mark.parametrize(("flag", "kind", "switch"), MISMATCHES)
def test_a_wrong_type_is_type_mismatch_with_the_callers_default(
    client: OpenFeatureClient, flags: FeatureFlags, flag: str, kind: str, switch: str
) -> None:
    # The declared kind decides, switch on or off: a boolean is never a number.
    flags.set(flag, switch == "on")
    assert_error(details(client, kind, flag, KINDS[kind]), KINDS[kind], ErrorCode.TYPE_MISMATCH)


def test_a_disabled_float_flag_read_as_integer_answers_the_callers_default(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    flags.disable("ratio")  # nothing is narrowed: the caller's default stands in
    assert_ok(details(client, "integer", "ratio", 3), 3, "half", "DISABLED")


def test_unknown_flag_is_flag_not_found(client: OpenFeatureClient) -> None:
    for kind, default in KINDS.items():
        assert_error(details(client, kind, "btea", default), default, ErrorCode.FLAG_NOT_FOUND)


@pytest.mark.parametrize("bad", [[1], 1.5, True, 2**64, {"a": 1}])
@pytest.mark.parametrize("state", ["percentage", "on", "off"])
def test_an_invalid_targeting_key_is_invalid_context(
    client: OpenFeatureClient, flags: FeatureFlags, bad: Any, state: str
) -> None:
    # Whatever the flag's state, even when the actor could not change the answer.
    if state == "percentage":
        flags.set_percentage("beta", 50)
    else:
        flags.set("beta", state == "on")
    d = details(client, "boolean", "beta", True, ctx(bad))
    assert_error(d, True, ErrorCode.INVALID_CONTEXT)


def test_the_provider_never_raises(provider: FoundationProvider, flags: FeatureFlags) -> None:
    # Called directly, without the SDK's safety net.
    r = provider.resolve_boolean_details(["unhashable"], True)  # type: ignore[arg-type]
    assert (r.value, r.error_code, r.reason) == (True, ErrorCode.FLAG_NOT_FOUND, Reason.ERROR)
    flags.enable("color")
    r = provider.resolve_string_details("color", "x", ctx(object()))
    assert (r.value, r.error_code) == ("x", ErrorCode.INVALID_CONTEXT)
    r = provider.resolve_string_details("color", "x", None)
    assert (r.value, r.reason, r.error_code, r.error_message) == ("#f00", "STATIC", None, None)
    flags.close()
    r = provider.resolve_string_details("color", "x", None)
    assert (r.value, r.error_code, r.reason) == ("x", ErrorCode.PROVIDER_FATAL, Reason.ERROR)


def test_a_closed_flags_object_answers_defaults_through_the_client(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    flags.enable("beta")
    flags.close()
    assert_error(details(client, "boolean", "beta", False), False, ErrorCode.PROVIDER_FATAL)


# -------------------------------------------------------------- metadata


def test_flag_metadata_holds_the_description(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    flags.enable("beta")
    assert dict(details(client, "boolean", "beta", False).flag_metadata) == {
        "description": "the new checkout"
    }
    assert dict(details(client, "boolean", "plain", False).flag_metadata) == {}
    assert dict(details(client, "string", "color", "x").flag_metadata) == {
        "description": "button color"
    }
    # An error carries no metadata.
    assert dict(details(client, "string", "beta", "x").flag_metadata) == {}


def test_flag_metadata_names_the_migration_stage() -> None:
    from foundation.flags import Flag, Migration, MigrationPlan, Stage

    flags = FeatureFlags([Flag("a", description="first"), Flag("b"), Flag("c")])
    try:
        plan = MigrationPlan([Stage(1, "read", ["a"]), Stage(2, "write", ["b"])], name="move")
        migration = Migration(flags, plan)
        api.set_provider_and_wait(FoundationProvider(flags))
        client = api.get_client()
        migration.advance()
        d = details(client, "boolean", "a", False)
        assert (d.value, d.reason) == (True, "STATIC")
        assert dict(d.flag_metadata) == {
            "description": "first",
            "migration_plan": "move",
            "migration_stage": 1,
            "migration_stage_name": "read",
        }
        d = details(client, "boolean", "b", True)
        assert (d.value, d.reason) == (True, "DISABLED")
        assert dict(d.flag_metadata) == {
            "migration_plan": "move",
            "migration_stage": 2,
            "migration_stage_name": "write",
        }
        assert dict(details(client, "boolean", "c", False).flag_metadata) == {}
    finally:
        flags.close()


def test_metadata_read_at_initialize_replaces_earlier_resolutions() -> None:
    from foundation.flags import Flag, Migration, MigrationPlan, Stage

    flags = FeatureFlags([Flag("a", default=True)])
    try:
        provider = FoundationProvider(flags)
        Migration(flags, MigrationPlan([Stage(1, "only", ["a"])], name="p"))
        before = provider.resolve_boolean_details("a", False)
        assert (before.value, dict(before.flag_metadata)) == (True, {})  # not initialized yet
        api.set_provider_and_wait(provider)
        after = api.get_client().get_boolean_details("a", False)
        assert after.value is True
        assert after.flag_metadata["migration_plan"] == "p"
    finally:
        flags.close()


def test_a_plan_recorded_later_appears_after_the_next_initialize() -> None:
    # Was: a second initialize() without shutdown() read the plans, then threw
    # them away (already initialized): only shutdown() + initialize() showed them.
    from foundation.flags import Flag, Migration, MigrationPlan, Stage

    flags = FeatureFlags([Flag("a", default=True)])
    try:
        provider = FoundationProvider(flags)
        provider.initialize(EvaluationContext())
        assert dict(provider.resolve_boolean_details("a", False).flag_metadata) == {}
        Migration(flags, MigrationPlan([Stage(1, "only", ["a"])], name="p"))
        provider.initialize(EvaluationContext())
        assert provider.resolve_boolean_details("a", False).flag_metadata["migration_plan"] == "p"
        provider.shutdown()
    finally:
        flags.close()


# ------------------------------------------------------------------ async


def test_async_variants_answer_like_the_sync_ones(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    for name in ("beta", "color", "limit", "ratio", "layout"):
        flags.enable(name)
    flags.assign("color", "ana", "blue")
    calls = [
        ("boolean", "beta", False),
        ("string", "color", "x"),
        ("integer", "limit", 1),
        ("float", "ratio", 0.1),
        ("object", "layout", {}),
        ("string", "missing", "x"),
        ("integer", "color", 3),
    ]

    async def all_async() -> list[FlagEvaluationDetails[Any]]:
        return [
            await getattr(client, f"get_{kind}_details_async")(key, default, ctx("ana"))
            for kind, key, default in calls
        ]

    got = asyncio.run(all_async())
    want = [details(client, kind, key, default, ctx("ana")) for kind, key, default in calls]
    assert got == want
    assert [d.reason for d in got][:2] == ["STATIC", "TARGETING_MATCH"]
    assert got[-2].error_code == ErrorCode.FLAG_NOT_FOUND
    assert got[-1].error_code == ErrorCode.TYPE_MISMATCH


# ------------------------------------------------------------ the contract

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_ACTOR = st.text(min_size=1, max_size=8) | st.integers(-(2**63), 2**63 - 1)
_VARIANT = st.sampled_from(["red", "blue", "green"])
# A stored actor (assign, deny) names someone: blank ones ("   ") are refused by
# the writes (test_env_names_and_blank_by); reads of any actor, blank included,
# stay generated by _ACTOR.
_STORED_ACTOR = st.text(min_size=1, max_size=4).filter(str.strip)


@settings(max_examples=60, deadline=None)
@given(
    switch=st.booleans(),
    assigned=st.dictionaries(_STORED_ACTOR, _VARIANT, max_size=3),
    denied=st.lists(_STORED_ACTOR, max_size=2),
    shares=st.none() | st.lists(st.integers(0, 4), min_size=3, max_size=3),
    actors=st.lists(st.none() | _ACTOR, min_size=1, max_size=5),
)
def test_every_resolution_is_what_evaluate_says(
    switch: bool,
    assigned: dict[str, str],
    denied: list[str],
    shares: list[int] | None,
    actors: list[Any],
) -> None:
    from foundation.flags import Flag

    flags = FeatureFlags(
        [Flag("color", variants={"red": "#f00", "blue": "#00f", "green": "#0f0"}, default="red")]
    )
    api.shutdown()
    try:
        for actor, variant in assigned.items():
            flags.assign("color", actor, variant)
        for actor in denied:
            flags.deny("color", actor)
        if shares is not None and sum(shares):
            total = sum(shares)
            split = dict(zip(["red", "blue", "green"], shares, strict=True))
            flags.set_split("color", {v: n * 100 / total for v, n in split.items()})
        flags.set("color", switch)
        api.set_provider_and_wait(FoundationProvider(flags))
        client = api.get_client()
        for actor in [*actors, *assigned, *denied]:
            context = None if actor is None else ctx(actor)
            d = client.get_string_details("color", "caller", context)
            # The SDK's context merge drops a falsy key ("" and 0): no actor then.
            evaluation = flags.evaluate("color", actor if actor else None)
            assert d.error_code is None, d
            if evaluation.reason == "DISABLED":
                assert (d.value, d.variant, d.reason) == ("caller", "red", "DISABLED")
            else:
                want = (evaluation.value, evaluation.variant, evaluation.reason)
                assert (d.value, d.variant, d.reason) == want
    finally:
        api.shutdown()
        flags.close()


def test_resolutions_racing_writes_are_each_one_whole_state(
    client: OpenFeatureClient, flags: FeatureFlags
) -> None:
    import threading

    flags.set_split("color", {"green": 100})
    allowed = {("#0f0", "green", "SPLIT"), ("#00f", "blue", "SPLIT"), ("caller", "red", "DISABLED")}
    stop = threading.Event()
    bad: list[Any] = []

    def read() -> None:
        while not stop.is_set():
            d = client.get_string_details("color", "caller")
            if (d.value, d.variant, d.reason) not in allowed:
                bad.append(d)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(300):
            flags.set_split("color", {"blue" if i % 2 else "green": 100})
            flags.set("color", i % 3 != 0)
    finally:
        stop.set()
        for t in readers:
            t.join(10)
    assert not any(t.is_alive() for t in readers)
    assert not bad, bad[:3]
