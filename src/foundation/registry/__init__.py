"""Registries of live agents: the contract and its backends.

Backends are loaded on first use, so ``RedisRegistry`` can be named without
the ``redis`` extra installed (constructing one without it raises ImportError).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from foundation.registry._types import (
    PROTOCOL_VERSION,
    Criterion,
    Divergence,
    Entry,
    Registry,
    RegistryEvent,
)

if TYPE_CHECKING:
    from foundation.registry._memory import MemoryRegistry
    from foundation.registry._migrating import MigratingRegistry
    from foundation.registry._redis import RedisRegistry
    from foundation.registry._thread_local import ThreadLocalRegistry

_BACKENDS = {
    "MemoryRegistry": "foundation.registry._memory",
    "ThreadLocalRegistry": "foundation.registry._thread_local",
    "MigratingRegistry": "foundation.registry._migrating",
    "RedisRegistry": "foundation.registry._redis",
}

__all__ = [
    "PROTOCOL_VERSION",
    "Criterion",
    "Divergence",
    "Entry",
    "MemoryRegistry",
    "MigratingRegistry",
    "RedisRegistry",
    "Registry",
    "RegistryEvent",
    "ThreadLocalRegistry",
]


def __getattr__(name: str) -> Any:
    module = _BACKENDS.get(name)
    if module is None:
        raise AttributeError(f"module 'foundation.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
