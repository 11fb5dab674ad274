"""Query criteria: validation, evaluation and index selection (one rule, every backend).

A criterion is ``(path, op, value)``. ``path`` is ``"a.b"`` (split on dots) or
a non-empty tuple of keys (use a tuple when a key contains a dot); it walks
nested mappings only. The rule (DESIGN.md "Registry contract"):

- ``eq``: stored == value, or the stored value is a list/tuple/set/frozenset
  containing value; ``in``: stored in value, or any element of a stored
  collection is in value; ``neq`` / ``not_in`` are their negations;
  ``gt gte lt lte``: Python comparison of stored with value.
- A missing path makes the criterion false, for every op (``neq`` and
  ``not_in`` included). A present ``None`` is a value.
- A comparison, equality or membership test that raises ``TypeError`` counts as
  not matching; ``neq`` / ``not_in`` negate that result. Never an exception.

Metadata sequences are frozen as tuples (see ``_validation``), so lists in a
query value are compared as tuples: ``[1, 2]`` and ``(1, 2)`` are the same.

Example:
    >>> crit = compile_criteria([("limits.cpu", "gte", 2), ("tags", "eq", "gpu")])
    >>> matches({"limits": {"cpu": 4}, "tags": ("gpu", "io")}, crit)
    True
    >>> matches({"tags": ("gpu",)}, crit)
    False
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final

from foundation.errors import InvalidCriteria

__all__ = [
    "OPS",
    "Compiled",
    "IndexPlan",
    "compile_criteria",
    "index_plan",
    "is_index_safe",
    "matches",
]

OPS: Final = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in"})
_COLLECTIONS: Final = (list, tuple, set, frozenset)
_MAX_NORMALISE_DEPTH: Final = 64
_MISSING: Final = object()


class Compiled:
    """One validated criterion: ``path`` (tuple of keys), ``op`` and normalised ``value``."""

    __slots__ = ("op", "path", "value")

    def __init__(self, path: tuple[Hashable, ...], op: str, value: Any) -> None:
        self.path = path
        self.op = op
        self.value = value

    def __repr__(self) -> str:
        return f"Compiled({self.path!r}, {self.op!r}, {self.value!r})"


def _normalise(value: Any, depth: int = 0) -> Any:
    """Lists (at any depth, inside tuples and dicts too) become tuples, like stored metadata."""
    if depth > _MAX_NORMALISE_DEPTH:
        return value  # absurdly deep (or cyclic): compare as given
    if isinstance(value, list | tuple):
        return tuple(_normalise(x, depth + 1) for x in value)
    if isinstance(value, dict):
        return {k: _normalise(v, depth + 1) for k, v in value.items()}
    return value


def _compile_path(path: object, position: int) -> tuple[Hashable, ...]:
    if isinstance(path, str):
        parts = tuple(path.split("."))
        if not path or any(p == "" for p in parts):
            raise InvalidCriteria(
                f"criterion {position}: path {path!r} must be non-empty dot-separated names"
            )
        return parts
    if isinstance(path, tuple) and path:
        for part in path:
            try:
                hash(part)
            except TypeError:
                raise InvalidCriteria(
                    f"criterion {position}: path element {part!r} is not hashable"
                ) from None
        return path
    raise InvalidCriteria(
        f"criterion {position}: path must be a str like 'a.b' or a non-empty tuple, got {path!r}"
    )


def compile_criteria(criteria: object) -> tuple[Compiled, ...]:
    """Validate the WHOLE list, then return it compiled; raises ``InvalidCriteria``.

    Nothing is evaluated before every criterion has been checked, so a bad
    query fails the same way on an empty registry as on a full one.

    >>> compile_criteria([("a", "eq", 1)])
    (Compiled(('a',), 'eq', 1),)
    >>> compile_criteria([("a", "like", 1)])
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidCriteria: criterion 0: unknown op 'like' (expected one of eq, gt, gte, in, lt, lte, neq, not_in)
    """  # noqa: E501
    if not isinstance(criteria, list | tuple):
        raise InvalidCriteria(
            f"criteria must be a list or tuple of (path, op, value), got {type(criteria).__name__}"
        )
    compiled: list[Compiled] = []
    for position, criterion in enumerate(criteria):
        if not isinstance(criterion, tuple | list) or len(criterion) != 3:
            raise InvalidCriteria(
                f"criterion {position}: expected a (path, op, value) tuple, got {criterion!r}"
            )
        path, op, value = criterion
        parts = _compile_path(path, position)
        if not isinstance(op, str) or op not in OPS:
            raise InvalidCriteria(
                f"criterion {position}: unknown op {op!r} "
                f"(expected one of {', '.join(sorted(OPS))})"
            )
        if op in ("in", "not_in"):
            if not isinstance(value, _COLLECTIONS):
                raise InvalidCriteria(
                    f"criterion {position}: {op!r} needs a list, tuple, set or frozenset, "
                    f"got {type(value).__name__}"
                )
            if isinstance(value, list | tuple):
                value = tuple(_normalise(x) for x in value)
        else:
            value = _normalise(value)
        compiled.append(Compiled(parts, op, value))
    return tuple(compiled)


def _resolve(metadata: Mapping[str, Any], path: tuple[Hashable, ...]) -> Any:
    current: Any = metadata
    for part in path:
        if not isinstance(current, Mapping):
            return _MISSING
        try:
            current = current.get(part, _MISSING)
        except TypeError:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


def _eq(stored: Any, value: Any) -> bool:
    try:
        if stored == value:
            return True
    except TypeError:
        pass
    if isinstance(stored, _COLLECTIONS):
        try:
            return value in stored
        except TypeError:
            return False
    return False


def _member(item: Any, collection: Any) -> bool:
    try:
        return item in collection
    except TypeError:
        return False


def _in(stored: Any, collection: Any) -> bool:
    if _member(stored, collection):
        return True
    if isinstance(stored, _COLLECTIONS):
        return any(_member(x, collection) for x in stored)
    return False


def _compare(stored: Any, op: str, value: Any) -> bool:
    try:
        if op == "gt":
            return bool(stored > value)
        if op == "gte":
            return bool(stored >= value)
        if op == "lt":
            return bool(stored < value)
        return bool(stored <= value)
    except TypeError:
        return False


def matches(metadata: Mapping[str, Any], compiled: Sequence[Compiled]) -> bool:
    """True when ``metadata`` satisfies every compiled criterion (an empty list: always).

    >>> matches({"a": None}, compile_criteria([("a", "eq", None)]))
    True
    >>> matches({}, compile_criteria([("a", "neq", 1)]))
    False
    >>> matches({"a": "x"}, compile_criteria([("a", "gt", 1)]))
    False
    """
    for c in compiled:
        stored = _resolve(metadata, c.path)
        if stored is _MISSING:
            return False
        op = c.op
        if op == "eq":
            ok = _eq(stored, c.value)
        elif op == "in":
            ok = _in(stored, c.value)
        elif op == "neq":
            ok = not _eq(stored, c.value)
        elif op == "not_in":
            ok = not _in(stored, c.value)
        else:
            ok = _compare(stored, op, c.value)
        if not ok:
            return False
    return True


_SAFE_SCALARS: Final = (str, int, float, bool, type(None))


def is_index_safe(value: object, _depth: int = 0) -> bool:
    """True when ``value``'s hash/eq agree with JSON metadata values, so an index lookup is exact.

    Plain ``str``/``int``/``float``/``bool``/``None`` and tuples of them
    qualify; anything else (subclasses with their own ``__eq__``, unhashable
    values) makes the backend fall back to a scan with the same answer.

    >>> is_index_safe(("a", 1)), is_index_safe(["a"]), is_index_safe({"a": 1})
    (True, False, False)
    """
    t = type(value)
    if t in _SAFE_SCALARS:
        return True
    if t is tuple and _depth < _MAX_NORMALISE_DEPTH:
        return all(is_index_safe(x, _depth + 1) for x in value)  # type: ignore[attr-defined]
    return False


class IndexPlan:
    """How to answer a query from an index: ``position`` of the chosen criterion in the
    compiled tuple, the indexed ``attr``, and the ``values`` to look up (their union)."""

    __slots__ = ("attr", "position", "values")

    def __init__(self, position: int, attr: str, values: tuple[Hashable, ...]) -> None:
        self.position = position
        self.attr = attr
        self.values = values

    def __repr__(self) -> str:
        return f"IndexPlan({self.position}, {self.attr!r}, {self.values!r})"


def index_plan(compiled: Sequence[Compiled], indexed: frozenset[str]) -> list[IndexPlan]:
    """Every criterion an attribute index can answer exactly, in query order.

    An ``eq``/``in`` criterion on a one-element path naming an indexed
    attribute, whose value(s) are index-safe. The candidates from the index
    are a superset of the matches; the backend re-checks every criterion on
    each candidate (which also makes a concurrent writer harmless). A backend
    may pick the plan with the fewest candidates.

    >>> index_plan(compile_criteria([("n", "gt", 1), ("role", "in", ["a", "b"])]),
    ...            frozenset({"role"}))
    [IndexPlan(1, 'role', ('a', 'b'))]
    """
    plans: list[IndexPlan] = []
    for position, c in enumerate(compiled):
        if len(c.path) != 1 or c.op not in ("eq", "in"):
            continue
        attr = c.path[0]
        if not isinstance(attr, str) or attr not in indexed:
            continue
        if c.op == "eq":
            if is_index_safe(c.value):
                plans.append(IndexPlan(position, attr, (c.value,)))
        elif all(is_index_safe(v) for v in c.value):
            plans.append(IndexPlan(position, attr, tuple(c.value)))
    return plans
