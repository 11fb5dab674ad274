"""What the admin app serves (``AdminState``) and the hub fanning its events out to SSE clients."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Protocol

from foundation import telemetry
from foundation.admin._auth import Operators
from foundation.admin._errors import ApiError
from foundation.admin._json import _change_dict, _dead_dict, _down_dict, entry_dict, render_json
from foundation.admin._status import StatusBoard
from foundation.errors import Closed, FoundationError
from foundation.flags import FeatureFlags, FlagChange, Migration, MigrationPlan, RedisFlagStore
from foundation.flags._metadata import MetadataValue, stages_by_flag
from foundation.registry import Entry, RegistryEvent

__all__ = ["AdminState", "RegistryLike"]

log = logging.getLogger("foundation.admin")

DEAD_RING = 200
"""How many recently dead agents ``GET /api/agents/dead`` remembers."""
QUEUE_SIZE = 1000
"""Events buffered per SSE client; a client that falls further behind gets ``resync``."""
CLOSE_WAIT = 1.0
"""Seconds ``AdminState.close()`` waits for a migration plan re-read under way."""


class RegistryLike(Protocol):
    """What the admin needs of a registry (a ``Registry`` or a ``RedisObserver``)."""

    def list_all(self) -> list[Entry]: ...
    def lookup(self, key: Hashable) -> Entry | None: ...
    def query(self, criteria: Any) -> list[Entry]: ...
    def count(self) -> int: ...
    def subscribe(self, listener: Callable[[RegistryEvent], None]) -> Callable[[], None]: ...


class _Hub:
    """Fans events out to SSE clients and remembers the recently dead.

    Publishers run on any thread (flag and registry listeners); each client
    queue belongs to the event loop of its request, so items are handed over
    with ``call_soon_threadsafe``.
    """

    def __init__(self, dead_size: int) -> None:
        self._lock = threading.Lock()
        self._clients: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str | None]]] = set()
        self.dead: collections.deque[dict[str, Any]] = collections.deque(maxlen=dead_size)
        self.closed = False

    def publish(self, event: str, data: Mapping[str, Any]) -> None:
        item = f"event: {event}\ndata: {render_json(data, default=str).decode('ascii')}\n\n"
        with self._lock:
            clients = list(self._clients)
        for loop, queue in clients:
            # Race: the client's loop may have closed after we copied the set; it is gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._put, queue, item)

    @staticmethod
    def _put(queue: asyncio.Queue[str | None], item: str | None) -> None:
        if queue.full():
            # A slow client: drop its backlog and tell it to re-read everything.
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait("event: resync\ndata: {}\n\n")
        queue.put_nowait(item)

    def attach(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE)
        with self._lock:
            if self.closed:
                raise ApiError(503, "Closed", "the admin server is shutting down")
            self._clients.add((asyncio.get_running_loop(), queue))
        return queue

    def detach(self, queue: asyncio.Queue[str | None]) -> None:
        with self._lock:
            self._clients = {c for c in self._clients if c[1] is not queue}

    def close(self) -> None:
        """End every event stream (a ``None`` in each queue)."""
        with self._lock:
            self.closed = True
            clients = list(self._clients)
        for loop, queue in clients:
            with contextlib.suppress(RuntimeError):  # a closed loop ended its stream already
                loop.call_soon_threadsafe(self._put, queue, None)


_REGISTRY_METHODS = ("list_all", "lookup", "query", "count", "subscribe")


def _is_registry(registry: object) -> bool:
    """Whether ``registry`` has every method the admin app calls on a registry."""
    return all(callable(getattr(registry, name, None)) for name in _REGISTRY_METHODS)


def _check_served(flags: object, migration: object, registry: object, supervisors: object) -> None:
    """TypeError unless each object given to AdminState is of a kind it can serve."""
    if flags is not None and not isinstance(flags, FeatureFlags):
        raise TypeError(f"flags must be a FeatureFlags or None, not {type(flags).__name__}")
    if migration is not None and not isinstance(migration, Migration):
        raise TypeError(f"migration must be a Migration or None, not {type(migration).__name__}")
    if registry is not None and not _is_registry(registry):
        raise TypeError(
            f"registry must be a registry (list_all, lookup, query, count, subscribe), "
            f"not {type(registry).__name__}"
        )
    if isinstance(supervisors, str) or not isinstance(supervisors, Iterable):
        raise TypeError(
            f"supervisors is a collection of supervisors, not {type(supervisors).__name__}"
        )


def _plan_stages(
    flags: FeatureFlags | None, migration: Migration | None
) -> tuple[dict[str, dict[str, MetadataValue]], bool]:
    """``stages_by_flag`` of every plan recorded in the flags' store: OFREP's
    migration metadata, from the source ``FoundationProvider`` reads at
    ``initialize`` (``store.plans()``), read when the app is created (and again
    by ``_PlanRefresher`` after an outage), never in a request, so that no
    evaluation waits on the store (a frozen Redis holds this up to the store's
    timeout). An unreadable store logs a WARNING and gives none, as the
    provider does (the second item: True); the served migration's plan counts
    all the same (its own, under its name: the plan this server switches), so
    a store that could neither record it nor answer (Redis down at start) does
    not lose its metadata."""
    if flags is None:
        return {}, False
    plans: dict[str, MigrationPlan] = {}
    failed = False
    try:
        plans.update(flags.store.plans())
    except Closed:  # refused by AdminState right after (subscribe)
        return {}, False
    except FoundationError as exc:  # BackendUnavailable: keep to descriptions
        log.warning("admin: migration plans not read from %r: %s", flags.store, exc)
        failed = True
    if migration is not None:
        plans[migration.plan.name] = migration.plan
    return stages_by_flag(plans), failed


class _PlanRefresher:
    """Re-reads the plans (as ``_plan_stages``) after the flags' Redis store is back
    in sync (telemetry ``foundation.flags.in_sync``), on a worker thread of its
    own: never the store's listener thread (the event only wakes the worker),
    never a request. Events arriving during a read coalesce into one more read.
    A read that fails keeps the metadata there is and logs one WARNING per
    outage (the first failed read; a read that succeeds re-arms it). Only a
    ``RedisFlagStore`` emits ``in_sync``: a ``SQLiteFlagStore`` (stale for good
    once it is, never back in sync) or a memory store attach nothing here.
    """

    def __init__(
        self,
        flags: FeatureFlags,
        migration: Migration | None,
        swap: Callable[[dict[str, dict[str, MetadataValue]]], None],
    ) -> None:
        self._flags = flags
        self._migration = migration
        self._swap = swap
        self._lock = threading.Lock()
        self._ready = False  # the first read is done: the worker may swap after it
        self._dirty = False  # an event came since the worker's last read began
        self._closed = False
        self._warned = False  # a WARNING was logged for the current outage
        self._thread: threading.Thread | None = None
        self._detach: Callable[[], None] | None = None

    def attach(self) -> None:
        """Listen to ``in_sync`` of the flags' store (before the first read: a sync
        landing between that read and this attach would otherwise go unheard)."""
        if isinstance(self._flags.store, RedisFlagStore):
            self._detach = telemetry.attach("foundation.flags.in_sync", self._on_in_sync)

    def ready(self, *, failed: bool) -> None:
        """The first read is done (``failed``: it logged its WARNING); a sync told
        meanwhile is read now."""
        with self._lock:
            self._ready = True
            self._warned = failed
            self._start_if_due()

    def _on_in_sync(self, name: str, data: Mapping[str, Any]) -> None:
        # On the store's listener thread: only flag the work and wake the worker.
        # Race: another store object on the same namespace emits the same event:
        # one read more, harmless.
        store = self._flags.store
        if not isinstance(store, RedisFlagStore) or data.get("namespace") != store.namespace:
            return
        with self._lock:
            self._dirty = True
            self._start_if_due()

    def _start_if_due(self) -> None:
        """Start the worker (under ``_lock``) unless it runs already: the running
        one reads again for the events flagged meanwhile (coalesced)."""
        if self._ready and self._dirty and not self._closed and self._thread is None:
            thread = threading.Thread(target=self._run, name="foundation-admin-plans", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                # The thread limit: on the store's listener thread this must not
                # raise, nor leave an unstarted thread behind (it would block every
                # later start and make close() join one never started). _dirty
                # stays set: the next in_sync tries again.
                log.warning("admin: migration plans not re-read (no worker thread): %s", exc)
                return
            self._thread = thread

    def _run(self) -> None:
        # Race: an event landing during a read sets _dirty again: this loop reads
        # once more (never a second worker); one landing after the check below
        # finds _thread cleared under the same lock and starts a new worker.
        while True:
            with self._lock:
                if self._closed or not self._dirty:
                    self._thread = None
                    return
                self._dirty = False
            self._read_once()

    def _read_once(self) -> None:
        store = self._flags.store
        try:
            plans = dict(store.plans())
        except Closed:  # the flags closed before the admin: nothing to read any more
            return
        except FoundationError as exc:  # BackendUnavailable: keep the metadata there is
            with self._lock:
                warn, self._warned = not self._warned, True
            if warn:
                log.warning("admin: migration plans not re-read from %r: %s", store, exc)
            return
        except Exception:  # never let the worker die on a bug
            log.exception("admin: migration plans not re-read from %r", store)
            return
        if self._migration is not None:
            plans[self._migration.plan.name] = self._migration.plan
        stages = stages_by_flag(plans)
        with self._lock:
            self._warned = False
            # Race: close() meanwhile: the closed app's metadata is left alone.
            if not self._closed:
                self._swap(stages)

    def close(self) -> None:
        """Detach and wait for a read under way, at most ``CLOSE_WAIT``. Idempotent."""
        with self._lock:
            self._closed = True
            detach, self._detach = self._detach, None
            thread = self._thread
        if detach is not None:
            detach()  # an event in flight past this sees _closed and starts nothing
        if thread is not None and thread is not threading.current_thread():
            # Bounded: a read on a frozen Redis may take more than one store
            # timeout (a reconnection first; serve() closes on its event loop).
            # A worker left running is a daemon that swaps nothing after close
            # (see _read_once) and ends with the read.
            thread.join(CLOSE_WAIT)


class AdminState:
    """What the app serves: the live objects, the operators, the event hub and
    the status board (``GET /api/status``, see ``foundation.admin._status``).
    ``plan_stages`` is ``stages_by_flag`` of the plans recorded in the flags'
    store when the state was built, and of the served migration's plan (OFREP's
    metadata, as ``FoundationProvider``'s), read again off the request path
    each time a Redis store is back in sync (``_PlanRefresher``).

    ``close()`` stops the status thread and the plan refresher, unsubscribes
    from the flags and the registry and ends every event stream; the objects themselves stay the
    caller's to close.
    """

    def __init__(
        self,
        *,
        flags: FeatureFlags | None,
        migration: Migration | None,
        registry: RegistryLike | None,
        supervisors: Iterable[Any],
        operators: Operators,
        read_only: bool,
        public_reads: bool,
        metrics: Any = None,
        dead_size: int = DEAD_RING,
    ) -> None:
        # Refused here, not at the first request or event that would use them.
        _check_served(flags, migration, registry, supervisors)
        if migration is not None and flags is None:
            flags = migration.flags
        self.flags = flags
        self.migration = migration
        self.registry = registry
        self.supervisors = tuple(supervisors)
        self.operators = operators
        self.read_only = read_only
        self.public_reads = public_reads
        self.metrics = metrics
        self.hub = _Hub(dead_size)
        self._unsubscribe: list[Callable[[], None]] = []
        self._refresher: _PlanRefresher | None = None
        if flags is not None:
            self._refresher = _PlanRefresher(flags, migration, self._swap_plan_stages)
            self._refresher.attach()  # before the read (see attach)
        try:
            self._read_and_subscribe(flags, migration, registry)
        except BaseException:  # closed flags, say: nothing left attached
            self.close_subscriptions()
            raise
        # Last: it may start the status thread, which nothing would stop if a
        # subscription above raised.
        self.status = StatusBoard(
            registry=registry,
            store=None if flags is None else flags.store,
            publish=functools.partial(self.hub.publish, "status"),
        )

    def _read_and_subscribe(
        self,
        flags: FeatureFlags | None,
        migration: Migration | None,
        registry: RegistryLike | None,
    ) -> None:
        self.plan_stages, failed = _plan_stages(flags, migration)
        if flags is not None:
            self._unsubscribe.append(flags.subscribe(self._on_flag))
        if registry is not None:
            since = time.time()
            self._unsubscribe.append(registry.subscribe(self._on_registry))
            self._take_recent_deaths(registry, since)
        if self._refresher is not None:
            self._refresher.ready(failed=failed)

    def _swap_plan_stages(self, stages: dict[str, dict[str, MetadataValue]]) -> None:
        # Race: a request reading plan_stages meanwhile (an event-loop thread)
        # sees the old dict or the new one, whole: one reference assignment,
        # and neither dict is changed after it is built. Each flag's metadata
        # reads the attribute once (_ofrep._metadata): a bulk evaluation racing
        # a swap may describe some flags by the old plans and the rest by the
        # new ones, as it may read some values from before a flag write.
        self.plan_stages = stages

    def _take_recent_deaths(self, registry: RegistryLike, since: float) -> None:
        """Prepend the deaths the registry saw before ``since`` to the hub's dead ring."""
        # A RedisObserver remembers deaths seen before we subscribed: take those
        # (a death seen from now on reaches _on_registry instead).
        recently_dead = getattr(registry, "recently_dead", None)
        if callable(recently_dead):
            for death in reversed(recently_dead()):  # oldest first; we prepend
                if death.at < since and death.event.reason == "down":
                    self.hub.dead.appendleft(_dead_dict(death.event, death.at))

    def _on_flag(self, change: FlagChange) -> None:
        # A listener must not raise: it runs on the writer's or the store watcher's thread.
        try:
            self.hub.publish("flag", _change_dict(change))
            if self.migration is not None and change.flag in self.migration.plan.flags:
                # The stage is written in the same store transaction as these flags.
                self.hub.publish("migration", {"plan": self.migration.plan.name})
        except Exception:
            log.exception("admin: could not publish a flag change")

    def _on_registry(self, event: RegistryEvent) -> None:
        try:
            data: dict[str, Any] = {
                "kind": event.kind,
                "reason": event.reason,
                "entry": entry_dict(event.entry),
            }
            if event.reason == "down":
                data["down"] = _down_dict(event)
                self.hub.dead.append(_dead_dict(event, time.time()))
            self.hub.publish("agent", data)
        except Exception:
            log.exception("admin: could not publish a registry event")

    def close_subscriptions(self) -> None:
        """Stop the plan refresher, unsubscribe from the flags and the registry."""
        if self._refresher is not None:
            self._refresher.close()
        for unsubscribe in self._unsubscribe:
            with contextlib.suppress(FoundationError):  # closed: nothing to unsubscribe from
                unsubscribe()
        self._unsubscribe.clear()

    def close(self) -> None:
        self.status.close()
        self.close_subscriptions()
        self.hub.close()
