"""DynamicSupervisor: a one_for_one supervisor whose children are added at run time."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

from foundation.supervision._arguments import _given_spec
from foundation.supervision._child_errors import _error, _not_dynamic
from foundation.supervision._shutdown import stop_all_at_once
from foundation.supervision._spec import (
    MAX_NAME_CHARS,
    Backoff,
    ChildExit,
    ChildInfo,
    ChildSpec,
    check_name,
)
from foundation.supervision._supervisor import Supervisor

if TYPE_CHECKING:
    from foundation.registry import Registry
    from foundation.supervision._child import _Child

__all__ = ["DynamicSupervisor"]


class DynamicSupervisor(Supervisor):
    """A one_for_one supervisor whose children are added at run time.

    With a ``template`` spec, ``start_child(*extra_args)`` starts a child from
    it with ``extra_args`` appended to its ``args``, an id ``"<template id>-<n>"``
    (or ``id=``), and registers it under ``register_as=`` or its own id (the
    template's ``register_as`` is not used: children would share one key).
    Without one, ``start_child(spec)`` takes a full :class:`ChildSpec`. As in
    Elixir's DynamicSupervisor, ``terminate_child`` also deletes the child,
    and so does an exit that is not restarted (a transient child's normal
    exit, any exit of a temporary one): no stopped row is kept.

    Metrics: a template child (``id=`` or not) counts under the template's id
    (``child="agent"``, one series however many are started; its events carry
    it as ``template``), a supervisor nested under one under the template's
    path; a child started from a full ``ChildSpec`` counts under its own id.

    Raises (``start_child``): ``SupervisorError`` with ``.reason ==
    "max_children"`` past ``max_children``, and what ``Supervisor.start_child``
    raises.

    Example:
        >>> import asyncio
        >>> from foundation.supervision import ChildSpec, DynamicSupervisor
        >>> async def agent(ctx, zone):
        ...     ctx.ready()
        ...     await asyncio.Event().wait()
        >>> async def main():
        ...     async with DynamicSupervisor(ChildSpec("agent", agent)) as sup:
        ...         first = await sup.start_child("eu")
        ...         await sup.start_child("us", id="agent-us")
        ...         return first.id, sup.count_children().active
        >>> asyncio.run(main())
        ('agent-1', 2)
    """

    def __init__(
        self,
        template: ChildSpec | None = None,
        *,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        registry: Registry | None = None,
        backoff: Backoff | None = None,
        min_uptime: float | None = None,
    ) -> None:
        if template is not None and not isinstance(template, ChildSpec):
            raise TypeError(f"template must be a ChildSpec, not {template!r}")
        if template is not None:  # room for the "-<serial>" of the ids made from it
            check_name("a template's id", template.id, limit=MAX_NAME_CHARS - 20)
        if max_children is not None and (
            isinstance(max_children, bool) or not isinstance(max_children, int) or max_children < 0
        ):
            raise ValueError(f"max_children must be an int >= 0 or None, not {max_children!r}")
        super().__init__(
            (),
            strategy="one_for_one",
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            name=name,
            registry=registry,
            backoff=backoff,
            min_uptime=min_uptime,
        )
        self.template = template
        self._max_children = max_children
        self._serial = itertools.count(1)

    async def start_child(
        self,
        *args: Any,
        id: str | None = None,
        register_as: Hashable | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ChildInfo:
        """Start a child from the template with ``args`` appended (or from the
        one ``ChildSpec`` given when there is no template)."""
        if self.template is None:
            spec = _given_spec(args, id, register_as, metadata)
            return await super().start_child(spec)
        spec = self._spec_from_template(self.template, args, id, register_as, metadata)
        # Labelled by the template's id in metrics (id= or not): one series per template.
        return await self._add_child(spec, self.template.id)

    def _spec_from_template(
        self,
        template: ChildSpec,
        args: tuple[Any, ...],
        id: str | None,
        register_as: Hashable | None,
        metadata: Mapping[str, Any] | None,
    ) -> ChildSpec:
        """start_child: the template with ``args`` appended and the given overrides."""
        return dataclasses.replace(
            template,
            id=f"{template.id}-{next(self._serial)}" if id is None else id,
            args=(*template.args, *args),
            register_as=register_as,
            metadata=template.metadata if metadata is None else metadata,
        )

    def _admit(self, spec: ChildSpec) -> None:
        if self._max_children is not None and len(self._children) >= self._max_children:
            raise _error(
                "max_children",
                spec.id,
                f"supervisor {self._name!r} already has max_children={self._max_children}",
            )

    async def _terminate_child(self, child: _Child) -> ChildExit | None:
        exit = await super()._terminate_child(child)
        self._children.pop(child.spec.id, None)
        return exit

    def _keep_ignored(self, spec: ChildSpec) -> bool:
        # OTP: a dynamic child that returns ignore is not added, and one that
        # ends for good (a transient one's normal exit) is deleted.
        return False

    async def restart_child(self, id: str) -> ChildInfo:
        """Not supported: a dynamic child is deleted when terminated.

        Raises:
            SupervisorError: always, ``.reason == "simple_one_for_one"`` (OTP's
                ``{error, simple_one_for_one}``).
        """
        raise _not_dynamic(
            "restart_child",
            id,
            "terminate_child deletes a dynamic child; start a new one with start_child",
        )

    async def delete_child(self, id: str) -> None:
        """Not supported: ``terminate_child`` already deletes a dynamic child.

        Raises:
            SupervisorError: always, ``.reason == "simple_one_for_one"`` (OTP's
                ``{error, simple_one_for_one}``).
        """
        raise _not_dynamic("delete_child", id, "terminate_child already deletes a dynamic child")

    async def _shutdown_children(self) -> list[str]:
        """Stop every running child at once (OTP's ``terminate_dynamic_children``):
        the stop takes about the longest shutdown timeout, not their sum."""
        return await stop_all_at_once(self._children, self._terminate)
