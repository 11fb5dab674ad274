"""A supervisor's registry writes (``registry=``): each child's live handle
registered in order, and degraded mode when the registry is out (see
``Supervisor``, "Registry outages")."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from foundation import telemetry
from foundation._retry import RetryBackoff
from foundation.errors import AlreadyRegistered, BackendUnavailable, Closed, NotAlive
from foundation.supervision._notices import naming

if TYPE_CHECKING:
    import asyncio

    from foundation.registry import Registry
    from foundation.supervision._child import _Child
    from foundation.supervision._runs import Run
    from foundation.supervision._supervisor import Supervisor

__all__: list[str] = []

_log = logging.getLogger("foundation.supervision")

#: Telemetry events of degraded mode (see ``Supervisor``, "Registry outages").
REGISTRATION_DEGRADED = "foundation.supervision.registration_degraded"
REGISTRATION_RESTORED = "foundation.supervision.registration_restored"
REGISTRATION_ABANDONED = "foundation.supervision.registration_abandoned"


class _Registrations:
    """The registry writes of one started supervisor (``start()`` makes one).

    Its tunables are the supervisor's (``registration_wait``,
    ``registration_retry_base``, ``registration_retry_cap``), read when used.
    """

    __slots__ = ("_loop", "_owner", "_registry", "_stop_requested")

    def __init__(
        self,
        owner: Supervisor,
        registry: Registry | None,
        loop: asyncio.AbstractEventLoop,
        stop_requested: asyncio.Future[None],
    ) -> None:
        self._owner = owner
        self._registry = registry
        self._loop = loop
        self._stop_requested = stop_requested

    def write(self, child: _Child, run: Run) -> asyncio.Task[None]:
        """Start registering ``run``'s handle, after this child's earlier writes.

        Race: a write for an earlier run may still be in flight in the
        registry's executor (its awaiter was cancelled, the thread was not).
        Chaining the writes of one child keeps them in order, so a late write
        of a dead run can never replace the registration of the live one.
        """
        registry = self._registry
        assert registry is not None
        spec = run.spec
        previous = child.write
        key, agent, metadata = spec.key, run.agent, spec.metadata
        # Ours to replace: this child's previous runs (a restart) and this very
        # run (a retry whose earlier attempt landed after all). Anything else
        # holding the key is someone else's live agent: refused, as :via does.
        if not any(mine is agent for mine in child.owned):
            child.owned = (*child.owned[-2:], agent)
        own = child.owned

        def register() -> None:
            try:
                registry.register(key, agent, metadata)
            except AlreadyRegistered as exc:
                holder = exc.entry.agent if exc.entry is not None else None
                if holder is agent:
                    return  # a retry: this very run's earlier attempt landed after all
                if holder is None or not any(holder is mine for mine in own):
                    raise
                # An earlier run of this child still holds the key while alive
                # (a thread that ignored its stop, say; a dead one is replaced
                # by the plain register above). Race: the holder may change
                # between these two calls; the window is one registry call, and
                # a newcomer then loses its key to the supervised child.
                registry.register(key, agent, metadata, replace=True)

        async def write() -> None:
            import asyncio

            if previous is not None and not previous.done():
                await asyncio.wait({previous})
            await registry._async_call(register)

        task = self._loop.create_task(write(), name=f"register {run.name}")
        # Its outcome is read by whoever still waits for it; if nobody does
        # (the run ended), it is retrieved here so that it is not logged.
        task.add_done_callback(_retrieve)
        child.write = task
        return task

    async def register(self, child: _Child, run: Run) -> None:
        """Register a run that just became ready (see "Registry outages").

        Raises the registry's error, except ``NotAlive`` (the run died just
        after signalling ready; its exit event is on its way) and
        ``BackendUnavailable`` or a write still pending after
        ``registration_wait``: then the child runs and a registrar retries.
        """
        import asyncio

        child.registered = False
        stop_registrar(child)
        if self._registry is None:
            return
        attempt = self.write(child, run)
        # asyncio.wait never cancels what it waits for: if this start is
        # cancelled, the write finishes in the background (it is retrieved).
        await asyncio.wait(
            {attempt, self._stop_requested},
            timeout=self._owner.registration_wait,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not attempt.done():
            if self._stop_requested.done():
                return  # stopping: nobody needs the registration any more
            self._degrade(child, run, pending=attempt, error=None)
            return
        error = attempt.exception()
        if error is None:
            child.registered = True
        elif isinstance(error, BackendUnavailable):
            self._degrade(child, run, pending=None, error=error)
        elif not isinstance(error, NotAlive):
            raise error

    def _degrade(
        self,
        child: _Child,
        run: Run,
        *,
        pending: asyncio.Task[None] | None,
        error: BaseException | None,
    ) -> None:
        """Let ``run`` go on unregistered; a registrar task keeps trying."""
        spec = run.spec
        why = (
            f"failed ({error!r})"
            if error is not None
            else (f"is still pending after {self._owner.registration_wait:g} s")
        )
        _log.warning(
            "supervisor %r: child %r runs unregistered: registering it as %r %s; "
            "retrying in the background",
            self._owner.name,
            spec.id,
            spec.key,
            why,
        )
        if telemetry.has_listeners(REGISTRATION_DEGRADED):
            telemetry.emit(
                REGISTRATION_DEGRADED,
                {**self._naming(child), "key": spec.key, "error": error},
            )
        registrar = self._loop.create_task(
            self._keep_registering(child, run, pending), name=f"registrar {run.name}"
        )
        child.registrar = registrar
        # A run that ends needs no registration: its retries stop with it.
        run.exited.add_done_callback(lambda _exit: registrar.cancel())

    async def _keep_registering(
        self, child: _Child, run: Run, pending: asyncio.Task[None] | None
    ) -> None:
        """Retry registering ``run`` with full-jitter exponential backoff until it sticks."""
        import asyncio

        spec = run.spec
        began = self._loop.time()
        failures = 0 if pending is not None else 1
        owner = self._owner
        backoff = RetryBackoff(owner.registration_retry_base, owner.registration_retry_cap)
        while True:
            try:
                if pending is None:
                    await asyncio.sleep(backoff.next())
                    pending = self.write(child, run)
                # Shielded: cancelling the registrar (the run ended) leaves the
                # write to finish in order; the next write of this child waits for it.
                await asyncio.shield(pending)
            except asyncio.CancelledError:
                self._registration_abandoned(child, "the run ended")
                raise
            except NotAlive:
                # It died: its exit event follows, a restart registers anew.
                self._registration_abandoned(child, "the agent died")
                return
            except BackendUnavailable:
                failures += 1
                pending = None
                continue
            except Exception as exc:  # not an outage: report it and stop retrying
                _log.error(
                    "supervisor %r: child %r could not be registered as %r; giving up "
                    "(the child keeps running unregistered)",
                    owner.name,
                    spec.id,
                    spec.key,
                    exc_info=exc,
                )
                self._registration_abandoned(child, f"{type(exc).__name__}: {exc}")
                return
            break
        self._registration_restored(child, run, failures + 1, began)

    def _registration_restored(self, child: _Child, run: Run, attempts: int, began: float) -> None:
        """The registrar's write of ``run`` stuck at last: record, log and emit it."""
        import asyncio

        spec = run.spec
        if child.run is run:
            child.registered = True
        if child.registrar is asyncio.current_task():
            child.registrar = None
        seconds = self._loop.time() - began
        _log.info(
            "supervisor %r: child %r registered as %r again after %d attempt(s), %.3f s",
            self._owner.name,
            spec.id,
            spec.key,
            attempts,
            seconds,
        )
        if telemetry.has_listeners(REGISTRATION_RESTORED):
            telemetry.emit(
                REGISTRATION_RESTORED,
                {
                    **self._naming(child),
                    "key": spec.key,
                    "error": None,
                    "attempts": attempts,
                    "seconds": seconds,
                },
            )

    def _registration_abandoned(self, child: _Child, why: str) -> None:
        """A degraded registration ends without being restored (the run ended, or
        a non-outage error): say so, so gauges of degraded children come down."""
        if telemetry.has_listeners(REGISTRATION_ABANDONED):
            telemetry.emit(
                REGISTRATION_ABANDONED,
                {**self._naming(child), "key": child.spec.key, "error": why},
            )

    def _naming(self, child: _Child) -> dict[str, Any]:
        """The fields naming ``child`` in an event (see ``_notices.naming``)."""
        return naming(self._owner.name, self._owner._label, child)

    async def unregister_if_current(self, child: _Child, run: Run) -> None:
        """Drop the registration of an abandoned run (still alive, no longer supervised)."""
        if self._registry is None:
            return
        try:
            await self._unregister(child, run)
        except Closed:
            return  # the registry was closed before the tree: nothing is registered
        except BackendUnavailable as exc:
            # The agent is not ours any more; the backend's lease or the next
            # registration of this key takes it over.
            _log.warning(
                "supervisor %r: could not unregister abandoned child %r (%r)",
                self._owner.name,
                run.spec.id,
                exc,
            )

    async def unregister_ended(self, child: _Child, run: Run) -> None:
        """Drop the registration of a run that ended (stopped by us), so that no
        lookup answers it once its stop has returned.

        The registry's monitor drops a dead agent too, but on its own thread
        and later (a process's death is seen on the pidfd thread): without
        this, ``stop()`` could return with the stopped child still registered.
        Best effort, bounded by ``registration_wait``: a registry that is out
        or slow does not hold a stop up (the write goes on in the background,
        and the monitor, or the backend's lease, drops the entry anyway).
        """
        import asyncio

        if self._registry is None:
            return
        if _nothing_registered(child):
            # Its last write failed (degraded mode, the registry out): nothing
            # of it is registered, and no wait for an outage. A write still in
            # flight, or one that landed just before its registrar saw it, is
            # unregistered below.
            stop_registrar(child)
            child.registered = False
            return
        task = self._unregister(child, run)
        # asyncio.wait never cancels what it waits for: on timeout the
        # unregister finishes in the background, in order (it is child.write).
        await asyncio.wait({task}, timeout=self._owner.registration_wait)
        if not task.done() or task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, (BackendUnavailable, Closed)):
            # Not an outage, nor a registry closed before the tree: a defect
            # to report; the stop itself carries on.
            _log.warning(
                "supervisor %r: could not unregister stopped child %r (%r)",
                self._owner.name,
                run.spec.id,
                error,
            )

    def _unregister(self, child: _Child, run: Run) -> asyncio.Task[None]:
        """Start unregistering ``run``'s handle if it still holds its key, after
        this child's earlier writes (chained as :meth:`write` chains them)."""
        registry = self._registry
        assert registry is not None
        stop_registrar(child)
        child.registered = False
        previous = child.write
        key, agent = run.spec.key, run.agent

        def unregister_if_current() -> bool:
            # Lookup and unregister in one call on the registry's write path,
            # so both see the same (possibly per-thread) store.
            entry = registry.lookup(key)
            return entry is not None and entry.agent is agent and registry.unregister(key)

        async def unregister() -> None:
            import asyncio

            # Race: a registration of this run may still be in flight; it must
            # land first, or it would register the run after we looked.
            if previous is not None and not previous.done():
                await asyncio.wait({previous})
            await registry._async_call(unregister_if_current)

        # Race: a newer run of this child never loses its registration here.
        # Its write is chained after this task (it is child.write now), so it
        # cannot land between our lookup and our unregister; and once it has
        # landed the lookup sees its agent, not ours, and leaves it. What
        # remains is a newcomer outside the supervisor taking the key between
        # the two calls (after the registry's monitor dropped our dead agent,
        # or with replace=True): the window is one registry call, as in write().
        task = self._loop.create_task(unregister(), name=f"unregister {run.name}")
        task.add_done_callback(_retrieve)  # read by its awaiter, if any is left
        child.write = task
        return task


def _nothing_registered(child: _Child) -> bool:
    """Whether no write of ``child`` can have registered it: none was made, or its
    last one failed while it was not registered (degraded mode, the registry out)."""
    last = child.write
    return last is None or (
        not child.registered and last.done() and bool(last.cancelled() or last.exception())
    )


def stop_registrar(child: _Child) -> None:
    """Cancel ``child``'s registrar (degraded mode's retries), if any."""
    registrar, child.registrar = child.registrar, None
    if registrar is not None:
        registrar.cancel()


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a registry write's outcome as retrieved (its waiter, if any, reads it)."""
    if not task.cancelled():
        task.exception()
