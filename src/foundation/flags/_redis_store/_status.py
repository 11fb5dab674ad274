"""What a ``RedisFlagStore`` reports about itself, and the stores of this process."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from foundation import _fork

if TYPE_CHECKING:
    # sqlite3, uuid and pathlib are imported where used (`import foundation` stays cheap).
    from pathlib import Path

    from foundation.flags._redis_store._store import RedisFlagStore


# The stores of this process not yet closed, for gauges read at collection time
# (foundation.metrics reads their node copy's state: never from under one of their locks).
# Unlocked in a forked child: a scrape in a parent thread at the fork hung the
# child's first new store for ever (its constructor adds it under this lock).
_live_lock = threading.Lock()
_fork.unlock_after_fork(_live_lock)


_live: weakref.WeakSet[RedisFlagStore] = weakref.WeakSet()


def copies_in_memory() -> dict[str, bool]:
    """Per namespace, whether an open ``RedisFlagStore`` of this process keeps its
    node copy in memory (``foundation.metrics`` collects it). No I/O and no store
    lock: one flag read per store, so a collection costs next to nothing."""
    with _live_lock:  # a store added meanwhile must not break the iteration
        stores = list(_live)
    found: dict[str, bool] = {}
    for store in stores:
        # Race: a store closing meanwhile reports its last value once more.
        found[store.namespace] = found.get(store.namespace, False) or store._cache.in_memory
    return found


def store_gauges() -> dict[str, tuple[bool, bool, bool]]:
    """Per namespace: whether an open ``RedisFlagStore`` of this process is stale,
    on a read-only Redis, or keeps its node copy in memory (each: any of that
    namespace's stores). Read at collection by ``foundation.metrics``, as
    ``copies_in_memory``: no I/O, no store lock, a closed store absent."""
    with _live_lock:
        stores = list(_live)
    found: dict[str, tuple[bool, bool, bool]] = {}
    for store in stores:
        # Race: a store closing meanwhile reports its last values once more.
        stale, read_only, in_memory = found.get(store.namespace, (False, False, False))
        found[store.namespace] = (
            stale or store.stale,
            read_only or store._read_only,
            in_memory or store._cache.in_memory,
        )
    return found


@dataclass(frozen=True, slots=True)
class RedisFlagStoreStatus:
    """What a ``RedisFlagStore`` knows about itself (``status()``).

    ``connected``: the listener follows Redis. ``stale``: answers come from the
    node copy. ``version``: the copy's version. ``pending``: kill switches not
    yet committed (``pending_flags``: the flags they switch off).
    ``restores``: times this store restored Redis from its copy (or kept, as
    pending, kill switches of its copy that Redis lost to a fork).
    ``stale_since``: wall-clock time (``time.time()``) of the last transition
    into stale, None while not stale. ``read_only``: Redis is a read-only
    replica (``ROLE``, or a ``READONLY`` reply): reads work, writes other than
    the kill switch fail with ``BackendUnavailable``. ``copy_in_memory``: the
    node copy's file failed (disk full, I/O error, locked, deleted...), so the
    copy lives in memory, not durable, until a retry writes it back (see
    docs/flags-outages.md, "The node copy"). ``eviction_policy``: the server's
    ``maxmemory-policy`` when it may evict this store's keys (``maxmemory`` set,
    an ``allkeys-*`` policy; logged once at WARNING), else None (also when
    ``INFO`` is refused): see docs/flags-outages.md, "An evicting Redis".
    """

    connected: bool
    stale: bool
    version: int
    pending: int
    cache_path: Path | None
    last_error: str | None
    restores: int
    resyncs: int
    stale_since: float | None = None
    pending_flags: tuple[str, ...] = ()
    read_only: bool = False
    copy_in_memory: bool = False
    eviction_policy: str | None = None
