"""Two rules of the flags core a new user met.

- Every declarable flag name has one environment variable, a shell can set:
  ``FOUNDATION_FLAG_`` + the name upper-cased, each character other than A-Z,
  0-9 and _ written _. Was: ``Flag("new-parser")`` was accepted, but
  ``FOUNDATION_FLAG_NEW_PARSER=on`` was ``UnknownFlag 'new_parser'`` and the
  whole load failed. Two names one variable would set are refused at
  declaration (as names differing only by case were).
- ``by=`` names someone: ``""``, ``"   "`` and ``"\\n"`` are ``InvalidFlagValue``
  on every write and migration step (the command line refused a blank
  ``--by``; the Python API took it). A stored actor is never blank either.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from foundation.errors import InvalidFlagValue, UnknownFlag
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage


def env_variable(name: str) -> str:
    """The documented rule (docs/contract.md, README): upper-cased, others as ``_``."""
    return "FOUNDATION_FLAG_" + re.sub("[^A-Z0-9_]", "_", name.upper())


NAMES = ("new-parser", "checkout.v2", "café", "dark mode", "a/b", "ß-test", "x")


@pytest.mark.parametrize("name", NAMES)
def test_every_declarable_name_is_settable_from_a_shell_variable(name: str) -> None:
    variable = env_variable(name)
    assert variable.startswith("FOUNDATION_FLAG_")
    assert re.fullmatch("[A-Z0-9_]+", variable), variable
    with FeatureFlags([Flag(name), Flag("other")]) as flags:
        flags.load_from_config(None, env={variable: "on"})
        assert flags.enabled(name) is True
        assert flags.enabled("other") is False


def test_the_mapping_as_documented() -> None:
    from foundation.flags._config import env_variable as library_s

    assert [library_s(n) for n in NAMES] == [env_variable(n) for n in NAMES]
    assert env_variable("new-parser") == "FOUNDATION_FLAG_NEW_PARSER"
    assert env_variable("checkout.v2") == "FOUNDATION_FLAG_CHECKOUT_V2"
    assert env_variable("café") == "FOUNDATION_FLAG_CAF_"
    assert env_variable("beta") == "FOUNDATION_FLAG_BETA"


def test_the_variable_as_written_still_names_its_flag() -> None:
    with FeatureFlags([Flag("new-parser")]) as flags:
        flags.load_from_config(None, env={"FOUNDATION_FLAG_new-parser": "25%"})
        assert flags.state("new-parser").percentage == 25.0


@pytest.mark.parametrize(
    ("first", "second", "how"),
    [
        ("new-parser", "new.parser", "clash:"),
        ("new-parser", "new_parser", "clash:"),
        ("Beta", "beta", "differ only by case, so"),
    ],
)
def test_two_names_one_variable_would_set_are_refused_at_declaration(
    first: str, second: str, how: str
) -> None:
    with pytest.raises(InvalidFlagValue) as info:
        FeatureFlags([Flag(first), Flag(second)])
    assert str(info.value) == (
        f"flags {first!r} and {second!r} {how} one environment variable would set both "
        f"({env_variable(second)}): rename one"
    )


def test_an_unknown_variable_is_named_with_the_nearest_flag() -> None:
    with FeatureFlags([Flag("new-parser")]) as flags, pytest.raises(UnknownFlag) as info:
        flags.load_from_config(None, env={"FOUNDATION_FLAG_NEW_PARSR": "on"})
    assert str(info.value) == (
        "unknown flag 'new_parsr' (from FOUNDATION_FLAG_NEW_PARSR; did you mean 'new-parser'?)"
    )


def test_two_variables_for_one_flag_are_refused_and_nothing_loaded() -> None:
    with FeatureFlags([Flag("new-parser")]) as flags:
        with pytest.raises(InvalidFlagValue, match="both set flag 'new-parser': keep one"):
            flags.load_from_config(
                None,
                env={"FOUNDATION_FLAG_NEW_PARSER": "on", "FOUNDATION_FLAG_new-parser": "off"},
            )
        assert flags.enabled("new-parser") is False  # the declared default: nothing loaded


def test_two_variables_for_one_undeclared_name_are_an_unknown_flag() -> None:
    # Not InvalidFlagValue "both set flag 'foo'": there is no such flag.
    with FeatureFlags([Flag("beta")]) as flags, pytest.raises(UnknownFlag, match="'foo'"):
        flags.load_from_config(None, env={"FOUNDATION_FLAG_FOO": "on", "FOUNDATION_FLAG_foo": "on"})


BLANK = ("", "   ", "\n", "\t ")


def _writes(flags: FeatureFlags, by: str) -> list[Callable[[], object]]:
    return [
        lambda: flags.enable("beta", by=by),
        lambda: flags.disable("beta", by=by),
        lambda: flags.set("beta", True, by=by),
        lambda: flags.set_percentage("beta", 10, by=by),
        lambda: flags.allow("beta", "ana", by=by),
        lambda: flags.deny("beta", "ana", by=by),
        lambda: flags.clear("beta", by=by),
        lambda: flags.reset_all(by=by),
        lambda: flags.set_split("color", {"red": 100}, by=by),
        lambda: flags.assign("color", "ana", "red", by=by),
    ]


@pytest.mark.parametrize("by", BLANK)
def test_a_blank_by_is_refused_on_every_write(by: str) -> None:
    declared = [Flag("beta"), Flag("color", variants={"red": 1, "blue": 2}, default="red")]
    with FeatureFlags(declared) as flags:
        flags.disable("beta", by="ops")  # a state for clear and reset_all to change
        before = (flags.state("beta"), flags.state("color"), len(flags.history()))
        for write in _writes(flags, by):
            with pytest.raises(InvalidFlagValue, match="by= names who makes the change"):
                write()
        assert (flags.state("beta"), flags.state("color"), len(flags.history())) == before
        flags.enable("beta")  # None: unnamed, as before
        flags.enable("beta", by=" ana ")  # a name with blanks around it is a name


@pytest.mark.parametrize("by", BLANK)
def test_a_blank_by_is_refused_on_every_migration_step(by: str) -> None:
    plan = MigrationPlan([Stage(1, "one", ["beta"])], name="p")
    with FeatureFlags([Flag("beta")]) as flags:
        migration = Migration(flags, plan)
        for step in (
            lambda: migration.advance(by=by),
            lambda: migration.emergency_rollback("fire", by=by),
        ):
            with pytest.raises(InvalidFlagValue, match="by= names who makes the change"):
                step()
        assert migration.history() == []
        migration.advance(by="ana")
        with pytest.raises(InvalidFlagValue):
            migration.rollback_to(0, by=by)
        assert [e.action for e in migration.history()] == ["advance"]


@pytest.mark.parametrize("actor", ["   ", "\n", "\t "])
def test_a_blank_stored_actor_is_refused(actor: str) -> None:
    declared = [Flag("beta"), Flag("color", variants={"red": 1, "blue": 2}, default="red")]
    with FeatureFlags(declared) as flags:
        for write in (
            lambda: flags.allow("beta", actor),
            lambda: flags.deny("beta", actor),
            lambda: flags.assign("color", actor, "blue"),
        ):
            with pytest.raises(InvalidFlagValue, match="must not be blank"):
                write()
        assert flags.history() == []
        assert flags.enabled("beta", actor) is False  # reads still take any actor


def test_the_step_log_line_names_only_what_was_given(caplog: pytest.LogCaptureFixture) -> None:
    plan = MigrationPlan([Stage(1, "one", ["beta"])], name="p")
    with FeatureFlags([Flag("beta")]) as flags:
        migration = Migration(flags, plan)
        with caplog.at_level(logging.INFO, logger="foundation.flags.migration"):
            migration.advance(by="ana")
            migration.rollback_to(0)
            migration.advance(by="ana", reason="go")
    said = [r.getMessage() for r in caplog.records if r.name == "foundation.flags.migration"]
    assert said == [
        "migration 'p': advance from stage 0 to 1 by ana",
        "migration 'p': rollback from stage 1 to 0",
        "migration 'p': advance from stage 0 to 1 by ana (go)",
    ]


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis"])
def test_a_blank_by_writes_nothing_on_any_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Every write and step, refused inside the store's transaction: nothing stored."""
    import uuid

    from foundation.flags import MemoryFlagStore, RedisFlagStore, SQLiteFlagStore
    from foundation.flags._store import FlagStore

    store: FlagStore
    if kind == "memory":
        store = MemoryFlagStore()
    elif kind == "sqlite":
        store = SQLiteFlagStore(tmp_path / "flags.db")
    else:
        url = request.getfixturevalue("redis_server").url
        store = RedisFlagStore(url, namespace=f"blank-{uuid.uuid4().hex[:8]}", cache_path=None)
    declared = [Flag("beta"), Flag("color", variants={"red": 1, "blue": 2}, default="red")]
    plan = MigrationPlan([Stage(1, "one", ["beta"])], name="p")
    with store, FeatureFlags(declared, store=store) as flags:
        migration = Migration(flags, plan)
        flags.disable("beta", by="ops")  # a state for clear and reset_all to change
        before = (
            store.load_states(),
            store.history(),
            migration.history(),
            migration.status().stage,
        )
        for by in BLANK:
            steps = [
                functools.partial(migration.advance, by=by),
                functools.partial(migration.emergency_rollback, "fire", by=by),
            ]
            for write in [*_writes(flags, by), *steps]:
                with pytest.raises(InvalidFlagValue, match="by= names who makes the change"):
                    write()
        after = (
            store.load_states(),
            store.history(),
            migration.history(),
            migration.status().stage,
        )
        assert after == before
