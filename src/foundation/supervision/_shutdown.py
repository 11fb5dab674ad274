"""The order in which a supervisor stops its children: in reverse start order
(a ``Supervisor``), all at once (a ``DynamicSupervisor``), or a strategy's
scope before a restart; and why the ones that would not stop run on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from foundation.supervision._child import _Child, _still_running

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from typing import Protocol

    from foundation.supervision._spec import ChildExit

    class _Terminate(Protocol):
        """A supervisor's ``_terminate``: stop one child's run, its exit."""

        def __call__(self, child: _Child, *, restart: bool = ...) -> Awaitable[ChildExit]: ...


__all__: list[str] = []


async def stop_in_reverse(children: Mapping[str, _Child], terminate: _Terminate) -> list[str]:
    """Stop every running child in reverse start order; returns the abandoned."""
    abandoned = []
    for child in reversed(list(children.values())):
        child.pending = None
        if child.run is not None:
            exit = await terminate(child)
            if exit.reason == "abandoned":
                abandoned.append(child.spec.id)
        child.status = "stopped"
    return abandoned


async def stop_all_at_once(children: Mapping[str, _Child], terminate: _Terminate) -> list[str]:
    """Stop every running child at once (OTP's ``terminate_dynamic_children``):
    the stop takes about the longest shutdown timeout, not their sum."""
    import asyncio

    every = list(children.values())
    for child in every:
        child.pending = None
    running = [c for c in reversed(every) if c.run is not None]
    exits = await asyncio.gather(*(terminate(c) for c in running))
    for child in every:
        child.status = "stopped"
    return [c.spec.id for c, exit in zip(running, exits, strict=True) if exit.reason == "abandoned"]


async def stop_scope(
    children: dict[str, _Child], child: _Child, scope: list[_Child], terminate: _Terminate
) -> None:
    """Stop the other running children of ``child``'s scope, in reverse start order."""
    for other in reversed(scope):
        if other is child or other.spec.id not in children:
            continue
        if other.run is not None:
            await terminate(other, restart=other.spec.restart != "temporary")
            if other.spec.restart == "temporary":
                del children[other.spec.id]  # OTP: never restarted, spec dropped
                continue
        # OTP (restart_multiple_children): every child of the scope that has
        # a spec is started again, also one stopped by terminate_child, a
        # transient one that ended normally, or one that returned ignore.
        other.status = "restarting"


def _left_running(
    children: Mapping[str, _Child], ids: list[str], prefix: str = ""
) -> list[tuple[str, str | None]]:
    """The runs left running when the children ``ids`` were abandoned, as
    (path, kind): a thread or task child is itself; a nested supervisor that
    stopped but could not stop a child of its own is that child, by its path
    (``"workers/stuck"``), found in the nested supervisor's own rows.

    Race: none. Every supervisor of a tree runs on the root's loop, and this
    runs on it (in the stop sequence), so no nested child list changes while
    it is read."""
    left: list[tuple[str, str | None]] = []
    for id in ids:
        child = children.get(id)
        kind = None if child is None else child.spec.kind
        inner = _left_inside(child, f"{prefix}{id}/") if kind == "supervisor" else []
        left.extend(inner or [(f"{prefix}{id}", kind)])
    return left


def _left_inside(child: _Child | None, prefix: str) -> list[tuple[str, str | None]]:
    """``_left_running`` within a nested supervisor child: its own abandoned rows."""
    nested = getattr(child and child.abandoned, "_children", None)  # the nested rows
    if not isinstance(nested, Mapping):
        return []
    stuck = [
        c.spec.id
        for c in nested.values()
        if c.abandoned is not None and (c.spec.kind == "supervisor" or _still_running(c.abandoned))
    ]
    return _left_running(nested, stuck, prefix)


def _why_abandoned(kinds: set[str | None]) -> str:
    """Why runs of these kinds run on (the ShutdownError's explanation)."""
    why = []
    if "thread" in kinds:
        why.append("a thread cannot be killed: it runs on as a daemon thread")
    if "task" in kinds:
        why.append("a task that swallows its cancellation runs on, unsupervised")
    if "supervisor" in kinds:
        why.append("a nested supervisor could not stop a child of its own")
    return "; ".join(why) or "it did not stop in time"
