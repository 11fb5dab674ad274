"""The supervising task of a ``Supervisor``: it handles each child's exit (restart
type, intensity, strategy, backoff), runs the restarts, and ends the supervisor
when it gives up, shuts down automatically (``auto_shutdown``) or is killed
(its task cancelled from outside)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from foundation.errors import StartError, SupervisorError
from foundation.supervision import _reports as reports
from foundation.supervision._child import StopRequested
from foundation.supervision._child_errors import _error
from foundation.supervision._events import _STOP, _Exited, _RestartDue, _Round, _StartFailed
from foundation.supervision._notices import (
    announce_intensity_exceeded,
    emit_exit,
    intensity_error,
    report_exit,
)
from foundation.supervision._restart_plan import (
    _restarts_after,
    auto_shutdown_rule,
    intensity_exceeded,
    next_restart_delay,
    restart_action,
    restart_scope,
)
from foundation.supervision._shutdown import stop_scope
from foundation.supervision._spec import ChildExit

if TYPE_CHECKING:
    import asyncio

    from foundation.supervision._child import _Child
    from foundation.supervision._runs import Run
    from foundation.supervision._spec import AutoShutdown, Backoff, ChildSpec, Strategy
    from foundation.supervision._supervisor import SupervisorState

__all__: list[str] = []


class _Supervising:
    """Mixin of ``Supervisor``: its supervising task and the restarts it runs.

    A mixin, not a collaborator: every handler reads and changes the tree's
    own state (children, statuses, ``_stopping``, ``_state``, ``_failure``)
    under the supervisor's lock, and ``DynamicSupervisor`` overrides the hooks
    it calls (``_keep_ignored``, ``_shutdown_children``).
    """

    if TYPE_CHECKING:
        # The Supervisor state this slice reads and writes (set by Supervisor),
        # declared for the type checker only: at run time, get_type_hints() of
        # Supervisor stays what it was.
        _name: str
        _label: str
        _strategy: Strategy
        _auto_shutdown: AutoShutdown
        _max_restarts: int
        _max_seconds: float
        _healthy_after: float
        _backoff: Backoff | None
        _children: dict[str, _Child]
        _state: SupervisorState
        _failure: SupervisorError | None
        _stopping: bool
        _timers: list[asyncio.TimerHandle]
        _loop: asyncio.AbstractEventLoop
        _events: asyncio.Queue[object]
        _lock: asyncio.Lock
        _restart_times: deque[tuple[float, str]]
        _stop_task: asyncio.Task[None] | None

        # What it calls of the Supervisor (defined there).
        def _has_ended(self) -> bool: ...
        def _request_stop(self) -> None: ...
        def _finish(self) -> None: ...
        def _keep_ignored(self, spec: ChildSpec) -> bool: ...
        async def _shutdown_children(self) -> list[str]: ...
        async def _start_run(self, child: _Child, *, restarted: bool = False) -> bool: ...
        async def _terminate(self, child: _Child, *, restart: bool = False) -> ChildExit: ...

    def _main_ended(self, task: asyncio.Task[None]) -> None:
        """The supervising task ended: fine when we stopped it, else it was killed.

        A cancellation while it runs is handled in ``_run`` itself; what is left
        here is a task cancelled before its first step, or a defect escaping it.
        """
        if self._stopping:
            return
        # Killed from outside (its task cancelled, as a parent or a user may do
        # with the handle a registry holds): nothing supervises the children
        # any more, so stop them and end failed; a parent then sees this
        # supervisor crash (its SupervisorRun watches the done future).
        if task.cancelled():
            self._killed("its task was cancelled", None)
        else:
            exc = task.exception()
            self._killed(reports._safe_repr(exc), exc)

    def _killed(self, why: str, cause: BaseException | None) -> asyncio.Task[None]:
        """Killed from outside: stop the children in a task of its own, end failed."""
        err = _error("killed", None, f"supervisor {self._name!r} was killed: {why}")
        if cause is not None:
            err.__cause__ = cause
        self._failure = err
        return self._end_on_its_own("killed", f"stop killed supervisor {self._name}")

    def _end_on_its_own(self, reason: str, name: str) -> asyncio.Task[None]:
        """Stop every child and end, reported with ``reason``, in ``_stop_task``
        (a ``stop()`` meanwhile shares it)."""
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        self._stop_task = self._loop.create_task(self._ending_sequence(reason), name=name)
        self._stop_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._stop_task

    async def _ending_sequence(self, reason: str) -> None:
        # Race: the task may have been cancelled while it held the lock (in the
        # middle of a restart); the lock is released by then (async with), and a
        # management call in flight finishes first.
        async with self._lock:
            await self._shutdown_children()
            self._finish()
        reports.supervisor_stopped(self._name, reason=reason)

    async def _cancelled(self, probe: asyncio.Task[None]) -> None:
        """The running supervising task was cancelled: end, and return once ended.

        Awaited by that task itself, so whoever waits for it (``asyncio.run``
        cancelling every task at its end, a closing ``run_in_thread`` loop)
        waits for the children's stop too: nothing is left pending on a
        closed loop. A cancellation that reached ``probe`` too (a task only
        this supervisor knows) cancelled every task of the loop: the loop is
        closing (``asyncio.run`` ending, a ``run_in_thread`` start rolled back
        by Ctrl-C) and the tree stops with it, a shutdown as the parent's
        own would order, not a kill. One that reached this task alone is a
        kill from outside.
        """
        import asyncio

        if probe.cancelled() or probe.cancelling():
            ending = self._end_on_its_own("shutdown", f"stop supervisor {self._name}")
        else:
            ending = self._killed("its task was cancelled", None)
        await asyncio.shield(ending)

    def _on_exit(self, id: str, run: Run, fut: asyncio.Future[ChildExit]) -> None:
        if not self._stopping and not run.stopping:
            self._events.put_nowait(_Exited(id, run, fut.result()))

    async def _run(self) -> None:
        """The supervising task (see ``_cancelled`` for its cancellation)."""
        import asyncio

        probe = self._loop.create_task(_until_cancelled(), name=f"probe of supervisor {self._name}")
        try:
            await self._supervise()
        except asyncio.CancelledError:
            if not self._stopping:
                await self._cancelled(probe)
            raise
        finally:
            probe.cancel()

    async def _supervise(self) -> None:
        """Handle exits and due restarts, one at a time, until stopped."""
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
            # Not kept while waiting for the next one: an exit event holds the
            # ended run, so its spec's start arguments and its exception.
            del event

    async def _handle(self, event: object) -> None:
        if isinstance(event, _Exited):
            await self._on_exited(event)
        elif isinstance(event, _StartFailed):
            await self._on_start_failed(event)
        elif isinstance(event, _RestartDue):
            await self._on_restart_due(event)

    async def _on_exited(self, event: _Exited) -> None:
        """A run ended: apply the child's restart policy, unless the event is stale."""
        child = self._children.get(event.id)
        # Stale events are dropped: the run was replaced, or stopped on purpose
        # (a strategy may stop a sibling whose own exit is already queued).
        if child is None or child.run is not event.run or event.run.stopping:
            return
        child.run = None
        uptime = self._loop.time() - event.run.started_at
        await self._child_down(child, event.exit, uptime)

    async def _on_start_failed(self, event: _StartFailed) -> None:
        """A restart failed: count it as the child going down again (already reported)."""
        child = self._children.get(event.id)
        if child is None or child.status != "restarting" or child.run is not None:
            return
        await self._child_down(child, event.exit, 0.0, reported=True)

    async def _on_restart_due(self, event: _RestartDue) -> None:
        """A delayed restart round is due: restart its children still waiting for it."""
        due = []
        for id in event.ids:
            child = self._children.get(id)
            if child is not None and child.pending is event.token:
                child.pending = None
                due.append(id)
        await self._restart(due)

    async def _child_down(
        self, child: _Child, exit: ChildExit, uptime: float, *, reported: bool = False
    ) -> None:
        """Apply the restart type, intensity and strategy to a child's own exit.

        ``reported``: a failed restart, already logged by ``start_failed``.
        """
        spec = child.spec
        if not _restarts_after(spec, exit):
            await self._ended_for_good(child, exit)
            return
        window = self._restart_times
        now = self._loop.time()
        if intensity_exceeded(window, now, spec.id, self._max_restarts, self._max_seconds):
            emit_exit(self._name, child, exit, restart=False, label=self._label)
            if not reported:
                report_exit(self._name, child, exit, "shutdown (restart intensity exceeded)")
            await self._give_up(child, exit)
            return
        emit_exit(self._name, child, exit, restart=True, label=self._label)
        delay = next_restart_delay(child, uptime, self._healthy_after, self._backoff)
        if not reported:
            report_exit(self._name, child, exit, restart_action(self._strategy, delay))
        child.status = "restarting"
        planned = restart_scope(self._strategy, self._children, child)
        await stop_scope(self._children, child, planned, self._terminate)
        await self._restart_round(spec, planned, delay)

    async def _restart_round(self, spec: ChildSpec, scope: list[_Child], delay: float) -> None:
        """Restart the stopped children of ``scope`` (``spec``'s round) now or after ``delay``."""
        ids = tuple(
            c.spec.id for c in scope if c.spec.id in self._children and c.status == "restarting"
        )
        # This round takes over any delayed restart still pending in its scope,
        # so the whole scope restarts together, in start order.
        token = _Round(spec.id) if delay > 0 else None
        for id in ids:
            self._children[id].pending = token
        if delay > 0:
            self._timers = [t for t in self._timers if not t.cancelled()]
            self._timers.append(
                self._loop.call_later(delay, self._events.put_nowait, _RestartDue(token, ids))
            )
            return
        await self._restart(ids)

    async def _ended_for_good(self, child: _Child, exit: ChildExit) -> None:
        """A child that is not restarted: stop it, report, maybe shut down (auto_shutdown)."""
        spec = child.spec
        emit_exit(self._name, child, exit, restart=False, label=self._label)
        child.status = "stopped"
        if spec.restart == "temporary" or not self._keep_ignored(spec):
            # OTP: a temporary child's spec is dropped, and so is a dynamic
            # child's (a DynamicSupervisor, simple_one_for_one's do_restart:
            # state_del_child for a transient child's normal exit); a dynamic
            # row cannot be restarted nor deleted, so a kept one would hold a
            # max_children slot for good.
            del self._children[spec.id]
        rule = auto_shutdown_rule(self._auto_shutdown, self._children, child)
        if rule is not None:
            action = "shutdown (significant)"
        elif spec.restart == "temporary":
            action = "no_restart (temporary)"
        elif exit.reason == "normal":
            action = "no_restart (transient, normal exit)"
        else:  # shutdown: a nested supervisor that gave up, say
            action = "no_restart (transient, shutdown)"
        report_exit(self._name, child, exit, action)
        if rule is not None:
            reports.auto_shutdown(self._name, spec.id, rule=rule)
            await self._shut_down_automatically()

    async def _shut_down_automatically(self) -> None:
        """auto_shutdown: stop every child and end normally (no failure)."""
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        await self._shutdown_children()
        self._finish()
        reports.supervisor_stopped(self._name, reason="shutdown")

    async def _restart(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        for n, id in enumerate(ids):
            if self._stopping:
                return
            child = self._children.get(id)
            if child is None or child.status != "restarting" or child.pending is not None:
                continue
            child.restarts += 1
            try:
                started = await self._start_run(child, restarted=True)
            except StartError as err:
                self._restart_failed(id, child, ids[n + 1 :], err)
                return
            if not started and not self._keep_ignored(child.spec):
                # OTP: a restart returning ignore leaves a static child's spec
                # (pid undefined) but removes a temporary or dynamic child.
                self._children.pop(id, None)

    def _restart_failed(self, id: str, child: _Child, later: list[str], err: StartError) -> None:
        """Child ``id`` failed to restart: queue it as a crash; ``later`` ones wait stopped.

        Not a start the supervisor's stop cut short: no crash, the stop goes on."""
        if isinstance(err.__cause__, StopRequested):
            return
        # A failed restart is one more crash: the strategy runs again for it
        # (and counts it). As OTP's restart_multiple_children, the failed
        # child is "restarting" and the ones after it that could not start
        # yet are "stopped" (pid undefined): the retry's scope includes
        # them, and if the failing child is terminated meanwhile they are
        # left stopped, restartable, never stuck.
        child.status = "restarting"
        for later_id in later:
            other = self._children.get(later_id)
            if other is not None and other.status == "restarting" and other.pending is None:
                other.status = "stopped"
        cause = err.__cause__ if err.__cause__ is not None else err
        self._events.put_nowait(_StartFailed(id, ChildExit("exception", exception=cause)))

    async def _give_up(self, child: _Child, exit: ChildExit) -> None:
        err = intensity_error(self._name, child, exit, self._max_restarts, self._max_seconds)
        self._failure = err
        announce_intensity_exceeded(
            self._name,
            child,
            err,
            max_restarts=self._max_restarts,
            max_seconds=self._max_seconds,
            history=self._restart_times,
            label=self._label,
        )
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        child.status = "stopped"
        await self._shutdown_children()
        self._finish()
        reports.supervisor_stopped(self._name, reason="reached_max_restart_intensity")

    async def _give_up_on_defect(self, exc: Exception) -> None:
        err = SupervisorError(f"supervisor {self._name!r} failed: {reports._safe_repr(exc)}")
        err.__cause__ = exc
        self._failure = err
        self._stopping = True
        self._state = "stopping"
        self._request_stop()
        await self._shutdown_children()
        self._finish()


async def _until_cancelled() -> None:
    """A supervisor's probe: waits until cancelled (see ``_Supervising._cancelled``)."""
    import asyncio

    await asyncio.get_running_loop().create_future()
