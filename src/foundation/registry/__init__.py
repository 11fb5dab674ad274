"""Registries of live agents: the contract and its backends.

Every name is imported eagerly and reports this package as its module
(``foundation._public``). Importing it never imports ``redis``:
``RedisRegistry`` can be named without the extra, and constructing one
without it raises ``ImportError`` naming ``foundation[redis]``.
"""

from __future__ import annotations

from foundation._public import fixup_module_paths
from foundation.registry._memory import MemoryRegistry, MemoryRegistryStats
from foundation.registry._migrating import MigratingRegistry
from foundation.registry._redis import Conflict, RedisRegistry, RedisStatus, RemoteAgent
from foundation.registry._thread_local import ThreadLocalRegistry, ThreadLocalStats
from foundation.registry._types import (
    PROTOCOL_VERSION,
    Criterion,
    Divergence,
    Entry,
    Registry,
    RegistryEvent,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Conflict",
    "Criterion",
    "Divergence",
    "Entry",
    "MemoryRegistry",
    "MemoryRegistryStats",
    "MigratingRegistry",
    "RedisRegistry",
    "RedisStatus",
    "Registry",
    "RegistryEvent",
    "RemoteAgent",
    "ThreadLocalRegistry",
    "ThreadLocalStats",
]

fixup_module_paths(globals(), __name__)
