"""JSON from outside the process (a request body, a command-line value), refused
past ``MAX_DEPTH`` levels of nesting the same way on every Python version, and
only JSON: ``NaN``, ``Infinity`` and ``-Infinity``, which ``json.loads`` takes
by default, are no JSON (RFC 8259) and raise ``ValueError`` like any other
text that is not JSON.

The decoder's own limit is the interpreter's: Python 3.11 raises
``RecursionError`` about 1,000 levels down, while 3.13 parses 3,000 levels and
more; a deeply nested request was then refused as "nested too deeply" on one
version and went on to another answer on the other. ``loads`` refuses both
cases with :class:`TooDeep`.

>>> loads('{"a": [1, 2]}')
{'a': [1, 2]}
>>> loads("[" * 101 + "]" * 101)
Traceback (most recent call last):
...
foundation._json_input.TooDeep: nested more than 100 deep
>>> loads('{"x": NaN}')
Traceback (most recent call last):
...
ValueError: NaN is not JSON
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["MAX_DEPTH", "TooDeep", "loads"]

MAX_DEPTH: Final = 100
"""Deepest nesting of arrays and objects accepted (metadata and flag values
allow 32: deeper input up to here gets their own, more precise error)."""


class TooDeep(ValueError):
    """JSON nested more than ``MAX_DEPTH`` deep (a ``ValueError``: callers that
    take any invalid JSON as plain text do so for this too)."""


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, or ``TooDeep`` past ``MAX_DEPTH`` (``ValueError``
    for text that is not JSON, ``NaN`` and ``Infinity`` included)."""
    try:
        value = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise TooDeep(f"nested more than {MAX_DEPTH} deep") from None
    if _deeper_than(value, MAX_DEPTH):
        raise TooDeep(f"nested more than {MAX_DEPTH} deep")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """True when arrays/objects in ``value`` nest more than ``limit`` deep (no
    recursion: the walk itself must not hit the interpreter's limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
