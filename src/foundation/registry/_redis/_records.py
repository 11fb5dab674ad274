"""The records ``RedisRegistry`` reports: ``Conflict``, ``RedisStatus`` (and how
a status is built from the node's shared state)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foundation.registry._redis._shared import Shared

__all__ = ["Conflict", "RedisStatus", "status_of"]


@dataclass(frozen=True, slots=True)
class Conflict:
    """A registration this node could not re-assert after losing its lease.

    While this node was cut off (frozen, partitioned, or Redis restarted), its
    lease expired and ``holder`` registered ``key``. The holder keeps it; this
    node's ``agent`` stays alive but is no longer registered (local listeners
    got an ``unregistered`` event with reason ``"replaced"``).
    """

    key: Hashable
    agent: Any
    holder: str
    at: float


@dataclass(frozen=True, slots=True)
class RedisStatus:
    """What ``RedisRegistry.status()`` reports.

    ``connected``: Redis answers normally (no error replies, reachable);
    ``stale``: the mirror may be behind Redis (not CONNECTED, or no heartbeat
    for a TTL); ``version``: the last change version applied by the tail;
    ``written``: the version of this node's last write (see
    ``wait_for_version``); ``entries``: in the mirror; ``local_entries``:
    registered by this node; ``conflicts``: see ``conflicts()``; ``resyncs``:
    snapshots loaded after the first one (after a gap, a trimmed stream, a
    restart or an outage); ``last_error``: the last Redis failure, if any;
    ``state``: the link state (``"connected"``, ``"degraded"``,
    ``"disconnected"``, ``"recovering"``, ``"lease_lost"``, ``"closed"``);
    ``recoveries``: recoveries completed after the first; ``reasserts``:
    recoveries that wrote registrations back; ``reasserted``: registrations
    written back by them; ``lease_extensions``: global outages this node's
    heartbeat healed (see docs/redis.md, "Leases"); ``state_since``: when
    ``state`` was entered (``time.time()``); ``eviction_policy``: the server's
    ``maxmemory-policy`` when it may evict this library's keys (``maxmemory``
    set, an ``allkeys-*`` policy; logged once at WARNING), else None (also when
    ``INFO`` is refused): see docs/redis.md, the failure table.
    """

    node: str
    connected: bool
    stale: bool
    version: int
    written: int
    entries: int
    local_entries: int
    conflicts: int
    resyncs: int
    last_error: str | None
    state: str = "connected"
    recoveries: int = 0
    reasserts: int = 0
    reasserted: int = 0
    lease_extensions: int = 0
    state_since: float = 0.0
    eviction_policy: str | None = None


def status_of(sh: Shared, *, stale: bool, entries: int, eviction_policy: str | None) -> RedisStatus:
    """The ``RedisStatus`` of the node ``sh``: ``stale``, the mirror's ``entries``
    and the server's ``eviction_policy`` as the facade found them."""
    link = sh.link
    return RedisStatus(
        node=sh.node,
        connected=link.reachable,
        stale=stale,
        version=sh.tail_v,
        written=sh.written,
        entries=entries,
        local_entries=len(sh.own),
        conflicts=len(sh.conflicts),
        resyncs=max(0, sh.gen - 1),
        last_error=link.last_error,
        state=link.state.value,
        state_since=link.state_since,
        recoveries=max(0, link.recoveries - 1),
        reasserts=sh.reasserts,
        reasserted=sh.reasserted,
        lease_extensions=sh.lease_extensions,
        eviction_policy=eviction_policy,
    )
