"""Query criteria: validation, evaluation and index selection (one rule, every backend).

A criterion is ``(path, op, value)``. ``path`` is ``"a.b"`` (split on dots) or
a non-empty tuple of keys (use a tuple when a key contains a dot); it walks
nested mappings only. The rule (docs/contract.md "Registry contract"):

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

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

from foundation.errors import FoundationError, InvalidCriteria
from foundation.registry._plain import plain_converter
from foundation.registry._validation import short_repr  # bounded messages

__all__ = [
    "OPS",
    "PASSED_ON",
    "UNSAFE",
    "AttributeIndex",
    "Compiled",
    "IndexPlan",
    "compile_criteria",
    "index_plan",
    "index_term",
    "is_index_safe",
    "matches",
    "matching",
    "probe_failed",
    "probe_failure",
    "suspect",
]


class _HasMetadata(Protocol):
    @property
    def metadata(self) -> Mapping[str, Any]: ...


_E = TypeVar("_E", bound=_HasMetadata)  # an Entry (``matching``)

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
                f"criterion {position}: path {short_repr(path)} "
                "must be non-empty dot-separated names"
            )
        return parts
    if isinstance(path, tuple) and path:
        for part in path:
            try:
                hash(part)
            except TypeError:
                raise InvalidCriteria(
                    f"criterion {position}: path element {short_repr(part)} is not hashable"
                ) from None
        return path
    raise InvalidCriteria(
        f"criterion {position}: path must be a str like 'a.b' or a non-empty tuple, "
        f"got {short_repr(path)}"
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
        compiled.append(_compile_one(criterion, position))
    return tuple(compiled)


def _compile_one(criterion: object, position: int) -> Compiled:
    """One criterion of ``compile_criteria``, compiled, or ``InvalidCriteria``."""
    if not isinstance(criterion, tuple | list) or len(criterion) != 3:
        raise InvalidCriteria(
            f"criterion {position}: expected a (path, op, value) tuple, got {short_repr(criterion)}"
        )
    path, op, value = criterion
    parts = _compile_path(path, position)
    if not isinstance(op, str) or op not in OPS:
        raise InvalidCriteria(
            f"criterion {position}: unknown op {short_repr(op)} "
            f"(expected one of {', '.join(sorted(OPS))})"
        )
    return Compiled(parts, op, _compile_value(op, value, position))


def _compile_value(op: str, value: Any, position: int) -> Any:
    """A criterion's value, normalised for ``op`` (``InvalidCriteria`` if it does not fit)."""
    if op in ("in", "not_in"):
        if not isinstance(value, _COLLECTIONS):
            raise InvalidCriteria(
                f"criterion {position}: {short_repr(op)} needs a list, tuple, set or "
                "frozenset, "
                f"got {type(value).__name__}"
            )
        if isinstance(value, list | tuple):
            value = tuple(_normalise(x) for x in value)
        return value
    return _normalise(value)


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


PASSED_ON: Final = (MemoryError, FoundationError)
"""What an evaluation raises as it is; ``probe_failed`` wraps anything else."""


def matching(entries: Sequence[_E], compiled: Sequence[Compiled]) -> list[_E]:
    """The ``entries`` (already read: nothing else runs here) whose metadata
    ``matches``. When some criterion's value is not a plain one (``suspect``),
    an error of its comparison (not ``TypeError``) is ``probe_failed``'s
    ``InvalidCriteria``; with plain values only, nothing is caught (an error
    then is no fault of the criteria, and raises as it is).

    >>> class Tag(str):
    ...     def __eq__(self, other): raise RuntimeError("no")
    ...     __hash__ = str.__hash__
    >>> class E:
    ...     metadata = {"role": "io"}
    >>> len(matching([E()], compile_criteria([("role", "eq", "io")])))
    1
    >>> matching([E()], compile_criteria([("role", "eq", Tag("io"))]))
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidCriteria: criterion on 'role': its value raised RuntimeError when compared with a stored value
    """  # noqa: E501
    try:  # around the loop, never in it: the normal path costs nothing
        return [e for e in entries if matches(e.metadata, compiled)]
    except Exception as exc:
        # Judged only now, on the error path (a query pays nothing for it).
        failed = probe_failure(compiled, exc)
        if failed is None:
            raise
        raise failed from exc


def probe_failure(compiled: Sequence[Compiled], exc: Exception) -> InvalidCriteria | None:
    """For an evaluation loop's own ``try`` (as ``matching``'s): the
    ``InvalidCriteria`` to raise for ``exc``, or None to let ``exc`` go on as
    it is (``PASSED_ON``, or no criterion's value is suspect)."""
    if isinstance(exc, PASSED_ON) or not any(suspect(c) for c in compiled):
        return None
    return probe_failed(compiled, exc)


def suspect(c: Compiled) -> bool:
    """Whether the value of ``c`` is not a plain one (its comparisons may raise):
    an ``in``/``not_in`` set's elements are judged one by one."""
    value = c.value
    if isinstance(value, set | frozenset):
        return any(index_term(x) is UNSAFE for x in value)
    return index_term(value) is UNSAFE


def probe_failed(compiled: Sequence[Compiled], exc: Exception) -> InvalidCriteria:
    """The error of a query whose value raised when compared (not ``TypeError``:
    a probe whose own ``__eq__``, ``__lt__`` or ``__hash__`` raises something
    else): ``InvalidCriteria`` naming the attribute, never the caller's error.

    Raised by ``matching`` (the backends' evaluation loop), which lets
    ``PASSED_ON`` through.

    >>> class Tag(str):
    ...     def __eq__(self, other): raise RuntimeError("no")
    ...     __hash__ = str.__hash__
    >>> crit = compile_criteria([("role", "eq", Tag("io"))])
    >>> try:
    ...     matches({"role": "io"}, crit)
    ... except RuntimeError as exc:
    ...     print(probe_failed(crit, exc))
    criterion on 'role': its value raised RuntimeError when compared with a stored value
    """
    # The criteria whose value is not a plain one (an index term) are the suspects.
    suspects = [c for c in compiled if suspect(c)] or list(compiled)
    names = ", ".join(short_repr(_shown_path(c.path)) for c in suspects[:3])
    more = ", ..." if len(suspects) > 3 else ""
    return InvalidCriteria(
        f"criterion on {names}{more}: its value raised {type(exc).__name__} "
        "when compared with a stored value"
    )


def _shown_path(path: tuple[Hashable, ...]) -> object:
    """A criterion's path as written (``"a.b"``), or the tuple when a part is no str."""
    return ".".join(path) if all(type(p) is str for p in path) else path  # type: ignore[arg-type]


_SAFE_SCALARS: Final = (str, int, float, bool, type(None))
UNSAFE: Final = object()
"""What ``index_term`` returns for a value an index cannot answer exactly."""


def index_term(value: object, _depth: int = 0) -> Any:
    """``value`` as an index looks it up: a plain ``str``/``int``/``float``/``bool``/``None``
    (or a tuple of them), or ``UNSAFE``.

    A subclass instance whose type keeps its base's ``__eq__`` and ``__hash__``
    (``StrEnum``/``IntEnum`` members, ``class C(str, Enum)``, ...) hashes and
    compares exactly as its plain value, so it becomes that value: an index
    answers it like the plain value. A type that really redefines equality,
    and anything unhashable, is ``UNSAFE``: the query scans (same answer).

    >>> import enum
    >>> class Cap(enum.StrEnum):
    ...     CRAWL = "crawl"
    >>> type(index_term(Cap.CRAWL)), index_term(("a", Cap.CRAWL))
    (<class 'str'>, ('a', 'crawl'))
    >>> index_term(["a"]) is UNSAFE, index_term({"a": 1}) is UNSAFE
    (True, True)
    """
    t = type(value)
    if t is str or t is int or value is None or t is float or t is bool:
        return value
    if t is tuple:
        return _tuple_term(value, _depth)  # type: ignore[arg-type]
    return _subclass_term(value)


def _tuple_term(value: tuple[object, ...], depth: int) -> Any:
    """``index_term`` of a tuple: the tuple of its elements' terms, or ``UNSAFE``."""
    if depth >= _MAX_NORMALISE_DEPTH:
        return UNSAFE
    items = []
    for x in value:
        term = index_term(x, depth + 1)
        if term is UNSAFE:
            return UNSAFE
        items.append(term)
    return tuple(items)


def _subclass_term(value: object) -> Any:
    """``index_term`` of a non-plain value: its plain base value, or ``UNSAFE``."""
    to_plain = plain_converter(type(value))  # the one rule (foundation.registry._plain)
    return UNSAFE if to_plain is None else to_plain(value)


def is_index_safe(value: object, _depth: int = 0) -> bool:
    """True when ``value``'s hash/eq agree with JSON metadata values, so an index lookup is exact.

    Plain ``str``/``int``/``float``/``bool``/``None`` and tuples of them
    qualify, and so do subclass instances with their base's hash and equality
    (see ``index_term``); anything else (subclasses with their own ``__eq__``,
    unhashable values) makes the backend fall back to a scan with the same answer.

    >>> is_index_safe(("a", 1)), is_index_safe(["a"]), is_index_safe({"a": 1})
    (True, False, False)
    """
    return index_term(value, _depth) is not UNSAFE


class IndexPlan:
    """How to answer a query from an index: ``position`` of the chosen criterion in the
    compiled tuple, the indexed ``attr``, and the ``values`` to look up (their union),
    as ``index_term`` gives them."""

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
    attribute, whose value(s) have an index term (``index_term``: enum
    members and other subclasses that keep their base's hash and equality
    are looked up as their plain value). The candidates from the index are a
    superset of the matches; the backend re-checks every criterion on each
    candidate (which also makes a concurrent writer harmless). A backend may
    pick the plan with the fewest candidates.

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
        terms = _plan_terms(c)
        if terms is not None:
            plans.append(IndexPlan(position, attr, terms))
    return plans


def _plan_terms(c: Compiled) -> tuple[Hashable, ...] | None:
    """The index terms an ``eq``/``in`` criterion looks up, or None if one has none."""
    if c.op == "eq":
        term = index_term(c.value)
        return None if term is UNSAFE else (term,)
    terms = tuple(index_term(v) for v in c.value)
    if UNSAFE not in terms:  # identity first: no plain value equals the sentinel
        return terms
    return None


_Bucket = dict[Hashable, None]


class AttributeIndex:
    """The in-memory attribute index: ``attr -> term -> {key: None}``.

    The one implementation behind ``MemoryRegistry`` and the ``RedisRegistry``
    mirror. A metadata value is indexed under its ``index_term`` and, for a
    tuple, under each element's (what ``eq``/``in`` need: see ``matches``);
    a value without a term (a nested mapping) is left out, since no probe an
    index answers can equal it (other probes scan).

    Concurrency: the owner serialises writers (``add``, ``remove``,
    ``clear``). ``keys`` may run without a lock: it reads with single C-level
    dict operations (``dict.get``, ``list(bucket)``), each atomic, and never
    iterates a dict a writer may be changing. Owners keep the index a
    SUPERSET of what readers can see (add before publishing, remove after
    unpublishing) and re-check every candidate.

    >>> ix = AttributeIndex(("role",))
    >>> ix.add("a", {"role": ("io", "db")}); ix.add("b", {"role": "io"})
    >>> ix.keys("role", ("io",)), ix.keys("role", ("db", "io"))
    (['a', 'b'], ['a', 'b'])
    >>> ix.remove("a", {"role": ("io", "db")}, {"role": "db"}); ix.keys("role", ("io",))
    ['b']
    >>> ix.sizes(), ix.value_counts()
    ({'role': 2}, {'role': 2})
    """

    __slots__ = ("_items", "_one", "_one_buckets", "attrs", "buckets")

    def __init__(self, indexed: Iterable[str]) -> None:
        self.attrs: frozenset[str] = frozenset(indexed)
        #: attr -> term -> {key: None}. A dict, not a set, per bucket: a reader
        #: snapshots one with list(bucket) in one C call.
        self.buckets: dict[str, dict[Any, _Bucket]] = {a: {} for a in sorted(self.attrs)}
        self._items = tuple(self.buckets.items())
        # The usual case, one indexed attribute, has a loop-free path in add/remove.
        self._one: str | None = None
        self._one_buckets: dict[Any, _Bucket] = {}
        if len(self._items) == 1:
            self._one, self._one_buckets = self._items[0]

    def add(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Index ``key`` under the terms of ``metadata``'s indexed attributes (writer)."""
        attr = self._one
        if attr is not None:
            # One indexed attribute with a plain scalar value (or none): one term.
            value = metadata.get(attr, _MISSING)
            t = type(value)
            if t is str or t is int or value is None or t is float or t is bool:
                buckets = self._one_buckets
                bucket = buckets.get(value)
                if bucket is None:
                    buckets[value] = {key: None}
                else:
                    bucket[key] = None
                return
            if value is _MISSING:
                return
        self._add_all(key, metadata)

    def _add_all(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """``add`` for several indexed attributes or a value with several terms."""
        for attr, buckets in self._items:
            value = metadata.get(attr, _MISSING)
            if value is _MISSING:
                continue
            t = type(value)
            if t is str or t is int or value is None or t is float or t is bool:
                # The common case, one term, no temporary list.
                bucket = buckets.get(value)
                if bucket is None:
                    buckets[value] = {key: None}
                else:
                    bucket[key] = None
                continue
            _add_to_buckets(buckets, key, _terms(value))

    def remove(
        self, key: Hashable, metadata: Mapping[str, Any], keep: Mapping[str, Any] | None = None
    ) -> None:
        """Unindex ``key``'s ``metadata`` terms, except those ``keep`` (its new metadata)
        also has (writer; after readers stopped seeing ``metadata`` under ``key``)."""
        attr = self._one
        if attr is not None and keep is None:
            # The common case (unregister, death): as in add, one term at most.
            value = metadata.get(attr, _MISSING)
            t = type(value)
            if t is str or t is int or value is None or t is float or t is bool:
                buckets = self._one_buckets
                bucket = buckets.get(value)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del buckets[value]
                return
            if value is _MISSING:
                return
        self._remove_all(key, metadata, keep)

    def _remove_all(
        self, key: Hashable, metadata: Mapping[str, Any], keep: Mapping[str, Any] | None
    ) -> None:
        """``remove`` for several indexed attributes, several terms, or a ``keep``."""
        for attr, buckets in self._items:
            value = metadata.get(attr, _MISSING)
            if value is _MISSING:
                continue
            t = type(value)
            if keep is None and (t is str or t is int or value is None or t is float or t is bool):
                # The common case (unregister, death), one term, no temporary tuple.
                bucket = buckets.get(value)
                if bucket is not None:
                    bucket.pop(key, None)
                    if not bucket:
                        del buckets[value]
                continue
            _remove_from_buckets(buckets, key, _terms_to_remove(value, attr, keep))

    def keys(self, attr: str, values: Sequence[Hashable]) -> list[Hashable]:
        """Keys indexed under any of ``values`` (``IndexPlan.values``), each once.

        Lock-free (see the class docs): a superset of the matches as of some
        instant during the call, to be re-checked by the caller.
        """
        buckets = self.buckets[attr]
        if len(values) == 1:
            bucket = buckets.get(values[0])
            return list(bucket) if bucket else []  # list(dict): one atomic C call
        keys: list[Hashable] = []
        for value in values:
            bucket = buckets.get(value)
            if bucket:
                keys += list(bucket)
        # A key may sit in several buckets (a tuple holding several of the values).
        return list(dict.fromkeys(keys))

    def clear(self) -> None:
        """Drop every term (writer)."""
        for buckets in self.buckets.values():
            buckets.clear()

    def sizes(self) -> dict[str, int]:
        """Per attribute, the number of (term, key) pairs (take the writers' lock)."""
        return {a: sum(len(b) for b in buckets.values()) for a, buckets in self.buckets.items()}

    def value_counts(self) -> dict[str, int]:
        """Per attribute, the number of distinct indexed terms."""
        return {a: len(buckets) for a, buckets in self.buckets.items()}


def _add_to_buckets(buckets: dict[Any, _Bucket], key: Hashable, terms: list[Any]) -> None:
    """Index ``key`` under each of ``terms`` in one attribute's ``buckets`` (writer)."""
    for term in terms:
        bucket = buckets.get(term)
        if bucket is None:
            buckets[term] = {key: None}
        else:
            bucket[key] = None


def _remove_from_buckets(buckets: dict[Any, _Bucket], key: Hashable, terms: list[Any]) -> None:
    """Unindex ``key`` from each of ``terms`` in one attribute's ``buckets`` (writer)."""
    for term in terms:
        bucket = buckets.get(term)
        if bucket is not None:
            bucket.pop(key, None)
            if not bucket:
                del buckets[term]


def _terms_to_remove(value: object, attr: str, keep: Mapping[str, Any] | None) -> list[Any]:
    """The terms of ``value`` (under ``attr``) that ``keep``, the new metadata, does not have."""
    terms = _terms(value)
    if keep is not None:
        kept = keep.get(attr, _MISSING)
        if kept is not _MISSING:
            kept_terms = set(_terms(kept))
            terms = [x for x in terms if x not in kept_terms]
    return terms


def _terms(value: object) -> list[Any]:
    """The index terms of a stored value: its own term and, for a tuple, each element's."""
    out: list[Any] = []
    term = index_term(value)
    if term is not UNSAFE:
        out.append(term)
    if type(value) is tuple:
        for item in value:
            term = index_term(item)
            if term is not UNSAFE:
                out.append(term)
    return out
