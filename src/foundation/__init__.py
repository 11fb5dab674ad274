"""Foundation: OTP-style agents for Python.

A registry of live agents that cleans itself up, feature flags with staged
migrations, a registry that migrates between backends by flag, supervisors,
and a Redis backend for many machines. Everything a user needs is importable
from here; the public packages (``foundation.registry``, ``.liveness``,
``.flags``, ``.supervision``, ``.application``, ``.errors``, ``.telemetry``)
hold the rest, and modules starting with ``_`` are private.

The API is built one way (``foundation._public``): eager re-exports, each
object reporting its public package as ``__module__``. ``import foundation``
never imports ``redis``; the Redis classes can be named without the extra.

Example:
    >>> import threading
    >>> from foundation import MemoryRegistry, spawn_thread
    >>> stop = threading.Event()
    >>> with MemoryRegistry(indexed=("role",)) as registry:
    ...     registry.register("w1", spawn_thread(stop.wait), {"role": "io"})
    ...     [e.key for e in registry.find_by_attribute("role", "io")]
    ['w1']
    >>> stop.set()
"""

from __future__ import annotations

from foundation import errors, telemetry
from foundation.application import Application
from foundation.flags import (
    AutoRollback,
    Evaluation,
    FeatureFlags,
    Flag,
    FlagChange,
    HealthThresholds,
    MemoryFlagStore,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    SQLiteFlagStore,
    Stage,
)
from foundation.liveness import Down, Monitor, MonitorManager, OSProcess, monitor, spawn_thread
from foundation.registry import (
    Conflict,
    Divergence,
    Entry,
    MemoryRegistry,
    MigratingRegistry,
    RedisRegistry,
    RedisStatus,
    Registry,
    RegistryEvent,
    RemoteAgent,
    ThreadLocalRegistry,
)
from foundation.supervision import (
    Backoff,
    ChildContext,
    ChildSpec,
    DynamicSupervisor,
    Supervisor,
)

__version__ = "0.1.0"

__all__ = [
    "Application",
    "AutoRollback",
    "Backoff",
    "ChildContext",
    "ChildSpec",
    "Conflict",
    "Divergence",
    "Down",
    "DynamicSupervisor",
    "Entry",
    "Evaluation",
    "FeatureFlags",
    "Flag",
    "FlagChange",
    "HealthThresholds",
    "MemoryFlagStore",
    "MemoryRegistry",
    "MigratingRegistry",
    "Migration",
    "MigrationPlan",
    "Monitor",
    "MonitorManager",
    "OSProcess",
    "RedisFlagStore",
    "RedisRegistry",
    "RedisStatus",
    "Registry",
    "RegistryEvent",
    "RemoteAgent",
    "SQLiteFlagStore",
    "Stage",
    "Supervisor",
    "ThreadLocalRegistry",
    "errors",
    "monitor",
    "spawn_thread",
    "telemetry",
]
