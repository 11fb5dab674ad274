"""Validation of keys and metadata, shared by every registry backend.

Metadata is JSON-compatible by contract, because the Redis backend stores it
as JSON; every backend enforces the same rule so that a registration accepted
by one is accepted by all. Accepted values: ``None``, ``bool``, ``int``,
finite ``float``, ``str``, lists/tuples of accepted values, and mappings with
``str`` keys of accepted values, nested at most ``MAX_DEPTH`` levels.

The frozen shape (what ``Entry.metadata`` holds, on every backend):

- a mapping becomes a ``types.MappingProxyType`` over a private ``dict`` copy;
- a list or tuple becomes a ``tuple`` (JSON has one array type, so ``[1, 2]``
  and ``(1, 2)`` are the same metadata value; queries compare them alike);
- subclasses of ``str``/``int``/``float`` become the plain type.

The Redis backend calls ``freeze_metadata(json.loads(text))`` and so returns
exactly the shape the memory backends return.

Example:
    >>> frozen = freeze_metadata({"tags": ["a", "b"], "limits": {"cpu": 2}})
    >>> frozen["tags"], frozen["limits"]["cpu"]
    (('a', 'b'), 2)
    >>> metadata_to_json(frozen)
    '{"limits":{"cpu":2},"tags":["a","b"]}'
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import Any

from foundation.errors import InvalidKey, InvalidMetadata

__all__ = [
    "EMPTY_METADATA",
    "MAX_DEPTH",
    "check_metadata_size",
    "freeze_metadata",
    "metadata_from_json",
    "metadata_to_json",
    "validate_key",
]

MAX_DEPTH = 32
"""Deepest nesting of lists and mappings accepted in metadata (guards cycles too)."""

EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})
"""The frozen metadata of a registration made without any (shared, immutable)."""


def validate_key(key: object) -> Hashable:
    """Return ``key`` if it can be a registry key, else raise ``InvalidKey``.

    Any hashable value is a key (backends may restrict further).

    >>> validate_key(("node", 1))
    ('node', 1)
    >>> validate_key(["x"])
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidKey: registry key must be hashable, got list: ['x']
    """
    try:
        hash(key)
    except TypeError:
        raise InvalidKey(
            f"registry key must be hashable, got {type(key).__name__}: {key!r}"
        ) from None
    return key


def freeze_metadata(metadata: object, *, max_bytes: int | None = None) -> Mapping[str, Any]:
    """A read-only deep copy of ``metadata``, or ``InvalidMetadata``.

    ``None`` means no metadata. When ``max_bytes`` is given, the compact JSON
    encoding must not be larger (the Redis backend uses this hook).

    Raises:
        InvalidMetadata: not a mapping, a non-``str`` key, a value that is not
            JSON-compatible (NaN/infinity included), nesting deeper than
            ``MAX_DEPTH``, or larger than ``max_bytes``.

    >>> freeze_metadata(None)
    mappingproxy({})
    >>> freeze_metadata({"ok": float("nan")})
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidMetadata: metadata value at 'ok' is not JSON-compatible: nan
    """
    if metadata is None:
        frozen = EMPTY_METADATA
    elif type(metadata) is dict and _flat_scalars(metadata):
        frozen = MappingProxyType(metadata.copy())  # the common case, without recursion
    elif isinstance(metadata, Mapping):
        frozen = _freeze_mapping(metadata, 0, ())
    else:
        raise InvalidMetadata(
            f"metadata must be a mapping with str keys, got {type(metadata).__name__}"
        )
    if max_bytes is not None:
        check_metadata_size(metadata_to_json(frozen), max_bytes)
    return frozen


_FLAT = frozenset({str, int, bool, type(None)})


def _flat_scalars(metadata: dict[Any, Any]) -> bool:
    """True when every key is a plain str and every value a plain str/int/bool/None."""
    flat = _FLAT
    for k, v in metadata.items():  # noqa: SIM110 - a plain loop is the fastest form here
        if type(k) is not str or type(v) not in flat:
            return False
    return True


def _where(path: tuple[object, ...]) -> str:
    return ".".join(str(p) for p in path) or "<top>"


def _freeze_mapping(
    mapping: Mapping[Any, Any], depth: int, path: tuple[object, ...]
) -> Mapping[str, Any]:
    if depth > MAX_DEPTH:
        raise InvalidMetadata(f"metadata nested deeper than {MAX_DEPTH} levels at {_where(path)!r}")
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if type(k) is not str:
            if not isinstance(k, str):
                raise InvalidMetadata(
                    f"metadata keys must be str, got {type(k).__name__} {k!r} at {_where(path)!r}"
                )
            k = str(k)  # noqa: PLW2901 - a str subclass becomes a plain str
        out[k] = _freeze_value(v, depth + 1, (*path, k))
    return MappingProxyType(out)


def _freeze_value(value: Any, depth: int, path: tuple[object, ...]) -> Any:
    t = type(value)
    if value is None or t is str or t is int or t is bool:
        return value
    if t is float:
        if math.isfinite(value):
            return value
    elif isinstance(value, str):
        return str(value)
    elif isinstance(value, int):  # bool cannot be subclassed; IntEnum etc. become int
        return int(value)
    elif isinstance(value, float):
        if math.isfinite(value):
            return float(value)
    elif isinstance(value, list | tuple):
        if depth > MAX_DEPTH:
            raise InvalidMetadata(
                f"metadata nested deeper than {MAX_DEPTH} levels at {_where(path)!r}"
            )
        return tuple(_freeze_value(x, depth + 1, (*path, i)) for i, x in enumerate(value))
    elif isinstance(value, Mapping):
        return _freeze_mapping(value, depth, path)
    raise InvalidMetadata(f"metadata value at {_where(path)!r} is not JSON-compatible: {value!r}")


def _json_default(obj: object) -> object:
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def metadata_to_json(frozen: Mapping[str, Any]) -> str:
    """Compact, key-sorted JSON text of (frozen or plain, valid) metadata.

    >>> metadata_to_json({"b": (1, 2), "a": None})
    '{"a":null,"b":[1,2]}'
    """
    try:
        return json.dumps(
            frozen,
            default=_json_default,
            separators=(",", ":"),
            sort_keys=True,
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidMetadata(f"metadata is not JSON-serialisable: {exc}") from None


def metadata_from_json(text: str | bytes) -> Mapping[str, Any]:
    """Frozen metadata from JSON text (the same shape ``freeze_metadata`` returns).

    >>> metadata_from_json('{"tags": ["a"]}')["tags"]
    ('a',)
    """
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise InvalidMetadata(f"stored metadata is not valid JSON: {exc}") from None
    return freeze_metadata(loaded)


def check_metadata_size(text: str, max_bytes: int) -> None:
    """Raise ``InvalidMetadata`` if ``text`` encodes to more than ``max_bytes`` UTF-8 bytes.

    >>> check_metadata_size('{"a":1}', 4)
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidMetadata: metadata is 7 bytes as JSON, more than the limit of 4
    """
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidMetadata(
            f"metadata is {size} bytes as JSON, more than the limit of {max_bytes}"
        )
