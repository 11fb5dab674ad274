"""Feature flags and staged migrations.

Every name is imported eagerly and reports this package as its module
(``foundation._public``). Importing it never imports ``redis``:
``RedisFlagStore`` can be named without the extra, and constructing one
without it raises ``ImportError`` naming ``foundation[redis]``.
"""

from __future__ import annotations

from foundation._public import fixup_module_paths
from foundation.flags._declared import Flag
from foundation.flags._flags import FeatureFlags
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
from foundation.flags._node_cache import PendingKillSwitch
from foundation.flags._redis_store import RedisFlagStore, RedisFlagStoreStatus
from foundation.flags._sqlite_store import SQLiteFlagStore
from foundation.flags._store import (
    FlagChange,
    FlagInfo,
    FlagState,
    FlagStore,
    MemoryFlagStore,
    MigrationEvent,
    StoreTransaction,
)
from foundation.flags._typed import Evaluation
from foundation.flags._urls import open_store

__all__ = [
    "DEFAULT_FLAGS",
    "AutoRollback",
    "Evaluation",
    "FeatureFlags",
    "Flag",
    "FlagChange",
    "FlagInfo",
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
    "PendingKillSwitch",
    "ReadinessCheck",
    "RedisFlagStore",
    "RedisFlagStoreStatus",
    "SQLiteFlagStore",
    "Stage",
    "StoreTransaction",
    "bucket",
    "open_store",
]

fixup_module_paths(globals(), __name__)
