"""Supervisor and DynamicSupervisor: OTP supervision on an asyncio event loop.

Concurrency model: every state change happens on the supervisor's event loop.
Child exits arrive as events on a queue consumed by one task (``_run``); that
task and the management calls hold one ``asyncio.Lock`` while they change the
tree, so a restart and a ``terminate_child`` never interleave. Readiness waits
also watch ``_stop_requested``, so a stop never waits behind a child that will
not become ready. From other threads, use :meth:`Supervisor.run_in_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from foundation import telemetry
from foundation.errors import (
    NotAlive,
    RestartIntensityExceeded,
    ShutdownError,
    StartError,
    SupervisorError,
)
from foundation.supervision._runs import Run, make_run
from foundation.supervision._spec import (
    _STRATEGIES,
    Backoff,
    ChildCounts,
    ChildExit,
    ChildInfo,
    ChildSpec,
    ChildStatus,
    Strategy,
)

if TYPE_CHECKING:
    from foundation.registry import Registry
    from foundation.supervision._thread import SupervisorThread

__all__ = ["ChildErrorReason", "DynamicSupervisor", "Supervisor", "SupervisorState"]

SupervisorState = Literal["new", "starting", "running", "stopping", "stopped", "failed"]
ChildErrorReason = Literal[
    "not_found",
    "running",
    "restarting",
    "already_started",
    "already_present",
    "max_children",
    "supervisor_running",
    "supervisor_not_running",
]


def _error(reason: ChildErrorReason, child: str | None, message: str) -> SupervisorError:
    """A ``SupervisorError`` carrying OTP's reason (``.reason``) and the child id."""
    err = SupervisorError(message)
    err.reason = reason
    err.child = child
    return err


def _describe(exit: ChildExit) -> str:
    if exit.exception is not None:
        return f"{exit.reason}: {exit.exception!r}"
    if exit.exit_code is not None and exit.reason == "exit":
        return f"exit code {exit.exit_code}"
    if exit.signal is not None:
        return f"killed by signal {exit.signal}"
    return exit.reason


class _Child:
    __slots__ = ("consecutive", "pending", "restarts", "run", "spec", "status")

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.run: Run | None = None
        self.status: ChildStatus = "stopped"
        self.restarts = 0  # restarts since the supervisor started
        self.consecutive = 0  # restarts since it last ran for min_uptime (backoff exponent)
        self.pending: object | None = None  # token of a delayed (backoff) restart


@dataclasses.dataclass(frozen=True, slots=True)
class _Exited:
    id: str
    run: Run
    exit: ChildExit


@dataclasses.dataclass(frozen=True, slots=True)
class _StartFailed:
    id: str
    exit: ChildExit


@dataclasses.dataclass(frozen=True, slots=True)
class _RestartDue:
    token: object
    ids: tuple[str, ...]


_STOP = object()


class Supervisor:
    """Starts children in order, restarts them by strategy, stops them in reverse.

    Strategies: ``"one_for_one"`` restarts only the child that ended;
    ``"one_for_all"`` stops every other child (reverse order) and restarts all;
    ``"rest_for_one"`` does that for the children started after it.

    Restart intensity: more than ``max_restarts`` restarts within
    ``max_seconds``, counted across all children, and the supervisor gives up:
    it stops every child in reverse order, ``wait()`` raises
    :class:`~foundation.errors.RestartIntensityExceeded` (whose ``__cause__`` is
    the last child's exception), and a parent supervisor sees this one as a
    crashed child. A failed restart counts as one more crash.

    Start: children start one at a time, each ready (see :class:`ChildSpec`)
    before the next. If one fails, those already started are stopped in reverse
    and :class:`~foundation.errors.StartError` names the child, with the cause
    as ``__cause__``. Stop: reverse order, each child within its
    ``shutdown_timeout``, then killed where its kind allows it (a task is
    cancelled at once; a process gets SIGTERM, then SIGKILL). A thread, or a
    task that swallows its cancellation, cannot be killed: it is abandoned (a
    daemon thread runs on unsupervised), reported as a ``"abandoned"`` exit,
    and ``stop()`` / ``terminate_child()`` raise
    :class:`~foundation.errors.ShutdownError` naming it after finishing the rest.

    ``backoff`` (a :class:`Backoff`) delays restarts; each still counts against
    the intensity when it is decided. ``min_uptime`` (default ``max_seconds``)
    is how long a run must last for its child to count as healthy again, which
    resets its backoff.

    With ``registry=``, each child's live handle is registered under its
    ``ChildSpec.key`` with ``replace=True`` on every (re)start, once ready (the
    ``{:via, Registry, ...}`` analogue): a lookup finds the current run or, in
    between, nothing (the registry drops dead agents), never a stale handle. A
    nested supervisor is registered as its ``task``. Registry calls run on the
    event loop: use a registry whose writes do not block for long.

    Management (async; from other threads use :meth:`run_in_thread`):
    ``start_child``, ``terminate_child``, ``restart_child``, ``delete_child``
    raise :class:`~foundation.errors.SupervisorError` whose ``.reason`` is OTP's
    (``"not_found"``, ``"running"``, ``"restarting"``, ``"already_started"``,
    ``"already_present"``, ...; see ``ChildErrorReason``) and ``.child`` the id.

    Telemetry (``foundation.telemetry``): ``supervisor.child_started``,
    ``supervisor.child_exited`` (``reason``, ``exception``, ``exit_code``,
    ``signal``, ``restart``), ``supervisor.child_restarted`` and
    ``supervisor.intensity_exceeded``; each carries ``supervisor`` and ``child``.

    Example:
        >>> import asyncio
        >>> from foundation.supervision import ChildSpec, Supervisor
        >>> async def worker(ctx, name):
        ...     ctx.ready()
        ...     await asyncio.Event().wait()  # serve until cancelled
        >>> async def main():
        ...     specs = [ChildSpec("db", worker, args=("db",)),
        ...              ChildSpec("web", worker, args=("web",))]
        ...     async with Supervisor(specs, strategy="rest_for_one") as sup:
        ...         return [(c.id, c.status) for c in sup.which_children()]
        >>> asyncio.run(main())
        [('db', 'running'), ('web', 'running')]
    """

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str | None = None,
        registry: Registry | None = None,
        backoff: Backoff | None = None,
        min_uptime: float | None = None,
    ) -> None:
        specs = tuple(children)
        seen: set[str] = set()
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise TypeError(f"children must be ChildSpec instances, not {spec!r}")
            if spec.id in seen:
                raise ValueError(f"duplicate child id {spec.id!r}")
            seen.add(spec.id)
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, not {strategy!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, not {max_restarts!r}")
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, not {max_seconds!r}")
        if min_uptime is not None and not min_uptime >= 0:
            raise ValueError(f"min_uptime must be >= 0 or None, not {min_uptime!r}")
        if backoff is not None and not isinstance(backoff, Backoff):
            raise TypeError(f"backoff must be a Backoff, not {backoff!r}")
        self._specs = specs
        self._strategy: Strategy = strategy
        self._max_restarts = max_restarts
        self._max_seconds = float(max_seconds)
        self._name = name if name is not None else f"supervisor-{id(self):x}"
        self._registry = registry
        self._backoff = backoff
        self._healthy_after = float(max_seconds if min_uptime is None else min_uptime)
        self._state: SupervisorState = "new"
        self._children: dict[str, _Child] = {}
        self._failure: SupervisorError | None = None
        self._main: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        self._timers: list[asyncio.TimerHandle] = []

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """This supervisor's name (used in thread, task and event names)."""
        return self._name

    @property
    def strategy(self) -> Strategy:
        """The restart strategy."""
        return self._strategy

    @property
    def state(self) -> SupervisorState:
        """``"new"``, ``"starting"``, ``"running"``, ``"stopping"``, ``"stopped"``
        or ``"failed"`` (gave up: restart intensity exceeded)."""
        return self._state

    @property
    def failure(self) -> SupervisorError | None:
        """Why it gave up, once ``state == "failed"``: a ``RestartIntensityExceeded``
        (or, for a defect in the supervisor itself, a ``SupervisorError`` whose
        ``__cause__`` is the defect); else ``None``."""
        return self._failure

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The asyncio task that supervises while running (what a registry is
        given for a nested supervisor); ``None`` before ``start()``."""
        return self._main

    def _done_future(self) -> asyncio.Future[None]:
        assert self._done is not None, "not started"
        return self._done

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name!r} {self._state} children={len(self._children)}>"
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start every child in order, each ready before the next.

        A stopped or failed supervisor may be started again: it starts afresh
        from the specs it was built with (children added later are gone).

        Raises:
            StartError: a child failed to start (``.child``; ``__cause__`` says
                why); the children already started were stopped in reverse.
            SupervisorError: already running (``.reason == "supervisor_running"``).
        """
        if self._state in ("starting", "running", "stopping"):
            raise _error("supervisor_running", None, f"supervisor {self._name!r} is {self._state}")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._children = {spec.id: _Child(spec) for spec in self._specs}
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._stop_requested: asyncio.Future[None] = loop.create_future()
        self._done = loop.create_future()
        self._failure = None
        self._restart_times: deque[float] = deque()
        self._main = None
        self._stop_task = None
        self._stopping = False
        self._state = "starting"
        async with self._lock:
            try:
                for child in list(self._children.values()):
                    await self._start_run(child)
            except BaseException:  # StartError, or start() itself cancelled: roll back
                self._stopping = True
                await self._shutdown_children()
                self._finish()
                raise
            self._main = loop.create_task(self._run(), name=f"supervisor {self._name}")
            self._state = "running"

    async def stop(self) -> None:
        """Stop every child in reverse order; idempotent.

        The stop runs in a task of its own: a caller that is itself a child of
        this supervisor (and so gets cancelled by it) does not cut it short.
        Concurrent callers share it and its outcome.

        Raises:
            ShutdownError: a child could not be stopped (an abandoned thread or
                task); every other child was stopped first.
        """
        if self._state in ("new", "stopped", "failed"):
            return
        if self._stop_task is None:
            self._stop_task = self._loop.create_task(
                self._stop_sequence(), name=f"stop supervisor {self._name}"
            )
            # Retrieved here so that an outcome nobody awaits is not logged.
            self._stop_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(self._stop_task)

    async def _stop_sequence(self) -> None:
        if self._stopping:  # a failed start or a give-up is under way
            await asyncio.shield(self._done_future())
            return
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        if self._main is not None:
            self._events.put_nowait(_STOP)
            await asyncio.wait({self._main})
        async with self._lock:  # management calls in flight finish (or fail) first
            abandoned = await self._shutdown_children()
            self._finish()
        if abandoned:
            raise ShutdownError(
                f"supervisor {self._name!r} stopped, but could not stop {abandoned}: "
                "abandoned (threads cannot be killed; they run on as daemon threads)"
            )

    async def wait(self) -> None:
        """Wait until this supervisor ends.

        Raises:
            RestartIntensityExceeded: it gave up (the same error as ``failure``).
            SupervisorError: never started (``.reason == "supervisor_not_running"``).
        """
        if self._done is None:
            raise _error("supervisor_not_running", None, f"supervisor {self._name!r} never started")
        await asyncio.shield(self._done)
        if self._failure is not None:
            raise self._failure

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def run_in_thread(self, *, name: str | None = None) -> SupervisorThread:
        """Start this supervisor on an event loop of its own, in a named thread.

        Returns a :class:`SupervisorThread` (also a context manager) exposing the
        management calls synchronously. Raises what :meth:`start` raises.
        """
        from foundation.supervision._thread import SupervisorThread

        return SupervisorThread(self, name=name)

    def _request_stop(self) -> None:
        if not self._stop_requested.done():
            self._stop_requested.set_result(None)

    def _has_ended(self) -> bool:
        return self._stopping

    def _finish(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._stopping = True
        self._request_stop()
        self._state = "failed" if self._failure is not None else "stopped"
        done = self._done_future()
        if not done.done():
            done.set_result(None)

    # ------------------------------------------------------------------ introspection
    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order (call on the supervisor's event loop)."""
        return [self._info(child) for child in self._children.values()]

    def count_children(self) -> ChildCounts:
        """How many specs, running children, supervisors and workers."""
        children = self._children.values()
        sups = sum(1 for c in children if c.spec.kind == "supervisor")
        return ChildCounts(
            specs=len(self._children),
            active=sum(1 for c in children if c.status == "running"),
            supervisors=sups,
            workers=len(self._children) - sups,
        )

    def _info(self, child: _Child) -> ChildInfo:
        run = child.run
        handle = run.handle if run is not None and child.status == "running" else None
        spec = child.spec
        assert spec.kind is not None
        return ChildInfo(spec.id, spec.kind, spec.restart, child.status, handle, child.restarts)

    # ------------------------------------------------------------------ management
    def _require_running(self) -> None:
        if self._state != "running" or self._stopping:
            raise _error(
                "supervisor_not_running", None, f"supervisor {self._name!r} is {self._state}"
            )

    def _get(self, id: str) -> _Child:
        child = self._children.get(id)
        if child is None:
            raise _error("not_found", id, f"supervisor {self._name!r} has no child {id!r}")
        return child

    async def start_child(self, spec: ChildSpec, /) -> ChildInfo:
        """Add ``spec`` after the existing children and start it.

        Raises:
            SupervisorError: ``.reason`` ``"already_started"`` (the id runs),
                ``"already_present"`` (the id is held by a stopped child; use
                ``restart_child`` or ``delete_child``), ``"supervisor_not_running"``.
            StartError: it failed to start (its spec is not kept).
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child takes a ChildSpec, not {spec!r}")
        self._require_running()
        async with self._lock:
            self._require_running()
            existing = self._children.get(spec.id)
            if existing is not None:
                if existing.status == "stopped":
                    raise _error(
                        "already_present", spec.id, f"child {spec.id!r} is already present"
                    )
                raise _error("already_started", spec.id, f"child {spec.id!r} is already started")
            self._admit(spec)
            child = _Child(spec)
            self._children[spec.id] = child
            try:
                await self._start_run(child)
            except BaseException:
                self._children.pop(spec.id, None)
                raise
            return self._info(child)

    def _admit(self, spec: ChildSpec) -> None:
        """Hook: refuse a new child (called under the lock)."""

    async def terminate_child(self, id: str) -> None:
        """Stop child ``id`` (no restart); its spec stays, except a temporary child's.

        Raises:
            SupervisorError: ``.reason == "not_found"``.
            ShutdownError: it had to be abandoned (a thread that did not stop).
        """
        self._require_running()
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            child = self._get(id)
            exit = await self._terminate_child(child)
        if exit is not None and exit.reason == "abandoned":
            raise ShutdownError(f"child {id!r} did not stop in time and was abandoned")

    async def _terminate_child(self, child: _Child) -> ChildExit | None:
        child.pending = None  # cancels a delayed restart
        exit = await self._terminate(child) if child.run is not None else None
        child.status = "stopped"
        if child.spec.restart == "temporary":
            self._children.pop(child.spec.id, None)
        return exit

    async def restart_child(self, id: str) -> ChildInfo:
        """Start again a child that is stopped (terminated, or ended and not restarted).

        Raises:
            SupervisorError: ``.reason`` ``"not_found"``, ``"running"``, ``"restarting"``.
            StartError: it failed to start (it stays stopped).
        """
        self._require_running()
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            child = self._get(id)
            self._require_stopped(child, "restart")
            await self._start_run(child)
            return self._info(child)

    async def delete_child(self, id: str) -> None:
        """Forget the spec of a stopped child.

        Raises:
            SupervisorError: ``.reason`` ``"not_found"``, ``"running"``, ``"restarting"``.
        """
        self._require_running()
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            child = self._get(id)
            self._require_stopped(child, "delete")
            del self._children[id]

    def _require_stopped(self, child: _Child, verb: str) -> None:
        if child.status != "stopped":
            raise _error(
                child.status,
                child.spec.id,
                f"cannot {verb} child {child.spec.id!r}: it is {child.status}; terminate it first",
            )

    # ------------------------------------------------------------------ starting a run
    async def _start_run(self, child: _Child, *, restarted: bool = False) -> None:
        """Launch one run of ``child`` and wait until it is ready and registered."""
        spec = child.spec
        run = make_run(spec, self._name, child.restarts)
        child.run = run  # recorded before any await: a stop in between sees and stops it
        launched = False
        try:
            await run.launch()
            launched = True
            await self._await_ready(run)
            self._register(run)
        except BaseException as exc:
            run.discarded = True
            if child.run is run:
                child.run = None
            child.status = "stopped"
            if launched:
                await asyncio.shield(run.shutdown(spec.shutdown_timeout))
            if not isinstance(exc, Exception):
                raise
            raise StartError(
                spec.id, f"child {spec.id!r} of supervisor {self._name!r} failed to start: {exc}"
            ) from exc
        child.status = "running"
        run.started_at = self._loop.time()
        # Added after readiness: an exit before ready is a failed start, not a crash.
        # A run already ended by now still gets its event (callback on a done future).
        run.exited.add_done_callback(partial(self._on_exit, spec.id, run))
        if telemetry.has_listeners("supervisor.child_started"):
            telemetry.emit(
                "supervisor.child_started",
                {
                    "supervisor": self._name,
                    "child": spec.id,
                    "kind": spec.kind,
                    "handle": run.handle,
                    "attempt": run.attempt,
                },
            )
        if restarted and telemetry.has_listeners("supervisor.child_restarted"):
            telemetry.emit(
                "supervisor.child_restarted",
                {
                    "supervisor": self._name,
                    "child": spec.id,
                    "handle": run.handle,
                    "restarts": child.restarts,
                },
            )

    async def _await_ready(self, run: Run) -> None:
        if run.ready.done():
            return
        waiters: set[asyncio.Future[Any]] = {run.ready, run.exited, self._stop_requested}
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
            raise RuntimeError(f"it ended before it was ready ({_describe(exit)})")
        if self._stop_requested.done():
            raise RuntimeError(f"supervisor {self._name!r} is stopping")
        raise TimeoutError(f"it was not ready within {run.spec.ready_timeout} s")

    def _register(self, run: Run) -> None:
        if self._registry is None:
            return
        spec = run.spec
        # NotAlive: it died just after signalling ready; its exit event is on its way.
        with contextlib.suppress(NotAlive):
            self._registry.register(spec.key, run.agent, spec.metadata, replace=True)

    def _unregister_if_current(self, run: Run) -> None:
        """Drop the registration of an abandoned run (still alive, no longer supervised)."""
        if self._registry is None:
            return
        entry = self._registry.lookup(run.spec.key)
        if entry is not None and entry.agent is run.agent:
            self._registry.unregister(run.spec.key)

    # ------------------------------------------------------------------ stopping runs
    async def _terminate(self, child: _Child, *, restart: bool = False) -> ChildExit:
        run = child.run
        assert run is not None
        # Shielded: if our caller is cancelled the stop sequence still completes.
        exit = await asyncio.shield(run.shutdown(child.spec.shutdown_timeout))
        if child.run is run:
            child.run = None
        child.status = "stopped"
        if exit.reason == "abandoned":
            self._unregister_if_current(run)
        self._emit_exit(child, exit, restart=restart)
        return exit

    async def _shutdown_children(self) -> list[str]:
        """Stop every running child in reverse start order; returns the abandoned."""
        abandoned = []
        for child in reversed(list(self._children.values())):
            child.pending = None
            if child.run is not None:
                exit = await self._terminate(child)
                if exit.reason == "abandoned":
                    abandoned.append(child.spec.id)
            child.status = "stopped"
        return abandoned

    # ------------------------------------------------------------------ supervising
    def _on_exit(self, id: str, run: Run, fut: asyncio.Future[ChildExit]) -> None:
        if not self._stopping and not run.stopping:
            self._events.put_nowait(_Exited(id, run, fut.result()))

    async def _run(self) -> None:
        """The supervising task: handle exits and due restarts, one at a time."""
        while True:
            event = await self._events.get()
            if event is _STOP or self._stopping:
                return
            async with self._lock:
                if self._has_ended():  # a stop began while we waited for the lock
                    return
                try:
                    await self._handle(event)
                except Exception as exc:  # a defect: fail loudly rather than stop supervising
                    await self._give_up_on_defect(exc)
                    return
                if self._has_ended():  # gave up while handling it
                    return

    async def _handle(self, event: object) -> None:
        if isinstance(event, _Exited):
            child = self._children.get(event.id)
            # Stale events are dropped: the run was replaced, or stopped on purpose
            # (a strategy may stop a sibling whose own exit is already queued).
            if child is None or child.run is not event.run or event.run.stopping:
                return
            child.run = None
            uptime = self._loop.time() - event.run.started_at
            await self._child_down(child, event.exit, uptime)
        elif isinstance(event, _StartFailed):
            child = self._children.get(event.id)
            if child is None or child.status != "restarting" or child.run is not None:
                return
            await self._child_down(child, event.exit, 0.0)
        elif isinstance(event, _RestartDue):
            due = []
            for id in event.ids:
                child = self._children.get(id)
                if child is not None and child.pending is event.token:
                    child.pending = None
                    due.append(id)
            await self._restart(due)

    async def _child_down(self, child: _Child, exit: ChildExit, uptime: float) -> None:
        spec = child.spec
        restart = spec.restart == "permanent" or (spec.restart == "transient" and exit.abnormal)
        if not restart:
            self._emit_exit(child, exit, restart=False)
            child.status = "stopped"
            if spec.restart == "temporary":
                del self._children[spec.id]
            return
        now = self._loop.time()
        window = self._restart_times
        window.append(now)
        while window and window[0] <= now - self._max_seconds:
            window.popleft()
        if len(window) > self._max_restarts:
            self._emit_exit(child, exit, restart=False)
            await self._give_up(child, exit)
            return
        self._emit_exit(child, exit, restart=True)
        if uptime >= self._healthy_after:
            child.consecutive = 0
        child.consecutive += 1
        child.status = "restarting"
        scope = self._scope(child)
        for other in reversed(scope):
            if other is child or other.run is None:
                continue
            await self._terminate(other, restart=other.spec.restart != "temporary")
            if other.spec.restart == "temporary":
                del self._children[other.spec.id]  # OTP: never restarted, spec dropped
            else:
                other.status = "restarting"
        ids = tuple(
            c.spec.id for c in scope if c.spec.id in self._children and c.status == "restarting"
        )
        delay = self._backoff.delay(child.consecutive) if self._backoff is not None else 0.0
        # This round takes over any delayed restart still pending in its scope,
        # so the whole scope restarts together, in start order.
        token = object() if delay > 0 else None
        for id in ids:
            self._children[id].pending = token
        if delay > 0:
            self._timers = [t for t in self._timers if not t.cancelled()]
            self._timers.append(
                self._loop.call_later(delay, self._events.put_nowait, _RestartDue(token, ids))
            )
            return
        await self._restart(ids)

    def _scope(self, child: _Child) -> list[_Child]:
        if self._strategy == "one_for_one":
            return [child]
        children = list(self._children.values())
        if self._strategy == "one_for_all":
            return children
        return children[children.index(child) :]

    async def _restart(self, ids: Iterable[str]) -> None:
        for id in ids:
            if self._stopping:
                return
            child = self._children.get(id)
            if child is None or child.status != "restarting" or child.pending is not None:
                continue
            child.restarts += 1
            try:
                await self._start_run(child, restarted=True)
            except StartError as err:
                # A failed restart is one more crash: the strategy runs again for it
                # (and counts it), and the children after it stay "restarting".
                child.status = "restarting"
                cause = err.__cause__ if err.__cause__ is not None else err
                self._events.put_nowait(_StartFailed(id, ChildExit("exception", exception=cause)))
                return

    async def _give_up(self, child: _Child, exit: ChildExit) -> None:
        err = RestartIntensityExceeded(
            f"supervisor {self._name!r} gave up: more than {self._max_restarts} restarts "
            f"within {self._max_seconds:g} s; last, child {child.spec.id!r} ended "
            f"({_describe(exit)})"
        )
        err.__cause__ = exit.exception
        self._failure = err
        if telemetry.has_listeners("supervisor.intensity_exceeded"):
            telemetry.emit(
                "supervisor.intensity_exceeded",
                {
                    "supervisor": self._name,
                    "child": child.spec.id,
                    "max_restarts": self._max_restarts,
                    "max_seconds": self._max_seconds,
                    "error": err,
                },
            )
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        child.status = "stopped"
        await self._shutdown_children()
        self._finish()

    async def _give_up_on_defect(self, exc: Exception) -> None:
        err = SupervisorError(f"supervisor {self._name!r} failed: {exc!r}")
        err.__cause__ = exc
        self._failure = err
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        await self._shutdown_children()
        self._finish()

    def _emit_exit(self, child: _Child, exit: ChildExit, *, restart: bool) -> None:
        if telemetry.has_listeners("supervisor.child_exited"):
            telemetry.emit(
                "supervisor.child_exited",
                {
                    "supervisor": self._name,
                    "child": child.spec.id,
                    "reason": exit.reason,
                    "exception": exit.exception,
                    "exit_code": exit.exit_code,
                    "signal": exit.signal,
                    "restart": restart,
                },
            )


class DynamicSupervisor(Supervisor):
    """A one_for_one supervisor whose children are added at run time.

    With a ``template`` spec, ``start_child(*extra_args)`` starts a child from
    it with ``extra_args`` appended to its ``args``, an id ``"<template id>-<n>"``
    (or ``id=``), and registers it under ``register_as=`` or its own id (the
    template's ``register_as`` is not used: children would share one key).
    Without one, ``start_child(spec)`` takes a full :class:`ChildSpec`. As in
    Elixir's DynamicSupervisor, ``terminate_child`` also deletes the child.

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
        if max_children is not None and not max_children >= 0:
            raise ValueError(f"max_children must be >= 0 or None, not {max_children!r}")
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
        else:
            template = self.template
            spec = dataclasses.replace(
                template,
                id=f"{template.id}-{next(self._serial)}" if id is None else id,
                args=(*template.args, *args),
                register_as=register_as,
                metadata=template.metadata if metadata is None else metadata,
            )
        return await super().start_child(spec)

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
