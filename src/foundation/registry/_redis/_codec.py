"""Wire formats of the Redis backend: keys, entry heads, index names. JSON only, never pickle.

A registry key is ``str``, ``int``, ``None``, a finite ``float``, or a
``tuple``/``frozenset`` of keys (nested), encoded as compact ASCII JSON and
restored as given: a tuple is an array; a float is ``{"f": x}`` and a
frozenset ``{"s": [sorted encoded members]}`` (JSON objects never encode
anything else). Keys that Python considers equal get ONE encoding, so Redis
enforces the same uniqueness a ``dict`` does: an integral float (``2.0``) is
stored as the int ``2`` (and comes back as ``2``); ``bool`` is refused
(``True == 1`` would silently merge two keys)::

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
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from foundation.errors import InvalidKey
from foundation.registry._query import is_index_safe

__all__ = [
    "MAX_KEY_DEPTH",
    "RemoteAgent",
    "decode_key",
    "encode_key",
    "index_names",
    "index_values",
]

MAX_KEY_DEPTH = 16
"""Deepest tuple nesting accepted in a key."""


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


def _plain(key: object, depth: int) -> object:
    t = type(key)
    if t is str or t is int or key is None:
        return key
    if t is float:
        f: float = key  # type: ignore[assignment]
        if not math.isfinite(f):
            raise InvalidKey(f"RedisRegistry keys cannot be {f!r} (not equal to itself)")
        return int(f) if f.is_integer() else {"f": f}
    if depth < MAX_KEY_DEPTH:
        if t is tuple:
            return [_plain(x, depth + 1) for x in key]  # type: ignore[attr-defined]
        if t is frozenset:
            members = (_dumps(_plain(x, depth + 1)) for x in key)  # type: ignore[attr-defined]
            return {"s": sorted(members)}
    if t is bool:
        raise InvalidKey("RedisRegistry keys cannot be bool (True == 1 would collide); use int")
    raise InvalidKey(
        "RedisRegistry keys must be str, int, finite float, None, or tuples/frozensets of "
        f"them (nested at most {MAX_KEY_DEPTH} deep), got {t.__name__}: {key!r}"
    )


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True)


def encode_key(key: object) -> str:
    """The canonical JSON text of ``key``; raises ``InvalidKey`` for any other type."""
    return _dumps(_plain(key, 0))


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
