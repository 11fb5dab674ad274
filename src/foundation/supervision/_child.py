"""A supervisor's record of one child (``_Child``), what is read off it, and the
wait for a new run of it to be ready."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from foundation.supervision._reports import _safe_repr
from foundation.supervision._spec import ChildExit, ChildInfo, ChildSpec, ChildStatus

if TYPE_CHECKING:
    import asyncio

    from foundation.supervision._runs import Run

__all__: list[str] = []

_RunStatus = Literal["running", "restarting", "stopped"]
"""A child's own status; ``which_children`` shows a stopped one "abandoned" while
its abandoned thread (or task) runs (``ChildStatus``)."""


def _describe(exit: ChildExit) -> str:
    if exit.exception is not None:
        return f"{exit.reason}: {_safe_repr(exit.exception)}"  # a user's __repr__: bounded
    if exit.exit_code is not None and exit.reason == "exit":
        return f"exit code {exit.exit_code}"
    if exit.signal is not None:
        return f"killed by signal {exit.signal}"
    return exit.reason


def _still_running(handle: Any) -> bool:
    """Whether an abandoned run's handle (a thread, or a task) still runs."""
    done = getattr(handle, "done", None)
    if callable(done):  # an asyncio.Task
        return not done()
    alive = getattr(handle, "is_alive", None)
    return bool(alive()) if callable(alive) else False


class StopRequested(RuntimeError):
    """A start cut short because its supervisor is stopping (a stop landed while
    the child started: a restart during a deploy, say): not a failed start,
    so no crash report; its run is stopped with the others."""


class _Child:
    __slots__ = (
        "abandoned",
        "consecutive",
        "owned",
        "pending",
        "registered",
        "registrar",
        "restarts",
        "run",
        "spec",
        "status",
        "template",
        "write",
    )

    def __init__(self, spec: ChildSpec, template: str | None = None) -> None:
        self.spec = spec
        # The id of the DynamicSupervisor template it was made from (None: not
        # from one): its metric label, bounded where instance ids are not.
        self.template = template
        self.run: Run | None = None
        self.status: _RunStatus = "stopped"
        self.restarts = 0  # restarts since the supervisor started
        self.consecutive = 0  # restarts since it last ran for min_uptime (backoff exponent)
        self.pending: object | None = None  # token of a delayed (backoff) restart
        self.registered = False  # the current run's handle is in the registry
        self.registrar: asyncio.Task[None] | None = None  # degraded mode: retries registering
        self.write: asyncio.Task[None] | None = None  # this child's last registry write
        self.owned: tuple[Any, ...] = ()  # agents of its latest registration attempts (<= 3)
        self.abandoned: Any = None  # the handle of its last run, abandoned (until it starts)


def child_label(child: _Child) -> str:
    """``child``'s metric label: its template's id if it was made from one, else its id."""
    return child.template if child.template is not None else child.spec.id


def child_info(child: _Child) -> ChildInfo:
    """The ``which_children()`` row of ``child``."""
    run = child.run
    handle = run.handle if run is not None and child.status == "running" else None
    status: ChildStatus = child.status
    if status == "stopped" and child.abandoned is not None:
        # Shown "abandoned" while the abandoned thread (or task) still runs; the
        # child is stopped for every other purpose (restart_child, delete_child).
        if _still_running(child.abandoned):
            status, handle = "abandoned", child.abandoned
        else:
            child.abandoned = None
    spec = child.spec
    assert spec.kind is not None
    registered = child.registered and child.status == "running"
    return ChildInfo(spec.id, spec.kind, spec.restart, status, handle, child.restarts, registered)


def _ignored(run: Run) -> bool:
    """True when the run's child called ``ctx.ignore()`` (task and thread kinds)."""
    ctx = getattr(run, "ctx", None)
    return ctx is not None and getattr(ctx, "ignored", False) is True


def drop_run(child: _Child, run: Run) -> None:
    """Discard ``run`` (an ignored or failed start) and mark ``child`` stopped."""
    run.discarded = True
    if child.run is run:
        child.run = None
    child.status = "stopped"


async def await_ready(run: Run, stop_requested: asyncio.Future[None], supervisor: str) -> None:
    """Wait until ``run`` is ready; raise why not (it ended, the supervisor
    ``stop_requested``, or its ``ready_timeout`` passed)."""
    import asyncio

    if run.ready.done():
        return
    waiters: set[asyncio.Future[Any]] = {run.ready, run.exited, stop_requested}
    await asyncio.wait(
        waiters,
        timeout=run.spec.ready_timeout,
        return_when=asyncio.FIRST_COMPLETED,
    )
    # Ready wins a tie: a child that signalled and then ended did start.
    if run.ready.done():
        return
    if run.exited.done():
        exit = run.exited.result()
        if isinstance(exit.exception, Exception):
            raise exit.exception
        # Chained: the crash report then shows the child's own traceback.
        raise RuntimeError(f"it ended before it was ready ({_describe(exit)})") from exit.exception
    if stop_requested.done():
        raise StopRequested(f"supervisor {supervisor!r} is stopping")
    raise TimeoutError(f"it was not ready within {run.spec.ready_timeout} s")
