"""Text a store keeps and JSON consumers serve: names, descriptions and stored actors
must be valid Unicode (no lone surrogates), descriptions bounded; corrupt records are
typed errors, never a raw RecursionError or UnicodeEncodeError."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from foundation.errors import FlagError, InvalidFlagValue
from foundation.flags import (
    FeatureFlags,
    Flag,
    FlagChange,
    FlagInfo,
    FlagState,
    FlagStore,
    SQLiteFlagStore,
)
from foundation.flags._typed import MAX_DESCRIPTION_CHARS

SURROGATE_NAMES = ["x\udc80", "\ud800", "caf\udce9", "a\udfffb"]


@pytest.mark.parametrize("name", SURROGATE_NAMES)
def test_a_name_with_a_lone_surrogate_is_refused_by_flag_and_flag_info(name: str) -> None:
    with pytest.raises(InvalidFlagValue, match="valid Unicode") as caught:
        Flag(name)
    assert len(str(caught.value)) < 300
    with pytest.raises(InvalidFlagValue, match="valid Unicode"):
        Flag(name, variants={"a": 1}, default="a")
    with pytest.raises(InvalidFlagValue, match="valid Unicode"):
        FlagInfo(name)


@pytest.mark.parametrize("description", ["caf\udce9", "\ud800 from a latin-1 file"])
def test_a_description_with_a_lone_surrogate_is_refused(description: str) -> None:
    with pytest.raises(InvalidFlagValue, match="valid Unicode"):
        Flag("beta", description=description)
    with pytest.raises(InvalidFlagValue, match="valid Unicode"):
        FlagInfo("beta", False, description)


def test_a_description_is_a_str_of_at_most_1000_characters() -> None:
    assert MAX_DESCRIPTION_CHARS == 1000
    assert Flag("beta", description="é" * 1000).description == "é" * 1000
    for make in (Flag, FlagInfo):
        with pytest.raises(InvalidFlagValue, match="longer than 1000") as caught:
            make("beta", False, "x" * 1001)
        assert len(str(caught.value)) < 300
        with pytest.raises(InvalidFlagValue, match="must be a str") as caught:
            make("beta", False, object())  # type: ignore[arg-type]
        assert len(str(caught.value)) < 300
        with pytest.raises(InvalidFlagValue, match="must be a str"):
            make("beta", False, None)  # type: ignore[arg-type]


def test_a_huge_surrogate_name_gets_a_bounded_message() -> None:
    with pytest.raises(InvalidFlagValue) as caught:
        Flag("\udc80" * 1_000_000)
    assert len(str(caught.value)) < 300


def test_valid_non_ascii_names_and_descriptions_still_work(store: FlagStore) -> None:
    declared = [
        Flag("café", description="naïve ☕ 😀"),
        Flag("größe", variants={"a": 1}, default="a"),
    ]
    with FeatureFlags(declared, store=store) as flags:
        flags.enable("café")
        assert flags.enabled("café")
    tool = FeatureFlags.from_store(store)
    assert tool.flag("café").description == "naïve ☕ 😀"
    tool.close()


def _stored(flags: FeatureFlags, name: str) -> FlagState | None:
    return flags.store.load_states().get(name)


@pytest.mark.parametrize("actor", ["x\ud800", "\udc80", "user-\udfff"])
def test_writes_storing_an_actor_refuse_a_lone_surrogate_and_store_nothing(
    store: FlagStore, actor: str
) -> None:
    declared = [Flag("beta"), Flag("size", variants={"s": 1, "l": 2}, default="s")]
    with FeatureFlags(declared, store=store) as flags:
        flags.set_percentage("beta", 50)
        before = store.load_states()
        history = len(store.history())
        for write in (
            lambda: flags.allow("beta", actor),
            lambda: flags.deny("beta", actor),
            lambda: flags.deny("size", actor),
            lambda: flags.assign("size", actor, "l"),
        ):
            with pytest.raises(InvalidFlagValue, match="valid Unicode") as caught:
                write()
            assert len(str(caught.value)) < 300
        assert store.load_states() == before
        assert len(store.history()) == history
        # Everything stored is still servable as strict UTF-8 JSON.
        for change in store.history():
            change.to_json().encode("utf-8")


def test_reads_with_a_surrogate_actor_keep_working_and_are_stable() -> None:
    declared = [Flag("beta"), Flag("size", variants={"s": 1, "l": 2}, default="s")]
    with FeatureFlags(declared) as flags:
        flags.set_percentage("beta", 50)
        flags.set_split("size", {"s": 50, "l": 50})
        actors = [f"u\ud800{i}" for i in range(200)]
        first = [(flags.enabled("beta", a), flags.value("size", a)) for a in actors]
        # Both answers occur (the hash covers such actors, it does not reject them) ...
        assert {e for e, _ in first} == {True, False}
        assert {v for _, v in first} == {1, 2}
        # ... and a fresh object (no cache) answers the same.
        with FeatureFlags(declared) as again:
            again.set_percentage("beta", 50)
            again.set_split("size", {"s": 50, "l": 50})
            assert [(again.enabled("beta", a), again.value("size", a)) for a in actors] == first
        assert flags.evaluate("size", "x\udc80").reason == "SPLIT"
        assert flags.variant("beta", "x\udc80") in ("on", "off")


def test_removing_a_pin_accepts_any_actor() -> None:
    with FeatureFlags([Flag("size", variants={"s": 1, "l": 2}, default="s")]) as flags:
        flags.assign("size", "x\ud800", None)  # stores no actor: nothing to refuse
        assert "x\ud800" not in flags.state("size").assign


def _corrupt_catalogue(path: Path, info: str) -> None:
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store):
        pass
    db = sqlite3.connect(path)
    try:
        db.execute("UPDATE flag_catalogue SET info = ?", (info,))
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize(
    "info",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"name": "beta", "variants": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "{" * 50_000,
        "not json",
        "[1, 2]",
        '{"name": "beta", "description": "' + "x" * 5000 + '"}',
    ],
)
def test_a_corrupt_catalogue_record_is_a_flag_error_for_from_store(
    tmp_path: Path, info: str
) -> None:
    path = tmp_path / "flags.db"
    _corrupt_catalogue(path, info)
    with SQLiteFlagStore(path) as store:
        with pytest.raises(InvalidFlagValue) as caught:
            FeatureFlags.from_store(store)
        assert isinstance(caught.value, FlagError)
        assert len(str(caught.value)) < 500


def test_a_deeply_nested_state_or_history_record_is_a_flag_error(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("beta")], store=store) as flags:
        flags.enable("beta")
    deep = "[" * 100_000 + "]" * 100_000
    db = sqlite3.connect(path)
    try:
        db.execute("UPDATE flag_state SET state = ?", (deep,))
        db.execute("UPDATE flag_history SET record = ?", (deep,))
        db.commit()
    finally:
        db.close()
    with SQLiteFlagStore(path) as store:
        with pytest.raises(InvalidFlagValue, match="RecursionError"):
            store.load_states()
        with pytest.raises(InvalidFlagValue, match="RecursionError"):
            store.history()


@pytest.mark.parametrize("cls", [FlagState, FlagChange, FlagInfo])
def test_record_decoding_turns_every_failure_into_invalid_flag_value(cls: type) -> None:
    for text in ("[" * 100_000, "[" * 100_000 + "]" * 100_000, b"\xff\xfe", "nul\0", "x" * 100_000):
        with pytest.raises(InvalidFlagValue) as caught:
            cls.from_json(text)
        assert len(str(caught.value)) < 500
    # A number too large for a float in the audit record's time: still InvalidFlagValue.
    change = FlagChange("beta", FlagState(False), FlagState(True)).to_dict()
    change["at"] = 10**400
    with pytest.raises(InvalidFlagValue):
        FlagChange.from_json(json.dumps(change))
