"""Config-as-code: TOML, pyproject, mappings, environment, precedence, broken input."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation import errors
from foundation.flags import FeatureFlags, FlagChange, FlagState, SQLiteFlagStore
from tests.flags._support import FLAGS


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_flags_table_in_a_toml_file_is_loaded(flags: FeatureFlags, tmp_path: Path) -> None:
    config = write(
        tmp_path / "flags.toml",
        '[flags]\nbeta = true\ndark_mode = "OFF"\nnew_checkout = "12.5%"\n',
    )
    flags.load_from_config(config, env=None)
    assert flags.enabled("beta") is True
    assert flags.enabled("dark_mode") is False
    assert flags.state("new_checkout") == FlagState(True, 12.5)
    assert flags.history() == []  # config is a layer, not a runtime change
    assert flags.store.load_states() == {}


def test_the_tool_table_of_a_pyproject_is_loaded(flags: FeatureFlags, tmp_path: Path) -> None:
    config = write(
        tmp_path / "pyproject.toml",
        '[project]\nname = "x"\n\n[tool.foundation.flags]\nbeta = "on"\n',
    )
    flags.load_from_config(str(config), env=None)
    assert flags.enabled("beta") is True


def test_a_mapping_is_loaded_with_every_accepted_spelling(flags: FeatureFlags) -> None:
    flags.load_from_config({"beta": "True", "dark_mode": False, "new_checkout": " 100% "}, env=None)
    assert flags.state("beta") == FlagState(True)
    assert flags.state("dark_mode") == FlagState(False)
    assert flags.state("new_checkout") == FlagState(True, 100.0)


def test_environment_variables_override_the_file(flags: FeatureFlags) -> None:
    env = {
        "FOUNDATION_FLAG_BETA": "off",
        "FOUNDATION_FLAG_NEW_CHECKOUT": "30%",
        "UNRELATED": "x",
    }
    flags.load_from_config({"beta": True, "new_checkout": "off"}, env=env)
    assert flags.enabled("beta") is False
    assert flags.state("new_checkout") == FlagState(True, 30.0)


def test_env_none_ignores_the_environment(
    flags: FeatureFlags, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDATION_FLAG_BETA", "on")
    flags.load_from_config({}, env=None)
    assert flags.enabled("beta") is False
    flags.load_from_config()  # default: os.environ
    assert flags.enabled("beta") is True


# Precedence: declared default < config file < environment < persisted runtime state.
PRECEDENCE = [
    # (file, env, runtime, expected switch of "beta" whose default is off)
    (None, None, None, False),
    (True, None, None, True),
    (True, "off", None, False),
    (None, "on", None, True),
    (False, "on", None, True),
    (True, "on", False, False),
    (None, None, True, True),
    (False, "off", True, True),
]


@pytest.mark.parametrize(("file", "env", "runtime", "expected"), PRECEDENCE)
def test_precedence_is_default_then_file_then_env_then_runtime(
    file: bool | None, env: str | None, runtime: bool | None, expected: bool
) -> None:
    with FeatureFlags(FLAGS) as flags:
        if runtime is not None:
            flags.set("beta", runtime)
        flags.load_from_config(
            {} if file is None else {"beta": file},
            env={} if env is None else {"FOUNDATION_FLAG_BETA": env},
        )
        assert flags.enabled("beta") is expected


def test_persisted_runtime_state_beats_config_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(FLAGS, store=store) as flags:
        flags.disable("beta", by="oncall", reason="emergency")
    with SQLiteFlagStore(path) as store, FeatureFlags(FLAGS, store=store) as flags:
        flags.load_from_config({"beta": True}, env={"FOUNDATION_FLAG_BETA": "on"})
        assert flags.enabled("beta") is False
        flags.clear("beta")  # dropping the runtime state lets config apply
        assert flags.enabled("beta") is True


def test_clear_falls_back_to_config_not_the_declared_default(flags: FeatureFlags) -> None:
    flags.load_from_config({"beta": "25%"}, env=None)
    flags.disable("beta")
    flags.clear("beta")
    assert flags.state("beta") == FlagState(True, 25.0)


def test_a_load_replaces_the_whole_config_layer(flags: FeatureFlags) -> None:
    flags.load_from_config({"beta": True, "dark_mode": False}, env=None)
    flags.load_from_config({"beta": True}, env=None)
    assert flags.enabled("dark_mode") is True


def test_listeners_hear_effective_changes_made_by_a_load(flags: FeatureFlags) -> None:
    seen: list[FlagChange] = []
    flags.subscribe(seen.append)
    flags.load_from_config({"beta": True, "dark_mode": True}, env=None)
    assert [(c.flag, c.by) for c in seen] == [("beta", "config")]


# ---------------------------------------------------------------- broken input


def assert_unchanged(flags: FeatureFlags, before: dict[str, FlagState]) -> None:
    assert {n: flags.state(n) for n in flags.names} == before


@pytest.fixture
def configured(flags: FeatureFlags) -> tuple[FeatureFlags, dict[str, FlagState]]:
    flags.load_from_config({"beta": True, "new_checkout": "10%"}, env=None)
    return flags, {n: flags.state(n) for n in flags.names}


def test_malformed_toml_is_rejected_and_changes_nothing(
    configured: tuple[FeatureFlags, dict[str, FlagState]], tmp_path: Path
) -> None:
    flags, before = configured
    bad = write(tmp_path / "flags.toml", "[flags\nbeta = true\n")
    with pytest.raises(errors.InvalidFlagValue, match="malformed TOML"):
        flags.load_from_config(bad, env=None)
    assert_unchanged(flags, before)


@pytest.mark.parametrize("value", ["1", "0.5", '"yes"', '"50"', '"150%"', '"-1%"', '"%"', "[1]"])
def test_wrong_values_in_a_file_are_rejected_and_change_nothing(
    configured: tuple[FeatureFlags, dict[str, FlagState]], tmp_path: Path, value: str
) -> None:
    flags, before = configured
    bad = write(tmp_path / "flags.toml", f"[flags]\ndark_mode = false\nbeta = {value}\n")
    with pytest.raises(errors.InvalidFlagValue, match="beta"):
        flags.load_from_config(bad, env=None)
    assert_unchanged(flags, before)


def test_unknown_names_are_listed_together_and_change_nothing(
    configured: tuple[FeatureFlags, dict[str, FlagState]], tmp_path: Path
) -> None:
    flags, before = configured
    bad = write(tmp_path / "flags.toml", "[flags]\nbeta = false\nbtea = true\ndrak_mode = true\n")
    with pytest.raises(errors.UnknownFlag) as info:
        flags.load_from_config(bad, env={"FOUNDATION_FLAG_NEW_CHEKOUT": "on"})
    assert info.value.names == ("btea", "drak_mode", "new_chekout")
    assert info.value.suggestions == {
        "btea": "beta",
        "drak_mode": "dark_mode",
        "new_chekout": "new_checkout",
    }
    assert_unchanged(flags, before)


def test_a_whole_environment_of_unknown_names_gives_a_bounded_message(
    configured: tuple[FeatureFlags, dict[str, FlagState]],
) -> None:
    # Found by the public-API fuzz test: 22 unknown variables made a 1,000-character message.
    flags, before = configured
    env = {f"FOUNDATION_FLAG_UNKNOWN_{n}_{'X' * 150}": "on" for n in range(40)}
    with pytest.raises(errors.UnknownFlag) as info:
        flags.load_from_config(None, env=env)
    assert len(info.value.names) == 40  # every name is kept on the error itself
    message = str(info.value)
    assert len(message) < 1000
    assert message.endswith(" more")
    assert_unchanged(flags, before)


def test_a_bad_environment_value_is_rejected(
    configured: tuple[FeatureFlags, dict[str, FlagState]],
) -> None:
    flags, before = configured
    with pytest.raises(errors.InvalidFlagValue, match="FOUNDATION_FLAG_BETA"):
        flags.load_from_config({"dark_mode": False}, env={"FOUNDATION_FLAG_BETA": "50"})
    assert_unchanged(flags, before)


def test_several_bad_values_are_reported_at_once(flags: FeatureFlags) -> None:
    with pytest.raises(errors.InvalidFlagValue) as info:
        flags.load_from_config({"beta": 1, "dark_mode": "maybe"}, env=None)
    assert "beta" in str(info.value)
    assert "dark_mode" in str(info.value)


def test_missing_file_and_missing_table_are_rejected(
    configured: tuple[FeatureFlags, dict[str, FlagState]], tmp_path: Path
) -> None:
    flags, before = configured
    with pytest.raises(errors.InvalidFlagValue, match="cannot read"):
        flags.load_from_config(tmp_path / "absent.toml", env=None)
    no_table = write(tmp_path / "pyproject.toml", '[project]\nname = "x"\n')
    with pytest.raises(errors.InvalidFlagValue, match=r"tool\.foundation\.flags"):
        flags.load_from_config(no_table, env=None)
    not_a_table = write(tmp_path / "flags.toml", "flags = 3\n")
    with pytest.raises(errors.InvalidFlagValue, match="must be a table"):
        flags.load_from_config(not_a_table, env=None)
    with pytest.raises(errors.InvalidFlagValue):
        flags.load_from_config(42, env=None)  # type: ignore[arg-type]
    assert_unchanged(flags, before)


def test_an_unknown_environment_variable_is_named_in_the_error() -> None:
    from foundation import FeatureFlags, Flag
    from foundation.errors import UnknownFlag

    flags = FeatureFlags([Flag("new_checkout")])
    with pytest.raises(UnknownFlag) as info:
        flags.load_from_config({}, env={"FOUNDATION_FLAG_NEW_CHEKOUT": "on"})
    assert "FOUNDATION_FLAG_NEW_CHEKOUT" in str(info.value)
    assert "new_checkout" in str(info.value)
