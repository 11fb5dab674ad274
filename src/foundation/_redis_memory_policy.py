"""Whether the Redis server may evict Foundation's keys: one check for both Redis classes.

A Redis with ``maxmemory`` set deletes keys under memory pressure when its
``maxmemory-policy`` allows it, silently: no error reply, nothing on the
stream. ``RedisRegistry`` and ``RedisFlagStore`` keep state that must not
vanish (registrations, leases, flag states, history), so an evicting policy is
a misconfiguration the operator must hear about at once, not at 3 a.m.

Which policies evict *our* keys: the ``allkeys-*`` ones (``allkeys-lru``,
``allkeys-lfu``, ``allkeys-random``, Redis 8.6's ``allkeys-lrm``, and any later
``allkeys-`` policy) take any key. The ``volatile-*`` ones
(``volatile-lru``, ``volatile-lfu``, ``volatile-random``, ``volatile-ttl``,
the default of some managed services) take only keys with a TTL, and no key of
this library has one: there Redis answers ``OOM`` once nothing evictable is
left, as with ``noeviction`` (measured: see docs/redis.md, failure table).

:class:`EvictionCheck` reads ``INFO memory`` (``INFO`` is often allowed where
``CONFIG GET`` is not: managed services, ACL users) when a client connects or
reconnects, and logs ONE warning per owner (a registry node, a flag store)
naming the policy, the redacted URL and the fix (``noeviction``).
``INFO`` refused (an ACL user without ``+info``) or failing is never an error
of the caller: the policy is then unknown, said once at INFO level.
``may_evict`` (an evicting policy, or unknown) tells the registry's lease
thread to look for registrations Redis lost at each heartbeat; the flag store
compares Redis with its node copy at each resync check whatever the policy.

>>> import logging
>>> check = EvictionCheck(logging.getLogger("doc"), "flag store 'shop'", "redis://h:6379/0")
>>> check.policy is None
True
>>> evicting_policy({"maxmemory": 0, "maxmemory_policy": "allkeys-lru"}) is None
True
>>> evicting_policy({"maxmemory": 1 << 30, "maxmemory_policy": "allkeys-lru"})
'allkeys-lru'
>>> evicting_policy({"maxmemory": 1 << 30, "maxmemory_policy": "volatile-lru"}) is None
True
>>> evicting_policy({"maxmemory": 1 << 30, "maxmemory_policy": "allkeys-lrm"})  # Redis 8.6
'allkeys-lrm'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from foundation._redis_conn import import_redis, redis_errors

__all__ = ["EVICTING_POLICIES", "EvictionCheck", "evicting_policy"]

EVICTING_POLICIES: Final = frozenset(
    {"allkeys-lru", "allkeys-lfu", "allkeys-random", "allkeys-lrm"}
)
"""The ``maxmemory-policy`` values known to delete keys without a TTL (all of ours);
any other ``allkeys-`` policy (a later server's) is taken as one too."""


def evicting_policy(info: Mapping[str, Any]) -> str | None:
    """The policy named by an ``INFO memory`` reply if it may evict keys without a
    TTL (``maxmemory`` set and an ``allkeys-*`` policy), else None."""
    policy = info.get("maxmemory_policy")
    if isinstance(policy, bytes):
        policy = policy.decode("ascii", "replace")
    try:
        limit = int(info.get("maxmemory") or 0)
    except (TypeError, ValueError):
        return None
    if limit > 0 and isinstance(policy, str) and policy.startswith("allkeys-"):
        return policy
    return None


class EvictionCheck:
    """One owner's check of the server's eviction policy (see the module docstring).

    ``policy`` is the evicting policy seen at the last check that could read
    ``INFO`` (None: the server cannot evict our keys, or it was never read).
    The WARNING is logged once per owner, however many reconnects see it; a
    server fixed later (``CONFIG SET maxmemory-policy noeviction``) clears
    ``policy`` at the next check, with an INFO line.

    Race: ``check`` runs in the owner's connecting thread (construction, its
    recovery thread); ``policy`` is one attribute store, read by ``status()``
    from any thread.
    """

    __slots__ = ("_info_refused", "_log", "_read", "_url", "_warned", "_what", "policy")

    def __init__(self, logger: logging.Logger, what: str, url: str) -> None:
        self._log = logger
        self._what = what  # "flag store 'shop'", "node n1 (namespace 'billing')"
        self._url = url  # redacted
        self._warned = False
        self._info_refused = False
        self._read = False  # INFO memory answered at least once
        self.policy: str | None = None

    @property
    def may_evict(self) -> bool:
        """Whether the server may evict our keys: an evicting policy seen at the last
        check, or ``INFO memory`` never answered (unknown: assume it may)."""
        return self.policy is not None or not self._read

    def check(self, client: Any, *, raise_unreachable: bool = False) -> str | None:
        """Read ``INFO memory`` on ``client`` and warn (once) if the server may evict
        our keys; returns ``policy``. Never raises: a failure leaves ``policy`` as it
        was; except, with ``raise_unreachable``, a timeout or connection error (redis-
        py's own), for a caller whose next call would only wait the same timeout."""
        try:
            info = client.info("memory")
        except redis_errors() as exc:
            if raise_unreachable and _connection_failure(exc):
                raise
            # An ACL user without +info (the documented minimal ACL has none), a
            # managed service that renames INFO, or the server went away: the caller's
            # own next call reports an outage; the policy stays unknown.
            if not self._info_refused and not _connection_failure(exc):
                self._info_refused = True
                self._log.info(
                    "%s: cannot read INFO memory on Redis at %s (%s); its maxmemory-policy "
                    "is not checked (grant +info to check it: an evicting policy deletes "
                    "this library's keys silently)",
                    self._what, self._url, _short(exc),
                )  # fmt: skip
            return self.policy
        if not isinstance(info, Mapping):
            return self.policy
        self._read = True
        found = evicting_policy(info)
        if found is not None and not self._warned:
            self._warned = True
            self._log.warning(
                "%s: Redis at %s has maxmemory %s with maxmemory-policy %s, which may evict "
                "(silently delete) this library's keys under memory pressure: registrations, "
                "leases, flag states or history may vanish; set maxmemory-policy noeviction "
                "(writes then fail with OOM instead, and recover by themselves)",
                self._what, self._url, info.get("maxmemory"), found,
            )  # fmt: skip
        elif found is None and self.policy is not None:
            self._log.info(
                "%s: Redis at %s no longer has an evicting maxmemory-policy (now %s)",
                self._what, self._url, _text(info.get("maxmemory_policy")),
            )  # fmt: skip
        self.policy = found
        return found


def _connection_failure(exc: BaseException) -> bool:
    redis = import_redis()
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}"


def _text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
