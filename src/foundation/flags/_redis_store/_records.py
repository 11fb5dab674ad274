"""The catalogue and migration plans: recorded in Redis, kept in the node copy."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable

from foundation.errors import BackendUnavailable, FlagError
from foundation.flags._redis_store._kill_switch import _KillSwitches
from foundation.flags._redis_store._shared import log


class _Records(_KillSwitches):
    """Records hashes (catalogue, plans) in Redis, again at each resync."""

    # The hashes whose last read by _keep_records got an error reply (WARNING
    # logged once); replaced, never changed in place (set by the listener thread).
    _unread: frozenset[str] = frozenset()

    def _copy_of(
        self, key: str
    ) -> tuple[Callable[[], dict[str, str]], Callable[[dict[str, str]], None]]:
        """How the copy reads and keeps the Redis hash ``key`` (catalogue, plans or plan
        flags)."""
        cache = self._cache
        if key == self._k_catalogue:
            return cache.catalogue, cache.set_catalogue
        if key == self._k_plan_flags:
            return cache.plan_flags, cache.set_plan_flags
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
        """Keep ``raw`` (the hash ``key`` read from Redis) in the copy; best effort.

        Merged: the copy's other entries stay, Redis' values win (written only
        when that changes the copy). Nothing deletes an entry, and Redis may
        hold part of the hash only (restarted empty, one plan recorded again):
        replacing the copy with it lost the others for the next outage.
        """
        read_copy, keep = self._copy_of(key)
        try:
            kept = read_copy()
            merged = {**kept, **raw}
            if merged != kept:
                keep(merged)
        except FlagError as exc:  # an unusable copy: the read itself succeeded
            log.debug("flag store %r: %s not kept in the copy: %s", self.namespace, key, exc)

    def _keep_records(self, keys: tuple[str, ...], doing: str) -> None:
        """Keep the hashes ``keys`` (catalogue, plans) as Redis holds them in the copy.

        Both at the first sync and at every resync; the plans also when the
        migrations stream brings events (a plan is recorded before its first
        event). Without it the copy kept a hash only when a process here
        happened to read or record it while in sync: on a machine whose service
        runs ``FeatureFlags`` only, the plan recorded and advanced from another
        machine, ``foundation migration status`` and ``foundation admin``
        started during an outage found no plans in the copy and failed.

        Merged into the copy (``_keep``): an empty hash in Redis (restarted
        empty, the applications have not recorded it again yet) leaves the
        copy's, a partial one (one plan recorded again) adds or replaces only
        its own entries. The kept hashes grow; an entry recorded again with
        another value replaces the kept one. Race: another process sharing the
        file keeps a later read between this look and the write: its new
        values are set back until the next keep (that process's next read,
        record, sync or event).
        ``BackendUnavailable`` when Redis does not answer (the sync fails and is
        retried); a key that is no hash, or one an ACL denies, only logs
        (``catalogue()`` and ``plans()`` report it to their callers): one
        WARNING per key until it is read again, the repeats (every resync and
        migration event) at DEBUG; an unusable copy logs at DEBUG.
        """
        client = self._ensure_clients()
        with self._translated(doing), client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            # A command's error reply (WRONGTYPE) comes back as its reply: the
            # other hash is kept all the same, and the sync goes on.
            replies = pipe.execute(raise_on_error=False)
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, Exception):
                self._not_kept(key, reply)
                continue
            self._unread = self._unread - {key}
            self._keep(key, {str(k): str(v) for k, v in reply.items()})

    def _not_kept(self, key: str, reply: Exception) -> None:
        """Log Redis' error reply to HGETALL ``key``: WARNING the first time, then DEBUG
        until the key is read again (``_unread``)."""
        if key in self._unread:
            log.debug("flag store %r: %s not kept in the copy: %s", self.namespace, key, reply)
            return
        self._unread = self._unread | {key}
        log.warning(
            "flag store %r: %s not kept in the copy: %s (logged again at DEBUG until it is read)",
            self.namespace,
            key,
            reply,
        )

    def _has_data(self) -> bool:
        """Whether the namespace holds any flag data (``open_store`` creates nothing)."""
        self._check_open()
        keys = [*self._keys(), self._k_catalogue, self._k_plans, self._k_plan_flags]
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
        self._record_all(((key, entries),), doing)

    def _record_all(self, records: tuple[tuple[str, dict[str, str]], ...], doing: str) -> None:
        """``_record`` of each (key, entries) in order: every one is kept for the resync
        (which records them again in the order first recorded) before any is written."""
        with self._lock:
            self._check_open()
            for key, entries in records:
                self._recorded.setdefault(key, {}).update(entries)
        if not self._synced.is_set():
            raise BackendUnavailable(
                f"Redis at {self._url} is not reachable now; {doing} when it returns"
            )
        if self._read_only:
            raise BackendUnavailable(
                f"Redis at {self._url} is a read-only replica now; {doing} when it accepts writes"
            )
        self._write_records(records, doing)

    def _write_records(self, records: Iterable[tuple[str, dict[str, str]]], doing: str) -> None:
        """Write ``records``: the catalogue by ``_record_now``, each plan with the plan
        flags by ``_record_plan_now``. One refused (``FlagError``: not a hash) does not
        stop the others, and is raised after them; ``BackendUnavailable`` at once (the
        resync records them all again)."""
        todo = dict(records)
        fields = todo.pop(self._k_plan_flags, {})
        plans = todo.pop(self._k_plans, {})
        writes = [functools.partial(self._record_now, key, e, doing) for key, e in todo.items()]
        writes += [
            functools.partial(self._record_plan_now, name, text, fields, doing)
            for name, text in plans.items()
        ]
        if fields and not plans:  # (recorded together: not expected)
            writes.append(functools.partial(self._record_now, self._k_plan_flags, fields, doing))
        failed: FlagError | None = None
        for write in writes:
            try:
                write()
            except FlagError as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    def _record_now(self, key: str, entries: dict[str, str], doing: str) -> None:
        """HSET ``entries`` into ``key`` unless all are there; a key that is no hash
        records nothing and says so (``FlagError``): Redis answers, so the resync
        that records it again goes on (``_record_again`` logs it)."""
        # Compare first: every process that starts records its declarations, and
        # most find them recorded. Two writers of one name: the last HSET wins.
        try:
            current = self._read_hash(key, doing)
            if entries and not current.items() >= entries.items():
                with self._translated(doing):
                    self._ensure_clients().hset(key, mapping=entries)
                current.update(entries)
        except BackendUnavailable as exc:
            refused = self._not_a_hash(key, exc, doing)
            if refused is None:
                raise
            raise refused from exc
        if key in (self._k_catalogue, self._k_plans, self._k_plan_flags):
            self._keep(key, current)

    def _not_a_hash(self, key: str, exc: BackendUnavailable, doing: str) -> FlagError | None:
        """The ``FlagError`` to raise for ``exc`` if it is Redis' WRONGTYPE reply to a
        command on ``key`` (None: another failure). Its type is asked for the message
        (best effort: one round trip, on this rare path only)."""
        cause = exc.__cause__
        if not isinstance(cause, self._redis.ResponseError) or not str(cause).startswith(
            "WRONGTYPE"
        ):
            return None
        kind = "value of another type"
        with contextlib.suppress(Exception):
            kind = str(self._ensure_clients().type(key))
        return FlagError(
            f"Redis key {key} holds a {kind}, not a hash: {doing} wrote nothing; "
            "remove or rename that key"
        )

    def _record_plan_now(self, name: str, text: str, fields: dict[str, str], doing: str) -> None:
        """Record plan ``name`` (JSON ``text``) with the plan flags ``fields`` and the
        flags of the record it replaces, in one script (``_RECORD_PLAN``): the union is
        taken in Redis at write time, so this node needs no read of the older record
        (Redis frozen, no copy yet) and one written meanwhile counts too. Nothing is
        written when a key is no hash: ``FlagError``, the plan not recorded."""
        if self._plan_recorded(name, text, fields, doing):
            return
        prefix = json.dumps([name])[:-1] + ", "  # of every field of this plan (plan_flag_field)
        with self._translated(doing):
            self._ensure_clients()
            reply = self._record_plan_script(
                keys=[self._k_plan_flags, self._k_plans], args=[name, text, prefix, *sorted(fields)]
            )
        status, *rest = (str(part) for part in reply)
        if status == "wrongtype":
            key, kind = rest
            raise FlagError(
                f"Redis key {key} holds a {kind}, not a hash: migration plan {name!r} not "
                "recorded, nor its flags (a plan is recorded only with every flag any "
                "recorded version of it named); remove or rename that key"
            )
        unreadable, *older = rest
        if unreadable == "1":
            log.warning(
                "migration plan %r: recorded plan unreadable in %s: its flags not kept in %s",
                name, self._k_plans, self._k_plan_flags,
            )  # fmt: skip
        added = dict.fromkeys(older, "1")
        with self._lock:  # recorded again at each resync, with ours
            self._recorded.setdefault(self._k_plan_flags, {}).update(added)
        self._keep(self._k_plan_flags, {**fields, **added})
        self._keep(self._k_plans, {name: text})

    def _plan_recorded(self, name: str, text: str, fields: dict[str, str], doing: str) -> bool:
        """Whether Redis records plan ``name`` as ``text`` with every one of ``fields``
        already (kept in the copy then): most processes that start find it so. Race:
        a record written after this read is another writer's script, which keeps ours."""
        client = self._ensure_clients()
        with self._translated(doing), client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._k_plan_flags)
            pipe.hgetall(self._k_plans)
            ever, plans = pipe.execute(raise_on_error=False)  # WRONGTYPE: the script says
        if isinstance(ever, Exception) or isinstance(plans, Exception):
            return False
        if plans.get(name) != text or not ever.keys() >= fields.keys():
            return False
        self._keep(self._k_plan_flags, {str(k): str(v) for k, v in ever.items()})
        self._keep(self._k_plans, {str(k): str(v) for k, v in plans.items()})
        return True

    def _record_again(self) -> None:
        """Record what this store recorded before (part of a resync); a failure only logs."""
        with self._lock:
            recorded = {key: dict(entries) for key, entries in self._recorded.items()}
        try:
            self._write_records(recorded.items(), "recording the catalogue and plans again")
        except FlagError as exc:
            log.warning("flag store %r: %s", self.namespace, exc)
