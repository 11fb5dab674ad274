"""Foundation: OTP-style agents for Python.

A registry of live agents that cleans itself up, feature flags with staged
migrations, a registry that migrates between backends by flag, supervisors,
and a Redis backend for many machines. Everything public is importable from
here; submodules are private.

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

import importlib
from typing import TYPE_CHECKING, Any

from foundation import errors, telemetry

if TYPE_CHECKING:
    from foundation.application import Application
    from foundation.flags import (
        FeatureFlags,
        Flag,
        FlagChange,
        MemoryFlagStore,
        Migration,
        MigrationPlan,
        RedisFlagStore,
        SQLiteFlagStore,
        Stage,
    )
    from foundation.liveness import Down, Monitor, OSProcess, monitor, spawn_thread
    from foundation.registry import (
        Divergence,
        Entry,
        MemoryRegistry,
        MigratingRegistry,
        RedisRegistry,
        RegistryEvent,
        ThreadLocalRegistry,
    )
    from foundation.supervision import ChildSpec, Supervisor

__version__ = "0.1.0"

# Public name -> the (private) subpackage that defines it. Loaded on first use,
# so `import foundation` stays cheap and the optional extras stay optional.
_EXPORTS: dict[str, str] = {
    "Entry": "foundation.registry",
    "RegistryEvent": "foundation.registry",
    "Divergence": "foundation.registry",
    "MemoryRegistry": "foundation.registry",
    "ThreadLocalRegistry": "foundation.registry",
    "MigratingRegistry": "foundation.registry",
    "RedisRegistry": "foundation.registry",
    "monitor": "foundation.liveness",
    "Monitor": "foundation.liveness",
    "Down": "foundation.liveness",
    "OSProcess": "foundation.liveness",
    "spawn_thread": "foundation.liveness",
    "Flag": "foundation.flags",
    "FeatureFlags": "foundation.flags",
    "FlagChange": "foundation.flags",
    "MemoryFlagStore": "foundation.flags",
    "SQLiteFlagStore": "foundation.flags",
    "RedisFlagStore": "foundation.flags",
    "Stage": "foundation.flags",
    "MigrationPlan": "foundation.flags",
    "Migration": "foundation.flags",
    "Supervisor": "foundation.supervision",
    "ChildSpec": "foundation.supervision",
    "Application": "foundation.application",
}

__all__ = [
    "Application",
    "ChildSpec",
    "Divergence",
    "Down",
    "Entry",
    "FeatureFlags",
    "Flag",
    "FlagChange",
    "MemoryFlagStore",
    "MemoryRegistry",
    "MigratingRegistry",
    "Migration",
    "MigrationPlan",
    "Monitor",
    "OSProcess",
    "RedisFlagStore",
    "RedisRegistry",
    "RegistryEvent",
    "SQLiteFlagStore",
    "Stage",
    "Supervisor",
    "ThreadLocalRegistry",
    "errors",
    "monitor",
    "spawn_thread",
    "telemetry",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'foundation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups are plain global reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
