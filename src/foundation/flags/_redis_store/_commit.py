"""One flag commit on Redis: WATCH/MULTI/EXEC attempts, a lost reply settled, the copy confirmed."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

from foundation.errors import BackendUnavailable, FlagError
from foundation.flags._history import encode_json
from foundation.flags._node_cache import Snapshot
from foundation.flags._redis_store._errors import (
    _Behind,
    _FailedFast,
    _LandedLate,
    _ReplyLost,
    _Retry,
    _StatesLost,
    _Unconfirmed,
)
from foundation.flags._redis_store._pipeline import _give_back, _read_watched, _watch_pipeline
from foundation.flags._redis_store._shared import (
    T,
    _check_version,
    _other_history,
    _read_only_error,
    _short_of,
    log,
)
from foundation.flags._redis_store._trim import _Trims
from foundation.flags._redis_store._txn import _Commit, _RedisTransaction
from foundation.flags._store import StoreTransaction


class _TxnRun:
    """What the attempts of one ``transaction`` share: the one stale-socket retry
    left, the one retry of an EXEC that timed out without landing, and the commits
    whose reply was lost and that were not there when read back (with the result
    of the run that made them): they may still land (see ``_landed_late``)."""

    __slots__ = ("stale_socket_retry", "unlanded", "unrun_exec_retry")

    def __init__(self) -> None:
        self.stale_socket_retry = True
        self.unrun_exec_retry = True
        self.unlanded: list[tuple[_Commit, Any]] = []


_READ_BACK_PAGE = 64
"""Stream entries read per round trip when looking up a commit whose reply was lost."""


_DEAD_SOCKET = ("closed by server", "reset by peer", "broken pipe", "error 32 ", "error 104 ")


def _dead_socket(exc: BaseException | None) -> bool:
    """True for the errors of a pooled socket the server closed (after a restart):
    worth one immediate retry on a new one. Not for refusals or timeouts."""
    text = str(exc).lower()
    return exc is not None and any(k in text for k in _DEAD_SOCKET)


def _unsent_on_dead_socket(exc: BackendUnavailable, executing: bool) -> bool:
    """Whether a commit failed before EXEC was sent, on a socket the server closed."""
    return not executing and _dead_socket(exc.__cause__)


def _with_puts(states: dict[str, str], puts: dict[str, str | None]) -> dict[str, str]:
    """``states`` (changed in place) with a commit's puts applied: None deletes a state."""
    for name, state in puts.items():
        if state is None:
            states.pop(name, None)
        else:
            states[name] = state
    return states


_WRITE_META = ("version", "epoch", "trimmed", "mtrimmed", "nstates", "nstages", "unbased")
"""The fields of meta a write reads (see ``_check_states_kept``, ``_Trims._rebased``)."""


def _flags_of(raw: str | None) -> frozenset[str]:
    """The flags of meta's ``unbased`` (a JSON list; empty if absent or unreadable)."""
    if raw is None:
        return frozenset()
    try:
        flags = json.loads(raw)
    except (ValueError, RecursionError):
        return frozenset()
    if not isinstance(flags, list):
        return frozenset()
    return frozenset(f for f in flags if isinstance(f, str))


def _count_after(read: dict[str, str] | None, puts: dict[str, Any], held: int) -> int | None:
    """How many flag states the state hash holds after a commit of ``puts`` (None
    deletes one) on ``read`` (its HGETALL under WATCH; ``held``: its HLEN, read
    in the same WATCH). None: unknown (puts without the hash read: not expected,
    every ``put`` reads its flag first)."""
    if not puts:
        return held
    if read is None:
        return None
    count = len(read)
    for name, state in puts.items():
        if state is None:
            count -= name in read
        else:
            count += name not in read
    return count


def _stages_after(read: dict[str, str] | None, puts: dict[str, int], held: int) -> int | None:
    """How many plans the stages hash holds after a commit of stage ``puts`` on
    ``read`` (its HGETALL under WATCH; ``held``: its HLEN, read in the same WATCH).
    None: unknown (stages put without the hash read: ``migration_stage`` not asked
    first; meta's ``nstages`` is then left as it was, of an older version: no check)."""
    if not puts:
        return held
    if read is None:
        return None
    return len(read.keys() | puts.keys())


def _counted(v: str, counts: tuple[int | None, int | None]) -> dict[str, str]:
    """Meta's ``nstates`` and ``nstages`` of version ``v`` (see ``_check_states_kept``);
    an unknown count (None) is not written: the field keeps an older version's tag."""
    fields = zip(("nstates", "nstages"), counts, strict=True)
    return {field: f"{v}:{count}" for field, count in fields if count is not None}


class _Commits(_Trims):
    """The attempts of ``transaction``: run, queue, EXEC, settle, mirror into the copy."""

    def _fail_fast(self) -> None:
        """``BackendUnavailable`` at once if a write got no answer in time (a frozen
        or black-holed Redis) less than ``timeout`` ago and nothing Redis answered
        since: such a write would wait its own full timeout, one after the other
        behind the transaction lock (the k-th of k writers ``k`` timeouts).
        Recovery needs nothing from the caller: a read Redis answers (the
        listener's included), or ``timeout`` seconds without a new timeout,
        lets writes try Redis again.

        (``NoAnswerWindow``, the rule ``RedisRegistry`` follows too.)
        """
        window = self._no_answer
        if not window.is_open(self._timeout):
            return  # the hot path: two attribute loads, one compare
        error = _FailedFast(
            f"Redis at {self._url} is not answering (a flag write timed out moments ago, "
            f"nothing answered since; not retried for up to the store's timeout, "
            f"{self._timeout:g} s): {window.error}"
        )
        if window.first_report():  # once per outage
            log.warning(
                "flag store %r: Redis did not answer a write in time; flag writes fail at "
                "once with BackendUnavailable until Redis answers or %g s pass without a "
                "new timeout, instead of each waiting its own timeout",
                self.namespace,
                self._timeout,
            )
        raise error

    def _attempt(self, fn: Callable[[StoreTransaction], T], run: _TxnRun) -> T:
        """One WATCH/MULTI/EXEC attempt of ``transaction``; ``_Retry``: try again."""
        client = self._ensure_clients()
        executing = False
        commit: _Commit | None = None
        replies: list[Any] | None = None
        pipe: Any = None
        try:
            with (
                self._translated("committing a flag transaction"),
                _watch_pipeline(self._redis, client) as pipe,
            ):
                result, commit = self._run_and_queue(pipe, fn, run)
                if commit is None:
                    return result
                executing = True
                replies = self._execute(pipe)
        except _Behind:
            # Redis restarted empty (or older), or lost keys of the copy's version
            # (evicted), and nobody restored it yet: restore first, or this write
            # would be the whole new history (or commit on top of the loss).
            self._restore_if_behind()
            raise _Retry from None
        except _ReplyLost as lost:
            # Never guess: running fn again on the state its own commit made would
            # apply it twice (one advance() moving two stages). Returns if it landed.
            assert commit is not None  # lost only after EXEC was sent
            commit, result = self._settle(commit, lost.cause, run, result)
        except _LandedLate as late:
            commit, result = late.commit, late.result  # (and replies None: read back)
        except _Unconfirmed:
            raise  # (_landed_late: not a failure to retry)
        except BackendUnavailable as exc:
            self._commit_failed(exc, client, executing, run)
            raise _Retry from exc  # (_commit_failed raises when it is not worth a retry)
        finally:
            _give_back(pipe)  # (a Ctrl-C may have cut the block's exit: see _give_back)
        assert commit is not None
        self._note_read_only(False)  # a commit went through: writable (again)
        if replies is not None:  # (a commit read back has no XLEN replies: the next one trims)
            if commit.length_at is not None:
                self._trim_if_due(replies[commit.length_at])
            if commit.mlength_at is not None:
                self._trim_events_if_due(replies[commit.mlength_at])
        self._confirm_in_copy(commit, replies)  # (mirrors the trims too)
        return result

    def _settle(
        self, commit: _Commit, lost: BaseException, run: _TxnRun, result: Any
    ) -> tuple[_Commit, Any]:
        """After ``commit``'s EXEC got no reply (``lost``): (``commit``, ``result``) if
        Redis holds it, ``_Retry`` if it does not, ``_Unconfirmed`` if Redis cannot
        tell; or an earlier attempt's commit that landed late (see below).

        Race: the EXEC still in flight (a frozen Redis, a slow network) when it
        is looked up. A frozen Redis does not answer the lookup either
        (``_Unconfirmed``). Otherwise, should it land after a "not landed": its
        WATCH still holds, so the retry's commit (which bumps ``meta``) makes it
        fail; or it lands first, and the retry's EXEC fails as a conflict: the
        next attempt finds it (``_landed_late``) instead of running ``fn`` on it.
        """
        cause: BaseException | None = None
        try:
            landed = self._landed(commit)
        except BackendUnavailable as exc:
            # Chained to Redis' own error: a timeout arms _fail_fast (see transaction).
            why, cause = str(exc), exc.__cause__ or exc
        else:
            if landed is not None:
                log.info(
                    "flag store %r: the reply to commit %d was lost (%s); read back: %s",
                    self.namespace, commit.version, lost,
                    "it landed" if landed else "it did not land, retrying",
                )  # fmt: skip
                if landed:
                    return commit, result
                if isinstance(lost, self._redis.TimeoutError):
                    # Redis answers reads but did not run the EXEC in time: it may
                    # still be on its way (WATCH keeps a retry safe: see above),
                    # so one retry; a second means writes are paused (CLIENT PAUSE
                    # WRITE, as a FAILOVER does) or the server is busy, and more
                    # would wait a timeout each, up to _MAX_ATTEMPTS: fail, certain
                    # nothing was written. Chained to the timeout: transaction()
                    # arms _fail_fast.
                    if not run.unrun_exec_retry:
                        # Race: this EXEC failed (a conflict) as an earlier one
                        # whose reply was lost landed late: that is the commit.
                        late = self._landed_late(run, None, None)
                        if late is not None:
                            return late
                        raise BackendUnavailable(
                            f"Redis at {self._url} did not run a flag commit within "
                            f"{self._timeout:g} s, twice (writes paused or the server "
                            f"busy; read back: not committed, nothing was written): {lost}"
                        ) from lost
                    run.unrun_exec_retry = False
                run.unlanded.append((commit, result))  # it may still land: _landed_late
                raise _Retry from None  # the connection dropped before EXEC ran: try again
            why = "its entries are no longer in the stream (trimmed)"
        # The listener may have skipped the commit's entries as this store's own
        # (see _consume): resynchronise, so subscribers reload what Redis holds.
        self._resync_wanted.set()
        raise _Unconfirmed(
            f"Redis at {self._url}: the reply to a flag commit was lost ({lost}) and "
            f"whether it landed cannot be told ({why}): the write may or may not be committed",
            commit.changes,
            commit.events,
        ) from cause

    def _landed_late(
        self, run: _TxnRun, version: int | None, epoch: str | None
    ) -> tuple[_Commit, Any] | None:
        """A commit of an earlier attempt, read back as not there, that landed since
        (with its run's result); ``_Unconfirmed`` if that cannot be told. Called
        WATCHing, with ``meta``'s ``version`` and ``epoch`` read (``version`` None:
        look every one up).

        Race: an EXEC whose reply was lost reaching Redis late (a slow network)
        after its read-back: nothing broke its WATCH, so it lands, and the retry's
        EXEC fails as a conflict. Running ``fn`` again would apply it twice. While
        ``meta`` is as that attempt read it, it has not landed (a commit moves
        ``meta``) and the WATCH taken here makes this attempt fail if it lands
        now; once ``meta`` moved it can no longer land (its WATCH broke), so one
        look-up tells for good. Free until ``meta`` moved: no round trip.
        """
        for commit, result in list(run.unlanded):
            if version == commit.version - 1 and epoch == commit.base_epoch:
                continue  # meta as the attempt read it: not landed, still may
            cause: BaseException | None = None
            try:
                landed = self._landed(commit)
            except BackendUnavailable as exc:
                landed, cause = None, exc.__cause__ or exc
            if landed:
                return commit, result
            if landed is None:
                self._resync_wanted.set()  # (as _settle: the listener skipped it as ours)
                raise _Unconfirmed(
                    f"Redis at {self._url}: a flag commit whose reply was lost may have "
                    f"landed after it was read back, and that cannot be told now: the "
                    f"write may or may not be committed",
                    commit.changes,
                    commit.events,
                ) from cause
            run.unlanded.remove((commit, result))  # another commit took its version
        return None

    def _landed(self, commit: _Commit) -> bool | None:
        """Whether Redis holds ``commit`` (found by its ``txn`` token); None: its entries
        were trimmed (or the search ran out of time). ``BackendUnavailable`` if
        Redis cannot be asked. One round trip unless many commits followed it.

        A commit at version ``v`` appends entries carrying ``v`` and its token.
        Streams grow in version order, so the newest entry of version ``v`` or
        lower decides: ours (landed), another commit's at ``v`` (it won the
        WATCH), or an older one (nothing at ``v`` here). Redis restarted or
        restored since: whatever it holds now is the answer.
        """
        key = self._k_history if commit.history else self._k_migrations
        client = self._ensure_clients()
        deadline = time.monotonic() + self._timeout
        with self._translated("reading back a flag commit whose reply was lost"):
            with client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._k_meta, "version", "epoch")
                pipe.xrevrange(key, count=_READ_BACK_PAGE)
                (version, epoch), page = pipe.execute()
            if version is None or epoch != commit.epoch or int(version) < commit.version:
                return False  # not there (never landed, or Redis lost it since)
            while page:
                for _entry_id, fields in page:
                    v = str(fields.get("v", ""))
                    if v.isdigit() and int(v) <= commit.version:
                        return int(v) == commit.version and fields.get("txn") == commit.token
                if len(page) < _READ_BACK_PAGE or time.monotonic() >= deadline:
                    break
                last = str(page[-1][0])
                page = client.xrevrange(key, max=last, count=_READ_BACK_PAGE + 1)
                page = [e for e in page if str(e[0]) != last]
        return None

    def _execute(self, pipe: Any) -> list[Any]:
        """EXEC; ``_Retry`` on a conflict, ``_ReplyLost`` when its outcome is unknown.

        EXEC fails with WatchError if any commit (any node) touched state,
        stages or meta since WATCH: our reads may be stale, so ``fn`` runs
        again on fresh data. Caught here, inside ``translated()``, which would
        map it to BackendUnavailable.

        But redis-py also raises WatchError for a connection error or timeout
        while WATCHing (``_disconnect_raise_on_watching``), EXEC's included: the
        commit may have landed with its reply lost. That one is raised from the
        failure handler, so the lost connection's error is its ``__context__``.
        """
        redis = self._redis
        lost_kinds = (redis.ConnectionError, redis.TimeoutError)
        try:
            return list(pipe.execute())
        except redis.WatchError as exc:
            lost = exc.__cause__ or exc.__context__
            if not isinstance(lost, lost_kinds):
                raise _Retry from None  # EXEC answered: a concurrent commit
            # The socket is closed: no WATCH left to undo (reset() would reconnect
            # only to send UNWATCH, a timeout more on a frozen Redis).
            pipe.watching = False
            raise _ReplyLost(lost) from exc
        except lost_kinds as exc:  # (not raised while WATCHing: kept for safety)
            raise _ReplyLost(exc) from exc

    def _check_watch(self, pipe: Any) -> None:
        """An empty MULTI/EXEC: ``_Retry`` if a watched key changed since WATCH.

        Race: a transaction that writes nothing sends no EXEC, so its WATCH never
        checked its reads, each a view of its own moment. Two nodes replaying the
        same pending kill switch: A's ``committed_since`` read the history just
        before B's commit of it landed, A's ``get`` the state after (off already):
        A wrote nothing and reported the switch committed by itself, as B did
        (two ``already=False``). So a body that read Redis more than once and
        wrote nothing has its WATCH checked (one round trip): a commit in
        between runs it again, on one view. A single read is one view: a no-op
        write costs what it did.

        A read failing here leaves as any read's failure (``_watch_pipeline``).
        """
        redis = self._redis
        lost_kinds = (redis.ConnectionError, redis.TimeoutError)
        pipe.multi()
        try:
            pipe.execute()
        except redis.WatchError as exc:
            if isinstance(exc.__cause__ or exc.__context__, lost_kinds):
                raise  # the connection failed: nothing was written either way
            raise _Retry from None  # a commit landed between the reads

    def _commit_failed(
        self, exc: BackendUnavailable, client: Any, executing: bool, run: _TxnRun
    ) -> None:
        """Return if ``exc`` is worth one more attempt (a dead pooled socket), else raise it."""
        if run.stale_socket_retry and _unsent_on_dead_socket(exc, executing):
            # A pooled socket may be dead after a Redis restart; nothing was
            # sent for commit, so try once more on a fresh one. (Idle sockets
            # only: a reader may be mid-call on another one.)
            run.stale_socket_retry = False
            with contextlib.suppress(Exception):
                client.connection_pool.disconnect(inuse_connections=False)
            return
        # A READONLY refusal: a read-only replica; any other error tells nothing.
        self._note_read_only(_read_only_error(exc) or self._read_only, str(exc))
        raise exc

    def _run_and_queue(
        self, pipe: Any, fn: Callable[[StoreTransaction], T], run: _TxnRun
    ) -> tuple[T, _Commit | None]:
        """WATCH, run ``fn`` on a ``_RedisTransaction``, queue its writes after MULTI.

        (``fn``'s result, what EXEC will commit), or (result, None) when ``fn``
        wrote nothing (its WATCH checked if it read more than once: see
        ``_check_watch``). ``_Behind`` when Redis is older than the copy (or lost
        keys of its version),
        ``_LandedLate`` when an earlier attempt's lost commit landed after all.
        """
        # The streams are watched too: only commits, trims and restores write
        # them, and each of those moves meta (watched anyway), so no new
        # conflicts; but an eviction of one (below) now fails our EXEC too.
        pipe.watch(self._k_state, self._k_stages, self._k_meta, self._k_history, self._k_migrations)
        # One round trip, as the HMGET of meta alone before: meta with what the
        # loss check below compares with the copy.
        meta, states, stages, history, migrations = _read_watched(
            pipe,
            self._redis,
            ("HMGET", self._k_meta, *_WRITE_META),
            ("HLEN", self._k_state),
            ("HLEN", self._k_stages),
            ("EXISTS", self._k_history),
            ("EXISTS", self._k_migrations),
        )
        raw_version, epoch, trimmed, mtrimmed, counted, staged, unbased = meta
        _check_version(raw_version, self._k_meta)
        held = self._cache.holdings()  # one local read: (version, epoch, counts...)
        if raw_version is None:
            if held[0] > 0 or held[2] > 0:
                raise _Behind  # (as _copy_behind_check)
        elif int(raw_version) < held[0]:
            raise _Behind
        elif (
            (int(raw_version), epoch) == held[:2]
            and (
                states < held[2] or stages < held[3] or (held[4] and not history)
                or (held[5] and not migrations)
            )
            and not self._forked_at_copy_version(pipe)
        ):  # fmt: skip
            # Race: Redis evicted (allkeys-* policy) or lost keys of the copy's own
            # version -- the state hash, stages, a stream -- after the last resync
            # check, and this write comes first. Committed on top, it would move
            # the version past the loss: no check compares at that version again
            # (the copy follows Redis past it), and the evicted flags read their
            # defaults for good (a kill-switched flag back on). At the copy's own
            # version and epoch Redis holds what the copy holds (see _lost_keys),
            # so: restore first (_restore_if_behind checks again, atomically),
            # then run the write on what it restored. An eviction after this read
            # touches a watched key: EXEC fails, the next attempt reads it here.
            raise _Behind
        self._check_states_kept(raw_version, (counted, states), (staged, stages))
        if run.unlanded:
            late = self._landed_late(run, int(raw_version or 0), epoch)
            if late is not None:
                raise _LandedLate(*late)
        txn = _RedisTransaction(self, pipe)
        txn.trimmed, txn.mtrimmed = trimmed, mtrimmed
        # fn's own exceptions propagate unchanged; leaving the
        # `with` (in transaction()) resets the pipe (UNWATCH) and nothing was queued.
        result = fn(txn)
        if not txn.changes and not txn.events:
            if txn.reads > 1:
                self._check_watch(pipe)
            return result, None
        pipe.multi()
        counts = (
            _count_after(txn.read_states, txn.puts, states),
            _stages_after(txn.read_stages, txn.stage_puts, stages),
        )
        version = int(raw_version or 0) + 1
        return result, self._queue_writes(
            pipe, txn, version, epoch, counts=counts, unbased=_flags_of(unbased)
        )

    def _check_states_kept(
        self,
        raw_version: str | None,
        states: tuple[str | None, int],
        stages: tuple[str | None, int],
    ) -> None:
        """``_StatesLost`` if the state hash holds fewer flag states than the commit of
        this version left, or the stages hash fewer plans: ``states`` and ``stages``
        are (meta's ``nstates`` / ``nstages``: ``"<version>:<count>"``, the HLEN read).

        Race: Redis evicted (allkeys-* policy) or lost the state hash, meta kept,
        and this store has no copy of that version to compare with (a new
        process, ``cache_path=None``, a copy behind): committed on top, the write
        would move the version past the loss and the lost flags (a kill switch)
        would read their defaults for good. Likewise the stages hash: a plan's
        stage read 0 for good (its flags still on). Refused instead: a node with
        a copy of this version restores it at its next check. A count of another
        version (an older library's commit, which leaves it as it was) or none
        (written before this check existed) is unknown: no check. Read in the
        write's WATCHed round trip: an eviction after it fails the EXEC.
        """
        for (counted, held), key, what, field, then in (
            (states, self._k_state, "flag states", "nstates", "the lost flags then read "
             "their defaults"),
            (stages, self._k_stages, "migration stages", "nstages", "the plans lost then "
             "read stage 0"),
        ):  # fmt: skip
            count = _short_of(counted, raw_version, held)
            if count is None:
                continue
            raise _StatesLost(
                f"Redis at {self._url} lost {what} of version {raw_version} "
                f"({key} holds {held} of the {count} its last commit left: evicted? "
                f"set maxmemory-policy noeviction); nothing was written: a node with a copy "
                f"of this version restores them at its next check (resync_interval). With no "
                f"such copy left, `HDEL {self._k_meta} {field}` accepts the loss ({then})"
            )

    def _forked_at_copy_version(self, pipe: Any) -> bool:
        """Whether Redis, at the copy's version and epoch with fewer keys than the copy,
        holds another history (see ``_other_history``): a fork, not an eviction; the
        write commits on Redis' state, and its refresh tells the fork. One more
        round trip, only when keys look lost.

        Race: the copy moved (the listener's refresh) since ``holdings``: only to
        what Redis holds, so to a version Redis reached after our WATCH: the EXEC
        fails, and the next attempt compares again.
        """
        tails = _read_watched(
            pipe,
            self._redis,
            ("XREVRANGE", self._k_history, "+", "-", "COUNT", "1"),
            ("XREVRANGE", self._k_migrations, "+", "-", "COUNT", "1"),
        )
        return _other_history((tails[0], tails[1]), self._cache.last_ids())

    def _confirm_in_copy(self, commit: _Commit, replies: list[Any] | None) -> None:
        """After a commit: the copy holds it before the write returns (else BackendUnavailable).

        Race (the writer's side of the restore race, see ``_read``): Redis
        restarting empty (or unreachable) between our EXEC and this refresh.
        The caller (``FeatureFlags``) serves the change as soon as we return;
        had the copy missed it, this node would restore Redis from its OLDER
        copy and reload: the flag it served reverts, and the acknowledged
        write is lost on every node. So when the refresh cannot confirm the
        commit, the copy takes it from what the transaction itself wrote
        (``_mirror_commit``); if it cannot (the copy lagged Redis), the write
        is reported unconfirmed -- like an EXEC whose reply was lost -- and
        nothing serves it. Healthy path: one ``_pull``, as before.
        """
        cache = self._cache
        with self._copy_lock:  # the listener neither refreshes nor restores meanwhile
            try:
                self._pull()
                if cache.epoch == commit.epoch and cache.version >= commit.version:
                    return  # the copy holds the commit (or later)
                # Redis went back (restarted empty, or restored by a node with an
                # older copy) before the refresh: it may no longer hold our commit.
                cause: Exception = FlagError("Redis went back right after the commit")
                reachable = True
            except BackendUnavailable as exc:
                cause, reachable = exc, False
            except FlagError as exc:  # corrupt data in Redis, or an unusable copy
                # Rare: a copy whose file fails moves to memory instead (NodeCache).
                log.warning("flag store %r: node copy not refreshed: %s", self.namespace, exc)
                return
            mirrored = self._mirror_commit(commit, replies)
        # Either way Redis may lack what the copy holds: restore it (or refresh).
        self._resync_wanted.set()
        if reachable:
            self._wake_listener()  # not on a dead Redis: that call would wait the timeout
        if mirrored:
            log.debug(
                "flag store %r: commit %d mirrored into the node copy from the transaction (%s)",
                self.namespace, commit.version, cause,
            )  # fmt: skip
            return
        raise _Unconfirmed(
            f"Redis at {self._url} went away right after a flag commit, before this node's "
            f"copy could record it; the write may be lost ({cause})",
            commit.changes,
            commit.events,
        ) from (cause if isinstance(cause, BackendUnavailable) else None)

    def _mirror_commit(self, commit: _Commit, replies: list[Any] | None) -> bool:
        """Apply ``commit`` to the copy from the transaction's own writes; False if it cannot.

        Exact only when the copy is the state the transaction read: one version
        behind, same epoch (WATCH guaranteed nothing else committed in between).
        Not for a commit read back after its reply was lost (``replies`` None:
        no stream ids). Caller holds ``_copy_lock``.
        """
        cache = self._cache
        try:
            if cache.epoch == commit.epoch and cache.version >= commit.version:
                return True
            if cache.version != commit.version - 1 or replies is None:
                return False
            fresh = commit.base_epoch is None  # first write of a new deployment
            if not fresh and cache.epoch != commit.base_epoch:
                return False
            states = _with_puts({} if fresh else cache.states(), commit.puts)
            stages = {} if fresh else cache.stages()
            stages.update(commit.stage_puts)
            history = commit.entries(replies, commit.history_at, commit.history)
            migrations = commit.entries(replies, commit.migrations_at, commit.migrations)
            cache.apply(
                Snapshot(
                    commit.version, commit.epoch, states, stages, history, migrations, full=fresh
                )
            )
        except (FlagError, ValueError, IndexError) as exc:
            log.warning("flag store %r: cannot mirror a commit: %s", self.namespace, exc)
            return False
        return True

    def _queue_writes(
        self,
        pipe: Any,
        txn: _RedisTransaction,
        version: int,
        epoch: str | None,
        *,
        counts: tuple[int | None, int | None] = (None, None),
        unbased: frozenset[str] = frozenset(),
    ) -> _Commit:
        """Queue the transaction's writes (after MULTI); return what EXEC will commit.
        ``counts``: the flag states and the plans the state and stages hashes hold
        after it (None: unknown);
        ``unbased``: meta's flags whose history base was lost (see ``_Trims._rebased``)."""
        import uuid

        txn_id = uuid.uuid4().hex
        v = str(version)
        meta: dict[str, str] = {"version": v, **_counted(v, counts)}
        if epoch is None:
            meta["epoch"] = uuid.uuid4().hex
        commit = _Commit(version, meta.get("epoch", epoch), epoch, txn_id)
        commit.changes, commit.events = txn.changes, txn.events
        rebased = unbased & txn.puts.keys()
        if rebased and unbased - rebased:
            meta["unbased"] = json.dumps(sorted(unbased - rebased))
        pipe.hset(self._k_meta, mapping=meta)
        replies = 1
        if rebased and not unbased - rebased:
            pipe.hdel(self._k_meta, "unbased")
            replies += 1
        for name, state in txn.puts.items():
            if state is None:
                pipe.hdel(self._k_state, name)
                commit.puts[name] = None
            else:
                commit.puts[name] = text = state.to_json()
                pipe.hset(self._k_state, name, text)
            replies += 1
        n = len(txn.changes)
        commit.history_at = replies
        for i, (change, (before, stored)) in enumerate(zip(txn.changes, txn.bases, strict=True)):
            # A flag whose history base was lost: its record whole (``old`` in full),
            # so it and its later records replay without that base.
            whole = change.flag in rebased
            fields = {
                "change": encode_json(change, None if whole else before, stored),
                "origin": self._origin,
                "txn": txn_id,
                **({"sub": self._writing_as} if self._writing_as else {}),
                "i": str(i),
                "n": str(n),
                "v": v,
            }
            pipe.xadd(self._k_history, fields)
            commit.history.append(fields)
            replies += 1
        for plan, stage in txn.stage_puts.items():
            pipe.hset(self._k_stages, plan, str(stage))
            commit.stage_puts[plan] = stage
            replies += 1
        commit.migrations_at = replies
        for event in txn.events:
            fields = {"event": event.to_json(), "v": v, "txn": txn_id}
            pipe.xadd(self._k_migrations, fields)
            commit.migrations.append(fields)
            replies += 1
        if n and self.history_limit is not None:
            pipe.xlen(self._k_history)  # O(1): is a trim due (see _trim_if_due)
            commit.length_at = replies
            replies += 1
        if txn.events and self.history_limit is not None:
            pipe.xlen(self._k_migrations)  # O(1): see _trim_events_if_due
            commit.mlength_at = replies
        return commit
