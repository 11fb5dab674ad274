"""The targeting key follows ``FeatureFlags``' actor rule; closed beats unknown.

Before the fixes: a targeting key that is a ``str`` subclass (a ``StrEnum``
member, ``class UserId(str)``) was INVALID_CONTEXT through the provider while
``flags.enabled/evaluate`` accepted it as the plain string it equals (a rollout
targeted at such ids silently reached nobody over OpenFeature); and after
``flags.close()`` a direct resolution of an unknown key answered FLAG_NOT_FOUND,
a known key PROVIDER_FATAL.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from foundation.flags import FeatureFlags
from foundation.openfeature import FoundationProvider


class Tenant(enum.StrEnum):
    ACME = "acme"


class UserId(str):
    __slots__ = ()

    def __eq__(self, other: object) -> bool:  # never consulted: normalised first
        raise AssertionError("the subclass's __eq__ ran")

    __hash__ = str.__hash__


@pytest.mark.parametrize("key", [Tenant.ACME, UserId("acme")])
def test_a_str_subclass_targeting_key_is_the_plain_string(
    client: OpenFeatureClient, provider: FoundationProvider, flags: FeatureFlags, key: str
) -> None:
    flags.set_percentage("beta", 0)
    flags.allow("beta", "acme")
    flags.assign("color", "acme", "green")
    ctx = EvaluationContext(targeting_key=key)
    assert flags.evaluate("beta", key).reason == "TARGETING_MATCH"
    r = provider.resolve_boolean_details("beta", False, ctx)
    assert (r.value, r.reason, r.error_code) == (True, Reason.TARGETING_MATCH, None), r
    d = client.get_string_details("color", "x", ctx)
    assert (d.value, d.variant, d.reason, d.error_code) == (
        "#0f0",
        "green",
        "TARGETING_MATCH",
        None,
    )


def test_an_empty_str_subclass_key_is_no_actor(
    provider: FoundationProvider, flags: FeatureFlags
) -> None:
    class Blank(enum.StrEnum):
        NONE = ""

    flags.set_percentage("beta", 0)
    r = provider.resolve_boolean_details("beta", True, EvaluationContext(Blank.NONE))
    # No actor: the untargeted answer (an actor at 0% would be SPLIT off).
    assert r == provider.resolve_boolean_details("beta", True, EvaluationContext()), r
    assert (r.value, r.reason) == (False, Reason.DEFAULT), r


@pytest.mark.parametrize("bad", [1.5, True, 2**64, [1], object()])
def test_other_keys_stay_invalid_context_with_flags_message(
    provider: FoundationProvider, bad: Any
) -> None:
    r = provider.resolve_boolean_details("beta", True, EvaluationContext(targeting_key=bad))
    assert (r.value, r.reason, r.error_code) == (True, Reason.ERROR, ErrorCode.INVALID_CONTEXT)
    assert r.error_message is not None
    assert r.error_message.startswith("targeting key: an actor must be a str or an int"), r
    assert len(r.error_message) <= 300


@pytest.mark.parametrize("key", ["beta", "btea", ["unhashable"], "x" * 100_000])
def test_after_close_every_key_is_provider_fatal(
    provider: FoundationProvider, flags: FeatureFlags, key: Any
) -> None:
    flags.close()
    r = provider.resolve_boolean_details(key, True)
    assert (r.value, r.reason, r.error_code) == (True, Reason.ERROR, ErrorCode.PROVIDER_FATAL), r
    assert r.error_message == "this FeatureFlags is closed"
