"""The one rule for subclasses of plain values, and its per-type memory.

Keys, metadata and index probes turn a member of a ``str``/``int``/``float``
subclass that keeps its base's hash and equality into the plain value
(``foundation.registry._plain``). The answer is kept per type, so these tests
also check that it is the same answer the first time (computed) and every
later time (remembered), on the register fast path as on the full walk.
"""

from __future__ import annotations

import enum
from typing import Any

import pytest

from foundation.errors import InvalidKey, InvalidMetadata
from foundation.registry._plain import _MAX_TYPES, PLAIN_SUBCLASSES, _converters, plain_converter
from foundation.registry._query import UNSAFE, index_term
from foundation.registry._validation import freeze_metadata, validate_key


class _Colour(enum.StrEnum):
    RED = "red"


class _Size(enum.IntEnum):
    BIG = 9


class _Mixed(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling users still write
    A = "a"


class _Perm(enum.IntFlag):
    R = 4


class _Ratio(float):
    """A float subclass that only adds a method."""

    def percent(self) -> float:
        return self * 100


class _Loud(str):
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = str.__hash__


class _Hashy(int):
    def __hash__(self) -> int:
        return 0


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (_Colour.RED, "red"),
        (_Size.BIG, 9),
        (_Mixed.A, "a"),
        (_Perm.R, 4),
        (_Ratio(0.5), 0.5),
    ],
)
def test_a_subclass_keeping_its_base_equality_becomes_the_plain_value(
    value: Any, plain: Any
) -> None:
    for _ in range(2):  # computed, then remembered: the same answer
        to_plain = plain_converter(type(value))
        assert to_plain is not None
        got = to_plain(value)
        assert got == plain
        assert type(got) is type(plain)


@pytest.mark.parametrize("t", [_Loud, _Hashy, bool, bytes, list, type(None)])
def test_other_types_have_no_plain_value(t: type) -> None:
    assert plain_converter(t) is None
    assert plain_converter(t) is None
    assert t not in PLAIN_SUBCLASSES


def test_the_per_type_memory_is_bounded_and_answers_alike_after_a_clear() -> None:
    made = [type(f"S{i}", (str,), {}) for i in range(_MAX_TYPES + 50)]
    for t in made:
        to_plain = plain_converter(t)
        assert to_plain is not None
        assert type(to_plain(t("x"))) is str
        assert t in PLAIN_SUBCLASSES
        assert len(_converters) <= _MAX_TYPES
        assert len(PLAIN_SUBCLASSES) <= _MAX_TYPES
    assert plain_converter(_Loud) is None  # and a refusal is still a refusal
    assert _Loud not in PLAIN_SUBCLASSES


@pytest.mark.parametrize("warm", [False, True], ids=["first-use", "remembered"])
def test_keys_metadata_and_index_terms_take_the_plain_value(warm: bool) -> None:
    class Zone(enum.StrEnum):  # a new type per run: "first-use" is really the first
        EU = "eu"

    if warm:
        plain_converter(Zone)
    frozen = freeze_metadata({"zone": Zone.EU, "size": _Size.BIG, "ratio": _Ratio(0.5)})
    assert [(type(v), v) for v in frozen.values()] == [(str, "eu"), (int, 9), (float, 0.5)]
    key = validate_key(Zone.EU)
    assert (type(key), key) == (str, "eu")
    term = index_term(Zone.EU)
    assert (type(term), term) == (str, "eu")


@pytest.mark.parametrize("warm", [False, True], ids=["first-use", "remembered"])
def test_a_subclass_with_its_own_equality_stays_refused(warm: bool) -> None:
    if warm:
        plain_converter(_Loud)
    with pytest.raises(InvalidKey):
        validate_key(_Loud("k"))
    with pytest.raises(InvalidMetadata):
        freeze_metadata({"a": _Loud("v")})
    assert index_term(_Loud("v")) is UNSAFE


def test_the_fast_path_converts_a_copy_never_the_callers_mapping() -> None:
    plain_converter(_Colour)
    mine = {"colour": _Colour.RED, "n": 1}
    frozen = freeze_metadata(mine)
    assert type(frozen["colour"]) is str
    assert mine["colour"] is _Colour.RED  # the caller's dict is untouched
    assert list(frozen) == ["colour", "n"]  # key order kept
