"""Query criteria: validation before evaluation, and docs/contract.md's matching rule."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation.errors import InvalidCriteria
from foundation.registry._query import compile_criteria, index_plan, is_index_safe, matches
from foundation.registry._validation import freeze_metadata

META = freeze_metadata(
    {
        "role": "io",
        "n": 3,
        "none": None,
        "tags": ["gpu", "fast"],
        "limits": {"cpu": 4, "zones": ["a", "b"]},
        "pair": [1, 2],
        "mixed": "text",
    }
)


def check(path: Any, op: str, value: Any) -> bool:
    return matches(META, compile_criteria([(path, op, value)]))


@pytest.mark.parametrize(
    "bad",
    [
        "role",  # not a list
        None,
        [("role", "eq")],  # 2-tuple
        [("role", "eq", 1, 2)],
        ["role"],
        [("", "eq", 1)],
        [("a..b", "eq", 1)],
        [((), "eq", 1)],
        [(("a", ["b"]), "eq", 1)],  # unhashable path element
        [(1, "eq", 1)],
        [("role", "like", "io")],
        [("role", 1, "io")],
        [("role", "in", "io")],  # a str is not an accepted collection
        [("role", "not_in", 5)],
        [("role", "in", {"io": 1})],
    ],
)
def test_bad_criteria_raise_invalid_criteria(bad: Any) -> None:
    with pytest.raises(InvalidCriteria):
        compile_criteria(bad)


def test_the_whole_list_is_validated_before_anything_is_evaluated() -> None:
    with pytest.raises(InvalidCriteria, match="criterion 2"):
        compile_criteria([("role", "eq", "io"), ("n", "gt", 1), ("x", "bogus", 1)])


def test_empty_criteria_match_everything() -> None:
    assert matches({}, compile_criteria([]))
    assert matches(META, compile_criteria(()))


@pytest.mark.parametrize(
    ("path", "op", "value", "expected"),
    [
        ("role", "eq", "io", True),
        ("role", "eq", "cpu", False),
        ("role", "neq", "cpu", True),
        ("tags", "eq", "gpu", True),  # a stored collection containing the value
        ("tags", "eq", ["gpu", "fast"], True),  # lists compare as the stored tuples
        ("tags", "eq", ("gpu", "fast"), True),
        ("tags", "neq", "gpu", False),
        ("tags", "in", ["fast", "slow"], True),  # any element of a stored collection
        ("tags", "in", {"slow"}, False),
        ("tags", "not_in", {"slow"}, True),
        ("role", "in", ("io", "cpu"), True),
        ("role", "in", frozenset({"cpu"}), False),
        ("role", "not_in", ["cpu"], True),
        ("pair", "in", [[1, 2]], True),
        ("n", "gt", 2, True),
        ("n", "gte", 3, True),
        ("n", "lt", 3, False),
        ("n", "lte", 3, True),
        ("limits.cpu", "eq", 4, True),
        (("limits", "cpu"), "gt", 3, True),
        ("limits.zones", "eq", "b", True),
        ("limits", "eq", {"cpu": 4, "zones": ["a", "b"]}, True),
        ("none", "eq", None, True),  # a present None is a value
        ("none", "neq", None, False),
        ("none", "in", [None], True),
        ("none", "gt", 1, False),  # TypeError counts as not matching
        ("mixed", "gt", 1, False),
        ("mixed", "lt", 1, False),
        ("pair", "gt", "x", False),
        ("tags", "in", {("unhashable",)}, False),
        ("limits", "in", {"x"}, False),  # unhashable stored value in a set: TypeError
        ("limits", "not_in", {"x"}, True),  # ... negated
        ("role.sub", "eq", "io", False),  # walking into a non-mapping is a missing path
    ],
)
def test_operators_follow_the_design_rule(path: Any, op: str, value: Any, expected: bool) -> None:
    assert check(path, op, value) is expected


@pytest.mark.parametrize("op", ["eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in"])
def test_a_missing_path_makes_every_op_false(op: str) -> None:
    value: Any = [1] if op in ("in", "not_in") else 1
    assert check("absent", op, value) is False
    assert check("limits.absent", op, value) is False
    assert check(("limits", "cpu", "deeper"), op, value) is False


def test_unhashable_query_values_never_raise() -> None:
    assert check("role", "eq", {"a": [1]}) is False
    assert check("role", "neq", {"a": [1]}) is True
    assert check("tags", "in", [{"a": 1}]) is False


class Weird:
    """Equal to everything: only a scan can see that, so it must not use the index."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0


def test_index_plan_picks_only_exact_eq_and_in_on_indexed_top_level_attributes() -> None:
    indexed = frozenset({"role", "tags"})
    plans = index_plan(
        compile_criteria(
            [
                ("role", "neq", "io"),
                ("n", "eq", 3),  # not indexed
                ("limits.cpu", "eq", 4),  # nested
                ("tags", "eq", Weird()),  # not index-safe
                ("tags", "in", ["a", {"b": 1}]),  # an unhashable element
                ("role", "eq", ["x", 1]),  # normalised to a tuple: safe
                ("tags", "in", {"gpu"}),
            ]
        ),
        indexed,
    )
    assert [(p.position, p.attr, p.values) for p in plans] == [
        (5, "role", (("x", 1),)),
        (6, "tags", ("gpu",)),
    ]
    assert check("role", "eq", Weird()) is True


def test_index_safety_excludes_redefined_equality_and_unhashables() -> None:
    class S(str):  # keeps str's hash and equality: looked up as the plain str
        pass

    class Loose(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    assert is_index_safe(None)
    assert is_index_safe(1.5)
    assert is_index_safe(("a", (1, None)))
    assert is_index_safe(S("x"))
    assert not is_index_safe(Loose("x"))
    assert not is_index_safe((1, Loose("x")))
    assert not is_index_safe((1, [2]))


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)  # the metadata int range
    | st.text(max_size=3)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(stored=json_values, value=json_values)
def test_neq_is_the_negation_of_eq_and_never_raises(stored: Any, value: Any) -> None:
    meta = freeze_metadata({"x": stored})
    eq = matches(meta, compile_criteria([("x", "eq", value)]))
    neq = matches(meta, compile_criteria([("x", "neq", value)]))
    assert eq is not neq
    for op in ("gt", "gte", "lt", "lte"):
        assert matches(meta, compile_criteria([("x", op, value)])) in (True, False)


@given(stored=json_values, values=st.lists(json_values, max_size=4))
def test_not_in_is_the_negation_of_in_and_never_raises(stored: Any, values: list[Any]) -> None:
    meta = freeze_metadata({"x": stored})
    hit = matches(meta, compile_criteria([("x", "in", values)]))
    miss = matches(meta, compile_criteria([("x", "not_in", values)]))
    assert hit is not miss
