"""``RedisFlagStore``: the public class, its constructor and the ``FlagStore`` calls."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from foundation import _fork
from foundation._listeners import check_listener
from foundation._redis_conn import check_url, error_kind, import_redis, redact_url
from foundation._redis_memory_policy import EvictionCheck
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FlagError,
    InvalidConfig,
    MigrationError,
    bounded_repr,
)
from foundation.flags._history import Replay
from foundation.flags._node_cache import PendingKillSwitch
from foundation.flags._redis_store._commit import _TxnRun
from foundation.flags._redis_store._errors import (
    _KeptInOrder,
    _PendingFirst,
    _Retry,
    public_errors,
)
from foundation.flags._redis_store._listener import _Listener
from foundation.flags._redis_store._shared import _MAX_ATTEMPTS, T, _check_name, log
from foundation.flags._redis_store._status import RedisFlagStoreStatus, _live, _live_lock
from foundation.flags._redis_store._txn import _RedisTransaction
from foundation.flags._store import (
    DEFAULT_HISTORY_LIMIT,
    FlagChange,
    FlagInfo,
    FlagState,
    MigrationEvent,
    StoreTransaction,
    catalogue_entries,
    check_history_limit,
    current_writer,
    plan_flag_entries,
    plan_flag_field,
    plan_flags_of,
    plan_from_json,
    plan_to_json,
)

if TYPE_CHECKING:
    # sqlite3, uuid and pathlib are imported where used (`import foundation` stays cheap).
    from foundation.flags._migration import MigrationPlan


_PENDING_ROUNDS = 3
"""Times a write commits this node's pending kill switches before its own commit
(a second round only if Redis went back meanwhile, or kill switches were kept again)."""


class RedisFlagStore(_Listener):
    """A ``FlagStore`` in Redis, shared by every node, that rides out Redis outages.

    ``url`` is a redis-py URL (``redis://``, ``rediss://`` for TLS,
    ``redis://user:password@host:port/db`` for AUTH and ACL users). The
    ``namespace`` isolates deployments sharing one Redis. Every Redis call is
    bounded by ``timeout`` seconds; ``resync_interval`` is how often the
    listener double-checks that Redis did not go back (restarted or flushed
    without the listener noticing). ``cache_path`` is this node's copy (see the
    module docs): ``True`` (default) for ``$FOUNDATION_CACHE_DIR`` or the XDG
    cache directory, a path, or ``None``/``False`` for a copy in memory only.
    ``history_limit``: the history stream keeps the last that many entries of all
    flags together (at most 10 % more between trims; None: all; see "Retention"
    in the module docs); each store trims with its own, so the smallest one in
    use wins. ``hold_kill_switches`` (default True): a kill switch (``disable``, an
    emergency rollback) made while Redis is unreachable is applied here at once
    and kept in the copy until this store commits it; ``False`` refuses it with
    ``BackendUnavailable`` instead -- for a short-lived process (a command, a
    cron job), which would be gone before Redis returns.

    The constructor connects at once, so a wrong host, port or password fails
    here -- unless this node has a copy of the deployment, in which case it
    starts from it, ``stale``, and catches up when Redis answers.

    Raises:
        ImportError: the ``redis`` extra is not installed (``foundation[redis]``).
        errors.InvalidConfig: a malformed URL or a database index the server lacks.
        errors.BackendUnavailable: Redis cannot be reached (or refuses the
            credentials) and this node has no copy to start from; or (``errno``
            EAGAIN) the process cannot start the listener thread: nothing is left open.
        errors.InvalidFlagValue: an empty namespace.
        errors.InvalidConfig: a timeout or resync interval that is not a positive
            number of seconds up to ``threading.TIMEOUT_MAX``, a ``cache_path`` that
            is not a path (or True, False, None), or a ``hold_kill_switches`` that
            is not a bool.

    Usage, with a redis-server running::

        store = RedisFlagStore("redis://127.0.0.1:6379/0", namespace="shop")
        flags = FeatureFlags([Flag("beta")], store=store)  # every node does the same
        flags.enable("beta", by="ops")  # now enabled on every node, within milliseconds
        store.close()

    Example:
        >>> from foundation import RedisFlagStore, errors
        >>> try:
        ...     RedisFlagStore("redis://127.0.0.1:1/0", timeout=0.5, cache_path=None)
        ... except errors.BackendUnavailable as exc:
        ...     print("unreachable:", "127.0.0.1:1" in str(exc))
        unreachable: True
    """

    #: ``close()`` ran to its end (a Ctrl-C may cut one: the next finishes it).
    _released = False
    #: Inherited across fork(): closed in the child (see ``_inherited_by_fork``).
    _forked = False

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "foundation",
        timeout: float = 2.0,
        resync_interval: float = 5.0,
        cache_path: str | os.PathLike[str] | bool | None = True,
        hold_kill_switches: bool = True,
        history_limit: int | None = DEFAULT_HISTORY_LIMIT,
    ) -> None:
        import uuid

        self.history_limit = check_history_limit(history_limit)
        self._redis = import_redis()
        if not isinstance(hold_kill_switches, bool):  # as every flag store option: InvalidConfig
            raise InvalidConfig(
                f"hold_kill_switches must be a bool, not {bounded_repr(hold_kill_switches)}"
            )
        if not isinstance(url, str) or not url:
            raise InvalidConfig(f"url must be a non-empty redis:// URL, not {bounded_repr(url)}")
        _check_name(namespace, "namespace")
        for what, value in (("timeout", timeout), ("resync_interval", resync_interval)):
            # NaN, inf or an int beyond floats would fail later, as a misleading error.
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 < value <= threading.TIMEOUT_MAX
            ):
                raise InvalidConfig(
                    f"{what} must be a positive number of seconds up to "
                    f"{threading.TIMEOUT_MAX:g}, not {bounded_repr(value)}"
                )
        check_url(url)  # InvalidConfig for a malformed URL
        self._raw_url = url
        self._url = redact_url(url)
        self.namespace = namespace
        self._init_keys(namespace)
        self._recorded: dict[str, dict[str, str]] = {}  # catalogue/plans recorded here
        self._origin = uuid.uuid4().hex  # tells this store object's own commits apart
        self._timeout = float(timeout)
        self._resync_interval = float(resync_interval)
        # The listener blocks at most this long per XREAD, then checks the stream.
        self._block_ms = int(min(self._resync_interval, 2.0) * 1000)

        self._init_state()
        # Warns once if the server may evict our keys (checked at each (re)sync).
        self._memory_policy = EvictionCheck(log, f"flag store {namespace!r}", self._url)
        # False for short-lived processes (the CLI): a kill switch they cannot commit
        # raises instead of waiting in the copy, since they would not commit it.
        self._defer_kill_switches = hold_kill_switches

        self._cache = self._open_cache(cache_path)
        self.cache_path = self._cache.path
        # A copy written back from memory may hold pending kill switches again
        # (NodeCache._write_back): the listener commits or drops them at its next turn.
        self._cache.on_write_back = self._replay_wanted.set
        self._first_sync()
        self._start_listener()
        with _live_lock:  # only once started: a store that failed to start is not live
            _live.add(self)
        _fork.track(self)  # closed in a forked child (see _inherited_by_fork)

    def load_states(self) -> dict[str, FlagState]:
        """Every runtime state (Redis, else the node copy), pending kill switches applied."""
        self._check_open()
        with self._lock:
            self._load_marks.deliveries = self._deliveries
        # Race: a pending kill switch being committed. Read the pending list
        # FIRST: the replay commits to Redis and only then drops the pending
        # record, so we see it pending, or committed, never neither.
        pending = self._cache.pending()
        # Fewer states than the copy at its own version and epoch: evicted, not an
        # answer (an empty hash would serve every kill switch its default).
        raw = self._read(
            "loading flag states",
            lambda p: p.hgetall(self._k_state),
            lambda read: len(read) < len(self._cache.states()),
        )
        if raw is None:
            raw = self._cache.states()
        states = {name: self._decode_state(text) for name, text in raw.items()}
        for op in pending:
            op.overlay(states)
        return states

    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        """Run ``fn(txn)`` and commit its writes atomically (WATCH/MULTI/EXEC, retried).

        A write (``fn`` writes something) first commits this node's pending kill
        switches, in order, then runs ``fn`` again on the state they left; while
        Redis refuses them it raises their ``BackendUnavailable`` (nothing of
        ``fn`` written). A no-op never touches them.
        """
        with public_errors():
            for _ in range(_PENDING_ROUNDS):
                try:
                    return self._transaction(functools.partial(self._after_own_kill_switches, fn))
                except _PendingFirst:
                    pass
                # Race (a write before the replay): Redis takes writes again and
                # this node's kill switch of f is still pending (the listener
                # learns it only at its next resync: up to resync_interval, or
                # after this very commit). allow("f", "ana") ran on Redis' state
                # (f on) and committed "on + ana": later than the kill switch, so
                # the replay dropped it as SUPERSEDED and every node served f on,
                # the operator's kill switch lost to an unrelated write. So they
                # land first, here, outside _txn_lock (the replay takes it per
                # kill switch). Lock order (no cycle): the caller's FeatureFlags
                # lock, _replay_lock, _txn_lock, _copy_lock; the listener replays
                # holding none of the first, and this thread's replay hands
                # subscribers' reloads to the listener (see _replay_pending).
                try:
                    with self._translated("committing pending kill switches"):
                        self._replay_pending(on_listener=False)
                except BackendUnavailable:
                    self._replay_wanted.set()  # (still pending: the listener's next turn)
                    raise
            raise BackendUnavailable(
                f"flag store {self.namespace!r}: kill switches of this node kept being "
                f"recorded while this write committed the earlier ones; nothing was written"
            )

    def _after_own_kill_switches(
        self, fn: Callable[[StoreTransaction], T], txn: StoreTransaction
    ) -> T:
        """``fn(txn)``, unless it writes while kill switches of this node are pending
        (``_PendingFirst``: ``transaction`` commits them, then runs it again).

        Read under ``_txn_lock``, which ``_defer`` takes to record one: one recorded
        before is seen, one recorded after is later than this write.

        Likewise when ``fn`` refuses (a ``MigrationError``, say) on Redis' state,
        which this node's pending kill switches have not reached: ``advance()``
        on a read-only replica said "at its last stage" of the stage the pending
        emergency rollback had left, while ``status()`` said 0. They land
        first (or their ``BackendUnavailable`` is raised), then ``fn`` judges
        the state they leave.
        """
        try:
            result = fn(txn)
        except MigrationError:
            if isinstance(txn, _RedisTransaction) and self._cache.pending():
                raise _PendingFirst(len(self._cache.pending())) from None
            raise
        if isinstance(txn, _RedisTransaction) and (txn.changes or txn.events):
            pending = len(self._cache.pending())
            if pending:
                raise _PendingFirst(pending)
        return result

    def _transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        """``transaction``, raising the private ``BackendUnavailable`` subclasses that
        ``kill_switch`` and the replay tell apart (callers inside the store)."""
        self._check_open()
        self._fail_fast()  # Redis just timed out: no wait for the lock, nor for Redis
        with self._txn_lock:
            # Race: close() while this one waited for the lock: Closed first.
            self._check_open()
            # Race: the transaction that held the lock while this one waited (the
            # caller's FeatureFlags lock too) may have just timed out on a frozen
            # Redis: fail as it did rather than wait a timeout of our own, so N
            # queued writers cost one timeout, not N (nothing was sent).
            self._fail_fast()
            # The subscriber writing (FeatureFlags), marked on the stream entries so
            # the listener tells every other subscriber of this store object but
            # not that one. Race: read under _lock (subscribe/unsubscribe change
            # _callbacks under it); one unsubscribing meanwhile is not called anyway.
            # A mark is never reused (SubscriberMarks), so only the writer is skipped.
            with self._lock:
                self._writing_as = self._marks.of(current_writer(self._callbacks))
            try:
                return self._transact(fn)
            finally:
                self._writing_as = ""

    def _transact(self, fn: Callable[[StoreTransaction], T]) -> T:
        """``transaction``'s attempts (caller holds ``_txn_lock``)."""
        run = _TxnRun()
        for _ in range(_MAX_ATTEMPTS):
            self._check_open()
            try:
                result = self._attempt(fn, run)
            except _Retry:
                continue
            except BackendUnavailable as exc:
                self._last_error = str(exc)  # status() says it at once
                if isinstance(exc.__cause__, Exception) and error_kind(exc.__cause__) == "timeout":
                    self._no_answer.timed_out(str(exc))
                raise
            self._redis_answered()
            return result
        raise FlagError(
            f"flag transaction gave up after {_MAX_ATTEMPTS} conflicting concurrent commits"
        )

    def kill_switch(self, fn: Callable[[StoreTransaction], T]) -> T:
        """Commit a switch-off write; during an outage, apply and record it locally.

        See the module docs ("The kill switch"). Raises what ``transaction``
        raises, except ``BackendUnavailable`` for a write that only turns
        switches off (and moves plans to stage 0 by ``emergency_rollback``).
        """
        with public_errors():
            return self._kill_switch(fn)

    def _kill_switch(self, fn: Callable[[StoreTransaction], T]) -> T:
        self._check_open()
        if not self._defer_kill_switches:
            return self._transaction(fn)  # BackendUnavailable unless Redis answers
        if self._synced.is_set() and not self._read_only:
            # In sync with a writable Redis: committed at once (this node's pending
            # kill switches, if any, are the listener's to commit at its next turn).
            try:
                return self._transaction(fn)
            except BackendUnavailable as exc:
                return self._defer(fn, exc, refused=True)
        # Stale: the listener is not (yet) in sync. Redis may answer all the same:
        # it has just come back and the listener waits out its backoff, or only the
        # listener's connection was cut (CLIENT KILL). So commit, as any write
        # would (a write finding Redis older than the copy restores it first), and
        # keep the switch only if the commit fails, with that failure as the cause.
        # Not tried: Redis let the last call time out and answered nothing since (a
        # frozen server: trying would wait a timeout, and the switch is urgent), or
        # kill switches of this node are still pending (this one goes after them,
        # in order, when the listener's resync commits them: committed ahead, it
        # would supersede an earlier one of the same flag, dropped with a WARNING).
        if not self._synced.is_set():
            held = self._held_back()
            if held is not None:
                return self._defer(fn, held)
        # On a read-only replica (in sync: it serves reads), kill switches of this
        # node wait for it to accept writes: this one goes after them as well
        # (_after_pending). Race: run on Redis's state instead, a repeat of a
        # pending kill switch found its flag still on there and computed a
        # change; its commit was refused (READONLY), its rerun on this node's
        # view wrote nothing (off already), and the caller (FeatureFlags, whose
        # safeguard reads this view back) took the refused run as committed: a
        # change logged and told at every repeat, where during an outage a
        # repeat is a no-op.
        try:
            return self._transaction(functools.partial(self._after_pending, fn))
        except _PendingFirst as first:
            return self._defer(fn, self._kept_in_order(first.count))
        except BackendUnavailable as exc:
            return self._defer(fn, exc, refused=True)

    def _held_back(self) -> BackendUnavailable | None:
        """Why a kill switch on a stale store is kept without trying Redis, or None."""
        pending = len(self._cache.pending())
        if pending:
            return self._kept_in_order(pending)
        # Race: the times are plain float stores (see NoAnswerWindow): an answer noted
        # just after this look keeps one kill switch pending (committed by the
        # listener's resync); a timeout noted just after it lets one wait its timeout.
        if self._failed_timed_out and self._no_answer.last_ok <= self._failed_at:
            return BackendUnavailable(
                f"Redis at {self._url} is not answering (this node is stale: {self._last_error})"
            )
        return None

    def _kept_in_order(self, count: int) -> _KeptInOrder:
        if self._read_only:
            why = f"Redis at {self._url} is a read-only replica"
        else:
            why = f"this node is stale: {self._last_error}"
        return _KeptInOrder(
            f"{count} earlier kill switch(es) of this node are not committed yet ({why})"
        )

    def _after_pending(self, fn: Callable[[StoreTransaction], T], txn: StoreTransaction) -> T:
        """``fn(txn)``, unless kill switches became pending (``_PendingFirst``).

        In sync, the only look (see ``kill_switch``). Race: stale, another
        thread's kill switch kept (its commit failed) between ``_held_back``
        and this commit. Looked at again here, under the
        transaction lock that ``_defer`` takes to record it: one recorded before
        is seen, one recorded after is later than this commit.
        """
        pending = len(self._cache.pending())
        if pending:
            raise _PendingFirst(pending)
        return fn(txn)

    def pending(self) -> list[PendingKillSwitch]:
        """Kill switches recorded during an outage and not yet committed, oldest first."""
        self._check_open()
        return self._cache.pending()

    def history(self, flag: str | None = None) -> list[FlagChange]:
        """Committed changes, oldest first (of ``flag`` or of every flag)."""
        self._check_open()
        if flag is not None:
            _check_name(flag, "flag name")

        # The base and the entries of one cut: _read brackets them with meta reads,
        # and a trim moves meta's `trimmed`.
        def queue(pipe: Any) -> None:
            pipe.hgetall(self._k_base)
            pipe.xrange(self._k_history)
            pipe.hget(self._k_meta, "trimmed")

        # (No entries while the copy has some, at its version: evicted, see load_states.)
        read = self._read(
            "reading history", queue, lambda r: not r[1] and self._cache.last_ids()[0] is not None
        )
        if read is None:
            base, cut, entries = self._cache.history_with_base()
        else:
            base, entries, cut = read
        replay = Replay(self._feed_states(base), flags=None if flag is None else frozenset({flag}))
        out: list[FlagChange] = []
        lost: set[str] = set()  # flags whose base was lost (evicted): see _decode_kept
        for _id, fields in entries:
            change = self._decode_kept(fields, replay, cut, lost)
            if change is not None:
                out.append(change)
        self._warn_base_lost(cut, lost)
        return out

    def migration_stage(self, plan: str) -> int:
        """The committed stage of ``plan`` (0 while a pending emergency rollback waits)."""
        self._check_open()
        _check_name(plan, "plan name")
        if any(plan in op.plans for op in self._cache.pending()):
            return 0
        raw = self._read("reading a stage", lambda p: p.hget(self._k_stages, plan))
        if raw is None:
            return self._cache.stages().get(plan, 0)
        return self._decode_stage(raw)

    def migration_history(self, plan: str) -> list[MigrationEvent]:
        self._check_open()
        _check_name(plan, "plan name")
        # An empty stream the copy has entries of, at its version: evicted (a trim
        # never empties it).
        entries = self._read(
            "reading migration history",
            lambda p: p.xrange(self._k_migrations),
            lambda read: not read and self._cache.last_ids()[1] is not None,
        )
        if entries is None:
            entries = self._cache.migrations()
        events = [self._decode_event(fields) for _id, fields in entries]
        return [e for e in events if e.plan == plan]

    def record_catalogue(self, flags: Iterable[FlagInfo]) -> None:
        """Add or replace catalogue entries in Redis (no write when all are there already)."""
        self._check_open()
        entries = {n: i.to_json() for n, i in catalogue_entries(flags).items()}
        self._record(self._k_catalogue, entries, "recording the flag catalogue")

    def catalogue(self) -> dict[str, FlagInfo]:
        """The declared flags (Redis; during an outage the copy's, if it kept one)."""
        raw = self._hash_or_copy(self._k_catalogue, "reading the flag catalogue")
        return {name: FlagInfo.from_json(text) for name, text in raw.items()}

    def record_plan(self, name: str, plan: MigrationPlan) -> None:
        self._check_open()
        _check_name(name, "plan name")
        text = plan_to_json(plan)
        # The plan flags go with the plan's record, in one script that also adds the
        # flags of the record it replaces (an older library's record adds none): at
        # every moment they cover every plan recorded, whatever this node could read
        # (also again at each resync). The copy's record adds its flags too: Redis
        # may have restarted empty, its older record lost.
        entries = set(plan_flag_entries(name, plan)) | self._kept_plan_entries(name)
        ever = {plan_flag_field(name, f, n): "1" for f, n in sorted(entries)}
        records = ((self._k_plan_flags, ever), (self._k_plans, {name: text}))
        self._record_all(records, "recording a migration plan")

    def plans(self) -> dict[str, MigrationPlan]:
        """The recorded plans (Redis; during an outage the copy's, if it kept them)."""
        raw = self._hash_or_copy(self._k_plans, "reading migration plans")
        return {name: plan_from_json(text) for name, text in raw.items()}

    def plan_flags(self, name: str) -> dict[str, int]:
        """See ``FlagStore.plan_flags`` (Redis; during an outage the copy's, if it kept
        them)."""
        _check_name(name, "plan name")
        raw = self._hash_or_copy(self._k_plan_flags, "reading migration plan flags")
        # With the copy's: Redis may have restarted empty (the hash only grows).
        return plan_flags_of(name, {**self._kept_hash(self._k_plan_flags), **raw})

    def _known_plan_flags(self, name: str) -> dict[str, int]:
        """The copy's plan flags (and this process's records) when it holds some: the
        kill switch does not wait on Redis for them; else ``plan_flags``."""
        kept = self._kept_hash(self._k_plan_flags)
        if not kept:
            return self.plan_flags(name)
        with self._lock:
            mine = dict(self._recorded.get(self._k_plan_flags, {}))
        return plan_flags_of(name, {**kept, **mine})

    def _known_plan(self, name: str) -> MigrationPlan | None:
        """The copy's record of plan ``name`` when it holds one, else ``plans()``'s."""
        text = self._kept_hash(self._k_plans).get(name)
        return self.plans().get(name) if text is None else plan_from_json(text)

    def _kept_plan_entries(self, name: str) -> set[tuple[str, int]]:
        """(flag, stage) of the copy's record of plan ``name``; none when it has none
        or cannot say (WARNING). Redis' own record is merged by the script that
        records the plan (``_record_plan_now``): nothing is read from Redis here."""
        try:
            text = self._kept_hash(self._k_plans).get(name)
            return set() if text is None else set(plan_flag_entries(name, plan_from_json(text)))
        except Exception as exc:  # the plan's own flags are recorded all the same
            log.warning("migration plan %r: recorded plan unreadable: %s", name, exc)
            return set()

    def _kept_hash(self, key: str) -> dict[str, str]:
        """The copy's hash ``key``; empty when the copy is unusable."""
        read_copy, _ = self._copy_of(key)
        try:
            return read_copy()
        except FlagError:
            return {}

    def subscribe(self, callback: Callable[[list[FlagChange]], None]) -> Callable[[], None]:
        """Call ``callback(changes)`` on the listener thread after another store's commit."""
        try:
            check_listener(callback)
        except TypeError:  # Closed first, before the argument is judged
            self._check_open()
            raise
        with self._lock:
            self._check_open()
            self._callbacks.append(callback)
            self._marks.add(callback)
            # Race: a caller loads, then subscribes (as FeatureFlags does). A commit
            # from elsewhere that landed after the load began may have been
            # delivered, to nobody, before this subscription. If any delivery
            # happened since this thread's last load_states() began, send this
            # callback one "reload" ([]) from the listener thread.
            mark = getattr(self._load_marks, "deliveries", None)
            # (A subscriber that never loaded has no state to refresh.)
            welcome = mark is not None and mark != self._deliveries
            if welcome:
                self._welcome.append(callback)
        if welcome:
            self._wake_listener()

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)  # one subscription, as everywhere
                self._marks.remove(callback, self._callbacks)

        return unsubscribe

    @property
    def synced(self) -> bool:
        """True while the listener is connected and following the change stream."""
        return self._synced.is_set() and not self._closed

    @property
    def stale(self) -> bool:
        """True while answers come from the node copy (Redis unreachable or not yet caught up)."""
        return not self.synced

    def status(self) -> RedisFlagStoreStatus:
        """Connection, staleness, the copy's version, pending kill switches, last error.

        Raises:
            Closed: the store is closed (as every call: ``RedisRegistry.status()`` too).
        """
        self._check_open()
        try:
            version, ops = self._cache.version, self._cache.pending()
        except FlagError:
            # Race: close() ran meanwhile and closed the copy under us: Closed, as a
            # call just after close() would say (else the copy really is unusable).
            self._check_open()
            raise
        synced = self.synced  # read once: connected, stale and stale_since agree
        return RedisFlagStoreStatus(
            connected=synced,
            stale=not synced,
            version=version,
            pending=len(ops),
            cache_path=self.cache_path,
            last_error=self._last_error,
            restores=self._restores,
            resyncs=self._resyncs,
            stale_since=None if synced else self._stale_since,
            pending_flags=tuple(sorted({name for op in ops for name in op.flags})),
            read_only=self._read_only,
            copy_in_memory=self._cache.in_memory,
            eviction_policy=self._memory_policy.policy,
        )

    def _check_open(self) -> None:  # as _StoreCore's, naming fork() in a forked child
        if self._closed:
            if self._forked:
                raise _fork.forked_closed("RedisFlagStore")
            raise Closed("this RedisFlagStore is closed")

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): closed, with no I/O.

        The child has no listener thread: it served the fork-time state for
        ever, and its commits carried this store's origin, so the parent's
        listener dropped them as its own. Every call raises ``Closed`` naming
        fork(); ``close()`` does nothing (``_released``): the connections are
        the parent's (redis-py never shuts down another process's socket) and
        the node copy's SQLite connection is never closed here (``keep``).
        The locks are new (a parent thread may have held one at the fork).
        """
        self._lock = threading.Lock()
        self._txn_lock = threading.Lock()
        self._conn_lock = threading.Lock()
        self._copy_lock = threading.RLock()
        self._replay_lock = threading.RLock()
        self._callbacks = []
        self._closed = self._forked = self._released = True
        _live.discard(self)  # no _live_lock needed: one thread in the child (_fork reset it)
        _fork.keep(self._cache)

    def __repr__(self) -> str:
        # The URL as every message shows it: passwords replaced by *** (redact_url).
        url = getattr(self, "_url", "?")  # "?" in a traceback of a failed __init__
        namespace = getattr(self, "namespace", "?")
        return f"RedisFlagStore({bounded_repr(url)}, namespace={bounded_repr(namespace)})"

    def close(self) -> None:
        """Stop the listener thread, close both connections and the copy; idempotent."""
        # Race: a Ctrl-C lands at any call in here. Once _closed was set, the
        # next close() returned at once: a close cut before its end left the
        # listener thread running and the connections and the copy open for
        # good. Only a close that ran to its end (_released) makes the next
        # one return; the steps are idempotent.
        with self._lock:
            if self._released:
                return
            self._closed = True
            self._callbacks.clear()
        with _live_lock:
            _live.discard(self)
        self._stop.set()
        # The listener may sit in XREAD BLOCK: wake it with CLIENT UNBLOCK from the
        # other connection. It may not have entered XREAD yet (race), so repeat
        # until it has exited; the block timeout bounds the wait regardless.
        deadline = time.monotonic() + self._timeout + self._block_ms / 1000 + 1.0
        # close() from a subscriber runs on the listener thread: it cannot join itself,
        # and the loop exits on its own once the callback returns (stop is set).
        own_thread = threading.current_thread() is self._thread
        while not own_thread and self._thread.is_alive() and time.monotonic() < deadline:
            self._wake_listener()
            self._thread.join(timeout=0.05)
        self._close_clients()
        if not self._thread.is_alive():
            self._cache.close()  # else the listener closes it on its way out
        self._released = True
