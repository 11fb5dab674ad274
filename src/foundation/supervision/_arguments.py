"""The checks of a supervisor's constructor arguments, and of the spec a
``DynamicSupervisor`` starts without a template."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from foundation.supervision._spec import (
    _AUTO_SHUTDOWN,
    _STRATEGIES,
    AutoShutdown,
    Backoff,
    ChildSpec,
    Strategy,
    _check_number,
    _check_specs,
)

if TYPE_CHECKING:
    from foundation.registry import Registry

__all__: list[str] = []


def _checked_children(
    children: Iterable[ChildSpec], auto_shutdown: AutoShutdown
) -> tuple[ChildSpec, ...]:
    """Supervisor(): the children as a tuple; raise unless they fit ``auto_shutdown``."""
    specs = tuple(children)
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"children must be ChildSpec instances, not {spec!r}")
    if auto_shutdown not in _AUTO_SHUTDOWN:
        raise ValueError(f"auto_shutdown must be one of {_AUTO_SHUTDOWN}, not {auto_shutdown!r}")
    problem = _check_specs(specs, auto_shutdown)
    if problem is not None:
        raise ValueError(problem)
    return specs


def _check_restart_policy(
    strategy: Strategy, max_restarts: int, max_seconds: float, min_uptime: float | None
) -> None:
    """Supervisor(): raise unless the strategy and restart intensity arguments are valid."""
    if strategy not in _STRATEGIES:
        raise ValueError(f"strategy must be one of {_STRATEGIES}, not {strategy!r}")
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise ValueError(f"max_restarts must be an int >= 0, not {max_restarts!r}")
    _check_number("max_seconds", max_seconds)
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, not {max_seconds!r}")
    if min_uptime is not None:
        _check_number("min_uptime", min_uptime)
        if not min_uptime >= 0:
            raise ValueError(f"min_uptime must be >= 0 or None, not {min_uptime!r}")


def _check_backoff_and_registry(backoff: Backoff | None, registry: Registry | None) -> None:
    """Supervisor(): raise unless ``backoff`` and ``registry`` are of their types (or None)."""
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a Backoff, not {backoff!r}")
    if registry is not None:
        from foundation.registry._types import Registry as _Registry

        if not isinstance(registry, _Registry):
            raise TypeError(f"registry must be a Registry or None, not {type(registry).__name__}")


def _given_spec(
    args: tuple[Any, ...],
    id: str | None,
    register_as: Hashable | None,
    metadata: Mapping[str, Any] | None,
) -> ChildSpec:
    """DynamicSupervisor.start_child without a template: the one ChildSpec, overridden."""
    if len(args) != 1 or not isinstance(args[0], ChildSpec):
        raise TypeError("without a template, start_child takes exactly one ChildSpec")
    spec: ChildSpec = args[0]
    if id is not None or register_as is not None or metadata is not None:
        spec = dataclasses.replace(
            spec,
            id=spec.id if id is None else id,
            register_as=spec.register_as if register_as is None else register_as,
            metadata=spec.metadata if metadata is None else metadata,
        )
    return spec
