"""The listener thread of the Redis flag store: first sync, following the streams, resyncs."""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from typing import Any, NamedTuple

from foundation._retry import RetryBackoff
from foundation.errors import BackendUnavailable, FlagError, bounded_list, escape_controls
from foundation.flags._history import Replay
from foundation.flags._node_cache import Snapshot, stream_key
from foundation.flags._redis_store._records import _Records
from foundation.flags._redis_store._shared import _read_only_error, log
from foundation.flags._store import FlagChange, MigrationEvent

_Entries = list[tuple[str, dict[str, str]]]
_XREAD_COUNT = 256  # entries per stream in one XREAD reply (see _read_streams)
_TOLD_KEPT = 64  # told commits compared at a resync (see _Listener._told_unheld)
_TOLD_NAMED = 5  # changes of a told commit kept to name in the WARNING (the rest counted)


class _Told(NamedTuple):
    """An XREAD reply's entries (ids and fields as read) and the ids the listener
    read them after: what ``_keep_told`` puts into the node copy."""

    history_from: str
    migrations_from: str
    history: _Entries
    migrations: _Entries


class _ToldCommit(NamedTuple):
    """A commit this node's listeners were told: its transaction, its first
    ``_TOLD_NAMED`` changes named (flag, by, reason; not their states: bounded
    memory) and how many it holds."""

    txn: str
    named: tuple[tuple[str, str | None, str | None], ...]
    changes: int


def _told_commit(txn: str, changes: list[FlagChange]) -> _ToldCommit:
    named = tuple((c.flag, c.by, c.reason) for c in changes[:_TOLD_NAMED])
    return _ToldCommit(txn, named, len(changes))


def _told_named(version: int, commit: _ToldCommit) -> str:
    """A told commit as the WARNING names it (user text escaped: one log line)."""
    names = [
        f"{escape_controls(flag)} by {escape_controls(by)} ({escape_controls(reason)})"
        for flag, by, reason in commit.named
    ]
    more = commit.changes - len(names)
    return f"version {version}: " + ", ".join(names) + (f" and {more} more" if more > 0 else "")


def _entries(raw: Any) -> _Entries:
    return [(str(i), dict(f)) for i, f in raw or []]


def _v(fields: dict[str, str]) -> int:
    """An entry's version (-1: none, not a number)."""
    raw = fields.get("v", "")
    return int(raw) if raw.isdigit() else -1


def _after(entries: _Entries, start: str, last: str | None) -> _Entries | None:
    """The entries after the copy's ``last`` one (None: the stream's start); None if
    ``entries`` (read after ``start``) do not follow on from it."""
    last = last or "0-0"
    if last == start:
        return entries
    for n, (entry_id, _fields) in enumerate(entries):
        if entry_id == last:
            return entries[n + 1 :]
    return None


def _told_top(history: _Entries) -> int:
    """The version of the last commit whose history entries ``history`` (one XREAD
    reply's) hold in full: the reply may end mid-transaction (-1: none known)."""
    if not history:
        return -1
    pos = _position(history[-1][1])
    if pos is None:
        return -1
    return pos[0] if pos[2] + 1 >= pos[3] else pos[0] - 1


def _position(fields: dict[str, str]) -> tuple[int, str, int, int] | None:
    """(version, txn, i, n) of a history entry (None: an entry without them)."""
    try:
        return int(fields["v"]), fields["txn"], int(fields["i"]), int(fields["n"])
    except (KeyError, ValueError):
        return None


class _Listener(_Records):
    """Starts in sync (or from the copy) and follows the change stream on its thread."""

    #: The version of the last commit an XREAD reply delivered since the last
    #: resync (0: none): see ``_warn_if_told_back``.
    _told_at = 0

    #: The commits this node's listeners were told since the last resync, by
    #: version (the last ``_TOLD_KEPT``; None: none): see ``_told_unheld``.
    #: The listener thread's alone.
    _told: dict[int, _ToldCommit] | None = None

    #: Of those, the ones the copy did not hold when a resync began, kept until
    #: one gets to ``_warn_if_told_back`` (None: none): see ``_told_unheld``.
    _unheld: dict[int, _ToldCommit] | None = None

    def _first_sync(self) -> None:
        """Connect and catch up, or start stale from the node copy if Redis is down."""
        created = self.cache_path is not None and not self._cache.has_data()
        self._created_copy = created  # a start that fails later removes it too
        has_copy = not created and self._cache.has_data()
        try:
            client = self._ensure_clients()
            self._catch_up()
            self._check_memory_policy(client)
            if not self._check_role():  # a read-only replica: they wait (see _resync)
                self._replay_pending()
        except BackendUnavailable as exc:
            if not has_copy:
                self._close_clients()
                self._cache.close()
                if created:
                    self._remove_cache_files()
                raise
            self._start_from_copy(exc)
        except BaseException:
            self._close_clients()
            self._cache.close()
            raise
        else:
            self._synced.set()

    def _start_from_copy(self, exc: BackendUnavailable) -> None:
        """Start stale from the node copy: Redis was unreachable at start (``exc``)."""
        # Start from the node copy (stale); the listener catches up later.
        self._last_error = str(exc)
        self._note_failure(exc)
        self._stale_since = time.time()
        if _read_only_error(exc):
            self._note_read_only(True, str(exc))
        log.warning(
            "flag store %r: Redis at %s unavailable at start (%s); "
            "starting from the node copy at version %d (stale)",
            self.namespace, self._url, exc, self._cache.version,
        )  # fmt: skip
        self._event(
            "started_from_cache",
            version=0 if self._closed else self._cache.version,
            cache_path=str(self.cache_path) if self.cache_path else None,
            error=str(exc),
        )
        self._event("stale", error=str(exc))

    def _start_listener(self) -> None:
        """Start the listener thread. Without a thread (the process's thread limit)
        close the connections and the node copy ``_first_sync`` opened, then raise
        ``BackendUnavailable``: nothing of this store is left open."""
        self._thread = threading.Thread(
            target=self._listen, name=f"foundation-flags-redis[{self.namespace}]", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread" (EAGAIN: thread limit)
            # No thread ran and nobody holds this store yet: nothing can race.
            self._closed = True
            self._close_clients()
            self._cache.close()
            if self._created_copy:  # the node copy this start created: no file left
                self._remove_cache_files()
            raise BackendUnavailable(
                errno.EAGAIN,
                f"flag store {self.namespace!r} cannot start its listener thread: {exc}",
            ) from exc

    def _listen(self) -> None:
        backoff = RetryBackoff(base=0.05, cap=1.0)
        pending: dict[str, list[tuple[str, FlagChange]]] = {}
        need_resync = not self._synced.is_set()
        next_check = time.monotonic() + self._resync_interval
        try:
            while not self._stop.is_set():
                try:
                    if need_resync or self._resync_wanted.is_set():
                        self._resync()
                        pending.clear()
                        need_resync = False
                        backoff.reset()
                    else:
                        self._replay_if_wanted()
                    self._send_welcomes()
                    reply = self._read_streams()
                    if self._stop.is_set():
                        break
                    if reply:
                        self._take_reply(reply, pending)
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + self._resync_interval
                        need_resync = self._redis_went_back()
                    # Redis answered this turn's every call: writes, and the next
                    # turn's replay of kill switches, stop failing fast (see
                    # _fail_fast). Here, after the last call: one answered after
                    # a write timed out counts (a reply read just before Redis
                    # froze again only lets one more write wait its own timeout).
                    self._redis_answered()
                    self._flap_over()
                except Exception as exc:  # the listener survives anything; see _fault
                    if self._stop.is_set():
                        break
                    self._fault(exc)
                    need_resync = True
                    self._send_announcements()  # (committed: told, Redis away or not)
                    self._stop.wait(backoff.next())
        finally:
            self._listener_stopped()

    def _replay_if_wanted(self) -> None:
        """Commit the pending kill switches if a replay was asked for (``_replay_wanted``).

        Not on a read-only replica: the commit would fail (and the listener go
        stale for it); the resync after it accepts writes again replays them."""
        if self._replay_wanted.is_set() and not self._read_only:
            with self._translated("committing pending kill switches"):
                self._replay_pending()

    def _listener_stopped(self) -> None:
        """The listener's last step: not synced, what a write's replay left to announce
        told, its socket closed (the copy too once closed)."""
        self._synced.clear()
        with self._lock:  # (a write's replay handing some over from now tells them)
            self._listener_gone = True
        self._send_announcements()
        with contextlib.suppress(Exception):
            if self._listen_client is not None:
                self._listen_client.close()
        if self._closed:
            self._cache.close()

    def _read_streams(self) -> Any:
        """One blocking XREAD of the history and migration streams."""
        with self._translated("following the change stream"):
            client = self._ensure_listen_client()
            return client.xread(
                {self._k_history: self._last_id, self._k_migrations: self._last_mig_id},
                count=_XREAD_COUNT,
                block=self._block_ms,
            )

    def _take_reply(self, reply: Any, pending: dict[str, list[tuple[str, FlagChange]]]) -> None:
        """Deliver the history entries of an XREAD reply, then refresh the copy
        (the plans too after migration events: see ``_keep_records``)."""
        parts = {str(stream): entries for stream, entries in reply}
        told = _Told(
            self._last_id,
            self._last_mig_id,
            _entries(parts.get(self._k_history)),
            _entries(parts.get(self._k_migrations)),
        )
        events = False
        for stream, entries in reply:
            if stream == self._k_history and entries and self._may_have_skipped(entries[0][1]):
                # Race: a trim dropped entries this listener had not read (it lags
                # more than history_limit entries): its replayed states miss them.
                # Resynchronise; subscribers reload.
                self._resync_wanted.set()
                self._deliver([])
                return
            if stream == self._k_history:
                self._consume(entries, pending)
            elif entries:
                self._last_mig_id = str(entries[-1][0])
                events = True
        # Deliver first (propagation latency), copy second. A subscriber's
        # reload (load_states) refreshes this copy itself before it answers
        # with anything newer (see _read). Race: Redis lost before that reload:
        # it answers the copy, older than what was just delivered; FeatureFlags
        # keeps that news so its next reload does not tell it again
        # (FeatureFlags._on_remote). Race: the master lost for good right after
        # this reply (a failover whose old master never replicated the commit,
        # Redis back from an older snapshot) with the writer gone too: no copy
        # but this one may hold what its listeners were just told. So when this
        # refresh fails, or finds Redis not past the reply, the copy keeps the
        # reply's commits (_keep_told): the resync restores them from it
        # (WARNING), where it found Redis "in sync" at the copy's older version
        # and told the change taken back by nobody: a kill switch heard pulled,
        # silently un-pulled (found in a Sentinel failover).
        self._told_at = max(self._told_at, _told_top(told.history))
        try:
            self._pull()
        except BackendUnavailable:
            self._keep_told(told)
            raise
        self._keep_told(told)  # (a no-op when the copy caught up: the usual case)
        self._forget_told_held()
        if events:
            self._keep_records((self._k_plan_flags, self._k_plans), "reading the migration plans")

    def _keep_told(self, told: _Told) -> None:
        """Put the commits of ``told`` (an XREAD reply, delivered) into the node copy
        if it does not hold them: it keeps what this node's listeners heard.

        From the reply alone, no round trip (Redis may be gone already): the
        copy's states with the entries' changes replayed (each records its
        runtime state, see ``_states_rebuilt``) and stages with each event's
        ``to_stage``, as a commit's own mirror does (``_mirror_commit``). Only
        when exact: the copy's last entries are where this reply follows on,
        and the entries after them are whole commits, one per version from the
        copy's on. Else (the copy is ahead: its writer's own refresh; a reply
        ending mid-commit; an unreadable entry; the deployment's first commit,
        whose epoch no entry carries) nothing is kept.
        """
        top = _told_top(told.history)
        if top <= 0:
            return
        # An unusable copy (FlagError) raises nothing here: after a failed refresh
        # its BackendUnavailable must reach the listener loop, not this error.
        with self._copy_lock:
            cache = self._cache
            try:
                held = cache.version
                if held >= top:
                    return  # the copy holds these commits (or later ones)
                epoch, ids = cache.epoch, cache.last_ids()
                if epoch is None:
                    return
                snap = self._told_snapshot(told, (held, epoch, ids), top)
                if snap is None:
                    return
                # Race: another process sharing the copy's file refreshed it after
                # the reads above (to a later version, or to a fork's version
                # `top`: the new master's): not kept, its refresh is at least as
                # new, and the reply's entries chained onto another master's would
                # mix two histories. Checked in apply's own transaction (it holds
                # the file's write lock), so nothing lands between check and write.
                cache.apply(snap, only_from=(held, ids))
            except (FlagError, ValueError, KeyError) as exc:
                log.debug("flag store %r: told commits not kept ahead: %s", self.namespace, exc)

    def _told_snapshot(
        self, told: _Told, copy: tuple[int, str, tuple[str | None, str | None]], top: int
    ) -> Snapshot | None:
        """The copy (its version, epoch and last entry ids) with the commits of
        ``told`` up to version ``top`` applied, or None if that is not exact."""
        held, epoch, ids = copy
        history = _after(told.history, told.history_from, ids[0])
        migrations = _after(told.migrations, told.migrations_from, ids[1])
        if history is None or migrations is None:
            return None
        if len(told.migrations) >= _XREAD_COUNT and _v(told.migrations[-1][1]) <= top:
            return None  # the reply may hold only part of the events up to `top`
        history = [e for e in history if _v(e[1]) <= top]
        migrations = [e for e in migrations if _v(e[1]) <= top]
        versions = {_v(f) for _, f in history + migrations}
        if versions != set(range(held + 1, top + 1)):
            return None  # not whole commits following the copy's version
        replay = Replay({n: self._decode_state(s) for n, s in self._cache.states().items()})
        for _id, fields in history:
            replay.feed_json(fields["change"])
        stages = self._cache.stages()
        for _id, fields in migrations:
            event = MigrationEvent.from_json(fields["event"])
            stages[event.plan] = event.to_stage
        states = {n: state.to_json() for n, state in replay.states.items()}
        return Snapshot(top, epoch, states, stages, history, migrations, full=False)

    def _may_have_skipped(self, first: dict[str, str]) -> bool:
        """Whether entries between the last one read and ``first`` (the next XREAD
        reply's) may have been trimmed unread.

        Not when ``first`` is the entry right after the last one read (same
        transaction, next index; or index 0 of the next version): the common case
        costs no round trip. Otherwise (after a catch-up, a migration-only commit,
        a lag) one HGET of meta's ``trimmed``, read after the XREAD reply, so a
        trim that landed before it is seen (a later one at worst resyncs for
        nothing): trimmed past the last entry read means entries may be lost.
        """
        last, pos = self._last_pos, _position(first)
        if last is not None and pos is not None:
            version, txn, i, n = last
            if i + 1 < n and pos[:3] == (version, txn, i + 1):
                return False
            if i + 1 >= n and pos[0] == version + 1 and pos[2] == 0:
                return False
        with self._translated("reading the history's trim"):
            cut = self._ensure_listen_client().hget(self._k_meta, "trimmed")
        return cut is not None and stream_key(str(cut)) > stream_key(self._last_id)

    def _tails(self) -> tuple[str, str]:
        client = self._ensure_listen_client()
        with self._translated("reading the change stream's tail"):
            self._listener_client_id = int(client.client_id())
            out = []
            for key in (self._k_history, self._k_migrations):
                tail = client.xrevrange(key, count=1)
                out.append(str(tail[0][0]) if tail else "0-0")
        return out[0], out[1]

    def _resync(self) -> None:
        """Reconnect; restore Redis or refresh the copy; commit pending kill switches."""
        self._resync_wanted.clear()
        self._synced.clear()
        client = self._ensure_clients()
        self._told_unheld()
        self._catch_up()
        self._warn_if_told_back()
        self._check_memory_policy(client)
        read_only = self._check_role()
        # Redis answered: the replay below must not fail fast for a write that
        # timed out before it came back (the resync would fail, stale, for up to
        # a timeout: see _fail_fast).
        self._redis_answered()
        if not read_only:
            # A read-only replica: reads follow it, writes would fail. The kill
            # switches stay pending until it accepts writes (_redis_went_back).
            self._record_then_replay()
        self._resyncs += 1
        self._tls_warned = None
        with self._lock:
            # Race: a writer's refused kill switch marking it stale (_mark_stale)
            # meanwhile: before, in sync here and its resync (wanted) runs next;
            # after, stale; never stale with no stale_since or the reverse.
            self._stale_since = None
            self._synced.set()
            flapping = self._damper.up()
        log.log(
            logging.DEBUG if flapping else logging.INFO,
            "flag store %r in sync with Redis at %s (version %d%s)",
            self.namespace, self._url, self._cache.version,
            "; a read-only replica: writes fail" if self._read_only else "",
        )  # fmt: skip
        # Whatever happened while we were away is unknown: "reload". Delivered
        # BEFORE "in_sync" is told: a subscriber of that event (the OpenFeature
        # provider's PROVIDER_READY) reads flags that are back in sync, not the
        # values of before the outage (the FeatureFlags reload is this delivery).
        self._deliver([])
        # Race: Redis lost again during that delivery (a writer's refused kill
        # switch, say) has told "stale" already; "in_sync" after it would end the
        # events on the wrong state. Skipped then: the next resync tells it. (A
        # loss between this check and the event is still told in that order:
        # the provider reads the store's state, not the event's name.)
        if self._synced.is_set():
            self._event("in_sync", version=self._cache.version, read_only=self._read_only)

    def _record_then_replay(self) -> None:
        """Record the catalogue and plans again, then commit the pending kill switches.

        Recorded first: a reader of Redis (``foundation flags``, by
        ``FeatureFlags.from_store``) finding flag data finds its catalogue, also
        while a long replay commits kill switches one transaction at a time
        (after a restore, the restore's script wrote what this node recorded).
        A record Redis refuses (``BackendUnavailable``: an ACL, out of memory)
        never holds a kill switch back: the replay runs all the same, and the
        record is made again after it, its failure failing the resync as ever.
        """
        try:
            self._record_again()
        except BackendUnavailable:
            refused = True
        else:
            refused = False
        with self._translated("committing pending kill switches"):
            self._replay_pending()
        if refused:
            self._record_again()

    def _warn_if_told_back(self) -> None:
        """WARNING if the resync's catch-up took a version older than listeners were
        told: the commits after it are told taken back (the reload), and no copy
        held them to restore (``_keep_told`` could not keep them: the deployment's
        first commit, a reply not following on from the copy, a fork at an older
        version). Else WARNING if it took another commit at a version listeners
        were told (of ``_unheld``: the told commits the copy did not hold before
        the catch-up; see ``_told_replaced``). One per resync, none when neither."""
        told, self._told_at = self._told_at, 0
        unheld, self._unheld = self._unheld or {}, None
        version = self._cache.version
        if told > version:
            log.warning(
                "flag store %r: Redis at %s is at version %d, older than version %d this "
                "node's listeners were told, and no node copy held the commits after it "
                "(lost with a master, or Redis back from an older snapshot); their "
                "changes are told taken back",
                self.namespace, self._url, version, told,
            )  # fmt: skip
            return
        replaced = self._told_replaced(unheld)
        if replaced:
            log.warning(
                "flag store %r: a change this node's listeners were told was replaced by a "
                "different commit on the new master: Redis at %s (version %d) holds another "
                "commit at %s (the told one was lost with the old master, or Redis came back "
                "from an older snapshot, and another node committed that version); Redis' "
                "state wins and the change is told taken back: %s",
                self.namespace, self._url, version,
                "version " + ", ".join(str(v) for v in replaced),
                bounded_list([_told_named(v, unheld[v]) for v in replaced]),
            )  # fmt: skip

    def _told_unheld(self) -> None:
        """Move the commits listeners were told since the last resync (the last
        ``_TOLD_KEPT``) that the copy does not hold (another transaction, or none,
        at their version) to ``_unheld``, the others forgotten. Read before the
        resync's catch-up: a told commit the copy held is the copy's own to
        restore, or to name in the fork's WARNING (``_keep_lost_kill_switches``),
        never named twice. Race: a resync failing after its catch-up took the
        fork (Redis lost again before ``_warn_if_told_back``): the next one finds
        the copy at the fork; it keeps this one's ``_unheld``, not read again."""
        told, self._told = self._told, None
        if not told:
            return
        held = self._copy_txns(set(told))
        unheld = {v: commit for v, commit in told.items() if held.get(v) != commit.txn}
        self._unheld = {**(self._unheld or {}), **unheld}

    def _told_replaced(self, unheld: dict[int, _ToldCommit]) -> list[int]:
        """The versions of ``unheld`` at which the copy, caught up, holds another
        transaction than the one listeners were told: a fork at the told version
        (or before a later one). The version alone cannot tell it (the copy and
        Redis agree on it: "in sync"); the transaction ids do."""
        if not unheld:
            return []
        held = self._copy_txns(set(unheld))
        return sorted(v for v, commit in unheld.items() if held.get(v, commit.txn) != commit.txn)

    def _copy_txns(self, versions: set[int]) -> dict[int, str]:
        """The transaction id of each of ``versions`` in the copy's history (a
        version it holds no entry of, trimmed or not reached, is left out; an
        unusable copy holds none)."""
        try:
            history = self._cache.history()
        except FlagError as exc:
            log.debug("flag store %r: told commits not compared: %s", self.namespace, exc)
            return {}
        out: dict[int, str] = {}
        for _id, fields in history:
            version = _v(fields)
            if version in versions:
                out[version] = fields.get("txn", "")
        return out

    def _forget_told_held(self) -> None:
        """Forget the told commits once the copy's last history entry is the last one
        this listener read (the usual case after a reply): the copy holds them all,
        they need no comparing at the next resync (two indexed reads of the copy)."""
        if not self._told:
            return
        try:
            if self._cache.last_ids()[0] == self._last_id:
                self._told = None
        except FlagError as exc:  # an unusable copy: they are compared at the resync
            log.debug("flag store %r: told commits kept to compare: %s", self.namespace, exc)

    def _note_told(self, version: str, txn: str, changes: list[FlagChange]) -> None:
        """Remember a commit this node's listeners were just told (see ``_told_unheld``)."""
        if not version.isdigit():
            return
        told = self._told
        if told is None:
            told = self._told = {}
        told.pop(int(version), None)  # (told again: moved last, the first stays the oldest)
        told[int(version)] = _told_commit(txn, changes)
        if len(told) > _TOLD_KEPT:
            del told[next(iter(told))]

    def _catch_up(self) -> None:
        """Restore Redis if it is older than the copy, then follow it from here on.

        Race: a commit landing between reading the stream's tails and the copy's
        refresh. Tails first: such a commit is then in both the refresh and the
        next XREAD (whose refresh is a no-op, and which the version floor keeps
        from being delivered twice); the other order would miss it in both.
        """
        with self._copy_lock:
            self._restore_if_behind()
            self._last_id, self._last_mig_id = self._tails()
            self._pull()
            # Entries up to this version are in the state subscribers (re)load,
            # and in the copy's states, from which later entries' deltas replay
            # (read under _copy_lock: the copy's version and states agree).
            self._floor = self._cache.version
            self._feed = Replay(self._feed_states(self._cache.states()))
            self._feed_at = (self._floor, "")
            self._last_pos = None
        # The catalogue and the plans, as the copy keeps the flag states: a
        # process started here during an outage answers them from it.
        keys = (self._k_catalogue, self._k_plan_flags, self._k_plans)
        self._keep_records(keys, "reading the catalogue and plans")

    def _redis_went_back(self) -> bool:
        """True if Redis is older than the copy, the stream's tail is behind what we
        read, or Redis accepts writes again after being a read-only replica."""
        was_read_only = self._read_only
        if not self._check_role() and was_read_only:
            return True  # writable again: resync (commits the pending kill switches)
        client = self._ensure_listen_client()
        with self._translated("checking the change stream"):
            raw_version, trimmed, mtrimmed = client.hmget(
                self._k_meta, "version", "trimmed", "mtrimmed"
            )
            if self._copy_behind_check(raw_version):
                return True
            if self._lost_keys(client)[1]:
                return True  # keys evicted: the resync restores them from the copy
            tail = client.xrevrange(self._k_history, count=1)
        if self._last_id != "0-0" and (
            not tail or stream_key(str(tail[0][0])) < stream_key(self._last_id)
        ):
            return True
        if trimmed != self._cache.trimmed or mtrimmed != self._cache.mtrimmed:
            # Race: another node's trim landed after the commit this copy last
            # mirrored. A trim changes no version and adds no entry, so nothing
            # wakes the listener for it: mirror it here, within resync_interval,
            # so the copy holds Redis' cut and base (what a restore puts back).
            self._pull()
        return False

    def _consume(
        self, entries: list[tuple[str, dict[str, str]]], pending: dict[str, list[Any]]
    ) -> None:
        for entry_id, fields in entries:
            self._last_id = str(entry_id)
            self._last_pos = _position(fields)
            version = fields.get("v", "")
            if version.isdigit() and 0 < int(version) <= self._floor:
                continue  # already in the state loaded at the last catch-up
            txn = fields.get("txn", entry_id)
            try:
                self._check_order(version, txn)
                # Every entry is replayed, ours included: it is the base of the next delta.
                change = self._decode_change(fields, self._feed)
                n = int(fields.get("n", "1"))
            except (FlagError, ValueError):
                # A malformed entry written by someone else, or a stream that went
                # back: reload instead of guessing, and resynchronise (the
                # replayed states no longer match the stream).
                self._resync_wanted.set()
                self._deliver([])
                return
            if change is None:
                continue
            # This store object's own commit is told to its other subscribers
            # (several FeatureFlags may share it), not to the one that wrote it
            # ("sub", see transaction): that one already knows it.
            writer = fields.get("sub", "") if fields.get("origin") == self._origin else ""
            group = pending.setdefault(txn, [])
            group.append((entry_id, change))
            # One transaction's entries are contiguous (EXEC is atomic) but one
            # XREAD batch may end mid-transaction: deliver only complete ones.
            # Race: this thread is the one delivering, in stream (= commit) order,
            # so each subscriber hears commits in commit order.
            if len(group) >= n:
                del pending[txn]
                self._deliver([c for _, c in group], skip=writer)
                self._note_told(version, txn, [c for _, c in group])

    def _check_order(self, version: str, txn: str) -> None:
        """FlagError if an entry's version is older than the last replayed one's.

        Race: Redis restarted and was restored from a copy that missed the last
        commits this listener replayed, and new commits landed before the
        periodic check noticed (``_redis_went_back``). Their deltas are based
        on states this listener's replay no longer matches: caught here at the
        first such entry (same version, another transaction included). A fork at
        a version this node's listeners were told is named at the resync this
        asks for (one WARNING: ``_warn_if_told_back``).
        """
        if not version.isdigit():
            return  # an entry without a version: nothing to compare
        at = (int(version), txn)
        last_version, last_txn = self._feed_at
        if at[0] < last_version or (at[0] == last_version and txn != last_txn):
            raise FlagError(f"the change stream went back to version {version}")
        self._feed_at = at
