"""``RedisFlagStore``: flag state, history and migration stages shared through Redis.

Layout (``ns`` is the namespace; the braces make it a Redis Cluster hash tag, so
every key of one deployment lives in one slot and a transaction may touch them all):

``{ns}:flags:state``       hash   flag name -> ``FlagState`` JSON (runtime state only)
``{ns}:flags:history``     stream one entry per ``FlagChange``: ``change`` (JSON),
                                  ``origin`` (writing store), ``txn``, ``i``, ``n``
``{ns}:flags:stages``      hash   plan -> committed migration stage
``{ns}:flags:migrations``  stream one entry per ``MigrationEvent``: ``event`` (JSON)

Writes are optimistic transactions: ``WATCH`` the state and stage hashes, read,
run the caller's function, then ``MULTI``/``EXEC`` the state writes and their
history entries together. A concurrent commit anywhere makes ``EXEC`` fail and
the function is run again, so a read inside a transaction is never stale at
commit.

Propagation: the history stream is also the change feed. Each store runs one
listener thread blocked in ``XREAD BLOCK`` on it, on a connection of its own;
Redis wakes it the moment a commit lands, and it calls the subscribers with that
transaction's changes (never a transaction this store object committed). Unlike
pub/sub, a stream is not lost by a slow reader. After a disconnect, a Redis
restart or a stream that went backwards, the listener resynchronises: it starts
again from the stream's tail and tells subscribers ``[]`` ("reload").
``FeatureFlags.enabled()`` never touches Redis: it reads the caller's local
cache, which the subscriber callback refreshes.

Outages: every socket operation has a bounded timeout. A transaction that cannot
reach Redis raises ``errors.BackendUnavailable`` (a ``ConnectionError``) and
nothing was written -- except in the one window no client can close: if the
connection drops after ``EXEC`` was sent, the commit may have landed, and it then
reaches every node (this one included) through the stream or the resync.
If Redis restarts EMPTY (no persistence configured), runtime state is gone with
it and every node resyncs to its config and declared defaults: run Redis with
AOF or RDB persistence where runtime changes must outlive a Redis restart.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from foundation.errors import BackendUnavailable, FlagError, InvalidFlagValue
from foundation.flags._store import (
    FlagChange,
    FlagState,
    FlagStore,
    MigrationEvent,
    StoreTransaction,
    report_callback_error,
)

__all__ = ["RedisFlagStore"]

T = TypeVar("T")

_MAX_ATTEMPTS = 1000  # optimistic retries before a transaction gives up (pathological contention)
_INSTALL_HINT = "RedisFlagStore needs the redis client: pip install 'foundation[redis]'"


def _import_redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the dev environment has the extra
        raise ImportError(_INSTALL_HINT) from exc
    return redis


def _redact(url: str) -> str:
    """The URL without its password, fit for an error message."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class _RedisTransaction(StoreTransaction):
    """Reads go to Redis under WATCH (cached per transaction); writes are staged."""

    def __init__(self, store: RedisFlagStore, pipe: Any) -> None:
        self._store = store
        self._pipe = pipe
        self._states: dict[str, str] | None = None
        self._stages: dict[str, str] | None = None
        self.puts: dict[str, FlagState | None] = {}
        self.changes: list[FlagChange] = []
        self.stage_puts: dict[str, int] = {}
        self.events: list[MigrationEvent] = []

    def get(self, name: str) -> FlagState | None:
        _check_name(name, "flag name")
        if name in self.puts:
            return self.puts[name]
        if self._states is None:
            # One HGETALL under WATCH: later commits anywhere abort our EXEC.
            self._states = self._pipe.hgetall(self._store._k_state)
        raw = self._states.get(name)
        if raw is None:
            return None
        return self._store._decode_state(raw)

    def put(self, name: str, state: FlagState | None, change: FlagChange) -> None:
        # Validate before staging: bad input raises and nothing is written.
        _check_name(name, "flag name")
        if state is not None and not isinstance(state, FlagState):
            raise InvalidFlagValue(f"state must be a FlagState or None, not {state!r}")
        if not isinstance(change, FlagChange):
            raise InvalidFlagValue(f"change must be a FlagChange, not {change!r}")
        self.puts[name] = state
        self.changes.append(change)

    def migration_stage(self, plan: str) -> int:
        _check_name(plan, "plan name")
        if plan in self.stage_puts:
            return self.stage_puts[plan]
        if self._stages is None:
            self._stages = self._pipe.hgetall(self._store._k_stages)
        return self._store._decode_stage(self._stages.get(plan))

    def put_migration(self, plan: str, stage: int, event: MigrationEvent) -> None:
        _check_name(plan, "plan name")
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
            raise InvalidFlagValue(f"stage must be an int >= 0, not {stage!r}")
        if not isinstance(event, MigrationEvent):
            raise InvalidFlagValue(f"event must be a MigrationEvent, not {event!r}")
        self.stage_puts[plan] = stage
        self.events.append(event)


def _check_name(name: object, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidFlagValue(f"{what} must be a non-empty string, not {name!r}")


class RedisFlagStore(FlagStore):
    """A ``FlagStore`` in Redis, shared by every node; changes reach each node promptly.

    ``url`` is a redis-py URL (``redis://``, ``rediss://`` for TLS,
    ``redis://user:password@host:port/db`` for AUTH and ACL users). The
    ``namespace`` isolates deployments sharing one Redis. Every socket
    operation is bounded by ``timeout`` seconds; ``resync_interval`` is how
    often the listener double-checks that the change stream did not go
    backwards (a Redis that restarted without the listener noticing).

    The constructor connects at once, so a wrong host, port or password fails
    here with ``errors.BackendUnavailable`` saying which.

    Raises:
        ImportError: the ``redis`` extra is not installed (``foundation[redis]``).
        errors.BackendUnavailable: Redis cannot be reached or refuses the credentials.
        errors.InvalidFlagValue: an empty namespace or a non-positive timeout.

    Usage, with a redis-server running::

        store = RedisFlagStore("redis://127.0.0.1:6379/0", namespace="shop")
        flags = FeatureFlags([Flag("beta")], store=store)  # every node does the same
        flags.enable("beta", by="ops")  # now enabled on every node, within milliseconds
        store.close()

    Example:
        >>> from foundation import RedisFlagStore, errors
        >>> try:
        ...     RedisFlagStore("redis://127.0.0.1:1/0", timeout=0.5)
        ... except errors.BackendUnavailable as exc:
        ...     print("unreachable:", "127.0.0.1:1" in str(exc))
        unreachable: True
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "foundation",
        timeout: float = 2.0,
        resync_interval: float = 5.0,
    ) -> None:
        redis = _import_redis()
        if not isinstance(url, str) or not url:
            raise InvalidFlagValue(f"url must be a non-empty redis:// URL, not {url!r}")
        _check_name(namespace, "namespace")
        for what, value in (("timeout", timeout), ("resync_interval", resync_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidFlagValue(f"{what} must be a positive number, not {value!r}")
        self._redis = redis
        self._url = _redact(url)
        self.namespace = namespace
        tag = "{" + namespace + "}"
        self._k_state = f"{tag}:flags:state"
        self._k_history = f"{tag}:flags:history"
        self._k_stages = f"{tag}:flags:stages"
        self._k_migrations = f"{tag}:flags:migrations"
        self._origin = uuid.uuid4().hex  # tells this store object's own commits apart
        self._timeout = float(timeout)
        self._resync_interval = float(resync_interval)
        # The listener blocks at most this long per XREAD, then checks the stream.
        self._block_ms = int(min(self._resync_interval, 2.0) * 1000)

        self._lock = threading.Lock()  # guards _callbacks and _closed
        self._txn_lock = threading.Lock()  # one local transaction at a time: fewer WATCH retries
        self._callbacks: list[Callable[[list[FlagChange]], None]] = []
        self._closed = False
        self._stop = threading.Event()
        self._synced = threading.Event()  # set while the listener is connected and caught up
        self._listener_client_id: int | None = None
        # Subscribe-after-load race (see subscribe): count foreign deliveries, and
        # remember per thread the count when its last load_states() began.
        self._deliveries = 0
        self._load_marks = threading.local()
        self._welcome: list[Callable[[list[FlagChange]], None]] = []

        retry_mod = redis.retry
        backoff_mod = redis.backoff
        self._client: Any = None
        self._listen_client: Any = None
        try:
            # Writes: one reconnect attempt (a pooled socket may be stale after a
            # Redis restart); never a retry storm, so an outage surfaces quickly.
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=retry_mod.Retry(backoff_mod.NoBackoff(), 1),
                decode_responses=True,
            )
            # The listener: a single pinned connection with no silent retries, so
            # every disconnect surfaces to the loop, which then resynchronises.
            self._listen_client = redis.Redis.from_url(
                url,
                socket_timeout=self._timeout + self._block_ms / 1000,
                socket_connect_timeout=self._timeout,
                retry=retry_mod.Retry(backoff_mod.NoBackoff(), 0),
                decode_responses=True,
                single_connection_client=True,
            )
            self._last_id = self._connect_listener()
        except ValueError as exc:
            self._close_clients()
            raise BackendUnavailable(f"invalid Redis URL {self._url}: {exc}") from exc
        except redis.RedisError as exc:
            self._close_clients()
            raise self._unavailable(exc, "connecting") from exc
        except BaseException:
            self._close_clients()
            raise
        self._synced.set()
        self._thread = threading.Thread(
            target=self._listen, name=f"foundation-flags-redis[{namespace}]", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ helpers

    def _unavailable(self, exc: BaseException, doing: str) -> BackendUnavailable:
        redis = self._redis
        if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc):
            return BackendUnavailable(
                f"Redis at {self._url} refused the credentials while {doing} "
                f"(wrong password or ACL user in the URL): {exc}"
            )
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            return BackendUnavailable(
                f"Redis at {self._url} is unreachable while {doing} "
                f"(timeout {self._timeout:g}s): {exc}"
            )
        return BackendUnavailable(f"Redis at {self._url} failed while {doing}: {exc}")

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        """Run a Redis call, turning client errors into Foundation's typed errors."""
        self._check_open()
        redis = self._redis
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise self._unavailable(exc, doing) from exc
        except redis.ResponseError as exc:
            if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
                raise self._unavailable(exc, doing) from exc
            raise FlagError(f"Redis at {self._url} rejected {doing}: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise FlagError("this RedisFlagStore is closed")

    def _decode_state(self, raw: str) -> FlagState:
        try:
            return FlagState.from_json(raw)
        except InvalidFlagValue as exc:
            raise FlagError(f"corrupt flag state in {self._k_state}: {raw!r}") from exc

    def _decode_stage(self, raw: str | None) -> int:
        if raw is None:
            return 0
        try:
            return int(raw)
        except ValueError as exc:
            raise FlagError(f"corrupt migration stage in {self._k_stages}: {raw!r}") from exc

    def _connect_listener(self) -> str:
        """(Re)connect the listener connection; return the change stream's tail id."""

        def go() -> str:
            client = self._listen_client
            self._listener_client_id = int(client.client_id())
            tail = client.xrevrange(self._k_history, count=1)
            return str(tail[0][0]) if tail else "0-0"

        return self._call("connecting", go)

    # ------------------------------------------------------------------ FlagStore

    def load_states(self) -> dict[str, FlagState]:
        """Every runtime state in Redis (one HGETALL: an atomic snapshot)."""
        with self._lock:
            self._load_marks.deliveries = self._deliveries
        raw: dict[str, str] = self._call(
            "loading flag states", lambda: self._client.hgetall(self._k_state)
        )
        return {name: self._decode_state(text) for name, text in raw.items()}

    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        """Run ``fn(txn)`` and commit its writes atomically (WATCH/MULTI/EXEC, retried)."""
        self._check_open()
        redis = self._redis
        with self._txn_lock:
            for _ in range(_MAX_ATTEMPTS):
                self._check_open()
                try:
                    with self._client.pipeline(transaction=True) as pipe:
                        pipe.watch(self._k_state, self._k_stages)
                        txn = _RedisTransaction(self, pipe)
                        # fn's own exceptions propagate unchanged; leaving the
                        # `with` resets the pipe (UNWATCH) and nothing was queued.
                        result = fn(txn)
                        if not txn.changes and not txn.events:
                            return result
                        pipe.multi()
                        self._queue_writes(pipe, txn)
                        # EXEC fails with WatchError if any commit (any node) touched
                        # the state or stage hash since WATCH: our reads may be stale,
                        # so run fn again on fresh data.
                        pipe.execute()
                        return result
                except redis.WatchError:
                    continue
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    raise self._unavailable(exc, "committing a flag transaction") from exc
                except redis.ResponseError as exc:
                    if "NOAUTH" in str(exc) or "NOPERM" in str(exc):
                        raise self._unavailable(exc, "committing a flag transaction") from exc
                    raise FlagError(f"Redis at {self._url} rejected a transaction: {exc}") from exc
        raise FlagError(
            f"flag transaction gave up after {_MAX_ATTEMPTS} conflicting concurrent commits"
        )

    def _queue_writes(self, pipe: Any, txn: _RedisTransaction) -> None:
        txn_id = uuid.uuid4().hex
        for name, state in txn.puts.items():
            if state is None:
                pipe.hdel(self._k_state, name)
            else:
                pipe.hset(self._k_state, name, state.to_json())
        n = len(txn.changes)
        for i, change in enumerate(txn.changes):
            fields = {
                "change": change.to_json(),
                "origin": self._origin,
                "txn": txn_id,
                "i": str(i),
                "n": str(n),
            }
            pipe.xadd(self._k_history, fields)
        for plan, stage in txn.stage_puts.items():
            pipe.hset(self._k_stages, plan, str(stage))
        for event in txn.events:
            pipe.xadd(self._k_migrations, {"event": event.to_json()})

    def history(self, flag: str | None = None) -> list[FlagChange]:
        """Committed changes, oldest first (of ``flag`` or of every flag)."""
        if flag is not None:
            _check_name(flag, "flag name")
        entries = self._call("reading history", lambda: self._client.xrange(self._k_history))
        out: list[FlagChange] = []
        for _id, fields in entries:
            change = self._decode_change(fields)
            if change is not None and (flag is None or change.flag == flag):
                out.append(change)
        return out

    def _decode_change(self, fields: dict[str, str]) -> FlagChange | None:
        raw = fields.get("change")
        if raw is None:
            return None
        try:
            return FlagChange.from_json(raw)
        except InvalidFlagValue as exc:
            raise FlagError(f"corrupt history entry in {self._k_history}: {raw!r}") from exc

    def migration_stage(self, plan: str) -> int:
        _check_name(plan, "plan name")
        raw = self._call("reading a stage", lambda: self._client.hget(self._k_stages, plan))
        return self._decode_stage(raw)

    def migration_history(self, plan: str) -> list[MigrationEvent]:
        _check_name(plan, "plan name")
        entries = self._call(
            "reading migration history", lambda: self._client.xrange(self._k_migrations)
        )
        out: list[MigrationEvent] = []
        for _id, fields in entries:
            raw = fields.get("event", "")
            try:
                event = MigrationEvent.from_json(raw)
            except InvalidFlagValue as exc:
                raise FlagError(f"corrupt migration entry in {self._k_migrations}") from exc
            if event.plan == plan:
                out.append(event)
        return out

    def subscribe(self, callback: Callable[[list[FlagChange]], None]) -> Callable[[], None]:
        """Call ``callback(changes)`` on the listener thread after another store's commit."""
        if not callable(callback):
            raise InvalidFlagValue(f"callback must be callable, not {callback!r}")
        with self._lock:
            self._check_open()
            self._callbacks.append(callback)
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
                self._callbacks.remove(callback)

        return unsubscribe

    @property
    def synced(self) -> bool:
        """True while the listener is connected and following the change stream."""
        return self._synced.is_set() and not self._closed

    def _wake_listener(self) -> None:
        """Best effort: end the listener's current XREAD BLOCK early (it loops at once)."""
        client_id = self._listener_client_id
        if client_id is not None:
            with contextlib.suppress(self._redis.RedisError):
                self._client.client_unblock(client_id)

    def close(self) -> None:
        """Stop the listener thread and close both connections; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._callbacks.clear()
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

    def _close_clients(self) -> None:
        for client in (self._client, self._listen_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
                    client.connection_pool.disconnect()

    # ------------------------------------------------------------------ listener

    def _listen(self) -> None:
        redis = self._redis
        client = self._listen_client
        pending: dict[str, list[tuple[str, FlagChange]]] = {}
        need_resync = False
        backoff = 0.05
        next_check = time.monotonic() + self._resync_interval
        try:
            while not self._stop.is_set():
                try:
                    if need_resync:
                        self._last_id = self._connect_listener()
                        pending.clear()
                        need_resync = False
                        self._synced.set()
                        # Whatever happened while we were away is unknown: "reload".
                        self._deliver([])
                    self._send_welcomes()
                    reply = client.xread(
                        {self._k_history: self._last_id}, count=256, block=self._block_ms
                    )
                    if self._stop.is_set():
                        break
                    backoff = 0.05
                    if reply:
                        for _stream, entries in reply:
                            self._consume(entries, pending)
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + self._resync_interval
                        need_resync = self._stream_went_back()
                except (redis.RedisError, BackendUnavailable, FlagError, OSError):
                    # Disconnected (or Redis restarted): serve the last state, retry
                    # with backoff, then resync from the tail and tell subscribers.
                    self._synced.clear()
                    need_resync = True
                    with contextlib.suppress(redis.RedisError):
                        client.connection.disconnect()
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 1.0)
        finally:
            self._synced.clear()
            client.close()

    def _stream_went_back(self) -> bool:
        """True if the stream's tail is older than what we read (Redis restarted or trimmed)."""
        tail = self._listen_client.xrevrange(self._k_history, count=1)
        if self._last_id == "0-0":
            return False
        return not tail or _stream_id(str(tail[0][0])) < _stream_id(self._last_id)

    def _consume(
        self, entries: list[tuple[str, dict[str, str]]], pending: dict[str, list[Any]]
    ) -> None:
        for entry_id, fields in entries:
            self._last_id = str(entry_id)
            if fields.get("origin") == self._origin:
                continue  # our own commit: the writer already knows it
            txn = fields.get("txn", entry_id)
            try:
                change = self._decode_change(fields)
                n = int(fields.get("n", "1"))
            except (FlagError, ValueError):
                # A malformed entry written by someone else: reload instead of guessing.
                self._deliver([])
                continue
            if change is None:
                continue
            group = pending.setdefault(txn, [])
            group.append((entry_id, change))
            # One transaction's entries are contiguous (EXEC is atomic) but one
            # XREAD batch may end mid-transaction: deliver only complete ones.
            if len(group) >= n:
                del pending[txn]
                self._deliver([c for _, c in group])

    def _send_welcomes(self) -> None:
        with self._lock:
            welcome, self._welcome = self._welcome, []
            welcome = [c for c in welcome if c in self._callbacks]
        self._call_each(welcome, [])

    def _deliver(self, changes: list[FlagChange]) -> None:
        with self._lock:
            self._deliveries += 1
            callbacks = list(self._callbacks)
        self._call_each(callbacks, changes)

    def _call_each(
        self, callbacks: list[Callable[[list[FlagChange]], None]], changes: list[FlagChange]
    ) -> None:
        lost: BackendUnavailable | None = None
        for callback in callbacks:
            try:
                callback(list(changes))
            except BackendUnavailable as exc:
                # The subscriber's reload lost Redis (it went down right after this
                # commit): not its fault. Resync once Redis is back, which delivers
                # "reload" again -- at least once, as the contract says.
                lost = exc
            except Exception as exc:  # a subscriber must never kill the listener
                report_callback_error(exc, callback)
        if lost is not None:
            raise lost
