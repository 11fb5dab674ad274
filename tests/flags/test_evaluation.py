"""Evaluation order, real bools, unknown names, kill switch, bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from foundation import errors
from foundation.flags import FeatureFlags, Flag, FlagState, bucket
from tests.flags._support import FLAGS


def actors_in_and_out(flag: str, p: float) -> tuple[str, str]:
    """One actor inside a p% rollout of ``flag`` and one outside it."""
    inside = next(f"u{i}" for i in range(10_000) if bucket(flag, f"u{i}") < p)
    outside = next(f"u{i}" for i in range(10_000) if bucket(flag, f"u{i}") >= p)
    return inside, outside


def test_declared_defaults_apply_before_any_change(flags: FeatureFlags) -> None:
    assert flags.enabled("beta") is False
    assert flags.enabled("dark_mode") is True
    assert flags.enabled("beta", actor="alice") is False
    assert flags.enabled("dark_mode", actor="alice") is True


def test_enabled_always_returns_a_real_bool(flags: FeatureFlags) -> None:
    flags.set_percentage("beta", 50)
    flags.allow("beta", "a")
    results = [flags.enabled("beta"), flags.enabled("beta", actor="a")]
    results += [flags.enabled("beta", actor=f"u{i}") for i in range(50)]
    assert all(type(r) is bool for r in results)


def test_switch_off_beats_allow(flags: FeatureFlags) -> None:
    flags.allow("beta", "alice")
    flags.disable("beta")
    assert flags.enabled("beta", actor="alice") is False


def test_deny_beats_allow(flags: FeatureFlags) -> None:
    flags.enable("beta")
    flags.allow("beta", "alice")
    flags.deny("beta", "alice")
    assert flags.enabled("beta", actor="alice") is False
    assert flags.enabled("beta", actor="bob") is True


def test_allow_beats_the_percentage(flags: FeatureFlags) -> None:
    flags.set_percentage("beta", 0)
    flags.allow("beta", "alice")
    assert flags.enabled("beta", actor="alice") is True
    assert flags.enabled("beta", actor="bob") is False


def test_deny_beats_a_full_rollout(flags: FeatureFlags) -> None:
    flags.set_percentage("beta", 100)
    flags.deny("beta", "mallory")
    assert flags.enabled("beta", actor="mallory") is False
    assert flags.enabled("beta", actor="alice") is True
    assert flags.enabled("beta") is True


def test_percentage_decides_by_bucket_for_an_actor(flags: FeatureFlags) -> None:
    inside, outside = actors_in_and_out("beta", 30)
    flags.set_percentage("beta", 30)
    assert flags.enabled("beta", actor=inside) is True
    assert flags.enabled("beta", actor=outside) is False


@pytest.mark.parametrize(("p", "expected"), [(0, False), (50, False), (99.999, False), (100, True)])
def test_without_an_actor_a_percentage_counts_only_at_100(
    flags: FeatureFlags, p: float, expected: bool
) -> None:
    flags.set_percentage("beta", p)
    assert flags.enabled("beta") is expected


def test_allow_and_deny_do_not_apply_without_an_actor(flags: FeatureFlags) -> None:
    flags.deny("dark_mode", "alice")
    assert flags.enabled("dark_mode") is True
    flags.allow("beta", "alice")
    assert flags.enabled("beta") is False


def test_fractional_percentages_are_honoured(flags: FeatureFlags) -> None:
    inside, outside = actors_in_and_out("beta", 12.5)
    flags.set_percentage("beta", 12.5)
    assert flags.state("beta").percentage == 12.5
    assert flags.enabled("beta", actor=inside) is True
    assert flags.enabled("beta", actor=outside) is False


def test_int_actors_are_the_same_as_their_string(flags: FeatureFlags) -> None:
    flags.enable("beta")
    flags.deny("beta", 42)
    assert flags.state("beta").deny == {"42"}
    assert flags.enabled("beta", actor=42) is False
    assert flags.enabled("beta", actor="42") is False


def test_actors_of_other_types_are_rejected(flags: FeatureFlags) -> None:
    flags.set_percentage("beta", 50)
    with pytest.raises(errors.InvalidFlagValue):
        flags.enabled("beta", actor=3.5)  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidFlagValue):
        flags.allow("beta", object())  # type: ignore[arg-type]
    assert flags.state("beta") == FlagState(True, 50.0)


def test_kill_switch_keeps_and_resumes_the_rollout(flags: FeatureFlags) -> None:
    flags.set_percentage("beta", 25)
    flags.allow("beta", "alice")
    flags.deny("beta", "bob")
    before = flags.state("beta")
    flags.disable("beta")
    assert flags.state("beta") == FlagState(False, 25.0, frozenset({"alice"}), frozenset({"bob"}))
    flags.enable("beta")
    assert flags.state("beta") == before


def test_set_takes_only_a_bool(flags: FeatureFlags) -> None:
    flags.set("beta", True)
    assert flags.enabled("beta") is True
    for bad in (1, "on", None):
        with pytest.raises(errors.InvalidFlagValue):
            flags.set("beta", bad)  # type: ignore[arg-type]
    assert flags.enabled("beta") is True


@pytest.mark.parametrize("bad", [-0.1, 100.5, float("nan"), float("inf"), "50", None, True])
def test_bad_percentage_is_rejected_and_changes_nothing(flags: FeatureFlags, bad: object) -> None:
    flags.set_percentage("beta", 20)
    before, history = flags.state("beta"), flags.history()
    with pytest.raises(errors.InvalidFlagValue):
        flags.set_percentage("beta", bad)  # type: ignore[arg-type]
    assert flags.state("beta") == before
    assert flags.history() == history


def test_unknown_flag_names_the_nearest_declared_flag_everywhere(flags: FeatureFlags) -> None:
    calls: list[Callable[[], object]] = [
        lambda: flags.enabled("btea"),
        lambda: flags.enabled("btea", actor="a"),
        lambda: flags.state("btea"),
        lambda: flags.enable("btea"),
        lambda: flags.disable("btea"),
        lambda: flags.set("btea", True),
        lambda: flags.set_percentage("btea", 5),
        lambda: flags.allow("btea", "a"),
        lambda: flags.deny("btea", "a"),
        lambda: flags.clear("btea"),
        lambda: flags.history("btea"),
    ]
    for call in calls:
        with pytest.raises(errors.UnknownFlag) as info:
            call()
        assert info.value.suggestion == "beta"
        assert "did you mean 'beta'" in str(info.value)
    assert flags.history() == []


def test_unknown_flag_is_a_key_error_and_suggests_for_truncated_names(
    flags: FeatureFlags,
) -> None:
    with pytest.raises(KeyError):
        flags.enabled("nope_nothing_close")
    with pytest.raises(errors.UnknownFlag) as info:
        flags.enabled("use_ets")
    assert info.value.suggestion == "use_ets_agent_registry"


def test_declarations_must_be_unique_flags() -> None:
    with pytest.raises(errors.InvalidFlagValue):
        FeatureFlags([Flag("a"), Flag("a")])
    with pytest.raises(errors.InvalidFlagValue):
        FeatureFlags([Flag("beta"), Flag("BETA")])
    with pytest.raises(errors.InvalidFlagValue):
        FeatureFlags(["beta"])  # type: ignore[list-item]
    with pytest.raises(errors.InvalidFlagValue):
        Flag("beta", default="yes")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidFlagValue):
        Flag("")


def test_names_and_declarations_are_exposed() -> None:
    with FeatureFlags(FLAGS) as flags:
        assert flags.names == tuple(f.name for f in FLAGS)
        assert flags.flag("beta").description == "a beta feature"
