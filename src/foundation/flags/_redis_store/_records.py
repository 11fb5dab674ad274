"""The catalogue and migration plans: recorded in Redis, kept in the node copy."""

from __future__ import annotations

from collections.abc import Callable

from foundation.errors import BackendUnavailable, FlagError
from foundation.flags._redis_store._kill_switch import _KillSwitches
from foundation.flags._redis_store._shared import log


class _Records(_KillSwitches):
    """Records hashes (catalogue, plans) in Redis, again at each resync."""

    def _copy_of(
        self, key: str
    ) -> tuple[Callable[[], dict[str, str]], Callable[[dict[str, str]], None]]:
        """How the copy reads and keeps the Redis hash ``key`` (catalogue or plans)."""
        cache = self._cache
        if key == self._k_catalogue:
            return cache.catalogue, cache.set_catalogue
        return cache.plans, cache.set_plans

    def _hash_or_copy(self, key: str, doing: str) -> dict[str, str]:
        """The hash ``key`` from Redis (kept in the copy), else from the copy: the
        catalogue and the migration plans.

        ``BackendUnavailable`` when Redis cannot answer and the copy kept none.
        """
        self._check_open()
        read_copy, _ = self._copy_of(key)
        if not self._synced.is_set():
            # Stale (Redis was out of reach at start, or is now): the copy answers
            # when it kept the hash, as _read does, with no call to Redis. On a
            # frozen Redis each call would wait a whole timeout in connect(): a
            # command reading the catalogue and the plans waited several in a row.
            kept = read_copy()
            if kept:
                return kept
        try:
            raw = self._read_hash(key, doing)
        except BackendUnavailable:
            kept = read_copy()
            if not kept:
                raise
            return kept
        if self._synced.is_set():
            self._keep(key, raw)
            return raw
        # Not following Redis yet (just constructed, or recovering): Redis may have
        # restarted empty and not be restored yet, so an empty answer is no answer.
        return raw or read_copy()

    def _keep(self, key: str, raw: dict[str, str]) -> None:
        """Keep ``raw`` (the hash ``key`` read from Redis) in the copy; best effort."""
        read_copy, keep = self._copy_of(key)
        try:
            if read_copy() != raw:
                keep(raw)
        except FlagError as exc:  # an unusable copy: the read itself succeeded
            log.debug("flag store %r: %s not kept in the copy: %s", self.namespace, key, exc)

    def _has_data(self) -> bool:
        """Whether the namespace holds any flag data (``open_store`` creates nothing)."""
        self._check_open()
        keys = [*self._keys(), self._k_catalogue, self._k_plans]
        with self._translated("looking for the flag store"):
            return bool(self._ensure_clients().exists(*keys))

    def _read_hash(self, key: str, doing: str) -> dict[str, str]:
        self._check_open()
        client = self._ensure_clients()
        with self._translated(doing):
            return dict(client.hgetall(key))

    def _record(self, key: str, entries: dict[str, str], doing: str) -> None:
        """HSET ``entries`` unless all are there. Kept in memory too: each resync
        records them again (Redis may have restarted empty, or been unreachable:
        then this raises BackendUnavailable at once, and the resync records them)."""
        with self._lock:
            self._check_open()
            self._recorded.setdefault(key, {}).update(entries)
        if not self._synced.is_set():
            raise BackendUnavailable(
                f"Redis at {self._url} is not reachable now; {doing} when it returns"
            )
        if self._read_only:
            raise BackendUnavailable(
                f"Redis at {self._url} is a read-only replica now; {doing} when it accepts writes"
            )
        self._record_now(key, entries, doing)

    def _record_now(self, key: str, entries: dict[str, str], doing: str) -> None:
        # Compare first: every process that starts records its declarations, and
        # most find them recorded. Two writers of one name: the last HSET wins.
        current = self._read_hash(key, doing)
        if entries and not current.items() >= entries.items():
            with self._translated(doing):
                self._ensure_clients().hset(key, mapping=entries)
            current.update(entries)
        if key in (self._k_catalogue, self._k_plans):
            self._keep(key, current)

    def _record_again(self) -> None:
        """Record what this store recorded before (part of a resync); a failure only logs."""
        with self._lock:
            recorded = {key: dict(entries) for key, entries in self._recorded.items()}
        for key, entries in recorded.items():
            try:
                self._record_now(key, entries, "recording the catalogue again")
            except FlagError as exc:
                log.warning("flag store %r: %s", self.namespace, exc)
            except BackendUnavailable:
                raise  # the resync fails and is retried
