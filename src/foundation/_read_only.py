"""Read-only ``dict``: the one base of every frozen mapping the library hands out.

Registry metadata (``FrozenMetadata``) and typed flag values (``FrozenDict``)
are ``dict`` subclasses, so ``json.dumps`` and ``isinstance(v, dict)`` accept
them, that refuse every mutation with a ``TypeError`` naming what to do
instead. ``copy.copy``/``deepcopy`` return the object itself (it cannot
change); each subclass decides how it pickles.

Example:
    >>> class Settings(ReadOnlyDict):
    ...     __slots__ = ()
    ...     READ_ONLY = "settings are read-only"
    >>> s = Settings({"a": 1})
    >>> s["a"] = 2
    Traceback (most recent call last):
    ...
    TypeError: settings are read-only
    >>> import copy, json
    >>> copy.deepcopy(s) is s, json.dumps(s)
    (True, '{"a": 1}')
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

__all__ = ["ReadOnlyDict"]


class ReadOnlyDict(dict[str, Any]):
    """A ``dict`` that refuses mutation; subclasses set ``READ_ONLY``, the message."""

    __slots__ = ()

    READ_ONLY: ClassVar[str] = "this mapping is read-only; change a copy (dict(value))"

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(self.READ_ONLY)

    __setitem__ = _read_only
    __delitem__ = _read_only
    __ior__ = _read_only
    clear = _read_only
    pop = _read_only
    popitem = _read_only
    setdefault = _read_only
    update = _read_only

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Any:
        return self
