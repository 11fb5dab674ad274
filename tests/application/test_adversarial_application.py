"""Adversarial review of ``Application`` (issue 11, item 7): what the constructor is
given is checked there, not when the tree starts and a service fails with an
``AttributeError`` inside a ``StartError``."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundation import Application
from foundation.errors import InvalidConfig, InvalidFlagValue
from foundation.supervision import ChildContext, ChildSpec


def _worker(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


def test_a_path_object_is_a_config_path(tmp_path: Path) -> None:
    # Was kept as the config itself: StartError("'PosixPath' object has no attribute ...").
    config = tmp_path / "foundation.toml"
    config.write_text("[flags]\nuse_ets_agent_registry = true\n")
    with Application.start(config, services=("flags",)) as app:
        assert app.flags is not None
        assert app.flags.enabled("use_ets_agent_registry") is True


def test_a_config_of_another_type_is_refused() -> None:
    with pytest.raises(TypeError, match="config must be an AppConfig, a path or None"):
        Application(5, services=())  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [[5], ["spec"], "ab"])
def test_workers_must_be_child_specs(workers: object) -> None:
    with pytest.raises(TypeError, match="workers must be ChildSpec instances"):
        Application(services=(), workers=workers)  # type: ignore[arg-type]


def test_workers_with_one_id_twice_are_refused() -> None:
    twice = [ChildSpec("w", _worker), ChildSpec("w", _worker)]
    with pytest.raises(ValueError, match="duplicate child id 'w'"):
        Application(services=(), workers=twice)


def test_declared_flags_and_the_store_are_checked_as_feature_flags_would() -> None:
    with pytest.raises(InvalidFlagValue, match="declare flags with Flag"):
        Application(services=(), declared=[5])  # type: ignore[list-item]
    with pytest.raises(InvalidFlagValue, match="flag_store must be a FlagStore"):
        Application(services=("flags",), flag_store=5)  # type: ignore[arg-type]


def test_services_as_one_string_names_the_mistake() -> None:
    with pytest.raises(InvalidConfig, match=r"write services=\('flags',\)"):
        Application(services="flags")


def test_good_workers_still_start() -> None:
    with Application.start(services=(), workers=[ChildSpec("w", _worker)]) as app:
        assert [c.id for c in app.which_children()] == ["workers"]
