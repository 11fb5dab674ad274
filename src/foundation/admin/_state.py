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

from foundation.admin._auth import Operators
from foundation.admin._errors import ApiError
from foundation.admin._json import _change_dict, _dead_dict, _down_dict, entry_dict, render_json
from foundation.admin._status import StatusBoard
from foundation.errors import FoundationError
from foundation.flags import FeatureFlags, FlagChange, Migration, MigrationPlan
from foundation.flags._metadata import MetadataValue, stages_by_flag
from foundation.flags._plans import PlanRefresher, read_plans
from foundation.registry import Entry, RegistryEvent

__all__ = ["AdminState", "RegistryLike"]

log = logging.getLogger("foundation.admin")

DEAD_RING = 200
"""How many recently dead agents ``GET /api/agents/dead`` remembers."""
QUEUE_SIZE = 1000
"""Events buffered per SSE client; a client that falls further behind gets ``resync``."""


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
    plans: Mapping[str, MigrationPlan] | None, migration: Migration | None
) -> dict[str, dict[str, MetadataValue]]:
    """``stages_by_flag`` of the plans recorded in the flags' store (None: unread)
    and of the served migration's plan: OFREP's migration metadata, from the
    source ``FoundationProvider`` reads (``foundation.flags._plans``). The served
    migration's plan counts all the same (its own, under its name: the plan this
    server switches), so a store that could neither record it nor answer (Redis
    down at start) does not lose its metadata."""
    found: dict[str, MigrationPlan] = dict(plans or {})
    if migration is not None:
        found[migration.plan.name] = migration.plan
    return stages_by_flag(found)


class AdminState:
    """What the app serves: the live objects, the operators, the event hub and
    the status board (``GET /api/status``, see ``foundation.admin._status``).
    ``plan_stages`` is ``stages_by_flag`` of the plans recorded in the flags'
    store when the state was built, and of the served migration's plan (OFREP's
    metadata, as ``FoundationProvider``'s), read again off the request path
    (``foundation.flags._plans.PlanRefresher``) after the flags change (at most
    once per ``INTERVAL``) and each time a Redis store is back in sync.

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
        self._refresher: PlanRefresher | None = None
        if flags is not None:
            self._refresher = PlanRefresher(
                flags.store,
                functools.partial(self._plans_read, migration),
                logger=log,
                name="foundation-admin-plans",
                prefix="admin: ",
            )
            self._refresher.attach()  # before the read: an in_sync meanwhile is heard
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
        self.plan_stages: dict[str, dict[str, MetadataValue]] = {}
        plans: dict[str, MigrationPlan] | None = {}
        if flags is not None:
            # Subscribed before the read (never in a request: a frozen Redis holds
            # it up to the store's timeout): a plan recorded and stepped between
            # the two is read again once the refresher is ready.
            self._unsubscribe.append(flags.subscribe(self._on_flag))
            plans = read_plans(flags.store, log, "admin: ")
            self.plan_stages = _plan_stages(plans, migration)
        if registry is not None:
            since = time.time()
            self._unsubscribe.append(registry.subscribe(self._on_registry))
            self._take_recent_deaths(registry, since)
        if self._refresher is not None:
            self._refresher.ready(failed=plans is None)

    def _plans_read(self, migration: Migration | None, plans: dict[str, MigrationPlan]) -> None:
        """A re-read's plans (``PlanRefresher``'s worker): swapped in whole."""
        self._swap_plan_stages(_plan_stages(plans, migration))

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
            if self._refresher is not None:
                self._refresher.changed()  # a plan may come with it: re-read, off this thread
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
