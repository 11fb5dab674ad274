"""The default application tree: flags, monitors, registry, migration monitor.

``Application`` is a :class:`~foundation.supervision.Supervisor` (strategy
``rest_for_one``) whose children start in this order, each ready before the
next, and stop in reverse:

1. ``flags`` — :class:`~foundation.FeatureFlags` over the configured store
   (memory, SQLite or Redis), with the config layer loaded from the config's
   ``[flags]`` table and ``FOUNDATION_FLAG_*`` variables;
2. ``monitors`` — the :class:`~foundation.liveness.MonitorManager` that owns
   every watcher thread of the application;
3. ``registry`` — a :class:`~foundation.MigratingRegistry` over
   ``ThreadLocalRegistry`` and ``MemoryRegistry`` (the embedded default), or a
   :class:`~foundation.RedisRegistry` when configured; without the flags
   service, the plain ``MemoryRegistry``;
4. ``migration_monitor`` — a :class:`~foundation.Migration` over the default
   plan, refusing to advance while the registry reports divergences, and, when
   thresholds are configured, rolling back automatically on real health
   signals (supervisor restarts per minute, registry lookup latency against
   the baseline measured at start, and the error rate fed to ``app.health``);
5. ``workers`` — an optional nested supervisor of the caller's children,
   registered by name in the registry on every (re)start.

``services=`` leaves any of the first four out (the original's test mode):
what depends on a missing service degrades as described above.

Example:
    >>> from foundation import Application
    >>> with Application.start(services=("flags", "monitors", "registry")) as app:
    ...     app.registry.protocol_version()
    '2.0'
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import FrameType, TracebackType
from typing import Any, Self

from foundation import telemetry
from foundation._appconfig import AppConfig
from foundation.errors import InvalidConfig
from foundation.flags import DEFAULT_FLAGS, FeatureFlags, Flag, FlagStore, MemoryFlagStore
from foundation.flags._migration import (
    AutoRollback,
    HealthSample,
    HealthThresholds,
    Migration,
    MigrationPlan,
)
from foundation.liveness import MonitorManager
from foundation.registry import Registry
from foundation.supervision import ChildContext, ChildSpec, Supervisor, SupervisorThread

__all__ = ["ALL_SERVICES", "AppConfig", "AppHealth", "Application"]

ALL_SERVICES = ("flags", "monitors", "registry", "migration_monitor")


class AppHealth:
    """Real health signals for automatic rollback: restarts, latency, errors.

    Restarts are counted from ``supervisor.child_restarted`` telemetry over the
    last minute; latency is the mean cost of a registry lookup probe, compared
    with the baseline measured when the registry started; the error rate is
    what callers report through :meth:`record`.

    Example:
        >>> health = AppHealth()
        >>> health.record(ok=False); health.record(ok=True)
        >>> health.sample().error_rate
        0.5
        >>> health.close()
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self._registry = registry
        self._restarts: deque[float] = deque()
        self._outcomes: deque[bool] = deque(maxlen=1000)
        self._baseline = self._probe() if registry is not None else None
        self._detach = telemetry.attach("supervisor.child_restarted", self._on_restart)

    def _on_restart(self, _name: str, _data: object) -> None:
        self._restarts.append(time.monotonic())

    def record(self, *, ok: bool) -> None:
        """Count one operation outcome towards the error rate."""
        self._outcomes.append(ok)

    def _probe(self, n: int = 200) -> float | None:
        if self._registry is None:
            return None
        lookup = self._registry.lookup
        started = time.perf_counter()
        for _ in range(n):
            lookup("__foundation_health_probe__")
        return (time.perf_counter() - started) / n

    def sample(self) -> HealthSample:
        """The current measurements (``None`` for a signal with no data yet)."""
        cutoff = time.monotonic() - 60.0
        while self._restarts and self._restarts[0] < cutoff:
            self._restarts.popleft()
        outcomes = list(self._outcomes)
        error_rate = outcomes.count(False) / len(outcomes) if outcomes else None
        return HealthSample(
            error_rate=error_rate,
            restarts_per_minute=float(len(self._restarts)),
            latency=self._probe(),
            baseline_latency=self._baseline,
        )

    def close(self) -> None:
        self._detach()


class Application:
    """Foundation's service tree, started in order and stopped in reverse.

    Use ``with Application.start(config) as app:`` from synchronous code (the
    tree runs on an event loop in a named thread), or ``async with
    Application(config) as app:`` inside a loop. ``config`` is an
    :class:`AppConfig`, a path to ``foundation.toml``/``pyproject.toml``, or
    ``None`` to discover one in the working directory. ``wait_for_signal()``
    blocks until SIGINT or SIGTERM, then shuts the tree down in order.

    Example:
        >>> from foundation import Application
        >>> with Application.start(services=("flags",)) as app:
        ...     app.flags.enabled("use_ets_agent_registry")
        False
    """

    def __init__(
        self,
        config: AppConfig | str | None = None,
        *,
        services: Iterable[str] = ALL_SERVICES,
        workers: Sequence[ChildSpec] = (),
        declared: Iterable[Flag] = (),
        flag_store: FlagStore | None = None,
        name: str = "foundation",
    ) -> None:
        if config is None:
            config = AppConfig.discover()
        elif isinstance(config, str):
            config = AppConfig.from_file(config)
        chosen = tuple(services)
        unknown = [s for s in chosen if s not in ALL_SERVICES]
        if unknown:
            raise InvalidConfig(f"unknown services {unknown}; choose from {ALL_SERVICES}")
        self.config = config
        self.services = frozenset(chosen)
        self.name = name
        self._declared = _merge_declared(declared)
        self._given_store = flag_store
        self.flags: FeatureFlags | None = None
        self.monitors: MonitorManager | None = None
        self.registry: Registry | None = None
        self.migration: Migration | None = None
        self.health: AppHealth | None = None
        self.stopped_order: list[str] = []
        self._supervisor = Supervisor(
            self._children(workers), strategy="rest_for_one", name=name, max_restarts=3
        )
        self._thread: SupervisorThread | None = None

    # ------------------------------------------------------------------ starting

    @classmethod
    def start(cls, config: AppConfig | str | None = None, **options: Any) -> Application:
        """Build and start the tree on a loop in a named thread; use as a context manager."""
        app = cls(config, **options)
        app._thread = app._supervisor.run_in_thread(name=f"{app.name}-app")
        return app

    def stop(self) -> None:
        """Stop every service in reverse order (idempotent)."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.stop()

    @property
    def supervisor(self) -> Supervisor:
        """The root supervisor (for ``which_children`` and friends)."""
        return self._supervisor

    def which_children(self) -> list[Any]:
        """The root supervisor's children, in start order."""
        if self._thread is not None:
            return self._thread.which_children()
        return self._supervisor.which_children()

    def wait_for_signal(
        self,
        signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM),
        *,
        on_installed: Callable[[], None] | None = None,
    ) -> int:
        """Block until one of ``signals`` arrives (main thread only), then stop in order.

        ``on_installed`` runs once the handlers are in place: announce readiness
        there, so a signal sent on that announcement cannot arrive before the
        handler (it would kill the process with the default action).
        Returns the signal number received.
        """
        received: list[int] = []
        arrived = threading.Event()

        def handler(signum: int, _frame: FrameType | None) -> None:
            received.append(signum)
            arrived.set()

        previous = {s: signal.signal(s, handler) for s in signals}
        try:
            if on_installed is not None:
                on_installed()
            while not arrived.wait(0.2):  # short waits keep the main thread responsive
                pass
        finally:
            for s, old in previous.items():
                signal.signal(s, old)
        self.stop()
        return received[0]

    def __enter__(self) -> Self:
        if self._thread is None:
            self._thread = self._supervisor.run_in_thread(name=f"{self.name}-app")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await self._supervisor.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._supervisor.stop()

    # ------------------------------------------------------------------ the tree

    def _children(self, workers: Sequence[ChildSpec]) -> list[ChildSpec]:
        order = [
            ("flags", self._run_flags),
            ("monitors", self._run_monitors),
            ("registry", self._run_registry),
            ("migration_monitor", self._run_migration_monitor),
        ]
        specs = [
            ChildSpec(service, run, kind="thread", shutdown_timeout=10.0, ready_timeout=30.0)
            for service, run in order
            if service in self.services
        ]
        if workers:
            specs.append(
                ChildSpec(
                    "workers",
                    lambda: Supervisor(
                        workers, name=f"{self.name}-workers", registry=self.registry
                    ),
                    kind="supervisor",
                )
            )
        return specs

    def _serve(self, ctx: ChildContext, service: str) -> None:
        ctx.ready()
        ctx.stopping.wait()
        self.stopped_order.append(service)

    def _run_flags(self, ctx: ChildContext) -> None:
        store = self._given_store or self._make_flag_store()
        flags = FeatureFlags(self._declared, store=store)
        try:
            flags.load_from_config(dict(self.config.flags))
            self.flags = flags
            self._serve(ctx, "flags")
        finally:
            self.flags = None
            flags.close()
            if self._given_store is None:
                store.close()

    def _run_monitors(self, ctx: ChildContext) -> None:
        manager = MonitorManager(name=f"{self.name}-monitors")
        self.monitors = manager
        try:
            self._serve(ctx, "monitors")
        finally:
            self.monitors = None
            manager.close()

    def _run_registry(self, ctx: ChildContext) -> None:
        registry = self._make_registry()
        self.registry = registry
        try:
            self._serve(ctx, "registry")
        finally:
            self.registry = None
            registry.close()

    def _run_migration_monitor(self, ctx: ChildContext) -> None:
        if self.flags is None:
            raise InvalidConfig("the migration monitor needs the flags service")
        readiness = []
        readiness_of = getattr(self.registry, "readiness", None)
        if readiness_of is not None:
            readiness.append(readiness_of)
        health = AppHealth(self.registry)
        self.health = health
        thresholds = None
        if self.config.wants_auto_rollback:
            thresholds = HealthThresholds(
                max_error_rate=self.config.max_error_rate,
                max_restarts_per_minute=self.config.max_restarts_per_minute,
                max_latency_ratio=self.config.max_latency_ratio,
            )
        migration = Migration(
            self.flags,
            MigrationPlan.default(),
            readiness=readiness,
            health=health.sample if thresholds else None,
            thresholds=thresholds,
        )
        self.migration = migration
        watcher = (
            AutoRollback(migration, interval=self.config.health_interval) if thresholds else None
        )
        try:
            self._serve(ctx, "migration_monitor")
        finally:
            if watcher is not None:
                watcher.stop()
            self.migration = None
            self.health = None
            health.close()

    # ------------------------------------------------------------------ backends

    def _make_flag_store(self) -> FlagStore:
        kind = self.config.flag_store
        if kind == "sqlite":
            from foundation.flags import SQLiteFlagStore

            return SQLiteFlagStore(self.config.flag_store_path or "flags.sqlite3")
        if kind == "redis":
            from foundation.flags import RedisFlagStore

            return RedisFlagStore(str(self.config.redis_url), namespace=self.config.namespace)
        return MemoryFlagStore()

    def _make_registry(self) -> Registry:
        from foundation.registry import MemoryRegistry, MigratingRegistry, ThreadLocalRegistry

        indexed = self.config.indexed
        if self.config.registry_backend == "redis":
            from foundation.registry import RedisRegistry

            target: Registry = RedisRegistry(
                str(self.config.redis_url),
                namespace=self.config.namespace,
                indexed=indexed,
                lease_ttl=self.config.lease_ttl,
                manager=self.monitors,
            )
        else:
            target = MemoryRegistry(indexed=indexed, manager=self.monitors)
        if self.flags is None:
            return target
        legacy = ThreadLocalRegistry(indexed=indexed)
        return MigratingRegistry(legacy, target, self.flags)


def _merge_declared(extra: Iterable[Flag]) -> list[Flag]:
    declared = {f.name: f for f in DEFAULT_FLAGS}
    for flag in extra:
        declared[flag.name] = flag
    return list(declared.values())
