"""ONE rule for values of a subclass of ``str``, ``int`` or ``float``.

A subclass whose type keeps its base's ``__hash__`` and ``__eq__``
(``StrEnum`` and ``IntEnum`` members, ``class C(str, Enum)``, a ``str``
subclass that only adds methods) hashes and compares exactly as its plain
value, so keys, metadata and index probes take that plain value. A type that
redefines equality does not (keys and metadata refuse it, an index probe
scans). ``bool`` is never converted: ``True == 1`` would merge two keys.

The answer is kept per type, so an enum member costs a dict lookup and one
C call on the hot paths (``lookup``, ``register``), not an ``isinstance``
walk. The cache is bounded (cleared past ``_MAX_TYPES`` types, for programs
that make classes on the fly) and its writes need no lock: two threads that
miss together compute the same answer, and a clear racing a store loses at
most that answer, computed again on the next miss. A class whose
``__eq__``/``__hash__`` is reassigned after its first use keeps its first
answer: the value is stored in its plain form either way, which compares as
the plain value always did.

>>> import enum
>>> class Role(enum.StrEnum):
...     IO = "io"
>>> to_plain = plain_converter(Role)
>>> to_plain(Role.IO), type(to_plain(Role.IO))
('io', <class 'str'>)
>>> class Loose(str):
...     def __eq__(self, other: object) -> bool:
...         return True
...     __hash__ = str.__hash__
>>> plain_converter(Loose) is None, plain_converter(bool) is None
(True, True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["PLAIN_SUBCLASSES", "cached_converter", "plain_converter"]

_BASES: Final[tuple[tuple[type, Callable[[Any], Any]], ...]] = (
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
)
_MAX_TYPES: Final = 512

_converters: dict[type, Callable[[Any], Any] | None] = {}

cached_converter: Final[Callable[[type], Callable[[Any], Any] | None]] = _converters.get
"""``plain_converter``'s answer if it has one for the type, else ``None``: no
Python frame, for the hot paths (``clear`` keeps the dict, so this stays bound)."""

PLAIN_SUBCLASSES: Final[set[type]] = set()
"""The subclasses ``plain_converter`` has accepted so far. ``t in PLAIN_SUBCLASSES``
is the cheapest test on a hot path such as ``lookup``: a dict finds a member of
one (it hashes and compares as its plain value) under its plain value."""


def plain_converter(t: type) -> Callable[[Any], Any] | None:
    """The function giving the plain value of an instance of ``t``, or ``None``.

    ``None`` for a type that is no subclass of ``str``/``int``/``float``, for
    one that redefines equality or hashing, and for ``bool``. For the plain
    types themselves, their own conversion (an identity on their values).
    """
    try:
        return _converters[t]
    except KeyError:
        pass
    found = _converter_of(t)
    if len(_converters) >= _MAX_TYPES:
        _converters.clear()
        PLAIN_SUBCLASSES.clear()
    _converters[t] = found
    if found is not None and t not in (str, int, float):
        PLAIN_SUBCLASSES.add(t)
    return found


def _converter_of(t: type) -> Callable[[Any], Any] | None:
    """``plain_converter``'s answer for ``t``, computed (not remembered)."""
    if t is bool:
        return None
    for base, to_plain in _BASES:
        if issubclass(t, base):
            # Exactly the base's hash and equality: the plain value is interchangeable.
            eq: object = t.__eq__
            hash_: object = t.__hash__
            return to_plain if eq is base.__eq__ and hash_ is base.__hash__ else None
    return None
