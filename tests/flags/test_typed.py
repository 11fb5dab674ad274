"""Typed flags: declaration, reads (value/variant/evaluate), audited writes, config, stores."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import pickle
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import foundation
from foundation.errors import Closed, InvalidFlagValue, UnknownFlag
from foundation.flags import (
    Evaluation,
    FeatureFlags,
    Flag,
    FlagChange,
    FlagInfo,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    RedisFlagStore,
    SQLiteFlagStore,
)
from tests.flags._support import wait_until

COLORS = {"red": "#f00", "blue": "#00f", "green": "#0f0"}
TYPED = (
    Flag("color", variants=COLORS, default="red", description="button colour"),
    Flag("retries", variants={"few": 1, "many": 5}, default="few"),
    Flag("ratio", variants={"low": 1, "high": 2.5}, default="high"),
    Flag("layout", variants={"a": {"cols": [1, 2]}, "b": [{"x": None}]}, default="a"),
    Flag("beta"),
    Flag("dark_mode", default=True),
)


@pytest.fixture
def typed() -> Iterator[FeatureFlags]:
    with FeatureFlags(TYPED) as flags:
        yield flags


# ------------------------------------------------------------------ declaration


@pytest.mark.parametrize(
    ("variants", "kind", "values"),
    [
        ({"a": "x", "b": "y"}, "string", {"a": "x", "b": "y"}),
        ({"a": 1, "b": -(2**63)}, "integer", {"a": 1, "b": -(2**63)}),
        ({"a": 1.5, "b": 2.0}, "float", {"a": 1.5, "b": 2.0}),
        ({"a": 1, "b": 2.5}, "float", {"a": 1.0, "b": 2.5}),
        ({"a": {"k": [1, True, None]}, "b": [1, "x"]}, "object", None),
    ],
)
def test_the_kind_is_that_of_the_values(
    variants: dict[str, Any], kind: str, values: dict[str, Any] | None
) -> None:
    flag = Flag("f", variants=variants, default="a")
    assert flag.kind == kind
    assert flag.default_value == flag.variants["a"]  # type: ignore[index]
    if values is not None:
        assert dict(flag.variants or {}) == values
        assert [type(v) for v in flag.variants.values()] == [type(v) for v in values.values()]  # type: ignore[union-attr]


def test_a_boolean_flag_is_unchanged() -> None:
    flag = Flag("beta", default=True, description="d")
    assert (flag.kind, flag.default_value, flag.variants) == ("boolean", True, None)
    assert repr(flag) == "Flag(name='beta', default=True, description='d')"
    assert Flag("beta", True, "d") == flag
    assert hash(flag) == hash(Flag("beta", True, "d"))


@pytest.mark.parametrize(
    ("variants", "default", "message"),
    [
        ({}, "a", "at least one"),
        ({"a": True, "b": False}, "a", "bool"),
        ({"a": 1, "b": "x"}, "a", "mix kinds"),
        ({"a": 1.0, "b": float("nan")}, "a", "finite"),
        ({"a": float("inf")}, "a", "finite"),
        ({"a": {"k": float("nan")}}, "a", "finite"),
        ({"a": {1: "x"}}, "a", "keys must be strings"),
        ({"a": {"k": {1, 2}}}, "a", "JSON"),
        ({"a": None}, "a", "str, int, float"),
        ({"a": b"x"}, "a", "str, int, float"),
        ({"a": 2**64}, "a", "64 bits"),
        ({"": "x"}, "", "non-empty"),
        ({"a": "x"}, "b", "must name one of its variants"),
        ({"red": "x"}, "rde", "did you mean 'red'"),
        ({"a": "x"}, True, "must name one of its variants"),
        (["a"], "a", "mapping"),
        ({"a": "x" * 70_000}, "a", "larger than"),
        ({"a": {"k": "x" * 70_000}}, "a", "larger than"),
    ],
)
def test_a_bad_declaration_is_refused_with_a_short_message(
    variants: Any, default: Any, message: str
) -> None:
    with pytest.raises(InvalidFlagValue, match=message) as info:
        Flag("f", variants=variants, default=default)
    assert len(str(info.value)) < 500


def test_deeply_nested_object_values_are_refused_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(InvalidFlagValue, match="nested deeper"):
        Flag("f", variants={"a": deep}, default="a")


def test_object_values_are_frozen_yet_plain_json() -> None:
    cols = [1, 2]
    source: dict[str, Any] = {"cols": cols, "opts": {"x": 1}}
    flag = Flag("layout", variants={"a": source}, default="a")
    value = flag.default_value
    cols.append(3)  # the declaration took a copy
    assert value == {"cols": [1, 2], "opts": {"x": 1}}
    assert isinstance(value, dict)
    assert isinstance(value["cols"], list)
    assert json.loads(json.dumps(value)) == value
    with pytest.raises(TypeError):
        value["cols"] = []
    with pytest.raises(TypeError):
        value["cols"].append(3)
    with pytest.raises(TypeError):
        value["opts"].update(y=2)
    assert copy.deepcopy(value) is value
    assert pickle.loads(pickle.dumps(flag)) == flag
    assert dict(value) | {"z": 1} == {"cols": [1, 2], "opts": {"x": 1}, "z": 1}


def test_a_typed_flag_repr_shows_its_variants() -> None:
    assert repr(Flag("n", variants={"a": 1}, default="a")) == (
        "Flag(name='n', default='a', description='', variants={'a': 1})"
    )


# ------------------------------------------------------------------------ reads


def test_a_fresh_typed_flag_answers_its_default_variant_static(typed: FeatureFlags) -> None:
    assert typed.value("color") == "#f00"
    assert typed.value("color", "ana") == "#f00"
    assert typed.variant("color", 42) == "red"
    assert typed.evaluate("color") == Evaluation("color", "#f00", "red", "STATIC", "string")
    assert typed.value("retries") == 1
    assert typed.value("ratio") == 2.5
    assert typed.evaluate("ratio").kind == "float"
    assert typed.value("layout") == {"cols": [1, 2]}
    assert typed.evaluate("layout").kind == "object"
    assert typed.state("color") == FlagState(True)


def test_reading_the_wrong_kind_is_invalid_flag_value(typed: FeatureFlags) -> None:
    with pytest.raises(InvalidFlagValue, match="'color' is a string flag; read it with value"):
        typed.enabled("color")
    with pytest.raises(InvalidFlagValue, match="string flag"):
        typed.enabled("color", actor="ana")
    with pytest.raises(InvalidFlagValue, match="'beta' is a boolean flag"):
        typed.value("beta")
    with pytest.raises(InvalidFlagValue, match="boolean flag"):
        typed.value("beta", "ana")


def test_unknown_names_are_unknown_flag_everywhere(typed: FeatureFlags) -> None:
    for read in (typed.value, typed.variant, typed.evaluate, typed.enabled):
        with pytest.raises(UnknownFlag, match="did you mean 'color'"):
            read("colr")
        with pytest.raises(UnknownFlag):
            read(["not", "hashable"])  # type: ignore[arg-type]
    with pytest.raises(UnknownFlag):
        typed.assign("colr", "ana", "red")
    with pytest.raises(UnknownFlag):
        typed.set_split("colr", {"red": 100})


def test_boolean_flags_have_on_off_variants_and_reasons(typed: FeatureFlags) -> None:
    assert typed.evaluate("beta") == Evaluation("beta", False, "off", "DISABLED", "boolean")
    assert typed.evaluate("dark_mode", "x") == Evaluation(
        "dark_mode", True, "on", "STATIC", "boolean"
    )
    typed.set_percentage("beta", 50)
    assert typed.evaluate("beta").reason == "DEFAULT"
    assert typed.variant("beta") == "off"
    answers = {a: typed.evaluate("beta", a) for a in (f"u{i}" for i in range(200))}
    assert {e.reason for e in answers.values()} == {"SPLIT"}
    assert all(e.value is typed.enabled("beta", a) for a, e in answers.items())
    assert {e.variant for e in answers.values()} == {"on", "off"}
    typed.allow("beta", "ana")
    typed.deny("beta", "bob")
    assert typed.evaluate("beta", "ana") == Evaluation(
        "beta", True, "on", "TARGETING_MATCH", "boolean"
    )
    assert typed.evaluate("beta", "bob") == Evaluation(
        "beta", False, "off", "TARGETING_MATCH", "boolean"
    )
    typed.set_percentage("beta", 100)
    assert typed.evaluate("beta") == Evaluation("beta", True, "on", "SPLIT", "boolean")
    typed.disable("beta")
    assert typed.evaluate("beta", "ana").reason == "DISABLED"


def test_typed_reasons_follow_the_documented_order(typed: FeatureFlags) -> None:
    typed.set_split("color", {"blue": 50, "green": 50})
    assert typed.evaluate("color") == Evaluation("color", "#f00", "red", "DEFAULT", "string")
    assert typed.evaluate("color", "zoe").reason == "SPLIT"
    assert typed.variant("color", "zoe") in ("blue", "green")
    typed.assign("color", "ana", "red")
    assert typed.evaluate("color", "ana") == Evaluation(
        "color", "#f00", "red", "TARGETING_MATCH", "string"
    )
    typed.deny("color", "ana")  # deny beats the assignment: the default variant
    assert typed.evaluate("color", "ana").reason == "TARGETING_MATCH"
    typed.assign("color", "bob", "blue")
    typed.deny("color", "bob")
    assert typed.evaluate("color", "bob") == Evaluation(
        "color", "#f00", "red", "TARGETING_MATCH", "string"
    )
    typed.disable("color")  # the switch beats everything
    for actor in (None, "ana", "bob", "zoe"):
        assert typed.evaluate("color", actor) == Evaluation(
            "color", "#f00", "red", "DISABLED", "string"
        )
    typed.enable("color")  # resumes exactly as it was
    assert typed.variant("color", "bob") == "red"
    assert typed.state("color").split == {"blue": 50.0, "green": 50.0}
    typed.set_split("color", {"green": 100})
    assert typed.evaluate("color") == Evaluation("color", "#0f0", "green", "SPLIT", "string")
    assert typed.evaluate("color", "zoe").reason == "SPLIT"


def test_int_actors_are_normalised_and_bad_actors_refused(typed: FeatureFlags) -> None:
    typed.assign("color", 42, "blue")
    assert typed.value("color", 42) == typed.value("color", "42") == "#00f"
    assert typed.state("color").assign == {"42": "blue"}
    with pytest.raises(InvalidFlagValue, match="actor"):
        typed.value("color", 4.2)  # type: ignore[arg-type]
    with pytest.raises(InvalidFlagValue, match="actor"):
        typed.assign("color", None, "red")  # type: ignore[arg-type]


def test_reads_after_close_raise_closed() -> None:
    flags = FeatureFlags(TYPED)
    flags.close()
    for read in (flags.value, flags.variant, flags.evaluate):
        with pytest.raises(Closed):
            read("color")
    with pytest.raises(Closed):
        flags.assign("color", "a", "red")
    with pytest.raises(Closed):
        flags.set_split("color", {"red": 100})


def test_evaluation_is_exported_and_frozen() -> None:
    assert foundation.Evaluation is Evaluation
    assert Evaluation.__module__ == "foundation.flags"
    e = Evaluation("f", 1, "a", "STATIC", "integer")
    with pytest.raises(AttributeError):
        e.value = 2  # type: ignore[misc]


# ----------------------------------------------------------------------- writes


def test_assign_and_unassign_are_audited_and_evented(typed: FeatureFlags) -> None:
    heard: list[FlagChange] = []
    typed.subscribe(heard.append)
    typed.assign("color", "ana", "blue", by="ops", reason="vip")
    typed.assign("color", "ana", None, by="ops", reason="undo")
    history = typed.history("color")
    assert heard == history
    assert [(c.by, c.reason) for c in history] == [("ops", "vip"), ("ops", "undo")]
    assert history[0].old == FlagState(True)
    assert history[0].new == FlagState(True, assign={"ana": "blue"})
    assert history[1].new == FlagState(True)
    assert typed.value("color", "ana") == "#f00"


def test_writes_are_logged(typed: FeatureFlags, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="foundation.flags"):
        typed.set_split("color", {"red": 30, "blue": 70}, by="ana")
    (record,) = [r for r in caplog.records if r.name == "foundation.flags"]
    assert record.new["split"] == {"blue": 70.0, "red": 30.0}  # type: ignore[attr-defined]


def test_a_split_write_is_audited_and_turns_the_switch_on(typed: FeatureFlags) -> None:
    typed.disable("color")
    typed.set_split("color", {"red": 25, "blue": 75}, by="ops", reason="ramp")
    change = typed.history("color")[-1]
    assert change.old == FlagState(False)
    assert change.new == FlagState(True, split={"red": 25.0, "blue": 75.0})
    assert (change.by, change.reason) == ("ops", "ramp")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.assign("color", "ana", "bleu"), "did you mean 'blue'"),
        (lambda f: f.assign("color", "ana", 3), "not a variant"),
        (lambda f: f.assign("beta", "ana", "on"), "typed flags.*allow"),
        (lambda f: f.set_split("beta", {"on": 100}), "typed flags.*set_percentage"),
        (lambda f: f.set_percentage("color", 50), "boolean flags.*set_split"),
        (lambda f: f.allow("color", "ana"), "boolean flags.*assign"),
        (lambda f: f.assign("color", "ana", "red", by=7), "by="),
        (lambda f: f.set_split("color", {"red": 100}, reason="x" * 5000), "reason="),
        (lambda f: f.assign("color", "x" * 10_000, "bleu" * 1000), "not a variant"),
    ],
)
def test_bad_writes_are_refused_and_store_nothing(
    typed: FeatureFlags, call: Callable[[FeatureFlags], None], message: str
) -> None:
    heard: list[FlagChange] = []
    typed.subscribe(heard.append)
    before = {n: typed.state(n) for n in typed.names}
    with pytest.raises(InvalidFlagValue, match=message) as info:
        call(typed)
    assert len(str(info.value)) < 600
    assert {n: typed.state(n) for n in typed.names} == before
    assert typed.history() == []
    assert heard == []


def test_common_writes_work_on_typed_flags(typed: FeatureFlags) -> None:
    typed.set_split("color", {"blue": 100})
    typed.set("color", False)
    assert typed.evaluate("color").reason == "DISABLED"
    typed.set("color", True)
    typed.deny("color", "ana")
    assert typed.variant("color", "ana") == "red"
    assert typed.variant("color", "bob") == "blue"
    typed.clear("color")
    assert typed.state("color") == FlagState(True)
    typed.assign("color", "ana", "green")
    typed.assign("retries", "ana", "many")
    typed.reset_all(by="ops")
    assert typed.value("color", "ana") == "#f00"
    assert typed.value("retries", "ana") == 1
    assert {c.flag for c in typed.history() if c.by == "ops"} == {"color", "retries"}


def test_a_no_op_write_records_nothing(typed: FeatureFlags) -> None:
    typed.assign("color", "ana", "blue")
    typed.assign("color", "ana", "blue")
    typed.set_split("color", {"red": 50, "blue": 50})
    typed.set_split("color", {"blue": 50, "red": 50, "green": 0})
    assert len(typed.history("color")) == 2


def test_object_values_read_back_frozen(typed: FeatureFlags) -> None:
    value = typed.value("layout")
    with pytest.raises(TypeError):
        value["cols"].append(9)
    assert typed.value("layout") == {"cols": [1, 2]}
    typed.assign("layout", "ana", "b")
    assert typed.value("layout", "ana") == [{"x": None}]


# ----------------------------------------------------------------------- config


def test_config_takes_a_variant_name_or_the_switch(typed: FeatureFlags) -> None:
    typed.load_from_config({"color": "blue", "retries": "off", "ratio": True}, env=None)
    assert typed.evaluate("color") == Evaluation("color", "#00f", "blue", "SPLIT", "string")
    assert typed.variant("color", "ana") == "blue"
    assert typed.evaluate("retries").reason == "DISABLED"
    assert typed.evaluate("ratio").reason == "STATIC"
    typed.clear("color")  # config applies again after a runtime change is cleared
    typed.assign("color", "ana", "green")
    assert typed.variant("color", "ana") == "green"
    assert typed.variant("color", "bob") == "blue"


def test_a_variant_name_wins_over_the_switch_words() -> None:
    with FeatureFlags([Flag("mode", variants={"off": "x", "on": "y"}, default="on")]) as flags:
        flags.load_from_config({"mode": "off"}, env=None)
        assert flags.evaluate("mode") == Evaluation("mode", "x", "off", "SPLIT", "string")
        flags.load_from_config({"mode": "OFF"}, env=None)  # not a variant name: the switch
        assert flags.evaluate("mode").reason == "DISABLED"


@pytest.mark.parametrize("bad", ["25%", "bleu", 3, 1.5, "", None, ["red"]])
def test_config_refuses_anything_else_for_a_typed_flag_all_or_nothing(
    typed: FeatureFlags, bad: object
) -> None:
    typed.load_from_config({"color": "green"}, env=None)
    with pytest.raises(InvalidFlagValue, match="color") as info:
        typed.load_from_config({"retries": "many", "color": bad}, env=None)
    assert len(str(info.value)) < 600
    assert typed.variant("color") == "green"
    assert typed.variant("retries") == "few"


def test_the_environment_takes_variant_names(typed: FeatureFlags, tmp_path: Path) -> None:
    path = tmp_path / "flags.toml"
    path.write_text('[flags]\ncolor = "green"\nbeta = "25%"\n')
    typed.load_from_config(
        path, env={"FOUNDATION_FLAG_COLOR": "blue", "FOUNDATION_FLAG_RETRIES": "many"}
    )
    assert typed.variant("color") == "blue"
    assert typed.value("retries") == 5
    assert typed.state("beta").percentage == 25.0
    with pytest.raises(InvalidFlagValue, match=r"FOUNDATION_FLAG_COLOR.*did you mean 'blue'"):
        typed.load_from_config(None, env={"FOUNDATION_FLAG_COLOR": "blu"})
    assert typed.variant("color") == "blue"


# ------------------------------------------------------------------- the record


def test_old_records_without_the_new_keys_still_load() -> None:
    old = '{"switch": true, "percentage": 25.0, "allow": ["a"], "deny": []}'
    state = FlagState.from_json(old)
    assert (state.assign, state.split) == ({}, None)
    assert state.to_json() == old  # boolean records serialise exactly as before
    info = FlagInfo.from_json('{"name": "beta", "default": false, "description": "x"}')
    assert (info.variants, info.kind) == (None, "boolean")
    assert info.to_json() == '{"name": "beta", "default": false, "description": "x"}'
    change = FlagChange.from_json(
        json.dumps({"flag": "beta", "old": json.loads(old), "new": json.loads(old), "at": 1.0})
    )
    assert change.new == state


@pytest.mark.parametrize(
    "record",
    [
        {"switch": True, "assign": ["a"]},
        {"switch": True, "assign": {"a": 1}},
        {"switch": True, "assign": {"a": ""}},
        {"switch": True, "split": {"a": 50}},
        {"switch": True, "split": {"a": "100"}},
        {"switch": True, "split": [1]},
        {"switch": True, "split": {"": 100}},
    ],
)
def test_malformed_typed_records_are_invalid_flag_value(record: dict[str, Any]) -> None:
    with pytest.raises(InvalidFlagValue):
        FlagState.from_dict(record)


def test_states_stay_hashable_and_equal_by_content() -> None:
    a = FlagState(True, assign={"b": "x", "a": "y"}, split={"x": 40, "y": 60})
    b = FlagState(True, assign={"a": "y", "b": "x"}, split={"y": 60.0, "x": 40.0})
    assert a == b
    assert hash(a) == hash(b)
    assert a.to_json() == b.to_json()
    assert len({a, b, FlagState(True)}) == 2
    with pytest.raises(TypeError):
        a.assign["c"] = "x"  # type: ignore[index]


# ------------------------------------------------------------------ persistence


@pytest.fixture(params=["memory", "sqlite", "redis"])
def reopen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], FlagStore]]:
    """``open()`` gives another store object on the same data, of each kind."""
    opened: list[FlagStore] = []
    memory = MemoryFlagStore()
    namespace = f"typed-{id(tmp_path)}-{request.node.name}"[:80]

    def open_store() -> FlagStore:
        if request.param == "memory":
            return memory  # one process: the same object is the same data
        if request.param == "sqlite":
            s: FlagStore = SQLiteFlagStore(tmp_path / "flags.db")
        else:
            server = request.getfixturevalue("redis_server")
            s = RedisFlagStore(
                server.url,
                namespace=namespace,
                cache_path=tmp_path / f"node-{len(opened)}.sqlite3",
            )
        opened.append(s)
        return s

    yield open_store
    for s in opened:
        s.close()
    memory.close()


def test_typed_state_and_catalogue_round_trip_through_each_store(
    reopen: Callable[[], FlagStore],
) -> None:
    open_store = reopen
    first = FeatureFlags(TYPED, store=open_store())
    first.set_split("color", {"red": 20, "green": 80}, by="ops")
    first.assign("color", "ana", "blue")
    first.assign("layout", "ana", "b")
    first.deny("retries", "bob")
    first.disable("ratio")
    expected = {n: first.state(n) for n in first.names}
    answers = {
        n: [first.evaluate(n, a) for a in ("ana", "bob", "u1", "u2", None)] for n in first.names
    }
    history = first.history()
    first.close()

    store = open_store()
    again = FeatureFlags(TYPED, store=store)
    assert {n: again.state(n) for n in again.names} == expected
    assert {
        n: [again.evaluate(n, a) for a in ("ana", "bob", "u1", "u2", None)] for n in again.names
    } == answers
    assert again.history() == history
    again.close()

    catalogue = store.catalogue()
    assert catalogue["color"] == FlagInfo("color", "red", "button colour", COLORS)
    assert catalogue["layout"].variants == {"a": {"cols": [1, 2]}, "b": [{"x": None}]}
    assert catalogue["ratio"].variants == {"low": 1.0, "high": 2.5}
    assert catalogue["beta"] == FlagInfo("beta", False, "")
    tool = FeatureFlags.from_store(store)
    assert {n: tool.flag(n) for n in tool.names} == {f.name: f for f in TYPED}
    assert tool.value("color", "ana") == "#00f"
    assert tool.evaluate("layout", "ana").kind == "object"
    tool.close()


OLD_STATE = '{"switch": true, "percentage": 10.0, "allow": ["a"], "deny": ["b"]}'
OLD_INFO = '{"name": "beta", "default": true, "description": "old"}'


def check_old_records_load(store: FlagStore) -> None:
    assert store.load_states()["beta"] == FlagState(True, 10.0, frozenset({"a"}), frozenset({"b"}))
    assert store.catalogue()["beta"] == FlagInfo("beta", True, "old")
    with FeatureFlags([Flag("beta")], store=store) as flags:
        assert flags.evaluate("beta", "a").reason == "TARGETING_MATCH"
        flags.enable("beta")  # rewrites nothing typed into a boolean record
    assert "assign" not in store.load_states()["beta"].to_json()


def test_old_json_records_in_sqlite_still_load(tmp_path: Path) -> None:
    SQLiteFlagStore(tmp_path / "flags.db").close()  # creates the schema
    with sqlite3.connect(tmp_path / "flags.db") as db:
        db.execute("INSERT INTO flag_state VALUES ('beta', ?)", (OLD_STATE,))
        db.execute("INSERT INTO flag_catalogue VALUES ('beta', ?)", (OLD_INFO,))
    db.close()
    with SQLiteFlagStore(tmp_path / "flags.db") as store:
        check_old_records_load(store)


def test_old_json_records_in_redis_still_load(redis_server: Any, tmp_path: Path) -> None:
    import redis

    namespace = f"typed-old-{id(tmp_path)}"
    client = redis.Redis.from_url(redis_server.url)
    client.hset("{" + namespace + "}:flags:state", "beta", OLD_STATE)
    client.hset("{" + namespace + "}:flags:catalogue", "beta", OLD_INFO)
    client.close()
    with RedisFlagStore(
        redis_server.url, namespace=namespace, cache_path=tmp_path / "node.sqlite3"
    ) as store:
        check_old_records_load(store)


def test_states_of_another_declaration_degrade_to_what_this_one_knows() -> None:
    """A store shared with another version: unknown variants and the other kind's
    fields are ignored, never an error."""
    store = MemoryFlagStore()
    with FeatureFlags(
        [Flag("color", variants={"red": 1, "teal": 2}, default="red")], store=store
    ) as v1:
        v1.assign("color", "ana", "teal")
        v1.set_split("color", {"red": 50, "teal": 50})
    with FeatureFlags(
        [Flag("color", variants={"red": 1, "blue": 3}, default="red")], store=store
    ) as v2:
        assert v2.evaluate("color", "ana") == Evaluation("color", 1, "red", "SPLIT", "integer")
        assert v2.evaluate("color") == Evaluation("color", 1, "red", "SPLIT", "integer")
    with FeatureFlags([Flag("color")], store=store) as v3:  # now boolean
        assert v3.evaluate("color", "ana") == Evaluation("color", True, "on", "STATIC", "boolean")
        assert v3.enabled("color", "ana") is True
    store.close()


# ------------------------------------------------------------ model-based test

MODEL_VARIANTS = {"red": "#f00", "blue": "#00f", "gold": "#fd0"}
MODEL_ACTORS = ["ana", "bob", "cy", "dee", "7"]


def model_split(flag: str, shares: dict[str, float], actor: str) -> str:
    best, score = "", math.inf
    for variant in MODEL_VARIANTS:
        w = shares.get(variant, 0.0)
        if w > 0:
            digest = hashlib.sha256(f"{flag}\0{variant}\0{actor}".encode()).digest()
            s = -math.log((float(int.from_bytes(digest[:8], "big")) + 0.5) / 2.0**64) / w
            if s < score:
                best, score = variant, s
    return best


def model_bucket_in(flag: str, actor: str, p: float) -> bool:
    h = int.from_bytes(hashlib.sha256(f"{flag}\0{actor}".encode()).digest()[:8], "big")
    return h * 100 < p * 2**64


class TypedFlagsMachine(RuleBasedStateMachine):
    """FeatureFlags against a plain model of the documented evaluation order."""

    def __init__(self) -> None:
        super().__init__()
        self.flags = FeatureFlags(
            [Flag("color", variants=MODEL_VARIANTS, default="red"), Flag("beta")]
        )
        self.t: dict[str, Any] = {"switch": True, "deny": set(), "assign": {}, "split": None}
        self.b: dict[str, Any] = {"switch": False, "deny": set(), "allow": set(), "p": None}
        self.writes = 0

    def expected_typed(self, actor: str | None) -> tuple[str, str]:
        t = self.t
        if not t["switch"]:
            return "red", "DISABLED"
        if actor is not None and actor in t["deny"]:
            return "red", "TARGETING_MATCH"
        if actor is not None and actor in t["assign"]:
            return t["assign"][actor], "TARGETING_MATCH"
        if t["split"]:
            if actor is not None:
                return model_split("color", t["split"], actor), "SPLIT"
            full = [v for v, w in t["split"].items() if w >= 100]
            return (full[0], "SPLIT") if full else ("red", "DEFAULT")
        return "red", "DEFAULT" if t["deny"] or t["assign"] else "STATIC"  # rules: none applied

    def expected_boolean(self, actor: str | None) -> tuple[bool, str]:
        b = self.b
        if not b["switch"]:
            return False, "DISABLED"
        if actor is not None and actor in b["deny"]:
            return False, "TARGETING_MATCH"
        if actor is not None and actor in b["allow"]:
            return True, "TARGETING_MATCH"
        if b["p"] is not None:
            if actor is not None:
                return model_bucket_in("beta", actor, b["p"]), "SPLIT"
            return (True, "SPLIT") if b["p"] == 100 else (False, "DEFAULT")
        return True, "DEFAULT" if b["deny"] or b["allow"] else "STATIC"  # rules: none applied

    @rule(on=st.booleans())
    def switch(self, on: bool) -> None:
        self.flags.set("color", on)
        self.t["switch"] = on

    @rule(actor=st.sampled_from(MODEL_ACTORS))
    def deny(self, actor: str) -> None:
        self.flags.deny("color", actor)
        self.t["deny"].add(actor)

    @rule(actor=st.sampled_from(MODEL_ACTORS), variant=st.sampled_from([None, *MODEL_VARIANTS]))
    def assign(self, actor: str, variant: str | None) -> None:
        self.flags.assign("color", actor, variant)
        if variant is None:
            self.t["assign"].pop(actor, None)
        else:
            self.t["assign"][actor] = variant

    @rule(red=st.integers(0, 100), blue=st.integers(0, 100))
    def split(self, red: int, blue: int) -> None:
        blue = min(blue, 100 - red)
        shares = {"red": float(red), "blue": float(blue), "gold": float(100 - red - blue)}
        self.flags.set_split("color", shares)
        self.t["switch"] = True
        self.t["split"] = {v: w for v, w in shares.items() if w > 0}

    @rule(shares=st.dictionaries(st.sampled_from(["red", "blu", "gold"]), st.integers(-5, 120)))
    def bad_split(self, shares: dict[str, int]) -> None:
        if (
            set(shares) <= set(MODEL_VARIANTS)
            and sum(shares.values()) == 100
            and all(0 <= w <= 100 for w in shares.values())
        ):
            return  # a valid split: the split rule covers it
        before = len(self.flags.history())
        with pytest.raises(InvalidFlagValue):
            self.flags.set_split("color", shares)
        assert len(self.flags.history()) == before

    @rule()
    def clear(self) -> None:
        self.flags.clear("color")
        self.t = {"switch": True, "deny": set(), "assign": {}, "split": None}

    @rule(on=st.booleans())
    def beta_switch(self, on: bool) -> None:
        self.flags.set("beta", on)
        self.b["switch"] = on

    @rule(p=st.sampled_from([0, 12.5, 50, 100]))
    def beta_percentage(self, p: float) -> None:
        self.flags.set_percentage("beta", p)
        self.b["switch"] = True
        self.b["p"] = float(p)

    @rule(actor=st.sampled_from(MODEL_ACTORS), deny=st.booleans())
    def beta_target(self, actor: str, deny: bool) -> None:
        if deny:
            self.flags.deny("beta", actor)
            self.b["deny"].add(actor)
        else:
            self.flags.allow("beta", actor)
            self.b["allow"].add(actor)

    @invariant()
    def reads_match_the_model(self) -> None:
        for actor in [None, *MODEL_ACTORS, "zed", "u-1"]:
            variant, reason = self.expected_typed(actor)
            e = self.flags.evaluate("color", actor)
            assert (e.variant, e.reason) == (variant, reason), actor
            assert e.value == MODEL_VARIANTS[variant]
            assert self.flags.value("color", actor) == MODEL_VARIANTS[variant]
            assert self.flags.variant("color", actor) == variant
            value, why = self.expected_boolean(actor)
            b = self.flags.evaluate("beta", actor)
            assert (b.value, b.variant, b.reason) == (value, "on" if value else "off", why), actor
            assert self.flags.enabled("beta", actor) is value

    def teardown(self) -> None:
        self.flags.close()


TypedFlagsMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_typed_flags_against_a_model = TypedFlagsMachine.TestCase


# ------------------------------------------------------- propagation and races


def test_typed_changes_reach_another_process_view_of_a_sqlite_store(tmp_path: Path) -> None:
    with (
        SQLiteFlagStore(tmp_path / "flags.db") as store_a,
        SQLiteFlagStore(tmp_path / "flags.db") as store_b,
        FeatureFlags(TYPED, store=store_a) as writer,
        FeatureFlags(TYPED, store=store_b) as reader,
    ):
        heard: list[FlagChange] = []
        reader.subscribe(heard.append)
        writer.set_split("color", {"blue": 100}, by="ops")
        writer.assign("color", "ana", "green", by="ops")
        wait_until(lambda: len(heard) == 2)
        assert [c.new for c in heard] == [c.new for c in writer.history("color")]
        assert reader.value("color", "ana") == "#0f0"
        assert reader.evaluate("color", "zoe") == Evaluation(
            "color", "#00f", "blue", "SPLIT", "string"
        )


def test_lock_free_reads_never_see_half_a_write(typed: FeatureFlags) -> None:
    """A writer flips between two whole states; readers only ever see one of them."""
    one = {"red": 100.0}
    two = {"blue": 100.0}
    typed.set_split("color", one)
    stop = threading.Event()
    seen: set[tuple[str, str]] = set()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                e = typed.evaluate("color", "ana")
                seen.add((e.variant, e.reason))
                assert (e.value, e.variant) in (("#f00", "red"), ("#00f", "blue"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for i in range(300):
        typed.set_split("color", two if i % 2 == 0 else one)
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert errors == []
    assert seen <= {("red", "SPLIT"), ("blue", "SPLIT")}
    assert seen  # the readers ran


def test_a_bad_actor_is_refused_even_when_it_could_not_matter(typed: FeatureFlags) -> None:
    # A fresh flag answers every actor alike; the actor is still checked.
    for read in (typed.value, typed.variant, typed.evaluate):
        with pytest.raises(InvalidFlagValue, match="actor"):
            read("color", b"ana")  # type: ignore[arg-type]
    with pytest.raises(InvalidFlagValue, match="actor"):
        typed.evaluate("beta", 2.5)  # type: ignore[arg-type]
