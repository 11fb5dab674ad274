"""Supervisors with OTP semantics, asyncio at the core, usable from threads.

A :class:`Supervisor` starts its children in order, each ready before the next
(the readiness handshake: ``ctx.ready()``), restarts them by strategy
(``one_for_one``, ``one_for_all``, ``rest_for_one``) and restart type
(``permanent``, ``transient``, ``temporary``), gives up and escalates past its
restart intensity, and stops them in reverse order. A
:class:`DynamicSupervisor` adds children at run time. Children are asyncio
tasks, threads, OS processes (argv or ``multiprocessing``) and nested
supervisors, each described by a :class:`ChildSpec`.

Example (asynchronous)::

    async def worker(ctx: ChildContext) -> None:
        await connect()
        ctx.ready()                       # the next child starts now
        await serve()                     # cancelled on stop

    async with Supervisor([ChildSpec("db", worker), ...], strategy="rest_for_one") as sup:
        await sup.wait()                  # raises RestartIntensityExceeded if it gives up

Example (synchronous)::

    with Supervisor(specs).run_in_thread() as handle:
        handle.which_children()
        handle.wait()
"""

from __future__ import annotations

from foundation.supervision._context import (
    READY_FD_ENV,
    ChildContext,
    ProcessContext,
    notify_ready,
)
from foundation.supervision._spec import (
    Backoff,
    ChildCounts,
    ChildExit,
    ChildInfo,
    ChildKind,
    ChildSpec,
    ChildStatus,
    ExitReason,
    Readiness,
    RestartType,
    Strategy,
)
from foundation.supervision._supervisor import (
    ChildErrorReason,
    DynamicSupervisor,
    Supervisor,
    SupervisorState,
)
from foundation.supervision._thread import SupervisorThread

__all__ = [
    "READY_FD_ENV",
    "Backoff",
    "ChildContext",
    "ChildCounts",
    "ChildErrorReason",
    "ChildExit",
    "ChildInfo",
    "ChildKind",
    "ChildSpec",
    "ChildStatus",
    "DynamicSupervisor",
    "ExitReason",
    "ProcessContext",
    "Readiness",
    "RestartType",
    "Strategy",
    "Supervisor",
    "SupervisorState",
    "SupervisorThread",
    "notify_ready",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("foundation.supervision."):
        _obj.__module__ = "foundation.supervision"
del _name, _obj
