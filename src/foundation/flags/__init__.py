"""Feature flags and staged migrations.

``RedisFlagStore`` is loaded on first use, so this package imports without the
``redis`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from foundation.flags._flags import FeatureFlags, Flag
from foundation.flags._hashing import bucket
from foundation.flags._migration import (
    DEFAULT_FLAGS,
    AutoRollback,
    HealthReport,
    HealthSample,
    HealthThresholds,
    Migration,
    MigrationPlan,
    MigrationStatus,
    ReadinessCheck,
    Stage,
)
from foundation.flags._sqlite_store import SQLiteFlagStore
from foundation.flags._store import (
    FlagChange,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    MigrationEvent,
    StoreTransaction,
)

if TYPE_CHECKING:
    from foundation.flags._redis_store import RedisFlagStore

_LAZY = {"RedisFlagStore": "foundation.flags._redis_store"}

__all__ = [
    "DEFAULT_FLAGS",
    "AutoRollback",
    "FeatureFlags",
    "Flag",
    "FlagChange",
    "FlagState",
    "FlagStore",
    "HealthReport",
    "HealthSample",
    "HealthThresholds",
    "MemoryFlagStore",
    "Migration",
    "MigrationEvent",
    "MigrationPlan",
    "MigrationStatus",
    "ReadinessCheck",
    "RedisFlagStore",
    "SQLiteFlagStore",
    "Stage",
    "StoreTransaction",
    "bucket",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'foundation.flags' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
