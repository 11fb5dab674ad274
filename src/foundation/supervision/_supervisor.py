"""Supervisor: OTP supervision on an asyncio event loop (``DynamicSupervisor``,
its variant whose children are added at run time, is in ``_dynamic``).

Concurrency model: every state change happens on the supervisor's event loop.
Child exits arrive as events on a queue consumed by one task (``_run``); that
task and the management calls hold one ``asyncio.Lock`` while they change the
tree, so a restart and a ``terminate_child`` never interleave. Readiness waits
also watch ``_stop_requested``, so a stop never waits behind a child that will
not become ready. From other threads, use :meth:`Supervisor.run_in_thread`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from foundation.errors import ShutdownError, StartError, SupervisorError
from foundation.supervision import _reports as reports
from foundation.supervision import _wakeup
from foundation.supervision._arguments import (
    _check_backoff_and_registry,
    _check_restart_policy,
    _checked_children,
)
from foundation.supervision._cancelled_stop import (
    cut_short_unless_watched,
    raised_on_exit,
    stop_past_cancel,
)
from foundation.supervision._child import (
    StopRequested,
    _Child,
    _describe,
    _ignored,
    await_ready,
    child_info,
    child_label,
    drop_run,
)
from foundation.supervision._child_errors import ChildErrorReason

# Re-exported: foundation.application imports it from here.
from foundation.supervision._child_errors import _error as _error  # noqa: PLC0414
from foundation.supervision._events import _STOP, _Round
from foundation.supervision._notices import announce_started, emit_exit, start_failure
from foundation.supervision._registration import _Registrations, stop_registrar
from foundation.supervision._runs import Run, make_run
from foundation.supervision._shutdown import _left_running, _why_abandoned, stop_in_reverse
from foundation.supervision._spec import (
    AutoShutdown,
    Backoff,
    ChildCounts,
    ChildExit,
    ChildInfo,
    ChildSpec,
    Strategy,
    _check_specs,
    check_childspecs,
    check_name,
)
from foundation.supervision._supervising import _Supervising

if TYPE_CHECKING:
    # asyncio is imported in the methods that use it: importing it costs more than
    # the rest of `import foundation`, and none of them runs before start().
    import asyncio

    from foundation.registry import Registry
    from foundation.supervision._thread import SupervisorThread

__all__ = ["ChildErrorReason", "Supervisor", "SupervisorState"]

SupervisorState = Literal["new", "starting", "running", "stopping", "stopped", "failed"]


class Supervisor(_Supervising):
    """Starts children in order, restarts them by strategy, stops them in reverse.

    Strategies: ``"one_for_one"`` restarts only the child that ended;
    ``"one_for_all"`` stops every other child (reverse order) and restarts all;
    ``"rest_for_one"`` does that for the children started after it.

    Restart intensity: more than ``max_restarts`` restarts within
    ``max_seconds``, counted across all children, and the supervisor gives up:
    it stops every child in reverse order, ``wait()`` raises
    :class:`~foundation.errors.RestartIntensityExceeded` (whose ``__cause__`` is
    the last child's exception), and a parent supervisor sees this one end
    with reason ``"shutdown"`` (OTP's ``shutdown``; the ``ChildExit`` carries
    the error, and the parent logs it as a crash report): a permanent child is
    restarted (counting against the parent's intensity), a transient one is
    not, and a significant one triggers ``auto_shutdown``. A failed restart
    counts as one more crash.

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

    In ``one_for_all`` and ``rest_for_one`` a restart restarts every child of
    its scope that has a spec, including siblings that were stopped (by
    ``terminate_child``, a normal transient exit, or ``ignore``), as OTP's
    ``restart_multiple_children`` does. When such a restart fails, the child
    that failed is ``"restarting"`` (it is retried, each retry one more crash)
    and the siblings after it that could not start yet are ``"stopped"``
    (OTP's pid ``undefined``): a ``terminate_child`` of the failing child
    leaves them restartable with ``restart_child`` and deletable. So does a
    ``terminate_child`` of a child whose restart waits for its ``backoff``
    delay, and the siblings of its round started before it are restarted at
    once (in OTP they would be running again already).

    Brutal kill: a child with ``shutdown_timeout=0`` is killed without an
    orderly stop: a process gets SIGKILL at once (and is waited for, as OTP
    waits for the ``'DOWN'``); a task is cancelled and given only the few loop
    turns its cancellation takes (one that swallows it is abandoned); a thread,
    which cannot be killed, is abandoned at once (``"abandoned"``, so
    ``stop()``/``terminate_child()`` raise ``ShutdownError`` for it).

    Closed: a ``Supervisor`` is not a closeable. ``stop()`` ends a run and
    ``start()`` may begin another, so a stopped supervisor is between runs,
    not closed: its management calls (``start_child``, ``terminate_child``,
    ``restart_child``, ``delete_child``) raise ``SupervisorError`` with
    ``reason == "supervisor_not_running"`` (OTP's ``noproc``), and
    ``which_children()`` and friends show the children as they ended. The
    closeable is the handle of :meth:`run_in_thread`, whose event loop ends
    with it: after its ``stop()`` every call raises ``errors.Closed``.

    Significant children and ``auto_shutdown`` (OTP 24): with
    ``auto_shutdown="any_significant"`` the supervisor stops itself (normally,
    no failure) when a ``significant`` child ends on its own and is not
    restarted (a temporary one after any exit, a transient one after a normal
    or ``"shutdown"`` exit, such as a nested supervisor giving up); with
    ``"all_significant"`` when the last running significant child does.
    Exits the supervisor causes (``terminate_child``, a strategy's restart,
    its own stop) never trigger it. ``"never"`` (the default) refuses
    significant children.

    Ignore: a child calling ``ctx.ignore()`` instead of ``ctx.ready()`` is
    not running but its spec is kept, ``"stopped"`` (a temporary child's spec
    is dropped); one_for_all/rest_for_one restarts start it again.

    A supervisor killed from outside (its :attr:`task` cancelled) notices: it
    stops its children in reverse order and ends failed (a ``SupervisorError``
    with ``reason == "killed"``), so a parent sees a crashed child and applies
    its restart policy.

    ``backoff`` (a :class:`Backoff`) delays restarts; each still counts against
    the intensity when it is decided. ``min_uptime`` (default ``max_seconds``)
    is how long a run must last for its child to count as healthy again, which
    resets its backoff.

    With ``registry=``, each child's live handle is registered under its
    ``ChildSpec.key`` on every (re)start, once ready (the ``{:via, Registry,
    ...}`` analogue): a lookup finds the current run or, in between, nothing
    (the registry drops dead agents), never a stale handle. As ``:via`` does,
    a key held by a live agent that is not this child's previous run is
    refused: the start fails (``StartError`` with ``.reason ==
    "already_started"`` and the holder as ``.handle``); the child's own earlier
    registration is replaced. Two children of one supervisor may not share a
    key (``ValueError``). A nested supervisor is registered as its ``task``.
    Every registry write goes through the registry's async face (its executor),
    so a slow or frozen backend never blocks the event loop; the writes for one
    child are made one at a time, in order.

    Registry outages (degraded mode): a child whose registration fails with
    :class:`~foundation.errors.BackendUnavailable`, or is still pending after
    ``registration_wait`` seconds (a frozen server), has *not* failed: it runs
    (status ``"running"``, ``ChildInfo.registered`` False) and the registration
    is retried in the background (full-jitter exponential backoff, 0.05 s base,
    2 s cap) until it succeeds, the run ends (the retry is cancelled) or the
    supervisor stops. An outage never stops a healthy child and never counts
    towards the restart intensity. Each episode is logged on the
    ``foundation.supervision`` logger (WARNING when degraded, INFO when
    restored) and emitted as telemetry ``foundation.supervision.registration_degraded``
    and ``foundation.supervision.registration_restored`` (``supervisor``,
    ``child``, ``key``, ``error``; the latter also ``attempts`` and
    ``seconds``). Any other registry error (``InvalidKey``, ``InvalidMetadata``,
    ...) fails the start as before; one that arrives only after the child was
    let run is logged as an ERROR and the retrying stops.

    Management (async; from other threads use :meth:`run_in_thread`):
    ``start_child``, ``terminate_child``, ``restart_child``, ``delete_child``
    raise :class:`~foundation.errors.SupervisorError` whose ``.reason`` is OTP's
    (``"not_found"``, ``"running"``, ``"restarting"``, ``"already_started"``
    with the running ``.handle``, ``"already_present"``, ...; see
    ``ChildErrorReason``) and ``.child`` the id. ``which_child``,
    ``get_childspec`` and ``check_childspecs`` answer without changing anything.

    Name: ``name=`` names it in logs, telemetry, metric labels, task and
    thread names (never in a registry: ``register_as`` is the child's key).
    A given name follows child ids' rule (``InvalidConfig``, a ``ValueError``,
    otherwise): a non-empty str of at most 200 characters with no control
    character, line separator, bidirectional control or lone surrogate.
    Unnamed, it is ``"supervisor-<hex id>"`` (unique among live ones) on its
    own, and when a parent starts it as a child (a ``kind="supervisor"`` spec,
    an instance or a factory), its place in the tree ``"<parent name>/<child
    id>"`` (``"app/workers/pool"``): the same for every restart, even of a
    factory's fresh tree, so a crash loop keeps one set of metric series, and
    distinct under two differently named parents. A given ``name`` is kept; an
    instance keeps the path it last took (renamed when started under another).

    Reports: every event it handles is logged through ``logging`` (crash,
    progress and supervisor reports; see ``foundation.supervision._reports``).

    Telemetry (``foundation.telemetry``): ``supervisor.child_started``,
    ``supervisor.child_exited`` (``reason``, ``exception``, ``exit_code``,
    ``signal``, ``restart``), ``supervisor.child_restarted``,
    ``supervisor.intensity_exceeded`` and the degraded-mode events (above, and
    ``foundation.supervision.registration_abandoned``); each carries
    ``supervisor`` and ``child`` (names), ``template`` (the id of the
    ``DynamicSupervisor`` template the child was made from, else None) and
    ``supervisor_label`` (the name with such a child's id in its path replaced
    by its template's): metric labels use the last two, bounded by the tree's
    shape however many dynamic children were started.

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

    #: Seconds a start waits for a child's registration before letting it run
    #: unregistered (degraded mode) while the write finishes in the background.
    registration_wait: float = 1.0
    #: Backoff of the background registration retries: full jitter, exponential.
    registration_retry_base: float = 0.05
    registration_retry_cap: float = 2.0

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
        auto_shutdown: AutoShutdown = "never",
    ) -> None:
        if name is not None:
            check_name("a supervisor name", name)
        specs = _checked_children(children, auto_shutdown)
        _check_restart_policy(strategy, max_restarts, max_seconds, min_uptime)
        _check_backoff_and_registry(backoff, registry)
        self._specs = specs
        self._auto_shutdown: AutoShutdown = auto_shutdown
        self._strategy: Strategy = strategy
        self._max_restarts = max_restarts
        self._max_seconds = float(max_seconds)
        # Unnamed: unique while it runs on its own; run as a child, it takes its
        # place in the tree as its name (SupervisorRun.launch), the same on every
        # restart, so its logs, telemetry and metric labels stay one series.
        self._named = name is not None
        self._name = name if name is not None else f"supervisor-{id(self):x}"
        # Its metric label: its name, but nested under a DynamicSupervisor's
        # template child, the path with the template's id in place of the
        # instance's ("app/pool/conn", not "app/pool/conn-17"): one series per
        # place in the tree however many instances were started.
        self._label = self._name
        self._registry = registry
        self._backoff = backoff
        self._healthy_after = float(max_seconds if min_uptime is None else min_uptime)
        self._state: SupervisorState = "new"
        self._children: dict[str, _Child] = {}
        # Registry key -> child id, for the duplicate check of start_child in O(1).
        # Entries of removed children go stale (checked on read, pruned in bulk);
        # they hold the id only, never the spec: an ended temporary child's
        # start arguments are released with it (OTP's "do not save start
        # parameters for temporary children").
        self._keys: dict[Hashable, str] = {}
        self._failure: SupervisorError | None = None
        self._main: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._wakeup = False  # whether async with set up the signal wakeup fd (_wakeup.py)
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None
        # This run's stop: whether a caller reports its cut (watched_stop), and
        # whether that cut was reported (_cancelled_stop.py).
        self._stop_watched = False
        self._stop_cut_reported = False
        self._timers: list[asyncio.TimerHandle] = []

    # ------------------------------------------------------------------ properties
    @property
    def name(self) -> str:
        """This supervisor's name (in logs, telemetry, thread and task names);
        unnamed and run as a child, ``"<parent name>/<child id>"``. Its metric
        label is the same, but for a ``DynamicSupervisor`` template child's id
        in that path, replaced by the template's (the events' ``supervisor_label``)."""
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
        import asyncio

        if self._state in ("starting", "running", "stopping"):
            raise _error("supervisor_running", None, f"supervisor {self._name!r} is {self._state}")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._children = {spec.id: _Child(spec) for spec in self._specs}
        self._keys = {child.spec.key: child.spec.id for child in self._children.values()}
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._stop_requested: asyncio.Future[None] = loop.create_future()
        self._done = loop.create_future()
        self._failure = None
        self._restart_times: deque[tuple[float, str]] = deque()
        self._registrations = _Registrations(self, self._registry, loop, self._stop_requested)
        self._main = None
        self._stop_task = None
        self._stop_watched = self._stop_cut_reported = False
        self._stopping = False
        self._state = "starting"
        async with self._lock:
            try:
                for child in list(self._children.values()):
                    if not await self._start_run(child) and child.spec.restart == "temporary":
                        del self._children[child.spec.id]  # OTP: an ignored temporary child
            except BaseException:  # StartError, or start() itself cancelled: roll back
                self._stopping = True
                await self._shutdown_children()
                self._finish()
                raise
            self._main = loop.create_task(self._run(), name=f"supervisor {self._name}")
            self._main.add_done_callback(self._main_ended)
            self._state = "running"
        reports.supervisor_started(
            self._name, strategy=self._strategy, children=len(self._children)
        )

    async def stop(self) -> None:
        """Stop every child in reverse order; idempotent.

        The stop runs in a task of its own: a caller that is itself a child of
        this supervisor (and so gets cancelled by it) does not cut it short.
        Concurrent callers share it and its outcome. The loop's end cancelling
        it (``asyncio.run`` ending meanwhile) is one WARNING
        ``supervisor_stop_cut_short`` naming the children still running.

        Raises:
            ShutdownError: a child could not be stopped (an abandoned thread or
                task); every other child was stopped first.
        """
        import asyncio

        if self._state in ("new", "stopped", "failed"):
            return
        if self._stop_task is None:
            self._stop_task = self._loop.create_task(
                self._stop_sequence(), name=f"stop supervisor {self._name}"
            )
            # First of its callbacks: it runs before any waiter wakes.
            self._stop_task.add_done_callback(self._stop_ended)
        await asyncio.shield(self._stop_task)

    def _stop_ended(self, task: asyncio.Task[None]) -> None:
        """The stop's task ended. Cancelled before its end (``asyncio.run``
        ending while a direct ``await sup.stop()`` runs; before its first step
        too), WARNING ``supervisor_stop_cut_short`` naming the children still
        running, unless a caller of the stop reports it (see
        ``cut_short_unless_watched``). Its outcome is retrieved here, so that
        one nobody awaits is not logged."""
        if task.cancelled():
            cut_short_unless_watched(self)
        else:
            task.exception()

    async def _stop_sequence(self) -> None:
        import asyncio

        if self._stopping:  # a failed start or a give-up is under way
            await asyncio.shield(self._done_future())
            return
        self._stopping = True
        self._state = "stopping"
        for child in self._children.values():
            _watch_nested(child.run)  # (one stopped by a terminate_child under way too)
        self._request_stop()
        if self._main is not None:
            self._events.put_nowait(_STOP)
            await asyncio.wait({self._main})
        async with self._lock:  # management calls in flight finish (or fail) first
            abandoned = await self._shutdown_children()
            self._finish()
        reports.supervisor_stopped(self._name, reason="shutdown")
        if abandoned:
            # Named by what runs on (a nested supervisor's stuck child by its
            # path, "workers/stuck"), not by the supervisor that contains it.
            left = _left_running(self._children, abandoned)
            raise ShutdownError(
                f"supervisor {self._name!r} stopped, but could not stop "
                f"{[path for path, _ in left]}: "
                f"abandoned ({_why_abandoned({kind for _, kind in left})})"
            )

    async def wait(self) -> None:
        """Wait until this supervisor ends.

        Raises:
            RestartIntensityExceeded: it gave up (the same error as ``failure``).
            SupervisorError: never started (``.reason == "supervisor_not_running"``).
        """
        import asyncio

        if self._done is None:
            raise _error("supervisor_not_running", None, f"supervisor {self._name!r} never started")
        await asyncio.shield(self._done)
        if self._failure is not None:
            raise self._failure

    async def __aenter__(self) -> Self:
        import asyncio

        # A Ctrl-C under asyncio.run wakes the loop at once (_wakeup.py).
        loop = asyncio.get_running_loop()
        self._wakeup = _wakeup.install(loop)
        try:
            await self.start()
        except BaseException:
            _wakeup.uninstall(loop, self._wakeup)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every child (see :meth:`stop`). A cancellation meanwhile (a
        Ctrl-C under ``asyncio.run``, an ``asyncio.timeout()``) lets the stop
        under way go on to its end, INFO ``supervisor_stop_cancelled``, then goes
        on; a second one cuts that wait short, WARNING
        ``supervisor_stop_cut_short`` naming the children still running. A
        cancellation met in the block goes on too, not the ``ShutdownError``
        of a child abandoned meanwhile (its context; the child's WARNING)."""
        import asyncio

        met: list[asyncio.CancelledError] = []
        error: BaseException | None = None
        try:
            await stop_past_cancel(
                self, met.append, self._report_stop_cancelled, self._report_stop_cut_short
            )
        except BaseException as err:  # raised below, unless the cancellation goes first
            error = err
        finally:
            _wakeup.uninstall(asyncio.get_running_loop(), self._wakeup)
        raised = raised_on_exit(error, met[0] if met else None, exc)
        if raised is not None:
            raise raised

    def _report_stop_cancelled(self) -> None:
        reports.supervisor_stop_cancelled(self._name)

    def _report_stop_cut_short(self) -> None:
        reports.supervisor_stop_cut_short(self._name, children=running_paths(self))

    def run_in_thread(self, *, name: str | None = None) -> SupervisorThread:
        """Start this supervisor on an event loop of its own, in a named thread.

        Returns a :class:`SupervisorThread` (also a context manager) exposing the
        management calls synchronously. Raises what :meth:`start` raises, and
        ``StartError`` if the process has no thread or fd left for the loop's
        thread (nothing is left started).
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
        for child in self._children.values():
            stop_registrar(child)
            # Stopped: no write needs ordering any more. Its thread finishes on
            # its own (a late write of a stopped run meets a dead agent: NotAlive).
            write, child.write = child.write, None
            if write is not None:
                write.cancel()
        self._stopping = True
        self._request_stop()
        self._state = "failed" if self._failure is not None else "stopped"
        done = self._done_future()
        if not done.done():
            done.set_result(None)

    # ------------------------------------------------------------------ introspection
    def which_children(self) -> list[ChildInfo]:
        """Every child, in start order (call on the supervisor's event loop)."""
        return [child_info(child) for child in self._children.values()]

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

        A child that calls ``ctx.ignore()`` is kept ``"stopped"`` (a temporary
        one is not kept); the returned row says so (``handle`` ``None``).

        Raises:
            SupervisorError: ``.reason`` ``"already_started"`` (the id runs;
                ``.handle`` is the running child's), ``"already_present"``
                (the id is held by a stopped child, or one whose restart is
                pending; use ``restart_child`` or ``delete_child``),
                ``"supervisor_not_running"``.
            ValueError: its ``register_as`` key is another child's, or it is
                significant and ``auto_shutdown`` is ``"never"``.
            StartError: it failed to start (its spec is not kept); with
                ``.reason == "already_started"`` when its registry key is held
                by a live agent (``.handle``).
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child takes a ChildSpec, not {spec!r}")
        return await self._add_child(spec, None)

    async def _add_child(self, spec: ChildSpec, template: str | None) -> ChildInfo:
        """start_child: add ``spec`` (made from the template ``template``, if not None)."""
        self._require_running()
        async with self._lock:
            self._require_running()
            self._check_new_child(spec)
            self._admit(spec)
            child = _Child(spec, template)
            self._children[spec.id] = child
            self._keys[spec.key] = spec.id
            try:
                started = await self._start_run(child)
            except BaseException:
                self._children.pop(spec.id, None)
                raise
            info = child_info(child)
            if not started and not self._keep_ignored(spec):
                self._children.pop(spec.id, None)
            return info

    def _check_new_child(self, spec: ChildSpec) -> None:
        """start_child (lock held): raise unless ``spec``'s id and key are free and it fits."""
        existing = self._children.get(spec.id)
        if existing is not None:
            # OTP's handle_start_child: {already_started, Pid} only with a live
            # pid; a stopped child or a pending restart is already_present.
            if existing.status == "running" and existing.run is not None:
                raise _error(
                    "already_started",
                    spec.id,
                    f"child {spec.id!r} is already started",
                    handle=existing.run.handle,
                )
            raise _error("already_present", spec.id, f"child {spec.id!r} is already present")
        problem = _check_specs([spec], self._auto_shutdown)
        if problem is None and self._key_holder(spec.key) is not None:
            problem = f"duplicate register_as {spec.key!r} (child {spec.id!r})"
        if problem is not None:
            raise ValueError(problem)

    def _key_holder(self, key: Hashable) -> _Child | None:
        """The current child whose registry key is ``key``, if any."""
        if len(self._keys) > 2 * len(self._children) + 64:  # amortised pruning
            self._keys = {c.spec.key: c.spec.id for c in self._children.values()}
        id = self._keys.get(key)
        holder = self._children.get(id) if id is not None else None
        if holder is None or holder.spec.key != key:
            return None  # stale: that child was removed (or its id now has another key)
        return holder

    def _keep_ignored(self, spec: ChildSpec) -> bool:
        """Whether an ignored child's spec is kept (OTP: not a temporary one).

        ``False`` also drops a child that ended for good (``DynamicSupervisor``:
        a dynamic child is not kept stopped)."""
        return spec.restart != "temporary"

    def _admit(self, spec: ChildSpec) -> None:
        """Hook: refuse a new child (called under the lock)."""

    async def terminate_child(self, id: str) -> None:
        """Stop child ``id`` (no restart); its spec stays, except a temporary child's.

        Cancelling the caller (a timeout, or the child terminating itself)
        stops only the waiting: the terminate completes, and the child ends
        ``"stopped"`` (a dynamic child removed) as if the caller had waited.

        Raises:
            SupervisorError: ``.reason == "not_found"``.
            ShutdownError: it had to be abandoned (a thread that did not stop);
                for a nested supervisor that stopped but abandoned a child of
                its own, the message names it and ``__cause__`` is its error.
        """
        import asyncio

        self._require_running()
        # Race: the caller may be cancelled while the child stops (an
        # asyncio.wait_for timeout, a run_in_thread call timing out, or a task
        # child terminating itself, which that very stop cancels). Were the
        # terminate run in the caller, its bookkeeping after the stop (the row
        # "stopped", the exit reported, a dynamic child removed) would be
        # skipped, and nothing else would do it: the run's own exit event is
        # dropped because the run is stopping. So the whole terminate, lock
        # and bookkeeping included, runs in a task of its own, as OTP's
        # supervisor completes a call whose caller went away; cancelling the
        # caller only stops its waiting. Lock order is unchanged (the task
        # takes the lock as the caller did), and a stop() waits for the lock,
        # so it never overtakes a terminate in flight.
        task = self._loop.create_task(
            self._terminate_child_locked(id), name=f"terminate {id} of supervisor {self._name}"
        )
        # Retrieved here so that an outcome whose caller went away is not logged.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        exit = await asyncio.shield(task)
        if exit is not None and exit.reason == "abandoned":
            if isinstance(exit.exception, ShutdownError):  # a nested supervisor's
                raise ShutdownError(
                    f"child {id!r} (a supervisor) stopped, but could not stop a child "
                    f"of its own: {exit.exception}"
                ) from exit.exception
            raise ShutdownError(f"child {id!r} did not stop in time and was abandoned")

    async def _terminate_child_locked(self, id: str) -> ChildExit | None:
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            return await self._terminate_child(self._get(id))

    async def _terminate_child(self, child: _Child) -> ChildExit | None:
        round, child.pending = child.pending, None  # cancels a delayed restart
        earlier: list[str] = []
        if isinstance(round, _Round) and round.owner == child.spec.id:
            earlier = self._leave_round(child, round)
        exit = await self._terminate(child) if child.run is not None else None
        child.status = "stopped"
        if child.spec.restart == "temporary":
            self._children.pop(child.spec.id, None)
        await self._restart(earlier)
        return exit

    def _leave_round(self, child: _Child, round: _Round) -> list[str]:
        """``child``, whose delayed restart ``round`` is, is terminated: its
        siblings waiting in the round are taken out of it. Those started before
        it are returned, to be restarted now (OTP's ``restart_multiple_children``
        has them running again already); those after it are left stopped (OTP:
        pid undefined, restartable), not restarted without it nor stuck."""
        earlier: list[str] = []
        before = True
        for other in self._children.values():
            before = before and other is not child
            if other.pending is not round:
                continue
            other.pending = None
            if before:
                earlier.append(other.spec.id)  # still "restarting"
            else:
                other.status = "stopped"
        return earlier

    async def restart_child(self, id: str) -> ChildInfo:
        """Start again a child that is stopped (terminated, or ended and not restarted).

        A child that calls ``ctx.ignore()`` stays ``"stopped"``.

        Raises:
            SupervisorError: ``.reason`` ``"not_found"``, ``"running"``, ``"restarting"``.
            StartError: it failed to start (it stays stopped).
        """
        self._require_running()
        async with self._lock:
            self._require_running()  # it may have stopped or given up meanwhile
            child = self._get(id)
            self._require_stopped(child, "restart")
            started = await self._start_run(child)
            info = child_info(child)
            if not started and child.spec.restart == "temporary":
                self._children.pop(id, None)
            return info

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

    def which_child(self, id: str) -> ChildInfo:
        """The ``which_children()`` row of child ``id`` (OTP 26's ``which_child``).

        Raises:
            SupervisorError: ``.reason == "not_found"``.
        """
        return child_info(self._get(id))

    def get_childspec(self, id: str) -> ChildSpec:
        """The spec child ``id`` runs from (OTP's ``get_childspec``).

        Raises:
            SupervisorError: ``.reason == "not_found"``.
        """
        return self._get(id).spec

    @staticmethod
    def check_childspecs(
        specs: Iterable[object], auto_shutdown: AutoShutdown = "never"
    ) -> str | None:
        """``None`` if ``specs`` can be one supervisor's children, else why not
        (OTP's ``check_childspecs``; see :func:`foundation.supervision.check_childspecs`)."""
        return check_childspecs(specs, auto_shutdown)

    def _require_stopped(self, child: _Child, verb: str) -> None:
        if child.status != "stopped":
            raise _error(
                child.status,
                child.spec.id,
                f"cannot {verb} child {child.spec.id!r}: it is {child.status}; terminate it first",
            )

    # ------------------------------------------------------------------ starting a run
    async def _start_run(self, child: _Child, *, restarted: bool = False) -> bool:
        """Launch one run of ``child`` and wait until it is ready and registered.

        Returns False when the child ignored its start (``ctx.ignore()``): it
        is then ``"stopped"``, without a run.
        """
        import asyncio

        spec = child.spec
        run = make_run(spec, self._name, child.restarts)
        # A nested supervisor takes this as its label (see SupervisorRun.launch).
        run.label = f"{self._label}/{child_label(child)}"
        child.run = run  # recorded before any await: a stop in between sees and stops it
        launched = False
        try:
            await run.launch()
            launched = True
            await await_ready(run, self._stop_requested, self._name)
            if _ignored(run):
                drop_run(child, run)
                # It should be returning by now; one that goes on is stopped as usual.
                await asyncio.shield(self._shutdown_run(run))
                self._report_stop_error(child, run, action="ignore")
                reports.child_ignored(self._name, spec.id, str(spec.kind))
                return False
            await self._registrations.register(child, run)
        except BaseException as exc:
            # Its own end before it was ready is the failure (the start report's).
            ended = run.exited.done() and not run.ready.done()
            drop_run(child, run)
            if launched:
                await asyncio.shield(self._shutdown_run(run))
            error = self._start_error(child, run, exc, ended=ended)
            if error is None:
                raise
            raise error from exc
        child.status = "running"
        child.abandoned = None
        run.started_at = self._loop.time()
        # Added after readiness: an exit before ready is a failed start, not a crash.
        # A run already ended by now still gets its event (callback on a done future).
        run.exited.add_done_callback(partial(self._on_exit, spec.id, run))
        announce_started(self._name, child, run, restarted, label=self._label)
        return True

    # ------------------------------------------------------------------ stopping runs
    async def _terminate(self, child: _Child, *, restart: bool = False) -> ChildExit:
        import asyncio

        run = child.run
        assert run is not None
        # Shielded: if our caller is cancelled the stop sequence still completes.
        exit = await asyncio.shield(self._shutdown_run(run))
        if child.run is run:
            child.run = None
        child.status = "stopped"
        if exit.reason == "abandoned":
            child.abandoned = run.handle
            await self._registrations.unregister_if_current(child, run)
        else:
            # Ended: the registry's monitor drops it too, but on its own
            # thread, later (a process's pidfd thread): unregistered here, the
            # stop returns with no lookup answering the stopped run. Race-safe
            # against the next run's registration (see _unregister).
            await self._registrations.unregister_ended(child, run)
        self._report_stop_error(child, run, action="restart" if restart else "shutdown")
        emit_exit(self._name, child, exit, restart=restart, label=self._label)
        return exit

    def _report_stop_error(self, child: _Child, run: Run, *, action: str) -> None:
        """OTP's ``shutdown_error``: ``run``, stopped by this supervisor, ended
        otherwise than cleanly (its cleanup raised, a bad exit code), or crashed
        just before the stop reached it (its own exit event is dropped). Taken
        once: concurrent stops share it."""
        failure, run.stop_error = run.stop_error, None
        if failure is not None:
            reports.shutdown_error(
                self._name, child.spec.id, str(child.spec.kind), failure, action=action
            )

    def _start_error(
        self, child: _Child, run: Run, exc: BaseException, *, ended: bool
    ) -> StartError | None:
        """Report a start that did not complete (``exc``), its run stopped; the
        StartError to raise, ``None`` to re-raise ``exc`` (not an ``Exception``).

        A start cut short by this supervisor's stop (or ``start()`` cancelled)
        is no failed start: a run that did not end cleanly once stopped is a
        ``shutdown_error``, as any. A failed start is its one ``start_failed``
        report, never a ``shutdown_error`` as well (OTP's ``start_error``): when
        its stop failed too (a ready timeout, a refused registration, then a
        cleanup raising), the start error carries that in a note, in the
        report's traceback; a run whose own end failed the start has said so."""
        spec = child.spec
        if not isinstance(exc, Exception) or isinstance(exc, StopRequested):
            self._report_stop_error(child, run, action="shutdown")
            if not isinstance(exc, Exception):
                return None
            said = reports._safe_str(exc)
            return StartError(  # not a failure: no crash report
                spec.id, f"child {spec.id!r} of supervisor {self._name!r} not started: {said}"
            )
        stop_error, run.stop_error = run.stop_error, None
        if stop_error is not None and not ended:
            _note_stop_error(exc, spec.id, stop_error)
        return start_failure(self._name, spec, exc)

    def _shutdown_run(self, run: Run) -> asyncio.Task[ChildExit]:
        """Stop ``run`` (once; concurrent callers share it). The run kinds report
        shutdown timeouts, kills (``brutal_kill`` included) and abandoned threads."""
        if self._stopping:
            _watch_nested(run)
        return run.shutdown(run.spec.shutdown_timeout)

    async def _shutdown_children(self) -> list[str]:
        """Stop every running child in reverse start order; returns the abandoned.

        A ``DynamicSupervisor`` stops them concurrently instead (OTP's
        ``terminate_dynamic_children``).
        """
        return await stop_in_reverse(self._children, self._terminate)


def runs_in_tree(root: Supervisor, handle: object) -> bool:
    """Whether ``handle`` (a restarted child's, from the emitting thread) is the
    current run of a child of ``root`` or of a supervisor nested under it."""
    # Race: telemetry calls this in the emitting thread, at any time. Every
    # supervisor of root's tree runs on root's loop, so an event emitted
    # anywhere else is another tree's, answered without reading root's
    # children (which root's loop may be changing). On that loop, no child
    # list changes while this reads it; unrelated supervisors sharing the
    # loop (``async with app:``) are told apart by the handle itself.
    import asyncio  # loaded already: a supervisor emitted the event

    loop: asyncio.AbstractEventLoop | None = getattr(root, "_loop", None)  # set by start()
    try:
        if loop is None or asyncio.get_running_loop() is not loop:
            return False
    except RuntimeError:  # no loop runs in this thread: not a tree's event
        return False
    # Race: the runs, not which_children(): a child still starting (a nested
    # supervisor still registering) has its run but is not shown running yet,
    # while its own children may already restart.
    pending = [root]
    while pending:
        for child in pending.pop()._children.values():
            run = child.run
            if run is None:
                continue
            if run.handle is handle:
                return True
            if isinstance(run.handle, Supervisor):
                pending.append(run.handle)
    return False


def _note_stop_error(exc: Exception, child: str, stop_error: ChildExit) -> None:
    """Add to a failed start's error that its run, then stopped, did not end
    cleanly (``stop_error``, with its traceback): its one report says it all."""
    import traceback

    said = f"Then, being stopped, child {child!r} did not end cleanly: "
    # The same error object raised again by a later start (a registry's kept
    # error): add_note accumulates; only this stop's note is kept.
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        notes[:] = [n for n in notes if not (isinstance(n, str) and n.startswith(said))]
    note = said + _describe(stop_error)
    if stop_error.exception is not None:
        note += "\n" + "".join(traceback.format_exception(stop_error.exception)).rstrip()
    exc.add_note(note)


def _watch_nested(run: Run | None) -> None:
    """A nested supervisor stopped as part of its parent's stop: a cut of it
    is the parent's (its report names the nested children by path), not its own."""
    nested = getattr(run, "handle", None)  # (none yet: its factory is still called)
    if isinstance(nested, Supervisor):
        nested._stop_watched = True


def running_paths(sup: Supervisor, prefix: str = "") -> list[str]:
    """The children of ``sup``'s tree whose run has not ended, by path
    (``"workers/stuck"``: inside a nested supervisor, its own children)."""
    paths: list[str] = []
    for id, child in sup._children.items():
        run = child.run
        if run is None:
            continue
        nested = run.handle
        inner = running_paths(nested, f"{prefix}{id}/") if isinstance(nested, Supervisor) else []
        paths.extend(inner or [f"{prefix}{id}"])
    return paths
