"""Keys and metadata: ONE rule, checked here, for every registry backend.

Every backend calls ``validate_key`` and ``freeze_metadata`` (nothing else
checks a key or metadata), so a registration one backend accepts is accepted
by all, and a migration between backends never fails on data the first one
took. The rules are written out in ``docs/keys-and-metadata.md``.

**Keys**: ``str``, ``int`` with ``-2**63 <= n < 2**63``, finite ``float``, ``None``,
and ``tuple``/``frozenset`` of keys nested at most ``MAX_KEY_DEPTH`` deep.
``bool`` is refused (``True == 1`` would merge two keys). A subclass whose
hash and equality are its base type's (``StrEnum``, ``IntEnum`` members)
becomes the plain base value; an integral float within the int range becomes
the ``int`` it equals (``2.0`` and ``2`` are one key everywhere).

**Metadata**: a mapping with ``str`` keys of JSON values: ``None``, ``bool``,
``int`` with ``-2**63 <= n < 2**63``, finite ``float``, ``str`` (encodable as UTF-8:
no lone surrogates), lists/tuples (one JSON array type, frozen as tuples) and
nested mappings, at most ``MAX_DEPTH`` levels; at most ``MAX_METADATA_BYTES``
as compact UTF-8 JSON. Subclasses become plain values, as keys do.

The frozen shape (``Entry.metadata`` on every backend) is a ``FrozenMetadata``:
a read-only ``dict`` subclass, so ``json.dumps`` takes it as it is, nested
mappings are ``FrozenMetadata`` too and arrays are tuples. Every message is
bounded in length, whatever the input (``short_repr``).

Example:
    >>> frozen = freeze_metadata({"tags": ["a", "b"], "limits": {"cpu": 2}})
    >>> frozen["tags"], frozen["limits"]["cpu"]
    (('a', 'b'), 2)
    >>> import json; json.dumps(frozen)
    '{"tags": ["a", "b"], "limits": {"cpu": 2}}'
    >>> metadata_to_json(frozen)
    '{"limits":{"cpu":2},"tags":["a","b"]}'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final, NoReturn

from foundation._read_only import ReadOnlyDict
from foundation.errors import InvalidConfig, InvalidKey, InvalidMetadata, bounded_repr
from foundation.registry._plain import cached_converter, plain_converter

__all__ = [
    "EMPTY_METADATA",
    "INT_MAX",
    "INT_MIN",
    "MAX_DEPTH",
    "MAX_KEY_DEPTH",
    "MAX_METADATA_BYTES",
    "FrozenMetadata",
    "check_bool",
    "check_metadata_size",
    "check_unicode",
    "freeze_metadata",
    "metadata_from_json",
    "metadata_to_json",
    "not_a_bool",
    "short_repr",
    "validate_key",
]

MAX_DEPTH: Final = 32
"""Deepest nesting of lists and mappings accepted in metadata (guards cycles too)."""

MAX_KEY_DEPTH: Final = 16
"""Deepest tuple/frozenset nesting accepted in a key."""

MAX_METADATA_BYTES: Final = 64 * 1024
"""The one size limit of metadata: its compact UTF-8 JSON encoding, in bytes."""

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
"""Ints in keys and metadata lie in ``[INT_MIN, INT_MAX]`` (signed 64 bits)."""

_MAX_PATH_CHARS: Final = 120

short_repr = bounded_repr
"""``repr`` cut to at most 200 characters, never raising (``foundation.errors``' helper).

    >>> len(short_repr("x" * 1000)) <= 200
    True
    >>> deep: object = 1
    >>> for _ in range(5000):
    ...     deep = [deep]
    >>> short_repr(deep)
    '[[[[...]]]]'
"""


# --------------------------------------------------------------------------- frozen metadata


class _FrozenMetadataType(type):
    """The metaclass of ``FrozenMetadata``: a direct call validates and freezes.

    ``FrozenMetadata(...)`` goes through ``freeze_metadata``, while
    ``freeze_metadata`` itself builds instances with ``type.__call__``, which
    runs ``dict``'s own C ``__new__``/``__init__``: the cheapest way to build a
    ``dict`` subclass from a ``dict`` (the register hot path makes one per entry).
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return freeze_metadata(dict(*args, **kwargs))


class FrozenMetadata(ReadOnlyDict, metaclass=_FrozenMetadataType):
    """Read-only metadata: a ``dict`` (so ``json.dumps`` accepts it) that refuses mutation.

    Built only by ``freeze_metadata`` (and from JSON); nested mappings are
    ``FrozenMetadata`` and arrays are tuples. ``copy.copy``/``deepcopy``
    return the object itself (it is immutable); it pickles. ``dict(m)`` or
    ``m | {...}`` give a mutable copy.

    >>> m = freeze_metadata({"role": "io"})
    >>> m["role"] = "db"
    Traceback (most recent call last):
    ...
    TypeError: Entry metadata is read-only; change a copy (dict(metadata)) and call update_metadata
    >>> dict(m) | {"role": "db"}
    {'role': 'db'}
    """

    __slots__ = ()

    READ_ONLY = (
        "Entry metadata is read-only; change a copy (dict(metadata)) and call update_metadata"
    )

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        # Immutable, and every value is hashable (arrays are tuples, mappings are
        # FrozenMetadata): so it hashes, and so does an Entry (``set(list_all())``).
        return hash(frozenset(self.items()))


# FrozenMetadata(d) without the metaclass's validation: dict's C __new__ and
# __init__ (a copy of d), for data this module has checked or is checking.
_copy_frozen: Callable[[Mapping[str, Any]], FrozenMetadata] = type.__call__.__get__(FrozenMetadata)
_items = dict.items
_set_item = dict.__setitem__  # past FrozenMetadata's refusal, on a copy still being built


def _unpickle(data: dict[str, Any]) -> FrozenMetadata:
    """Rebuild pickled metadata, validated again (a pickle is outside input)."""
    return freeze_metadata(data)


def _frozen(data: dict[str, Any]) -> FrozenMetadata:
    return _copy_frozen(data)


EMPTY_METADATA: Final[FrozenMetadata] = _frozen({})
"""The frozen metadata of a registration made without any (shared, immutable)."""


# --------------------------------------------------------------------------- keys

_KEY_RULE: Final = (
    "registry keys must be str, int (-2**63 <= n < 2**63), finite float, None, or "
    f"tuples/frozensets of them nested at most {MAX_KEY_DEPTH} deep (bool is refused)"
)


def validate_key(key: object) -> Hashable:
    """The key in its normal form, or ``InvalidKey``: the one key check of every backend.

    >>> validate_key(("node", 1))
    ('node', 1)
    >>> import enum
    >>> class Role(enum.StrEnum):
    ...     IO = "io"
    >>> type(validate_key(Role.IO)), validate_key(2.0)
    (<class 'str'>, 2)
    >>> validate_key(["x"])
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidKey: registry keys must be str, int (-2**63 <= n < 2**63), finite float, None, or tuples/frozensets of them nested at most 16 deep (bool is refused); got list: ['x']
    """  # noqa: E501
    t = type(key)
    if t is str:
        return key
    if t is int and -9223372036854775808 <= key <= 9223372036854775807:  # type: ignore[operator]
        return key
    if t is tuple:
        # A flat tuple of plain str / in-range int (("node", 7)) is in normal form
        # as it is: no list, no recursion (lookups validate every non-str key).
        for x in key:  # type: ignore[attr-defined]
            tx = type(x)
            if tx is not str and (
                tx is not int or not -9223372036854775808 <= x <= 9223372036854775807
            ):
                break
        else:
            return key
    to_plain = plain_converter(t)  # an enum member, say: one cached answer per type
    if to_plain is not None:
        plain = to_plain(key)
        return plain if type(plain) is str else _normal_key(plain, 0)
    return _normal_key(key, 0)


def _refuse_key(key: object, why: str = "") -> NoReturn:
    raise InvalidKey(f"{_KEY_RULE}{why}; got {type(key).__name__}: {short_repr(key)}")


def _normal_key(key: Any, depth: int) -> Hashable:
    t = type(key)
    if t is str or key is None:
        return key  # type: ignore[no-any-return]
    if t is int:
        if INT_MIN <= key <= INT_MAX:
            return key  # type: ignore[no-any-return]
        _refuse_key(key, " (int out of range)")
    if t is float:
        return _normal_float_key(key)
    if t is tuple or t is frozenset:
        return _normal_nested_key(key, depth)
    base = _plain_base(key)
    if base is None:
        _refuse_key(key)
    return _normal_key(base, depth)


def _normal_float_key(key: float) -> Hashable:
    """``_normal_key`` of a float: an integral one becomes its int; NaN and infinities refused."""
    if not math.isfinite(key):
        _refuse_key(key, " (NaN and infinities are not equal to themselves)")
    if key.is_integer() and INT_MIN <= key <= INT_MAX:
        return int(key)  # equal and hash-equal: ONE key, as a dict sees it
    return key


def _normal_nested_key(key: tuple[Any, ...] | frozenset[Any], depth: int) -> Hashable:
    """``_normal_key`` of a tuple or frozenset: itself if its items are normal, else a copy."""
    if depth >= MAX_KEY_DEPTH:
        _refuse_key(key, " (nested too deep)")
    items = [_normal_key(x, depth + 1) for x in key]
    if type(key) is frozenset:
        same = all(a is b for a, b in zip(items, key, strict=True))
        return key if same else frozenset(items)
    if all(a is b for a, b in zip(items, key, strict=True)):
        return key
    return tuple(items)


def _plain_base(value: object) -> object:
    """The plain ``str``/``int``/``float`` of a subclass instance that keeps its base's
    hash and equality (enum members, say); ``None`` for anything else (bool included)."""
    to_plain = plain_converter(type(value))
    return None if to_plain is None else to_plain(value)


def check_unicode(name: str, text: str) -> None:
    """``InvalidConfig`` if ``text`` is not valid Unicode (a lone surrogate, which
    neither UTF-8 nor JSON can carry): one rule for every backend's names.

    >>> check_unicode("node", "\\ud800")
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidConfig: node must be valid Unicode (no lone surrogates), got '\\ud800'
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidConfig(
            f"{name} must be valid Unicode (no lone surrogates), got {short_repr(text)}"
        ) from None


def not_a_bool(value: object, name: str) -> TypeError:
    """The error of a yes/no option given anything but ``True`` or ``False``.

    ``replace=1`` or ``replace="no"`` is refused, not read by its truth: a
    registry never guesses what a non-bool flag meant. Callers test
    ``value is not False and value is not True`` first (free on the hot path).

    >>> not_a_bool(1, "replace")
    TypeError('replace must be True or False, not 1')
    """
    return TypeError(f"{name} must be True or False, not {short_repr(value)}")


def check_bool(value: object, name: str) -> None:
    """``TypeError`` (``not_a_bool``) unless ``value`` is ``True`` or ``False``."""
    if value is not False and value is not True:
        raise not_a_bool(value, name)


def indexed_names(indexed: object) -> tuple[str, ...]:
    """``indexed=`` of every registry as a tuple of attribute names, or ``TypeError``.

    >>> indexed_names(["role", "zone"])
    ('role', 'zone')
    >>> indexed_names("role")
    Traceback (most recent call last):
    ...
    TypeError: indexed must be a sequence of attribute names, not a str
    """
    if isinstance(indexed, str):  # "role" would index "r", "o", "l", "e"
        raise TypeError("indexed must be a sequence of attribute names, not a str")
    try:
        names: tuple[object, ...] = tuple(indexed)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"indexed must be a sequence of attribute names, got {short_repr(indexed)}"
        ) from None
    checked: list[str] = []
    for attr in names:
        if not isinstance(attr, str) or not attr:
            raise TypeError(
                f"indexed attribute names must be non-empty str, got {short_repr(attr)}"
            )
        check_unicode("an indexed attribute name", attr)  # no metadata key could match it
        checked.append(attr)
    return tuple(checked)


# --------------------------------------------------------------------------- metadata


# The hot path of every register, kept inline on purpose (one frame, one loop).
def freeze_metadata(  # noqa: PLR0912
    metadata: object, *, max_bytes: int = MAX_METADATA_BYTES
) -> FrozenMetadata:
    """A read-only deep copy of ``metadata`` in normal form, or ``InvalidMetadata``.

    ``None`` means no metadata; an already frozen value is returned as it is.
    ``max_bytes`` exists for tests: every backend uses the default.

    Raises:
        InvalidMetadata: not a mapping, a non-``str`` key, a value that is not
            JSON-compatible (NaN, sets, bytes, lone surrogates, ints beyond
            64 bits...), nesting deeper than ``MAX_DEPTH``, or larger than
            ``max_bytes`` as JSON. The message is short, whatever the input.

    >>> freeze_metadata(None)
    {}
    >>> freeze_metadata({"ok": float("nan")})
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidMetadata: metadata value at 'ok' is not JSON-compatible (finite float required): nan
    """  # noqa: E501
    t = type(metadata)
    if t is dict:
        # The hot path of every register: a plain dict. Copy first, then check the
        # COPY (what is stored), so a caller mutating its dict on another thread
        # can never slip an unchecked value in. One loop of exact type checks;
        # anything else (non-ASCII text, nesting, subclasses...) takes the full
        # walk below, which gives the same result for what this loop accepts.
        frozen = _copy_frozen(metadata)  # type: ignore[arg-type]
        n = 0  # characters of keys and str values: 6 * n bounds their JSON size
        for k, v in _items(frozen):
            if type(k) is str and k.isascii():
                tv = type(v)
                if (
                    tv is not str
                    and tv is not int
                    and tv is not float
                    and tv is not bool
                    and v is not None
                ):
                    # An enum member, say: stored as its plain value, if its type
                    # keeps its base's hash and equality (the one rule of _plain).
                    to_plain = cached_converter(tv)
                    if to_plain is None:
                        break  # not known yet, or not a plain subclass: the full walk
                    v = to_plain(v)  # noqa: PLW2901
                    tv = type(v)
                    # Replaces the value of a key the loop is on: the dict keeps
                    # its size, so iterating its items goes on safely.
                    _set_item(frozen, k, v)
                if tv is str:
                    if v.isascii():
                        n += len(k) + len(v)
                        continue
                elif tv is int:
                    if -9223372036854775808 <= v <= 9223372036854775807:  # INT_MIN, INT_MAX
                        n += len(k)
                        continue
                elif tv is bool or v is None or (tv is float and v - v == 0.0):
                    # (v - v == 0.0: a finite float; NaN and infinities give NaN)
                    n += len(k)
                    continue
            break
        else:
            if not frozen:
                return EMPTY_METADATA  # shared: one object for every empty metadata
            # A JSON-escaped ASCII char takes at most 6 bytes; punctuation and a
            # 64-bit int or a float repr at most 32 per item.
            if 6 * n + 32 * len(frozen) + 2 > max_bytes:
                check_metadata_size(metadata_to_json(frozen), max_bytes)
            return frozen
    elif metadata is None:
        return EMPTY_METADATA
    elif t is FrozenMetadata:
        return metadata  # type: ignore[return-value]  # valid by construction, immutable
    return _freeze_general(metadata, max_bytes)


def _freeze_general(metadata: object, max_bytes: int) -> FrozenMetadata:
    """``freeze_metadata`` past its fast path: the full recursive walk."""
    if not isinstance(metadata, Mapping):
        raise InvalidMetadata(
            f"metadata must be a mapping with str keys, got {type(metadata).__name__}"
        )
    acc = [2]
    frozen = _freeze_mapping(metadata, 0, (), acc)
    if acc[0] > max_bytes:
        check_metadata_size(metadata_to_json(frozen), max_bytes)
    return frozen


def _where(path: tuple[object, ...]) -> str:
    text = ".".join(str(p) for p in path) or "<top>"
    return repr(text if len(text) <= _MAX_PATH_CHARS else text[: _MAX_PATH_CHARS - 3] + "...")


def _too_deep(path: tuple[object, ...]) -> NoReturn:
    raise InvalidMetadata(f"metadata nested deeper than {MAX_DEPTH} levels at {_where(path)}")


def _freeze_mapping(
    mapping: Mapping[Any, Any], depth: int, path: tuple[object, ...], acc: list[int]
) -> FrozenMetadata:
    if depth > MAX_DEPTH:
        _too_deep(path)
    out: dict[str, Any] = {}
    try:
        items = list(mapping.items())
    except Exception as exc:  # a broken user Mapping: its own exception is not ours to raise
        raise InvalidMetadata(
            f"metadata mapping at {_where(path)} cannot be read: {type(exc).__name__}"
        ) from None
    for k, v in items:
        if type(k) is not str:
            plain = _plain_base(k) if isinstance(k, str) else None
            if plain is None:
                raise InvalidMetadata(
                    f"metadata keys must be str, got {type(k).__name__} {short_repr(k)} "
                    f"at {_where(path)}"
                )
            k = plain  # noqa: PLW2901 - a str subclass becomes a plain str
        _check_text(k, path)
        acc[0] += 6 * len(k) + 4
        out[k] = _freeze_value(v, depth + 1, (*path, k), acc)
    return _frozen(out)


def _check_text(s: str, path: tuple[object, ...]) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidMetadata(
                f"metadata text at {_where(path)} is not valid Unicode (a lone surrogate): "
                f"{short_repr(s)}"
            ) from None


def _not_json(value: object, path: tuple[object, ...], why: str = "") -> NoReturn:
    raise InvalidMetadata(
        f"metadata value at {_where(path)} is not JSON-compatible{why}: {short_repr(value)}"
    )


def _freeze_value(value: Any, depth: int, path: tuple[object, ...], acc: list[int]) -> Any:
    t = type(value)
    if value is None or t is bool:
        acc[0] += 6
        return value
    if t is str:
        _check_text(value, path)
        acc[0] += 6 * len(value) + 2
        return value
    if t is int or t is float:
        return _freeze_number(value, path, acc)
    return _freeze_nested(value, depth, path, acc)


def _freeze_number(value: float, path: tuple[object, ...], acc: list[int]) -> float:
    """``_freeze_value`` of a plain int (64-bit) or float (finite)."""
    if type(value) is int:
        if INT_MIN <= value <= INT_MAX:
            acc[0] += 21
            return value
        _not_json(value, path, " (ints are limited to -2**63 <= n < 2**63)")
    if math.isfinite(value):
        acc[0] += 25
        return value
    _not_json(value, path, " (finite float required)")


def _freeze_nested(value: Any, depth: int, path: tuple[object, ...], acc: list[int]) -> Any:
    """``_freeze_value`` past plain scalars: a sequence, a mapping, or a scalar subclass."""
    if isinstance(value, list | tuple):
        if depth > MAX_DEPTH:
            _too_deep(path)
        return tuple(_freeze_value(x, depth + 1, (*path, i), acc) for i, x in enumerate(value))
    if isinstance(value, Mapping):
        return _freeze_mapping(value, depth, path, acc)
    plain = _plain_base(value)
    if plain is None:
        _not_json(value, path)
    return _freeze_value(plain, depth, path, acc)


_encode_metadata: Final = json.JSONEncoder(
    separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
).encode
"""One encoder for every call (``json.dumps`` with options builds one per call)."""


def metadata_to_json(frozen: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON text of (frozen or plain, valid) metadata.

    >>> metadata_to_json({"b": (1, 2), "a": None})
    '{"a":null,"b":[1,2]}'
    """
    try:
        return _encode_metadata(frozen)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMetadata(f"metadata is not JSON-serialisable: {type(exc).__name__}") from None


def metadata_from_json(text: str | bytes) -> FrozenMetadata:
    """Frozen metadata from JSON text (the same shape ``freeze_metadata`` returns).

    >>> metadata_from_json('{"tags": ["a"]}')["tags"]
    ('a',)
    """
    try:
        loaded = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidMetadata(
            f"stored metadata is not valid JSON: {short_repr(str(exc))}"
        ) from None
    return freeze_metadata(loaded)


def check_metadata_size(text: str, max_bytes: int = MAX_METADATA_BYTES) -> None:
    """Raise ``InvalidMetadata`` if ``text`` encodes to more than ``max_bytes`` UTF-8 bytes.

    >>> check_metadata_size('{"a":1}', 4)
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidMetadata: metadata is 7 bytes as JSON, more than the limit of 4
    """
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidMetadata("metadata text is not valid Unicode (a lone surrogate)") from None
    if size > max_bytes:
        raise InvalidMetadata(
            f"metadata is {size} bytes as JSON, more than the limit of {max_bytes}"
        )
