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

OTP parity (``supervisor``, Elixir's ``DynamicSupervisor``). Each row: OTP
behaviour | what we do | difference ("=": none).

- strategies, restart types, intensity (MaxR in MaxT) | ``strategy=``,
  ``ChildSpec(restart=)``, ``max_restarts``/``max_seconds`` | =
- one_for_all / rest_for_one restart (``restart_multiple_children``) | every
  child of the scope that has a spec restarts, also one stopped by
  ``terminate_child`` | =
- a failed restart | the failing child ``"restarting"`` (retried, each retry a
  crash), the ones after it ``"stopped"`` | = (``{restarting, Pid}``, ``undefined``)
- init returns ``ignore`` | ``ctx.ignore()`` instead of ``ctx.ready()``; a
  static supervisor keeps the spec ``"stopped"`` (temporary: dropped), a dynamic
  one does not add it (nor keep one whose restart ignores) | task and thread
  children only (a process cannot ignore)
- ``brutal_kill`` | ``shutdown_timeout=0``: a process gets SIGKILL at once, a
  task is cancelled and not waited for, a thread is abandoned at once | a task
  gets the loop turns its cancellation takes; a thread cannot be killed
- shutdown ``infinity`` | ``shutdown_timeout=None`` | =
- significant children, ``auto_shutdown`` | ``ChildSpec(significant=True)``,
  ``Supervisor(auto_shutdown="any_significant" | "all_significant")``; the
  supervisor then ends normally | = (validated as OTP: never permanent, never
  with ``"never"``)
- ``start_child`` errors | ``SupervisorError.reason`` ``"already_started"``
  (``.handle``: the running child) or ``"already_present"`` (stopped, or a
  restart pending) | =
- ``{:via, Registry, name}`` | ``register_as`` with ``registry=``: a name held
  by a live outside agent fails the start (``"already_started"``, ``.handle``:
  the holder); two children with one name are refused | a restart replaces the
  child's own previous registration
- ``which_child``, ``get_childspec``, ``check_childspecs`` | the same names |
  ``check_childspecs`` returns ``None`` or a str (``ok`` / ``{error, R}``, also
  for a non-list: ``{badarg, _}``)
- temporary children's start arguments | released once the child ended |
  kept while it runs (for ``get_childspec``)
- ``restart_child``/``delete_child`` on simple_one_for_one | ``SupervisorError``
  reason ``"simple_one_for_one"`` | =
- dynamic shutdown (``terminate_dynamic_children``) | children stopped
  concurrently | =
- a supervisor killed (``exit(Sup, kill)``) | its task cancelled: it stops its
  children and ends failed; a parent restarts it by policy | the reason is a
  ``SupervisorError`` with ``reason == "killed"``
- an unnamed supervisor (known by its pid, a new one per restart) | named
  ``"supervisor-<id>"``; as a child, by its place: ``"<parent>/<child id>"`` |
  stable over restarts (one set of log names and metric series)
- crash, progress and supervisor reports | stdlib ``logging`` under
  ``foundation.supervision`` | =
- (not in OTP) restart ``backoff=``, readiness handshake, threads and OS
  processes as children | additions

Example (the OTP additions)::

    async def job(ctx, n):
        if n == 0:
            ctx.ignore()                  # OTP's ignore: nothing to do
            return
        ctx.ready()
        await asyncio.sleep(n)            # the significant child ends on its own...

    sup = Supervisor(
        [ChildSpec("idle", job, args=(0,)),
         ChildSpec("batch", job, args=(1,), restart="transient", significant=True)],
        auto_shutdown="any_significant",  # ...and so the supervisor stops, normally
    )
"""

from __future__ import annotations

from foundation._public import fixup_module_paths
from foundation.supervision._context import (
    READY_FD_ENV,
    ChildContext,
    ProcessContext,
    notify_ready,
)
from foundation.supervision._dynamic import DynamicSupervisor
from foundation.supervision._runner import run
from foundation.supervision._spec import (
    AutoShutdown,
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
    check_childspecs,
)
from foundation.supervision._supervisor import ChildErrorReason, Supervisor, SupervisorState
from foundation.supervision._thread import SupervisorThread

__all__ = [
    "READY_FD_ENV",
    "AutoShutdown",
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
    "check_childspecs",
    "notify_ready",
    "run",
]

fixup_module_paths(globals(), __name__)
