"""Wire formats of the Redis backend: keys, entry heads, index names. JSON only, never pickle.

A registry key follows the one key rule of every backend
(``foundation.registry._validation.validate_key``: ``str``, ``int``,
``None``, a finite ``float``, or a ``tuple``/``frozenset`` of keys; ``bool``
refused; enum members and integral floats normalised). Its normal form is
encoded as compact ASCII JSON and restored as it was: a tuple is an array; a
float is ``{"f": x}`` and a frozenset ``{"s": [sorted encoded members]}``
(JSON objects never encode anything else). Keys that Python considers equal
have ONE normal form, hence one encoding, so Redis enforces the same
uniqueness a ``dict`` does (``2.0`` is stored as ``2`` and comes back as
``2``)::

    >>> encode_key(("job", 7, ("a", 1)))
    '["job",7,["a",1]]'
    >>> decode_key(encode_key(("job", 7, ("a", 1))))
    ('job', 7, ('a', 1))
    >>> key = (2.5, frozenset({"x", 1}), None)
    >>> decode_key(encode_key(key)) == key
    True
    >>> encode_key(2.0) == encode_key(2)
    True
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from foundation.errors import InvalidMetadata
from foundation.registry._query import is_index_safe
from foundation.registry._validation import (
    INT_MAX,
    INT_MIN,
    MAX_KEY_DEPTH,
    validate_key,
)

__all__ = [
    "MAX_KEY_DEPTH",
    "RemoteAgent",
    "decode_key",
    "encode_key",
    "index_names",
    "index_values",
    "metadata_json",
    "normal_key",
    "s",
]


@dataclass(frozen=True, slots=True)
class RemoteAgent:
    """An agent that lives on another node: a description, not a live handle.

    ``RedisRegistry`` puts one in ``Entry.agent`` for every entry owned by
    another node (``kind`` is e.g. ``"thread"``, ``"task"``, ``"process"``;
    ``pid`` is the OS process id on ``node``; ``name`` the thread/task name).
    Only the owning node can watch the agent itself; everyone else learns of
    its death through the registry (an ``unregistered`` event, reason
    ``"down"``).

    >>> RemoteAgent("host-a:4242:9f1c", "thread", 4242, "worker-1").kind
    'thread'
    """

    node: str
    kind: str
    pid: int | None
    name: str | None


def s(value: Any) -> str:
    """A reply value as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _plain(key: object) -> object:
    """The JSON value of a key already in normal form (see ``validate_key``)."""
    t = type(key)
    if t is tuple:
        return [_plain(x) for x in key]  # type: ignore[attr-defined]
    if t is frozenset:
        return {"s": sorted(_dumps(_plain(x)) for x in key)}  # type: ignore[attr-defined]
    if t is float:
        return {"f": key}  # never integral in the int range: validate_key made those ints
    return key  # str, int, None


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
"""Compact ASCII JSON (one encoder: ``json.dumps`` with options builds one per call)."""

_str_json: Callable[[str], str] = json.encoder.encode_basestring_ascii
"""A ``str`` as a JSON string, ASCII (what ``_dumps`` writes for one)."""
_text_json: Callable[[str], str] = json.encoder.encode_basestring
"""A ``str`` as a JSON string, non-ASCII kept (what ``metadata_json`` writes)."""
_INT_MIN, _INT_MAX = INT_MIN, INT_MAX


def encode_key(key: object) -> str:
    """The canonical JSON text of ``key``; raises ``InvalidKey`` (the one key rule).

    >>> encode_key(True)
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidKey: registry keys must be str, int (-2**63 <= n < 2**63), finite float, None, or tuples/frozensets of them nested at most 16 deep (bool is refused); got bool: True
    """  # noqa: E501
    return _dumps(_plain(validate_key(key)))


def normal_key(key: Any) -> tuple[Hashable, str]:
    """``(validate_key(key), its JSON text)``: the key an entry holds and its Redis encoding.

    >>> normal_key(("job", 7))
    (('job', 7), '["job",7]')
    """
    # Fast paths (the hot path of every write): a plain str, an in-range int, or a
    # flat tuple of them is already in normal form; encode it without the encoder.
    t = type(key)
    if t is str:
        return key, _str_json(key)
    if t is int and _INT_MIN <= key <= _INT_MAX:
        return key, int.__repr__(key)
    if t is tuple:
        text = _flat_tuple_json(key)
        if text is not None:
            return key, text
    normal = validate_key(key)
    return normal, _dumps(_plain(normal))


def _flat_tuple_json(key: tuple[Any, ...]) -> str | None:
    """The JSON text of a tuple of plain ``str`` and in-range ``int`` (a key in
    normal form), or None for any other tuple (the full check decides)."""
    parts = []
    for x in key:
        tx = type(x)
        if tx is str:
            parts.append(_str_json(x))
        elif tx is int and _INT_MIN <= x <= _INT_MAX:
            parts.append(int.__repr__(x))
        else:
            return None
    return "[" + ",".join(parts) + "]"


def metadata_json(frozen: Mapping[str, Any]) -> str:
    """Compact JSON text of (frozen, valid) metadata, keys in the caller's order,
    nested mappings too: what ``P:meta`` and the change records hold, so every
    node decodes an entry's metadata in the order its registering caller gave
    (``json.loads`` keeps text order). The same bytes as ``metadata_to_json``
    but for key order, so the one size limit gives the same answer. Fast for
    flat metadata of ``str``/``int``/``bool``/``None`` values (no encoder built).

    Older nodes wrote keys sorted (``metadata_to_json``): such text reads back
    as it is, sorted; both are plain JSON objects, so mixed versions read each
    other's entries during a rolling upgrade.

    >>> metadata_json({"b": 1, "a": "x", "c": None})
    '{"b":1,"a":"x","c":null}'
    >>> metadata_json({"z": {"y": 1.5, "x": [2, "é"]}, "a": True})
    '{"z":{"y":1.5,"x":[2,"é"]},"a":true}'
    """
    parts = []
    for k, v in frozen.items():
        tv = type(v)
        if tv is str:
            parts.append(f"{_text_json(k)}:{_text_json(v)}")
        elif tv is int:
            parts.append(f"{_text_json(k)}:{int.__repr__(v)}")
        elif v is None:
            parts.append(f"{_text_json(k)}:null")
        elif tv is bool:
            parts.append(f"{_text_json(k)}:{'true' if v else 'false'}")
        else:
            return _ordered_json(frozen)
    return "{" + ",".join(parts) + "}"


_encode_ordered: Final = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
"""``metadata_to_json``'s encoder without ``sort_keys`` (one for every call)."""


def _ordered_json(frozen: Mapping[str, Any]) -> str:
    """``metadata_json`` past its fast path (nesting, floats): the JSON encoder."""
    try:
        return _encode_ordered(frozen)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidMetadata(f"metadata is not JSON-serialisable: {type(exc).__name__}") from None


def _restore(value: Any) -> Hashable:
    if isinstance(value, list):
        return tuple(_restore(x) for x in value)
    if isinstance(value, dict):
        if "f" in value:
            return float(value["f"])
        return frozenset(_restore(json.loads(m)) for m in value["s"])
    return value  # type: ignore[no-any-return]


def decode_key(text: str | bytes) -> Hashable:
    """The key ``encode_key`` encoded (arrays become tuples)."""
    return _restore(json.loads(text))


def index_values(value: Any) -> list[Hashable]:
    """The index buckets a stored metadata value belongs to: itself and, for a tuple,
    each element; values whose hash/eq are not exact (see ``is_index_safe``) are
    left out: no index-safe query value can equal them."""
    out: list[Hashable] = []
    if is_index_safe(value):
        out.append(value)
    if type(value) is tuple:
        out.extend(x for x in value if is_index_safe(x))
    return out


def index_names(prefix: str, indexed: frozenset[str], metadata: Mapping[str, Any]) -> list[str]:
    """Names of the server-side index sets ``{prefix}:ix:<attr>:<json value>`` of an entry."""
    names: set[str] = set()
    for attr in indexed:
        if attr in metadata:
            for v in index_values(metadata[attr]):
                names.add(f"{prefix}:ix:{attr}:" + json.dumps(v, separators=(",", ":")))
    return sorted(names)
