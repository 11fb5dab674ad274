"""The provider never raises and its error messages stay short, whatever the key or
context: huge keys, keys whose __repr__/__hash__/__eq__ raise, contexts that raise."""

from __future__ import annotations

from typing import Any

import pytest
from openfeature.client import OpenFeatureClient
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from foundation.flags import FeatureFlags
from foundation.openfeature import FoundationProvider

RESOLVERS = [
    ("resolve_boolean_details", False),
    ("resolve_string_details", "dflt"),
    ("resolve_integer_details", 7),
    ("resolve_float_details", 1.5),
    ("resolve_object_details", {"d": 1}),
]


class RaisingRepr:
    def __repr__(self) -> str:
        raise RuntimeError("bad repr")


class UnhashableRaisingRepr:
    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        raise RuntimeError("bad repr")


class RaisingHash:
    def __hash__(self) -> int:
        raise RuntimeError("bad hash")


class CollidingRaisingEq:
    """Hashes like "beta", so the lookup must compare, and comparing raises."""

    def __hash__(self) -> int:
        return hash("beta")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("bad eq")


class NamedButRaisingRepr(str):
    """Equal to a declared name (so found), with a __repr__ that raises."""

    __slots__ = ()

    def __repr__(self) -> str:
        raise RuntimeError("bad repr")


HOSTILE_KEYS = [
    pytest.param("x" * 1_000_000, id="huge-str"),
    pytest.param(["x"] * 100_000, id="huge-list"),
    pytest.param(RaisingRepr(), id="raising-repr"),
    pytest.param(UnhashableRaisingRepr(), id="unhashable-raising-repr"),
    pytest.param(RaisingHash(), id="raising-hash"),
    pytest.param(CollidingRaisingEq(), id="raising-eq"),
    pytest.param("\ud800" * 10_000, id="surrogates"),
]


@pytest.mark.parametrize("key", HOSTILE_KEYS)
@pytest.mark.parametrize(("method", "default"), RESOLVERS)
def test_an_unknown_hostile_key_is_flag_not_found_with_a_short_message(
    provider: FoundationProvider, key: Any, method: str, default: Any
) -> None:
    r = getattr(provider, method)(key, default)
    assert (r.value, r.reason, r.error_code) == (default, Reason.ERROR, ErrorCode.FLAG_NOT_FOUND)
    assert r.error_message.startswith("unknown flag ")
    assert len(r.error_message) <= 250


def test_a_found_key_whose_repr_raises_still_answers(
    provider: FoundationProvider, flags: FeatureFlags
) -> None:
    key = NamedButRaisingRepr("beta")
    flags.enable("beta")
    r = provider.resolve_boolean_details(key, False)
    assert (r.value, r.reason, r.error_code) == (True, Reason.STATIC, None)
    r = provider.resolve_string_details(key, "x")  # the message names the key
    assert (r.value, r.reason, r.error_code) == ("x", Reason.ERROR, ErrorCode.TYPE_MISMATCH)
    assert "boolean flag" in r.error_message
    assert len(r.error_message) <= 250


class RaisingContext:
    """Stands in for an EvaluationContext whose targeting key cannot be read."""

    def __init__(self, exc: Exception) -> None:
        self._exc = exc

    @property
    def targeting_key(self) -> str:
        raise self._exc


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("cannot print")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RuntimeError("y" * 1_000_000), "RuntimeError: yyy"),
        (UnprintableError(), "UnprintableError (unprintable)"),
    ],
)
def test_anything_else_that_raises_is_general_with_a_bounded_message(
    provider: FoundationProvider, flags: FeatureFlags, exc: Exception, expected: str
) -> None:
    flags.enable("beta")
    r = provider.resolve_boolean_details("beta", False, RaisingContext(exc))  # type: ignore[arg-type]
    assert (r.value, r.reason, r.error_code) == (False, Reason.ERROR, ErrorCode.GENERAL)
    assert r.error_message.startswith(expected)
    assert len(r.error_message) <= 500


def test_a_huge_key_through_the_sdk_gives_a_short_message(client: OpenFeatureClient) -> None:
    d = client.get_string_details("x" * 1_000_000, "dflt")
    assert (d.value, d.error_code) == ("dflt", ErrorCode.FLAG_NOT_FOUND)
    assert d.error_message is not None
    assert len(d.error_message) <= 250
