"""A supervisor's restart decisions: whether a child restarts, which children a
strategy restarts with it, the restart intensity window, backoff delays and
the ``auto_shutdown`` rule. Pure functions over a supervisor's children."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foundation.supervision._child import _Child
    from foundation.supervision._spec import AutoShutdown, Backoff, ChildExit, ChildSpec, Strategy

__all__: list[str] = []


def _restarts_after(spec: ChildSpec, exit: ChildExit) -> bool:
    """True if ``spec``'s restart type restarts its child after ``exit``."""
    return spec.restart == "permanent" or (spec.restart == "transient" and exit.abnormal)


def intensity_exceeded(
    window: deque[tuple[float, str]], now: float, id: str, max_restarts: int, max_seconds: float
) -> bool:
    """Count a restart of child ``id`` at ``now`` in ``window``; True past the limit."""
    window.append((now, id))
    while window and window[0][0] <= now - max_seconds:
        window.popleft()
    return len(window) > max_restarts


def next_restart_delay(
    child: _Child, uptime: float, healthy_after: float, backoff: Backoff | None
) -> float:
    """Count one more consecutive restart of ``child`` (reset if it ran healthy); its delay."""
    if uptime >= healthy_after:
        child.consecutive = 0
    child.consecutive += 1
    return backoff.delay(child.consecutive) if backoff is not None else 0.0


def restart_action(strategy: Strategy, delay: float) -> str:
    """The action reported for a restart under ``strategy``."""
    action = {
        "one_for_one": "restart",
        "one_for_all": "restart_all",
        "rest_for_one": "restart_rest",
    }[strategy]
    if delay > 0:
        action += f" (after {delay:g}s backoff)"
    return action


def restart_scope(
    strategy: Strategy, children: Mapping[str, _Child], child: _Child
) -> list[_Child]:
    """The children ``strategy`` restarts when ``child`` goes down (``child`` included)."""
    if strategy == "one_for_one":
        return [child]
    every = list(children.values())
    if strategy == "one_for_all":
        return every
    return every[every.index(child) :]


def auto_shutdown_rule(
    auto_shutdown: AutoShutdown, children: Mapping[str, _Child], child: _Child
) -> str | None:
    """The rule that stops the supervisor now that ``child`` ended for good, if any."""
    if not child.spec.significant or auto_shutdown == "never":
        return None
    if auto_shutdown == "any_significant":
        return "any_significant"
    # all_significant: the last significant child still running (or about to
    # be restarted) has just ended.
    return None if _other_significant_active(children, child) else "all_significant"


def _other_significant_active(children: Mapping[str, _Child], child: _Child) -> bool:
    """True if a significant child other than ``child`` runs or is about to restart."""
    return any(
        c is not child and c.spec.significant and c.status != "stopped" for c in children.values()
    )
