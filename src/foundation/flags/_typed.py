"""Typed flag values: variants, their kinds, frozen JSON values, splits, evaluations.

A typed flag is declared with named variants and a default variant; its kind is
that of the variant values: all ``str`` -> ``"string"``, all ``int`` (``bool``
refused) -> ``"integer"``, all ``float`` or floats mixed with ints ->
``"float"`` (ints converted), all JSON objects/arrays -> ``"object"``. Object
values are frozen: read-only ``dict``/``list`` subclasses (so ``json.dumps``
and ``isinstance(v, dict)`` still work), at most ``MAX_VALUE_BYTES`` of JSON.

This module imports nothing else of ``foundation.flags`` but the hash, so the
records (``_store``), the config parser and ``FeatureFlags`` can all use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from foundation._read_only import ReadOnlyDict
from foundation.errors import InvalidFlagValue, bounded_repr

__all__ = [
    "KINDS",
    "MAX_DESCRIPTION_CHARS",
    "MAX_VALUE_BYTES",
    "REASONS",
    "Evaluation",
    "FrozenDict",
    "FrozenList",
    "Kind",
    "check_declaration",
    "check_flag",
    "check_split",
    "check_variants",
    "declaration_repr",
    "freeze_json",
    "kind_of",
]

Kind = Literal["boolean", "string", "integer", "float", "object"]
KINDS: Final = ("boolean", "string", "integer", "float", "object")
REASONS: Final = ("STATIC", "TARGETING_MATCH", "SPLIT", "DISABLED", "DEFAULT")

MAX_VALUE_BYTES: Final = 64 * 1024
"""Largest variant value, as JSON (64 KiB)."""
MAX_DEPTH: Final = 32
"""Deepest nesting of an object value."""
MAX_DESCRIPTION_CHARS: Final = 1000
"""Longest flag description (characters)."""
SHARE_TOLERANCE: Final = 1e-9
"""How far from 100 the shares of a split may sum (float rounding)."""

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Evaluation:
    """One flag evaluation: the value, its variant, why, and the flag's kind.

    ``reason`` is one of ``"STATIC"`` (switch on, nothing else applies),
    ``"TARGETING_MATCH"`` (the actor is denied, allowed or assigned),
    ``"SPLIT"`` (a percentage or split decided), ``"DISABLED"`` (the switch is
    off) or ``"DEFAULT"`` (a split or percentage, but no actor to place; or a deny,
    allow or assignment that does not pick the actor).
    Boolean flags' variants are ``"on"`` and ``"off"``.

    Example:
        >>> from foundation.flags import FeatureFlags, Flag
        >>> flags = FeatureFlags([Flag("color", variants={"red": "#f00", "blue": "#00f"},
        ...                            default="red")])
        >>> flags.assign("color", "ana", "blue")
        >>> flags.evaluate("color", "ana")
        Evaluation(flag='color', value='#00f', variant='blue', reason='TARGETING_MATCH', kind='string')
        >>> flags.close()
    """  # noqa: E501

    flag: str
    value: Any
    variant: str
    reason: str
    kind: str


class FrozenDict(ReadOnlyDict):
    """A read-only ``dict`` (JSON-serialisable, hashable when its values are).

    >>> d = FrozenDict({"a": 1})
    >>> d["a"] = 2
    Traceback (most recent call last):
    ...
    TypeError: flag values and states are read-only; change a copy (dict(value))
    >>> d == {"a": 1}, json.dumps(d)
    (True, '{"a": 1}')
    """

    __slots__ = ()

    READ_ONLY = "flag values and states are read-only; change a copy (dict(value))"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        dict.update(self, *args, **kwargs)

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


class FrozenList(list[Any]):
    """A read-only ``list`` (JSON-serialisable; equal to a list with the same items).

    >>> v = FrozenList([1, 2])
    >>> v.append(3)
    Traceback (most recent call last):
    ...
    TypeError: flag values are read-only; change a copy (list(value))
    >>> v == [1, 2]
    True
    """

    __slots__ = ()

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("flag values are read-only; change a copy (list(value))")

    __setitem__ = _read_only
    __delitem__ = _read_only
    __iadd__ = _read_only
    __imul__ = _read_only
    append = _read_only
    extend = _read_only
    insert = _read_only
    pop = _read_only
    remove = _read_only
    clear = _read_only
    sort = _read_only
    reverse = _read_only

    def __init__(self, items: Any = ()) -> None:
        list.extend(self, items)

    def __copy__(self) -> FrozenList:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenList:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))


EMPTY: Final = FrozenDict()


def _refuse(where: str, why: str, value: object) -> NoReturn:
    raise InvalidFlagValue(f"{where}: {why}, not {type(value).__name__}: {bounded_repr(value)}")


def _check_text(text: str, where: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            _refuse(where, "a string must be valid Unicode (no lone surrogates)", text)


def is_valid_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (no lone surrogates): every store and JSON
    consumer can keep it."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_declaration(name: object, description: object) -> None:
    """Refuse a flag name or description that no store or JSON consumer can keep.

    A name is a non-empty str without surrounding blanks; a description a str of
    at most ``MAX_DESCRIPTION_CHARS`` characters; both valid Unicode (no lone
    surrogates, which UTF-8 cannot encode). Messages are bounded.

    >>> check_declaration("beta", "x" * 1001)
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidFlagValue: description of 'beta' is longer than 1000 characters
    >>> check_declaration("caf" + chr(0xDCE9), "")
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidFlagValue: a flag name must be valid Unicode (no lone surrogates), not 'caf\\udce9'
    """  # noqa: E501
    if not isinstance(name, str) or not name or name != name.strip():
        raise InvalidFlagValue(f"a flag name must be a non-empty string, not {bounded_repr(name)}")
    if not is_valid_unicode(name):
        raise InvalidFlagValue(
            f"a flag name must be valid Unicode (no lone surrogates), not {bounded_repr(name)}"
        )
    if not isinstance(description, str):
        raise InvalidFlagValue(
            f"description of {bounded_repr(name)} must be a str, "
            f"not {type(description).__name__}: {bounded_repr(description)}"
        )
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise InvalidFlagValue(
            f"description of {bounded_repr(name)} is longer than {MAX_DESCRIPTION_CHARS} characters"
        )
    if not is_valid_unicode(description):
        raise InvalidFlagValue(
            f"description of {bounded_repr(name)} must be valid Unicode (no lone surrogates), "
            f"not {bounded_repr(description)}"
        )


def _freeze(value: Any, where: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise InvalidFlagValue(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        _check_text(value, where)
        return str(value)
    if isinstance(value, int | float):
        return _freeze_number(value, where)
    if isinstance(value, Mapping):
        return _freeze_object(value, where, depth)
    if isinstance(value, list | tuple):
        return FrozenList(_freeze(v, where, depth + 1) for v in value)
    _refuse(where, "a value must be JSON (str, int, float, bool, None, dict, list)", value)


def _freeze_number(value: int | float, where: str) -> int | float:
    """A plain copy of a JSON number: an int that fits in 64 bits, or a finite float."""
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            _refuse(where, "an integer must fit in 64 bits", value)
        return int(value)
    if not math.isfinite(value):
        _refuse(where, "a number must be finite", value)
    return float(value)


def _freeze_object(value: Mapping[Any, Any], where: str, depth: int) -> FrozenDict:
    """A read-only copy of a JSON object at ``depth``: str keys, frozen values."""
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            _refuse(where, "object keys must be strings", k)
        _check_text(k, where)
        out[str(k)] = _freeze(v, where, depth + 1)
    return FrozenDict(out)


def freeze_json(value: object, where: str = "value") -> Any:
    """A read-only deep copy of JSON-compatible ``value`` (at most ``MAX_VALUE_BYTES``).

    Raises:
        InvalidFlagValue: not JSON (NaN, sets, bytes, non-str keys, ints beyond
            64 bits, lone surrogates), too deep or too large; a short message.

    >>> freeze_json({"a": [1, 2.5, None]})
    {'a': [1, 2.5, None]}
    >>> freeze_json({"a": float("nan")})
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidFlagValue: value: a number must be finite, not float: nan
    """
    frozen = _freeze(value, where, 0)
    if isinstance(frozen, dict | list | str) and _json_size(frozen) > MAX_VALUE_BYTES:
        raise InvalidFlagValue(f"{where}: larger than {MAX_VALUE_BYTES} bytes as JSON")
    return frozen


def _json_size(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def _kind_of_value(value: object) -> str:
    if isinstance(value, str):
        return "string"
    if isinstance(value, int):  # bool is refused before this
        return "integer"
    if isinstance(value, float):
        return "float"
    return "object"


def a_kind(kind: str) -> str:
    """``kind`` with its article, for messages: ``a_kind("integer") == "an integer"``."""
    return ("an " if kind[:1] in ("a", "e", "i", "o", "u") else "a ") + kind


def kind_of(variants: Mapping[str, Any] | None) -> Kind:
    """The kind of a flag from its (checked) variants; ``None`` is ``"boolean"``.

    >>> kind_of(None), kind_of({"a": 1}), kind_of({"a": 1.5}), kind_of({"a": [1]})
    ('boolean', 'integer', 'float', 'object')
    """
    if variants is None:
        return "boolean"
    for value in variants.values():
        return _kind_of_value(value)  # type: ignore[return-value]  # checked: one kind
    return "boolean"  # unreachable for checked variants: at least one


def nearest_name(name: object, names: list[str]) -> str | None:
    """The closest of ``names`` to ``name`` (for 'did you mean'), or None."""
    if not isinstance(name, str) or len(name) > 200:
        return None
    from foundation.flags._config import nearest  # _config imports _store, which imports this

    return nearest(name, names)


def _unknown_variant(flag: str, variant: object, names: list[str]) -> InvalidFlagValue:
    hint = nearest_name(variant, names)
    did = f" (did you mean {bounded_repr(hint)}?)" if hint is not None else ""
    shown = ", ".join(bounded_repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
    return InvalidFlagValue(
        f"{bounded_repr(variant)} is not a variant of {bounded_repr(flag)}{did}; variants: {shown}"
    )


def check_variant(flag: str, variant: object, variants: Mapping[str, Any]) -> str:
    """``variant`` if it names one of ``variants``, else InvalidFlagValue with the nearest."""
    if isinstance(variant, str) and variant in variants:
        return variant
    raise _unknown_variant(flag, variant, list(variants))


def check_flag(
    name: object, default: object, description: object, variants: object
) -> FrozenDict | None:
    """The one rule of a flag declaration, for ``Flag`` and its catalogue record
    ``FlagInfo``: ``check_declaration``, then the checked (frozen) variants of a
    typed flag, or ``None`` for a boolean one whose ``default`` must be a bool.

    >>> check_flag("beta", "on", "", None)
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidFlagValue: default of 'beta' must be a bool, not 'on'
    """
    check_declaration(name, description)
    assert isinstance(name, str)  # check_declaration refuses anything else
    if variants is not None:
        return check_variants(name, variants, default)
    if not isinstance(default, bool):
        raise InvalidFlagValue(
            f"default of {bounded_repr(name)} must be a bool, not {bounded_repr(default)}"
        )
    return None


def declaration_repr(
    cls: str, name: str, default: object, description: str, variants: Mapping[str, Any] | None
) -> str:
    """``Flag(...)``/``FlagInfo(...)`` text; ``variants`` only for a typed flag."""
    text = f"{cls}(name={name!r}, default={default!r}, description={description!r}"
    if variants is not None:
        text += f", variants={dict(variants)!r}"
    return text + ")"


def check_variants(flag: str, variants: object, default: object) -> FrozenDict:
    """The variants of typed flag ``flag``, checked and frozen (declaration order kept).

    Raises:
        InvalidFlagValue: no variants, a name that is not a non-empty str, a bool,
            NaN/infinite or non-JSON value, mixed kinds, or ``default`` not a variant.

    >>> check_variants("n", {"low": 1, "high": 2.5}, "low")
    {'low': 1.0, 'high': 2.5}
    >>> check_variants("n", {"a": 1, "b": "x"}, "a")
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidFlagValue: variants of 'n' mix kinds (integer, string): use one type
    """
    if not isinstance(variants, Mapping) or isinstance(variants, str | bytes):
        _refuse(f"variants of {bounded_repr(flag)}", "must be a mapping {name: value}", variants)
    if not variants:
        raise InvalidFlagValue(f"variants of {bounded_repr(flag)}: declare at least one variant")
    out: dict[str, Any] = {}
    kinds: set[str] = set()
    for name, value in variants.items():
        frozen = _check_variant(flag, name, value)
        kinds.add(_kind_of_value(frozen))
        out[name] = frozen
    if kinds == {"float", "integer"}:
        out = {n: float(v) for n, v in out.items()}
    elif len(kinds) > 1:
        raise InvalidFlagValue(
            f"variants of {bounded_repr(flag)} mix kinds ({', '.join(sorted(kinds))}): use one type"
        )
    _check_default_variant(flag, default, out)
    return FrozenDict(out)


def _check_variant(flag: str, name: object, value: object) -> Any:
    """The frozen value of one declared variant; InvalidFlagValue for a bad name or value."""
    if not isinstance(name, str) or not name:
        _refuse(f"variants of {bounded_repr(flag)}", "a variant name must be a non-empty str", name)
    _check_text(name, f"variants of {bounded_repr(flag)}")
    where = f"variant {bounded_repr(name)} of {bounded_repr(flag)}"
    if isinstance(value, bool):
        _refuse(where, "a value may not be a bool (declare a boolean flag instead)", value)
    if value is None or not isinstance(value, str | int | float | Mapping | list | tuple):
        _refuse(where, "a value must be a str, int, float, or JSON object/array", value)
    return freeze_json(value, where)


def _check_default_variant(flag: str, default: object, variants: Mapping[str, Any]) -> None:
    """Refuse a typed flag's ``default`` unless it names one of ``variants``."""
    if not (isinstance(default, str) and default in variants):
        hint = nearest_name(default, list(variants))
        did = f" (did you mean {bounded_repr(hint)}?)" if hint is not None else ""
        raise InvalidFlagValue(
            f"default of {bounded_repr(flag)} must name one of its variants, "
            f"not {bounded_repr(default)}{did}"
        )


def check_split(flag: str, shares: object, variants: Mapping[str, Any]) -> FrozenDict:
    """The split of ``flag`` from ``{variant: percent}``: the positive shares, in the
    variants' declaration order (absent variants get 0).

    Raises:
        InvalidFlagValue: not a mapping, an unknown variant (with the nearest name),
            a share outside 0..100, or shares not summing to 100 (within 1e-9).

    >>> check_split("c", {"blue": 25, "red": 75.0, "green": 0}, {"red": 1, "green": 2, "blue": 3})
    {'red': 75.0, 'blue': 25.0}
    """
    from foundation.flags._store import check_percentage  # _store imports this module

    if not isinstance(shares, Mapping):
        _refuse(f"split of {bounded_repr(flag)}", "must be a mapping {variant: percent}", shares)
    given: dict[str, float] = {}
    for name, share in shares.items():
        check_variant(flag, name, variants)
        try:
            given[name] = check_percentage(share)
        except InvalidFlagValue as exc:
            raise InvalidFlagValue(
                f"share of {bounded_repr(name)} in the split of {bounded_repr(flag)}: {exc}"
            ) from None
    total = math.fsum(given.values())
    if abs(total - 100.0) > SHARE_TOLERANCE:
        raise InvalidFlagValue(
            f"the shares of a split of {bounded_repr(flag)} must sum to 100, not {total!r}"
        )
    return FrozenDict((n, given[n]) for n in variants if given.get(n, 0.0) > 0.0)
