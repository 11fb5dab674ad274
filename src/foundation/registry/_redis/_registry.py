"""``RedisRegistry``: the registry contract, shared by many nodes through Redis.

How it works (details in ``docs/redis.md``):

- **Leases.** Each node holds a lease (a deadline in the sorted set
  ``P:leases``, on the Redis server clock) that a heartbeat thread extends
  every ``heartbeat`` seconds. Every entry belongs to the lease of the node
  that registered it. The heartbeat script also reaps: it removes every entry
  of every lease whose deadline passed (any live node reaps).
- **Atomic writes.** register, update, unregister, heartbeat+reap and release
  are each ONE Lua script (see ``_scripts``) that writes the entry, its index
  sets and a versioned change record on the stream ``P:log``.
- **Local mirror.** A snapshot at start, then a tail thread (``XREAD BLOCK``)
  applies every change record; lookups and queries are answered from memory.
  A node applies the result of its own write at once (read-your-writes);
  per-key versions make the later stream copy a no-op. A version gap (the
  stream was trimmed past us) or a version reset (Redis restarted empty) makes
  the node resynchronise from a new snapshot.
- **Local agents** are monitored by this node's MonitorManager and removed
  from the mirror the instant they die; the server-side delete follows from
  the lease thread (and retries across outages).
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from foundation._unraisable import report_unraisable
from foundation.errors import (
    AlreadyRegistered,
    BackendUnavailable,
    InvalidKey,
    InvalidMetadata,
    NotAlive,
    NotRegistered,
)
from foundation.liveness import (
    Down,
    Monitor,
    MonitorManager,
    check_supported,
    describe_agent,
    is_alive,
)
from foundation.registry._query import compile_criteria, index_plan, matches
from foundation.registry._redis import _scripts
from foundation.registry._redis._codec import (
    RemoteAgent,
    decode_key,
    encode_key,
    index_names,
)
from foundation.registry._redis._mirror import Mirror
from foundation.registry._types import (
    Criterion,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    RegistryEvent,
    UnregisterReason,
)
from foundation.registry._validation import (
    check_metadata_size,
    freeze_metadata,
    metadata_from_json,
    metadata_to_json,
)

__all__ = ["Conflict", "RedisRegistry", "RedisStatus"]

MAX_METADATA_BYTES: Final = 64 * 1024
"""Largest metadata accepted, as compact UTF-8 JSON (``InvalidMetadata`` beyond)."""

_REDIS_EXTRA = "RedisRegistry needs the redis extra: pip install 'foundation[redis]'"
_TAIL_BLOCK_MS: Final = 5000
_seq = itertools.count(1)


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

    ``connected``: the last Redis call succeeded; ``stale``: the mirror may be
    behind Redis (disconnected, resynchronising, or no heartbeat for a TTL);
    ``version``: the last change version applied by the tail; ``written``: the
    version of this node's last write (see ``wait_for_version``); ``entries``: in
    the mirror; ``local_entries``: registered by this node; ``conflicts``: see
    ``conflicts()``; ``resyncs``: snapshots loaded after the first one (after
    a gap, a trimmed stream, a restart or an outage); ``last_error``: the last
    Redis failure, if any.
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


class _Own:
    """A registration made by this node (its agent is a live local handle)."""

    __slots__ = ("agent", "ek", "head", "ix", "meta", "monitor")

    def __init__(self, agent: Any, ek: str, head: str, meta: bytes, ix: str) -> None:
        self.agent = agent
        self.ek = ek
        self.head = head
        self.meta = meta
        self.ix = ix
        self.monitor: Monitor | None = None


def _redact(url: str) -> str:
    """``url`` without its password (for error messages)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return urlunsplit(parts._replace(netloc=user + host))
    except ValueError:
        return "<unparsable url>"


def _down_fields(down: Down | None) -> list[str]:
    if down is None:
        return ["", "", ""]
    return [
        down.reason,
        "" if down.exit_code is None else str(down.exit_code),
        "" if down.signal is None else str(down.signal),
    ]


def _down_from(dr: str, dc: str, ds: str) -> Down:
    return Down(
        dr or "noproc",  # type: ignore[arg-type]
        exit_code=int(dc) if dc else None,
        signal=int(ds) if ds else None,
    )


_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRegistry(Registry):
    """The registry contract over Redis, for agents spread over several machines.

    Every node (process) constructs its own ``RedisRegistry`` on the same
    ``url`` and ``namespace``. Keys are ``str``, ``int`` or tuples of them;
    metadata is JSON (at most 64 KiB). Entries registered on this node hold the
    live agent; entries of other nodes hold a :class:`RemoteAgent` description.
    Reads (``lookup``, ``query``, ...) are answered by a local mirror; writes
    are one Redis round trip. ``BackendUnavailable`` (a ``ConnectionError``)
    within about ``op_timeout`` seconds when Redis cannot be reached.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` or ``rediss://`` (TLS);
            AUTH, ACL users and TLS options go in the URL. A malformed URL is
            a ``ValueError``; an unreachable server or a refused login is
            ``BackendUnavailable`` at construction.
        namespace: isolates deployments sharing one Redis (one cluster slot).
        indexed: metadata attributes with a local index (``eq``/``in``).
        lease_ttl: seconds after which a silent node's entries are reaped.
        heartbeat: seconds between lease renewals (default ``lease_ttl / 3``).
        node: this node's name (default ``host:pid:random``), unique per process.
        manager: the MonitorManager watching local agents (default: own one).
        op_timeout: bound, in seconds, on every Redis call.
        stream_maxlen: approximate length the change stream is trimmed to; a
            node that falls further behind resynchronises from a snapshot.

    Example:
        >>> import threading
        >>> from foundation import RedisRegistry, spawn_thread
        >>> from tests.redis_support import RedisServer
        >>> stop = threading.Event()
        >>> with RedisServer() as server:
        ...     with RedisRegistry(server.url, indexed=("role",)) as a, \\
        ...          RedisRegistry(server.url, indexed=("role",)) as b:
        ...         a.register(("worker", 1), spawn_thread(stop.wait), {"role": "io"})
        ...         b.wait_for_version(a.status().written)  # A's write has reached B
        ...         [e.agent.kind for e in b.find_by_attribute("role", "io")]
        True
        ['thread']
        >>> stop.set()
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "foundation",
        indexed: Sequence[str] = (),
        lease_ttl: float = 5.0,
        heartbeat: float | None = None,
        node: str | None = None,
        manager: MonitorManager | None = None,
        op_timeout: float = 2.0,
        stream_maxlen: int = 10_000,
    ) -> None:
        try:
            # The extra is optional: import it only when a registry is built.
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # pragma: no cover - the extra is installed in dev
            raise ImportError(_REDIS_EXTRA) from exc
        if not isinstance(namespace, str) or not namespace or "{" in namespace or "}" in namespace:
            raise ValueError(f"namespace must be a non-empty str without braces, got {namespace!r}")
        if isinstance(indexed, str):
            raise TypeError("indexed must be a sequence of attribute names, not a str")
        attrs = frozenset(indexed)
        if not all(isinstance(a, str) for a in attrs):
            raise TypeError("indexed attribute names must be str")
        if not lease_ttl > 0:
            raise ValueError("lease_ttl must be a positive number of seconds")
        beat = lease_ttl / 3 if heartbeat is None else heartbeat
        if not 0 < beat < lease_ttl:
            raise ValueError("heartbeat must be positive and shorter than lease_ttl")
        if not op_timeout > 0:
            raise ValueError("op_timeout must be a positive number of seconds")

        self._redis_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
            redis.exceptions.AuthenticationError,
            redis.exceptions.NoPermissionError,
            redis.exceptions.AuthenticationWrongNumberOfArgsError,
            OSError,
        )
        self._url = _redact(url)
        self._indexed = attrs
        self._ttl = float(lease_ttl)
        self._beat = float(beat)
        self._op_timeout = float(op_timeout)
        self._maxlen = str(int(stream_maxlen))
        self._node = node or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._prefix = "{" + namespace + "}"
        p = self._prefix
        self._k_log = p + ":log"
        self._k_wake = f"{p}:wake:{self._node}"
        self._k_wake_b = self._k_wake.encode()
        self._node_b = self._node.encode()
        self._node_json = json.dumps(self._node)
        self._keys = [self._k_log]  # KEYS[1] of every script (see _scripts)

        self._mirror = Mirror(attrs)
        # The hot read path: ``lookup`` is a single get on this dict.
        self._entries = self._mirror.entries
        self._mlock = threading.Lock()  # guards the mirror, _own, _pending_downs
        self._wlock = threading.RLock()  # serialises this node's writes and recovery
        self._own: dict[Hashable, _Own] = {}
        self._pending_downs: dict[Hashable, tuple[str, str, Down]] = {}
        self._listeners: tuple[Listener, ...] = ()
        self._conflicts: list[Conflict] = []
        self._closed = False
        self._close_lock = threading.Lock()
        self._stop = threading.Event()
        self._jobs: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._retry: list[tuple[str, Any]] = []
        # Tail state (guarded by _mlock): last version/stream id applied, and a
        # generation bumped by every resync so an in-flight tail batch is dropped.
        self._tail_v = 0
        self._sid: bytes | str = "0-0"
        self._wake_id: bytes | str = "0-0"
        self._gen = 0
        self._need_recover = False
        self._lease_lost = False
        self._connected = True
        self._tail_ok = True
        self._last_beat_ok = time.monotonic()
        self._last_error: str | None = None
        self._written = 0  # version of this node's last write
        self._applied = threading.Condition(self._mlock)  # notified as the tail advances

        retry = Retry(NoBackoff(), 0)
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=op_timeout,
            socket_connect_timeout=op_timeout,
            retry=retry,
        )
        self._tail_client = redis.Redis.from_url(
            url,
            socket_timeout=op_timeout + _TAIL_BLOCK_MS / 1000,
            socket_connect_timeout=op_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        c = self._client
        self._s_register = c.register_script(_scripts.REGISTER)
        self._s_update = c.register_script(_scripts.UPDATE)
        self._s_unregister = c.register_script(_scripts.UNREGISTER)
        self._s_heartbeat = c.register_script(_scripts.HEARTBEAT)
        self._s_release = c.register_script(_scripts.RELEASE)
        self._s_snapshot = c.register_script(_scripts.SNAPSHOT)
        self._info = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        )

        self._owns_manager = manager is None
        self._manager = manager if manager is not None else MonitorManager(name="redis-registry")
        try:
            self._call(self._client.delete, self._k_wake)
            self._heartbeat()
            with self._wlock:
                self._resync()
        except BaseException:
            self._client.close()
            self._tail_client.close()
            if self._owns_manager:
                self._manager.close()
            raise
        self._tail_thread = threading.Thread(
            target=self._tail_loop, name=f"foundation-redis-tail[{self._node}]", daemon=True
        )
        self._lease_thread = threading.Thread(
            target=self._lease_loop, name=f"foundation-redis-lease[{self._node}]", daemon=True
        )
        self._tail_thread.start()
        self._lease_thread.start()

    # ------------------------------------------------------------------ public API

    @property
    def node(self) -> str:
        """This node's name (``Entry.node`` of its registrations)."""
        return self._node

    @property
    def manager(self) -> MonitorManager:
        """The monitor manager watching this node's local agents."""
        return self._manager

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Register a live local ``agent`` under ``key``, unique across all nodes.

        Raises:
            AlreadyRegistered: ``key`` holds a live agent (on any node) and not ``replace``.
            NotAlive, UnsupportedAgent, InvalidKey, InvalidMetadata: bad input;
                nothing is stored.
            BackendUnavailable: Redis unreachable (the outcome is unknown; a
                write that did land is cleaned up at the next resync).
        """
        ek = encode_key(key)
        frozen = freeze_metadata(metadata)
        meta_text = metadata_to_json(frozen)
        check_metadata_size(meta_text, MAX_METADATA_BYTES)
        meta = self._utf8(meta_text)
        check_supported(agent)
        if not is_alive(agent):
            raise NotAlive(key, agent)
        d = describe_agent(agent)
        registered_at = time.time()
        # The head: who owns it, a description of the agent, when; "s" makes every
        # registration's head unique (it is the compare-and-delete token).
        head = (
            f'{{"n":{self._node_json},"a":{{"kind":{_dumps(d.get("kind"))},'
            f'"pid":{_dumps(d.get("pid"))},"name":{_dumps(d.get("name"))}}},'
            f'"t":{registered_at!r},"s":{next(_seq)}}}'
        )
        ix = self._ix(frozen)
        own = _Own(agent, ek, head, meta, ix)
        events: list[RegistryEvent] = []
        with self._writing():
            self._flush_pending_down(key)
            prev = self._own.get(key)
            prev_alive = prev is not None and is_alive(prev.agent)
            if prev_alive and not replace:
                raise AlreadyRegistered(key, self._entries.get(key))
            # Race: the registration is known locally (pending) BEFORE Redis has
            # it, so the tail, seeing our own record first, finds the live agent.
            with self._mlock:
                self._own[key] = own
            own.monitor = self._manager.monitor(agent, lambda down: self._on_down(key, own, down))
            args = [self._maxlen, self._node, ek, head, meta, ix, "r" if replace else "n"]
            args += ["0" if prev_alive else "1", self._node]
            try:
                reply = self._call(self._s_register, keys=self._keys, args=args)
                if reply[0] == b"NOLEASE":
                    # Our lease was lost (we were frozen or cut off): re-assert
                    # everything we hold, then try once more.
                    self._lease_lost = True
                    self._recover_locked()
                    reply = self._call(self._s_register, keys=self._keys, args=args)
            except BaseException:
                self._forget_own(key, own, prev)
                self._need_recover = True  # a write that landed is an orphan: resync
                raise
            if reply[0] == b"EXISTS":
                self._forget_own(key, own, prev)
                raise AlreadyRegistered(key, self._entry_from_reply(key, reply))
            if reply[0] != b"OK":
                self._forget_own(key, own, prev)
                raise BackendUnavailable(f"unexpected reply from Redis: {reply!r}")
            v, first = int(reply[1]), int(reply[2])
            why, dr = _s(reply[3]), _s(reply[4])
            self._written = v
            entry = Entry(key, agent, frozen, registered_at, self._node)
            with self._mlock:
                died = self._own.get(key) is not own
                m = self._mirror
                if first and m.is_newer(key, first):
                    old = m.remove(key, first)
                    if old is not None:
                        events.append(self._removed_event(old, why, dr, "", ""))
                if not died and m.is_newer(key, v):
                    old = m.put(entry, v)
                    if old is not None:
                        events.append(RegistryEvent("unregistered", old, reason="replaced"))
                    events.append(RegistryEvent("registered", entry))
            if prev is not None and prev.monitor is not None:
                prev.monitor.demonitor()  # its registration was just replaced in Redis
            if died:
                # Race: the agent died while the script ran (its on_down already
                # queued the delete). Delete it now and report it as not alive;
                # other nodes may have seen it registered for an instant.
                self._emit(events)
                self._flush_pending_down(key)
                raise NotAlive(key, agent)
        self._emit(events)

    def lookup(self, key: Hashable) -> Entry | None:
        """The entry for ``key`` from the local mirror, or ``None`` (never blocks on Redis).

        Raises:
            InvalidKey: ``key`` is unhashable.
        """
        try:
            return self._entries.get(key)
        except TypeError:
            raise InvalidKey(f"registry key must be hashable, got {type(key).__name__}") from None

    def unregister(self, key: Hashable) -> bool:
        """Remove ``key`` on every node; True if it was registered.

        Raises:
            InvalidKey: ``key`` is not a str, int or tuple of them.
            BackendUnavailable: Redis unreachable.
        """
        ek = encode_key(key)
        events: list[RegistryEvent] = []
        with self._writing():
            self._flush_pending_down(key)
            try:
                v = int(
                    self._call(
                        self._s_unregister,
                        keys=self._keys,
                        args=[self._maxlen, ek, "unregistered", "", "", "", "", self._node],
                    )
                )
            except BackendUnavailable:
                self._need_recover = True  # it may have landed: resync
                raise
            with self._mlock:
                own = self._own.pop(key, None)
                m = self._mirror
                old = None
                if v and m.is_newer(key, v):
                    self._written = v
                    old = m.remove(key, v)
                elif not v and own is not None:
                    # Redis lost it (restarted, not yet re-asserted): still ours.
                    old = m.remove(key, m.versions.get(key, m.floor))
                if old is not None:
                    events.append(RegistryEvent("unregistered", old, reason="unregistered"))
            if own is not None and own.monitor is not None:
                own.monitor.demonitor()
        self._emit(events)
        return bool(v) or own is not None

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of ``key`` (on any node); indexes follow.

        Raises:
            NotRegistered: ``key`` is not registered.
            InvalidKey, InvalidMetadata: bad input; nothing changes.
            BackendUnavailable: Redis unreachable.
        """
        ek = encode_key(key)
        frozen = freeze_metadata(metadata)
        meta_text = metadata_to_json(frozen)
        check_metadata_size(meta_text, MAX_METADATA_BYTES)
        meta = self._utf8(meta_text)
        ix = self._ix(frozen)
        events: list[RegistryEvent] = []
        with self._writing():
            self._flush_pending_down(key)
            try:
                reply = self._call(
                    self._s_update, keys=self._keys, args=[self._maxlen, ek, meta, ix, self._node]
                )
            except BackendUnavailable:
                self._need_recover = True  # it may have landed: resync
                raise
            if reply[0] == b"NOTREG":
                raise NotRegistered(key)
            v = int(reply[1])
            self._written = v
            with self._mlock:
                own = self._own.get(key)
                if own is not None:
                    own.meta, own.ix = meta, ix
                m = self._mirror
                if m.is_newer(key, v):
                    old = self._entries.get(key)
                    if old is not None:
                        new: Entry | None = Entry(
                            key, old.agent, frozen, old.registered_at, old.node
                        )
                    else:
                        # Our mirror has not seen this (remote) entry yet: build it
                        # from the reply; the older record will be skipped.
                        new = self._entry_from_head(key, ek, _s(reply[3]), meta, [])
                    if new is not None:
                        m.put(new, v)
                        events.append(RegistryEvent("updated", new))
        self._emit(events)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching every criterion, from the local mirror (index-backed for
        ``eq``/``in`` on an indexed attribute)."""
        compiled = compile_criteria(criteria)
        plans = index_plan(compiled, self._indexed)
        with self._mlock:
            if plans:
                best: set[Hashable] | None = None
                for plan in plans:
                    found = self._mirror.candidates(plan.attr, plan.values)
                    if best is None or len(found) < len(best):
                        best = found
                entries = self._entries
                candidates = [entries[k] for k in best or () if k in entries]
            else:
                candidates = list(self._entries.values())
        return [e for e in candidates if matches(e.metadata, compiled)]

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """Every entry in the mirror, optionally filtered by ``filter(metadata)``."""
        with self._mlock:
            entries = list(self._entries.values())
        if filter is None:
            return entries
        return [e for e in entries if filter(e.metadata)]

    def count(self) -> int:
        """Number of entries in the mirror (O(1))."""
        return len(self._entries)

    def indexed_attributes(self) -> frozenset[str]:
        """The attribute names given as ``indexed=``."""
        return self._indexed

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every change the mirror applies, local or remote.

        Events of this node's own writes are delivered in the writing thread;
        remote ones in the tail thread.
        """
        if not callable(listener):
            raise TypeError("listener must be callable")
        with self._mlock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._mlock:
                current = self._listeners
                for i, fn in enumerate(current):
                    if fn is listener:
                        self._listeners = current[:i] + current[i + 1 :]
                        break

        return unsubscribe

    def is_stale(self) -> bool:
        """True when the mirror may be behind Redis (cut off, or resynchronising)."""
        return (
            not self._tail_ok
            or self._need_recover
            or time.monotonic() - self._last_beat_ok > self._ttl
        )

    def status(self) -> RedisStatus:
        """Connection, staleness and size figures of this node."""
        return RedisStatus(
            node=self._node,
            connected=self._connected and self._tail_ok,
            stale=self.is_stale(),
            version=self._tail_v,
            written=self._written,
            entries=len(self._entries),
            local_entries=len(self._own),
            conflicts=len(self._conflicts),
            resyncs=max(0, self._gen - 1),
            last_error=self._last_error,
        )

    def conflicts(self) -> list[Conflict]:
        """Registrations lost to another node while this node's lease was lost."""
        with self._mlock:
            return list(self._conflicts)

    def wait_for_version(self, version: int, timeout: float = 5.0) -> bool:
        """Wait until this node's mirror has applied every change up to ``version``
        (True), or ``timeout`` seconds passed (False).

        For read-after-write across nodes: pass the writer's ``status().written``.
        """
        with self._applied:
            return self._applied.wait_for(
                lambda: self._tail_v >= version and not self._need_recover, timeout
            )

    def close(self) -> None:
        """Stop the threads, delete this node's registrations in Redis (a node that
        goes away takes its agents' registrations with it), release monitors and
        connections. Idempotent; bounded by a few ``op_timeout`` even if Redis is down."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._listeners = ()
        self._stop.set()
        self._jobs.put(None)
        self._poke()
        self._lease_thread.join(timeout=self._op_timeout * 3 + 1)
        try:
            with self._writing(public=False):
                self._call(self._s_release, keys=self._keys, args=[self._maxlen, self._node])
        except BackendUnavailable:
            pass  # Redis is down: the lease will expire and others reap our entries
        with self._mlock:
            owns = list(self._own.values())
            self._own.clear()
            # Like MemoryRegistry: a closed registry is empty.
            for key in list(self._entries):
                self._mirror.remove(key, self._tail_v)
        for own in owns:
            if own.monitor is not None:
                own.monitor.demonitor()
        if self._owns_manager:
            self._manager.close()
        self._tail_thread.join(timeout=0.5)
        if self._tail_thread.is_alive():
            # Blocked in XREAD on a server that does not answer: cut the socket.
            self._tail_client.connection_pool.disconnect()
            self._tail_thread.join(timeout=self._op_timeout + _TAIL_BLOCK_MS / 1000 + 1)
        with suppress(BackendUnavailable):
            self._call(self._client.delete, self._k_wake)
        self._client.close()
        self._tail_client.close()

    def __repr__(self) -> str:
        return f"<RedisRegistry node={self._node!r} url={self._url!r} entries={len(self._entries)}>"

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _utf8(text: str) -> bytes:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidMetadata(f"metadata is not valid Unicode text: {exc}") from None

    def _ix(self, frozen: Mapping[str, Any]) -> str:
        names = index_names(self._prefix, self._indexed, frozen)
        return json.dumps(names, separators=(",", ":")) if names else ""

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one Redis call; any connection failure becomes BackendUnavailable."""
        try:
            result = fn(*args, **kwargs)
        except self._redis_errors as exc:
            self._connected = False
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise BackendUnavailable(f"Redis at {self._url} is unavailable: {exc}") from exc
        self._connected = True
        return result

    @contextmanager
    def _writing(self, *, public: bool = True) -> Iterator[None]:
        if public and self._closed:
            raise BackendUnavailable("this RedisRegistry is closed")
        # Bounded: a writer stuck on an unresponsive Redis holds the lock for at
        # most about op_timeout; waiting longer than a few of those is an outage.
        if not self._wlock.acquire(timeout=self._op_timeout * 4):
            raise BackendUnavailable(f"Redis at {self._url} is not answering (writes are queued)")
        try:
            yield
        finally:
            self._wlock.release()

    def _forget_own(self, key: Hashable, own: _Own, prev: _Own | None = None) -> None:
        """Undo the pending local registration of a failed register."""
        with self._mlock:
            if self._own.get(key) is own:
                if prev is not None:
                    self._own[key] = prev
                else:
                    del self._own[key]
        if own.monitor is not None:
            own.monitor.demonitor()

    def _entry_from_reply(self, key: Hashable, reply: list[Any]) -> Entry | None:
        """The live entry named in an EXISTS reply (ours from the mirror, else remote)."""
        local = self._entries.get(key)
        owner = _s(reply[1])
        if local is not None and local.node == owner:
            return local
        try:
            head = json.loads(reply[2])
            a = head.get("a") or {}
            agent = RemoteAgent(owner, a.get("kind", "?"), a.get("pid"), a.get("name"))
            return Entry(key, agent, metadata_from_json(reply[3]), head.get("t", 0.0), owner)
        except (TypeError, ValueError):
            return None

    def _removed_event(self, old: Entry, why: str, dr: str, dc: str, ds: str) -> RegistryEvent:
        reason: UnregisterReason = why if why in ("replaced", "down") else "unregistered"  # type: ignore[assignment]
        # down=None when the death was noticed before its monitor reported it
        # (a dead local agent replaced by a new registration), as MemoryRegistry does.
        down = _down_from(dr, dc, ds) if reason == "down" and dr else None
        return RegistryEvent("unregistered", old, reason=reason, down=down)

    def _emit(self, events: list[RegistryEvent]) -> None:
        if not events:
            return
        for listener in self._listeners:
            for event in events:
                try:
                    listener(event)
                except Exception as exc:  # a broken listener never breaks the registry
                    report_unraisable(exc, "RedisRegistry listener", listener)

    # ------------------------------------------------------------------ local deaths

    def _on_down(self, key: Hashable, own: _Own, down: Down) -> None:
        """A local agent died: drop it from the mirror NOW, delete it in Redis soon."""
        event = None
        with self._mlock:
            if self._own.get(key) is not own:
                return  # unregistered or replaced meanwhile
            del self._own[key]
            entry = self._entries.get(key)
            if entry is not None and entry.agent is own.agent and entry.node == self._node:
                m = self._mirror
                # Keep its version: any later record for the key still applies.
                m.remove(key, m.versions.get(key, m.floor))
                event = RegistryEvent("unregistered", entry, reason="down", down=down)
            self._pending_downs[key] = (own.ek, own.head, down)
        if event is not None:
            self._emit([event])
        self._jobs.put(("down", key))

    def _flush_pending_down(self, key: Hashable) -> None:
        """Delete in Redis the entry of a local agent that died (holding _wlock)."""
        with self._mlock:
            pending = self._pending_downs.pop(key, None)
        if pending is None:
            return
        ek, head, down = pending
        try:
            v = int(
                self._call(
                    self._s_unregister,
                    keys=self._keys,
                    args=[self._maxlen, ek, "down", *_down_fields(down), head, self._node],
                )
            )
        except BackendUnavailable:
            with self._mlock:
                self._pending_downs.setdefault(key, pending)
            raise
        if v:
            with self._mlock:
                m = self._mirror
                if m.is_newer(key, v) and key not in self._own:
                    m.remove(key, v)

    def _delete_orphan(self, key: Hashable, ek: str, head: str) -> None:
        """Delete an entry of this node that no live local registration backs."""
        with self._mlock:
            if (own := self._own.get(key)) is not None and own.head == head:
                return  # it is ours after all (registered meanwhile)
        self._call(
            self._s_unregister,
            keys=self._keys,
            args=[self._maxlen, ek, "down", "noproc", "", "", head, ""],
        )

    # ------------------------------------------------------------------ lease thread

    def _heartbeat(self) -> bool:
        """Extend our lease and reap expired ones; False if our lease had been lost."""
        reply = self._call(
            self._s_heartbeat,
            keys=self._keys,
            args=[self._maxlen, self._node, int(self._ttl * 1000), self._info],
        )
        self._last_beat_ok = time.monotonic()
        return bool(int(reply[0]))

    def _run_job(self, job: tuple[str, Any]) -> None:
        kind, arg = job
        try:
            with self._writing(public=False):
                if kind == "down":
                    self._flush_pending_down(arg)
                elif kind == "orphan":
                    self._delete_orphan(*arg)
        except BackendUnavailable:
            self._retry.append(job)

    def _lease_loop(self) -> None:
        next_beat = time.monotonic() + self._beat
        while not self._stop.is_set():
            timeout = max(0.0, next_beat - time.monotonic())
            try:
                job = self._jobs.get(timeout=timeout)
            except queue.Empty:
                job = None
            if self._stop.is_set():
                return
            if job is not None:
                self._run_job(job)
                if time.monotonic() < next_beat:
                    continue
            next_beat = time.monotonic() + self._beat
            try:
                if not self._heartbeat():
                    # Our lease was gone: reaped while we were frozen or cut off,
                    # or Redis restarted empty. The tail thread re-asserts.
                    self._lease_lost = True
                    self._need_recover = True
                    self._poke()
            except BackendUnavailable:
                continue
            retry, self._retry = self._retry, []
            for job in retry:
                self._run_job(job)

    def _poke(self) -> None:
        """Wake our tail thread (it blocks in XREAD on our wake stream too)."""
        with suppress(BackendUnavailable):
            self._call(self._client.xadd, self._k_wake, {"w": "1"}, maxlen=16, approximate=False)

    # ------------------------------------------------------------------ tail thread

    def _tail_loop(self) -> None:
        backoff = 0.02
        while not self._stop.is_set():
            if self._need_recover:
                try:
                    with self._writing(public=False):
                        self._recover_locked()
                    backoff = 0.02
                except BackendUnavailable:
                    self._tail_ok = False
                    if self._stop.wait(backoff):
                        return
                    backoff = min(backoff * 2, 0.5)
                    continue
            with self._mlock:
                gen, sid, wid = self._gen, self._sid, self._wake_id
            try:
                resp: Any = self._tail_client.xread(
                    {self._k_log: sid, self._k_wake: wid}, count=1000, block=_TAIL_BLOCK_MS
                )
            except self._redis_errors as exc:
                if self._stop.is_set():
                    return
                self._tail_ok = False
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._need_recover = True
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 0.5)
                continue
            self._tail_ok = True
            if resp:
                self._apply_batch(gen, resp)

    def _apply_batch(self, gen: int, resp: list[Any]) -> None:
        events: list[RegistryEvent] = []
        orphans: list[tuple[Hashable, str, str]] = []
        released: list[Monitor] = []
        with self._mlock:
            if gen != self._gen:
                return  # a resync happened meanwhile; re-read from its position
            for name, records in resp:
                if name == self._k_wake_b:
                    if records:
                        self._wake_id = records[-1][0]
                    continue
                for rid, fields in records:
                    v = int(fields[b"v"])
                    if v != self._tail_v + 1:
                        # A gap (the stream was trimmed past us) or a reset (Redis
                        # restarted empty): resynchronise from a snapshot.
                        self._need_recover = True
                        break
                    self._tail_v = v
                    self._sid = rid
                    self._apply_record(v, fields, events, orphans, released)
            self._mirror.prune(self._tail_v)
            self._applied.notify_all()
        for mon in released:
            mon.demonitor()
        self._emit(events)
        for orphan in orphans:
            self._jobs.put(("orphan", orphan))

    def _apply_record(
        self,
        v: int,
        f: dict[bytes, bytes],
        events: list[RegistryEvent],
        orphans: list[tuple[Hashable, str, str]],
        released: list[Monitor],
    ) -> None:
        """Apply one change record (holding _mlock)."""
        if f[b"w"] == self._node_b:
            # Written by an API call of this node: that call applies its own
            # result (and emits its events, in order, in the calling thread).
            # If it could not (Redis failed after the write), it asked for a resync.
            return
        m = self._mirror
        op = f[b"op"]
        ek = f[b"k"].decode()
        key = decode_key(ek)
        if not m.is_newer(key, v):
            return  # already applied (our own write, or covered by a snapshot)
        if op == b"r":
            head_text = f[b"h"].decode()
            entry = self._entry_from_head(key, ek, head_text, f[b"m"], orphans)
            if entry is None:
                m.versions[key] = v
                return
            old = m.put(entry, v)
            if old is not None:
                events.append(RegistryEvent("unregistered", old, reason="replaced"))
            events.append(RegistryEvent("registered", entry))
        elif op == b"u":
            old = self._entries.get(key)
            m.versions[key] = v
            if old is None:
                return  # e.g. our agent just died; its delete is on its way
            own = self._own.get(key)
            if own is not None and old.node == self._node:
                own.meta = f[b"m"]
            new = Entry(key, old.agent, metadata_from_json(f[b"m"]), old.registered_at, old.node)
            m.put(new, v)
            events.append(RegistryEvent("updated", new))
        elif op == b"d":
            owner = f[b"n"].decode()
            why, dr = f[b"why"].decode(), f[b"dr"].decode()
            own = self._own.get(key)
            if own is not None and (owner != self._node or own.head != f[b"h"].decode()):
                own = None  # the record removed another registration than our live one
            if owner == self._node and dr == "lease_expired":
                # Our own lease was reaped (we were frozen or cut off). Our agents
                # live on: keep them, and re-assert them (or report conflicts).
                self._lease_lost = True
                self._need_recover = True
                m.versions[key] = v
                if own is not None:
                    return
            old = m.remove(key, v)
            if own is not None:
                # Unregistered or replaced by someone else: stop watching it.
                del self._own[key]
                if own.monitor is not None:
                    released.append(own.monitor)
            if old is not None:
                events.append(
                    self._removed_event(old, why, dr, f[b"dc"].decode(), f[b"ds"].decode())
                )

    def _entry_from_head(
        self,
        key: Hashable,
        ek: str,
        head_text: str,
        meta: bytes,
        orphans: list[tuple[Hashable, str, str]],
    ) -> Entry | None:
        """Build a mirror entry; None (and an orphan to delete) for an entry of this
        node with no live local registration behind it."""
        head = json.loads(head_text)
        node = head["n"]
        if node == self._node:
            own = self._own.get(key)
            if own is None or own.head != head_text:
                orphans.append((key, ek, head_text))
                return None
            agent: Any = own.agent
        else:
            a = head.get("a") or {}
            agent = RemoteAgent(node, a.get("kind", "?"), a.get("pid"), a.get("name"))
        return Entry(key, agent, metadata_from_json(meta), head["t"], node)

    # ------------------------------------------------------------------ recovery

    def _recover_locked(self) -> None:
        """Lease check, re-assert if it was lost, then resync (holding _wlock)."""
        self._need_recover = False
        try:
            had = self._heartbeat()
            lost = self._reassert() if not had or self._lease_lost else []
            self._resync()
            if lost:
                # Reported only now that the mirror shows who holds those keys.
                with self._mlock:
                    self._conflicts.extend(lost)
        except BaseException:
            self._need_recover = True
            raise
        self._tail_ok = True

    def _reassert(self) -> list[Conflict]:
        """Register again every live local agent (after our lease was lost); returns
        the keys another node took meanwhile (it keeps them)."""
        with self._mlock:
            owns = [(k, o) for k, o in self._own.items() if is_alive(o.agent)]
        self._lease_lost = False
        conflicts: list[Conflict] = []
        if not owns:
            return conflicts
        pipe = self._client.pipeline(transaction=False)
        for _, own in owns:
            self._s_register(
                keys=self._keys,
                args=[self._maxlen, self._node, own.ek, own.head, own.meta, own.ix, "a", "0", ""],
                client=pipe,
            )
        try:
            results = self._call(pipe.execute, raise_on_error=False)
        except BaseException:
            self._lease_lost = True
            raise
        lost: list[Monitor] = []
        for (key, own), reply in zip(owns, results, strict=True):
            if isinstance(reply, Exception):
                self._lease_lost = True
                raise BackendUnavailable(f"re-asserting {key!r} failed: {reply}")
            if reply[0] == b"EXISTS":
                # Another node took the key while our lease was lost: it keeps it.
                with self._mlock:
                    if self._own.get(key) is own:
                        del self._own[key]
                        conflicts.append(Conflict(key, own.agent, _s(reply[1]), time.time()))
                        if own.monitor is not None:
                            lost.append(own.monitor)
        for mon in lost:
            mon.demonitor()
        return conflicts

    def _resync(self) -> None:
        """Replace the mirror by a fresh snapshot, emitting the differences."""
        reply = self._call(self._s_snapshot, keys=self._keys, args=[self._maxlen])
        ver, sid, heads, metas = int(reply[0]), reply[1], reply[2], reply[3]
        meta_by = dict(zip(metas[::2], metas[1::2], strict=True))
        orphans: list[tuple[Hashable, str, str]] = []
        events: list[RegistryEvent] = []
        with self._mlock:
            fresh: dict[Hashable, Entry] = {}
            for ekb, head_b in zip(heads[::2], heads[1::2], strict=True):
                ek = ekb.decode()
                key = decode_key(ek)
                entry = self._entry_from_head(
                    key, ek, head_b.decode(), meta_by.get(ekb, b"{}"), orphans
                )
                if entry is not None:
                    fresh[key] = entry
            m = self._mirror
            for key, held in list(self._entries.items()):
                if key in fresh:
                    continue
                own = self._own.get(key)
                if own is not None and held.node == self._node:
                    # Ours and alive, but Redis does not have it: keep it, re-assert.
                    self._lease_lost = True
                    self._need_recover = True
                    continue
                m.remove(key, ver)
                events.append(RegistryEvent("unregistered", held, reason="unregistered"))
            for key, new in fresh.items():
                old = self._entries.get(key)
                if old is None:
                    m.put(new, ver)
                    events.append(RegistryEvent("registered", new))
                elif (
                    old.node != new.node
                    or old.registered_at != new.registered_at
                    or (old.agent != new.agent)
                ):
                    m.put(new, ver)
                    events.append(RegistryEvent("unregistered", old, reason="replaced"))
                    events.append(RegistryEvent("registered", new))
                elif old.metadata != new.metadata:
                    m.put(new, ver)
                    events.append(RegistryEvent("updated", new))
            m.versions.clear()
            m.floor = ver
            self._tail_v = ver
            self._sid = sid
            self._gen += 1
            self._applied.notify_all()
        self._emit(events)
        for orphan in orphans:
            self._jobs.put(("orphan", orphan))
