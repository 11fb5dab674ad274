"""The Redis flag store's base: keys, state, connections, decoding and delivery to subscribers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from foundation import _flap, telemetry
from foundation._redis_conn import NoAnswerWindow, connect, translated
from foundation._redis_memory_policy import EvictionCheck
from foundation._unraisable import report_unraisable
from foundation.errors import Closed, FlagError, InvalidConfig, InvalidFlagValue, bounded_repr
from foundation.flags._history import Replay
from foundation.flags._node_cache import NodeCache, default_cache_path
from foundation.flags._redis_store._scripts import _RECORD_PLAN, _RESTORE, _TRIM, _TRIM_EVENTS
from foundation.flags._redis_store._shared import T, _check_version, log
from foundation.flags._store import (
    FlagChange,
    FlagState,
    FlagStore,
    MigrationEvent,
    StoreTransaction,
    SubscriberMarks,
    report_callback_error,
)

if TYPE_CHECKING:
    # sqlite3, uuid and pathlib are imported where used (`import foundation` stays cheap).
    from pathlib import Path


def _unbased_delta(text: str | None, replay: Replay) -> bool:
    """Whether history record ``text`` is a delta of a flag ``replay`` holds no state of
    (its base is missing), not a record that does not read."""
    try:
        data = json.loads(text or "")
    except (ValueError, RecursionError):
        return False
    return (
        isinstance(data, dict)
        and data.get("fmt") is not None
        and "old" not in data
        and isinstance(data.get("flag"), str)
        and data["flag"] not in replay.states
    )


class _StoreCore(FlagStore):
    """The keys, locks, connections and decoders every part of ``RedisFlagStore`` uses."""

    # The cut (meta's ``trimmed``) whose lost history base was last reported at
    # WARNING (see ``_warn_base_lost``); replaced, never changed in place.
    _base_lost_cut: str | None = None

    # Set by the constructor (``RedisFlagStore.__init__``) and the first start.
    history_limit: int | None
    namespace: str
    cache_path: Path | None
    _redis: Any
    _raw_url: str
    _url: str
    _recorded: dict[str, dict[str, str]]
    _origin: str
    _timeout: float
    _resync_interval: float
    _block_ms: int
    _memory_policy: EvictionCheck
    _defer_kill_switches: bool
    _cache: NodeCache
    _created_copy: bool
    _thread: threading.Thread

    def _init_keys(self, namespace: str) -> None:
        """The Redis keys of this namespace (one hash tag: one cluster slot)."""
        tag = "{" + namespace + "}"
        self._k_state = f"{tag}:flags:state"
        self._k_history = f"{tag}:flags:history"
        self._k_base = f"{tag}:flags:history:base"
        self._k_hlast = f"{tag}:flags:history:last"
        self._k_mlast = f"{tag}:flags:migrations:last"
        self._k_stages = f"{tag}:flags:stages"
        self._k_migrations = f"{tag}:flags:migrations"
        self._k_meta = f"{tag}:flags:meta"
        self._k_catalogue = f"{tag}:flags:catalogue"
        self._k_plans = f"{tag}:flags:plans"
        self._k_plan_flags = f"{tag}:flags:plan_flags"  # see FlagStore.plan_flags

    def _init_state(self) -> None:
        """Locks, events and the listener's bookkeeping, before any connection."""
        self._lock = threading.Lock()  # guards _callbacks and _closed
        self._txn_lock = threading.Lock()  # one local transaction at a time: fewer WATCH retries
        self._conn_lock = threading.Lock()  # creating the write client
        self._copy_lock = threading.RLock()  # one refresh/restore of the node copy at a time
        # One replay of pending kill switches at a time (the listener's, or a
        # write's: see RedisFlagStore.transaction). Lock order: a FeatureFlags
        # lock, then _replay_lock, then _txn_lock, then _copy_lock. An RLock only
        # for _is_owned (_pull reports what forks kept once it is released).
        self._replay_lock = threading.RLock()
        self._callbacks: list[Callable[[list[FlagChange]], None]] = []
        # The subscriber writing the transaction in progress (``writing_as``), as
        # the "sub" field of its stream entries: "" for none. Set under _txn_lock.
        self._writing_as = ""
        self._marks = SubscriberMarks()  # each subscription's mark (guarded by _lock)
        # Pending kill switch id -> the subscriber that wrote it (``_defer``), so its
        # commit at replay is not told back to it. In memory: after a restart
        # another process replays it, and every subscriber is another's.
        self._op_writers: dict[int, object] = {}
        self._closed = False
        self._stop = threading.Event()
        self._synced = threading.Event()  # set while the listener is connected and caught up
        self._resync_wanted = threading.Event()  # a reader saw Redis go back
        self._replay_wanted = threading.Event()  # a kill switch was recorded locally
        self._listener_client_id: int | None = None
        self._last_error: str | None = None
        # The last failure that made (or kept) the store stale: when (monotonic) and
        # whether it was a timeout (a frozen or black-holed Redis: see kill_switch).
        self._failed_at = 0.0
        self._failed_timed_out = False
        self._tls_warned: str | None = None  # the TLS failure _fault logged at WARNING
        # Stale reported (log line + event) since the last "in sync": one report
        # per transition, whichever step of a resync failed (not _synced, which a
        # resync clears before it catches up).
        self._stale_since: float | None = None
        # The same fault right after each resync (CLIENT KILL in a loop, client
        # eviction): one WARNING, then its stale / in-sync lines at DEBUG. Called
        # under _lock only: up is in sync, down is stale (see _flap).
        self._damper = _flap.FlapDamper()
        self._read_only = False  # Redis is a read-only replica (see _note_read_only)
        # When writes fail at once: a write timed out moments ago (see _fail_fast).
        self._no_answer = NoAnswerWindow()
        self._restores = 0
        self._resyncs = 0
        self._last_id = "0-0"
        self._last_mig_id = "0-0"
        self._floor = 0  # history entries up to this version need no delivery
        # The listener's runtime states as of the entries it consumed: the base of
        # the next entries' deltas (set from the copy at each catch-up).
        self._feed = Replay()
        self._feed_at = (0, "")  # (version, txn) of the last entry replayed
        # (version, txn, i, n) of the last history entry read (None: unknown), to
        # tell whether the next one follows it (see _take_reply).
        self._last_pos: tuple[int, str, int, int] | None = None
        # Subscribe-after-load race (see subscribe): count foreign deliveries, and
        # remember per thread the count when its last load_states() began.
        self._deliveries = 0
        self._load_marks = threading.local()
        self._welcome: list[Callable[[list[FlagChange]], None]] = []
        # Log lines and events of kill switches a write's thread replayed, for the
        # listener to emit at its next turn (see _replay_pending), before welcomes.
        self._announce_later: list[Callable[[], None]] = []
        # Set (under _lock) by the listener's last step: a write's replay that
        # ends later tells its announcements itself (_announce_on_listener).
        self._listener_gone = False
        self._client: Any = None
        self._listen_client: Any = None
        self._restore_script: Any = None
        self._trim_script: Any = None
        self._trim_events_script: Any = None
        self._record_plan_script: Any = None
        self._trims = 0  # trims this store made (the first is logged at INFO)
        self._next_trim_at = 0  # after a failed trim: the stream length to try again at
        self._event_trims = 0  # ... the same, of the migrations stream
        self._next_event_trim_at = 0

    def _remove_cache_files(self) -> None:
        """Delete the node copy's files this start created (the copy is closed)."""
        from pathlib import Path

        if self.cache_path is not None:  # leave no empty file behind
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(f"{self.cache_path}{suffix}").unlink()

    def _open_cache(self, cache_path: str | os.PathLike[str] | bool | None) -> NodeCache:
        import sqlite3
        from pathlib import Path

        if cache_path is None or cache_path is False:
            return NodeCache(None)
        try:
            path = (
                default_cache_path(self.namespace, self._url)
                if cache_path is True
                else Path(os.fspath(cache_path))
            )
        except TypeError:  # not a path (bytes, an int...)
            raise InvalidConfig(
                f"cache_path must be a path, True, False or None, not {bounded_repr(cache_path)}"
            ) from None
        if "\0" in str(path):
            raise InvalidConfig(f"cache_path holds a NUL byte: {bounded_repr(str(path))}")
        try:
            return NodeCache(path)
        except sqlite3.OperationalError as exc:  # cannot open or lock it
            log.warning("cannot use node copy %s (%s)", path, exc)
        except sqlite3.DatabaseError as exc:
            # Not a database (corrupt, truncated): keep it for a post-mortem, start afresh.
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.warning("node copy %s is unreadable (%s); moved to %s", path, exc, aside)
            with contextlib.suppress(OSError):
                path.rename(aside)
            with contextlib.suppress(sqlite3.Error, OSError):
                return NodeCache(path)
        except OSError as exc:
            log.warning("cannot use node copy %s (%s)", path, exc)
        log.warning("flag store %r keeps its node copy in memory only", self.namespace)
        return NodeCache(None)

    def _event(self, what: str, **data: Any) -> None:
        telemetry.emit(
            f"foundation.flags.{what}", {"namespace": self.namespace, "url": self._url, **data}
        )

    if TYPE_CHECKING:

        def _transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
            """``transaction`` with the private errors (RedisFlagStore's)."""

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("this RedisFlagStore is closed")

    def _translated(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return translated(self._url, doing)

    def _ensure_clients(self) -> Any:
        """The write client, connecting it first if need be (BackendUnavailable if not)."""
        with self._conn_lock:
            if self._client is None:
                self._client = connect(
                    self._raw_url,
                    op_timeout=self._timeout,
                    name=f"foundation-flags[{self.namespace}]",
                    decode_responses=True,
                )
                self._restore_script = self._client.register_script(_RESTORE)
                self._trim_script = self._client.register_script(_TRIM)
                self._trim_events_script = self._client.register_script(_TRIM_EVENTS)
                self._record_plan_script = self._client.register_script(_RECORD_PLAN)
            return self._client

    def _ensure_listen_client(self) -> Any:
        """The listener's pinned connection, connecting it if need be (BackendUnavailable)."""
        if self._listen_client is None:
            with self._translated("connecting the change listener"):
                self._listen_client = self._connect_listener()
        return self._listen_client

    def _connect_listener(self) -> Any:
        base = connect(
            self._raw_url,
            op_timeout=self._timeout + self._block_ms / 1000,
            connect_timeout=self._timeout,
            name=f"foundation-flags-listener[{self.namespace}]",
            decode_responses=True,
        )
        try:
            # A single pinned connection: its CLIENT ID is what close() unblocks.
            return self._redis.Redis(
                connection_pool=base.connection_pool, single_connection_client=True
            )
        except BaseException:
            base.close()
            raise

    def _close_clients(self) -> None:
        for client in (self._client, self._listen_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
                    client.connection_pool.disconnect()

    def _wake_listener(self) -> None:
        """Best effort: end the listener's current XREAD BLOCK early (it loops at once)."""
        client_id, client = self._listener_client_id, self._client
        if client_id is not None and client is not None:
            with contextlib.suppress(Exception):
                client.client_unblock(client_id)

    def _redis_answered(self) -> None:
        """A write or read Redis answered: writes try Redis again (``_fail_fast``)."""
        self._no_answer.answered()

    def _decode_state(self, raw: str) -> FlagState:
        try:
            return FlagState.from_json(raw)
        except InvalidFlagValue as exc:
            raise FlagError(f"corrupt flag state in {self._k_state}: {raw!r}") from exc

    def _feed_states(self, raw: dict[str, str]) -> dict[str, FlagState]:
        """The listener's replay base from the copy's states. A corrupt state is left
        out (reads report it): an entry of that flag then cannot be rebuilt, and
        subscribers are told to reload instead (see ``_consume``)."""
        out: dict[str, FlagState] = {}
        for name, text in raw.items():
            with contextlib.suppress(FlagError):
                out[name] = self._decode_state(text)
        return out

    def _decode_stage(self, raw: str | int | None) -> int:
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError as exc:
            raise FlagError(f"corrupt migration stage in {self._k_stages}: {raw!r}") from exc

    def _decode_stages(self, raw: dict[str, str]) -> dict[str, int]:
        """Every plan's stage in a stages hash read from Redis."""
        return {p: self._decode_stage(s) for p, s in raw.items()}

    def _decode_change(self, fields: dict[str, str], replay: Replay) -> FlagChange | None:
        """The change of one history entry, replayed on ``replay`` (entries are fed in
        stream order; see _history); None for an entry without one or of a flag not asked."""
        raw = fields.get("change")
        if raw is None:
            return None
        try:
            return replay.feed_json(raw)
        except InvalidFlagValue as exc:
            raise FlagError(f"corrupt history entry in {self._k_history}: {raw!r}") from exc

    def _decode_kept(
        self, fields: dict[str, str], replay: Replay, cut: str | None, lost: set[str]
    ) -> FlagChange | None:
        """``_decode_change`` of an entry of a history cut at ``cut`` (meta's ``trimmed``;
        None: never trimmed), where the base may have been lost: a delta entry of a
        flag the base (and the entries before it) gave no state is left out, as if
        trimmed, and its flag added to ``lost``. Lost how: Redis evicted
        ``{ns}:flags:history:base`` (allkeys-* policy) or it was deleted; its entries
        cannot be rebuilt, and raising would fail every read of the history for
        good. An untrimmed history has no base: such an entry is corrupt (FlagError).
        """
        try:
            return self._decode_change(fields, replay)
        except FlagError:
            if cut is None or not _unbased_delta(fields.get("change"), replay):
                raise
        lost.add(str(json.loads(fields["change"])["flag"]))
        return None

    def _warn_base_lost(self, cut: str | None, lost: set[str]) -> None:
        """One WARNING per cut that the history base lacks the flags ``lost`` (see
        ``_decode_kept``); the repeats (every read of the history) at DEBUG."""
        if not lost:
            return
        # Race: two readers at once may both log it at WARNING (no lock: benign).
        level = logging.DEBUG if self._base_lost_cut == cut else logging.WARNING
        self._base_lost_cut = cut
        log.log(
            level,
            "flag store %r: the history base %s lacks %s (evicted? set maxmemory-policy "
            "noeviction): their history entries kept in Redis cannot be read and are left "
            "out, as if trimmed; a later trim rebuilds their base",
            self.namespace, self._k_base, ", ".join(sorted(lost)),
        )  # fmt: skip

    def _decode_last(self, text: str) -> FlagChange:
        """A flag's latest trimmed change (``{ns}:flags:history:last``: a self-contained
        record, see ``_trim``)."""
        try:
            change = Replay().feed_json(text)
        except InvalidFlagValue as exc:
            change = None
            cause: Exception | None = exc
        else:
            cause = None
        if change is None:  # (None only for a flag filtered out: there is no filter)
            raise FlagError(f"corrupt record in {self._k_hlast}: {text!r}") from cause
        return change

    def _decode_event(self, fields: dict[str, str]) -> MigrationEvent:
        raw = fields.get("event", "")
        try:
            return MigrationEvent.from_json(raw)
        except InvalidFlagValue as exc:
            raise FlagError(f"corrupt migration entry in {self._k_migrations}") from exc

    def _copy_behind_check(self, raw_version: str | None) -> bool:
        """True if Redis (``raw_version`` from meta, None: no meta) is older than the copy."""
        if raw_version is None:
            return self._cache.version > 0 or bool(self._cache.states())
        return _check_version(raw_version, self._k_meta) < self._cache.version

    def _keys(self) -> list[str]:
        return [
            self._k_meta,
            self._k_state,
            self._k_stages,
            self._k_history,
            self._k_migrations,
            self._k_base,
            self._k_hlast,
            self._k_mlast,
        ]

    def _send_welcomes(self) -> None:
        """The listener's turn: announcements of a write's replay, then welcomes."""
        self._send_announcements()
        with self._lock:
            welcome, self._welcome = self._welcome, []
            welcome = [c for c in welcome if c in self._callbacks]
        self._call_each(welcome, [])

    def _send_announcements(self) -> None:
        """The log lines and events of kill switches a write's replay committed (or
        found superseded), on the listener thread: at its turn, and also after a
        turn that failed and as it stops. Race: they waited for a turn whose resync
        succeeded, and a store closed while Redis was still away (or a listener
        failing turn after turn until the end) never told them."""
        with self._lock:
            announce, self._announce_later = self._announce_later, []
        for announcement in announce:
            try:  # one failing never loses the others, nor the listener thread
                announcement()
            except Exception as exc:
                report_unraisable(exc, "announcing a replayed kill switch", self, area="flags")

    def _deliver(self, changes: list[FlagChange], skip: str = "") -> None:
        """Call every subscriber with ``changes``, but the one that wrote them
        (``skip``: its ``writing_as`` mark, see ``transaction``)."""
        with self._lock:
            self._deliveries += 1
            callbacks = [c for c in self._callbacks if not skip or self._marks.of(c) != skip]
        self._call_each(callbacks, changes)

    def _call_each(
        self, callbacks: list[Callable[[list[FlagChange]], None]], changes: list[FlagChange]
    ) -> None:
        for callback in callbacks:
            try:
                callback(list(changes))
            except Exception as exc:  # a subscriber must never kill the listener
                report_callback_error(exc, callback)
