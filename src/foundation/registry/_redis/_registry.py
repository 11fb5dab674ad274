"""``RedisRegistry``: the registry contract, shared by many nodes through Redis.

How it works (details in ``docs/redis.md``); one module per job:

- ``_scripts``: the Lua scripts. Every write (register, register_many,
  update, unregister, heartbeat+reap, release) is ONE script that writes the entry, its index sets
  and a versioned change record on the stream ``P:log``; their ARGV are named
  by a dataclass each.
- ``_state``: the connection/recovery state machine (``Link``), with logged
  transitions.
- ``_lease``: the lease thread (heartbeat, reaping, the global-outage rule,
  re-assert, background deletes) and the recovery procedure.
- ``_tail``: the tail thread (``XREAD BLOCK``) applying change records to the
  local mirror, and the resync from a snapshot.
- this module: the facade. Reads are answered by the mirror; a node applies
  the result of its own writes at once (read-your-writes), per-key versions
  make the later stream copy a no-op, and when its records are the next ones
  on the stream the writer moves its tail past them (they are never read back).
  API writes go out on the node's write connection (``Shared.write_script``).

Local agents are monitored by this node's MonitorManager and removed from the
mirror the instant they die; the server-side delete follows from the lease
thread (and retries across outages). No public call raises a redis-py
exception: every failure is ``BackendUnavailable`` or ``InvalidConfig``
(``foundation._redis_conn``).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import json.encoder
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from foundation import _redis_conn
from foundation._listeners import _write_tags, subscribe_to
from foundation.errors import (
    AlreadyRegistered,
    BackendUnavailable,
    Closed,
    FoundationError,
    InvalidConfig,
    InvalidKey,
    InvalidMetadata,
    NotAlive,
    NotRegistered,
    RegistryError,
    UnsupportedAgent,
)
from foundation.liveness import (
    Down,
    Monitor,
    MonitorManager,
    describe_agent,
    is_alive,
)
from foundation.liveness._types import AGENT_TYPES
from foundation.registry._plain import PLAIN_SUBCLASSES
from foundation.registry._query import IndexPlan, compile_criteria, index_plan, matches
from foundation.registry._redis._codec import RemoteAgent, metadata_json, normal_key, s
from foundation.registry._types import (
    BatchItem,
    Criterion,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    RegistryEvent,
    batch_items,
    filtered,
    new_entry,
)
from foundation.registry._validation import (
    MAX_METADATA_BYTES,
    check_bool,
    check_metadata_size,
    check_unicode,
    freeze_metadata,
    indexed_names,
    metadata_from_json,
    short_repr,
    validate_key,
)

if TYPE_CHECKING:
    # Implementation modules: imported by the first RedisRegistry(), not by
    # `import foundation` (see _load_implementation).
    from foundation.registry._redis import _lease, _readscript, _scripts, _shared, _state, _tail

__all__ = ["MAX_METADATA_BYTES", "Conflict", "RedisRegistry", "RedisStatus"]


_seq = itertools.count(1)
_CHUNK: Final = 500  # items per REGISTER_MANY script call (see _pipelined)
_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode
_str_json: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _load_implementation() -> None:
    """Import the modules a ``RedisRegistry`` runs on (Lua scripts, lease, tail).

    Called first by the constructor, so ``import foundation`` never pays for
    them (the one way to defer an implementation module: ``foundation._public``).
    Two constructors racing both import; the import lock makes the second a
    dictionary lookup, and both bind the same module objects.
    """
    global _lease, _readscript, _scripts, _shared, _state, _tail
    from foundation.registry._redis import _lease, _readscript, _scripts, _shared, _state, _tail


def _agent_json(agent: Any) -> str:
    """``{"kind", "pid", "name"}`` of ``describe_agent`` as JSON, without its costly
    parts (host name, process start time) for the in-process kinds."""
    if isinstance(agent, threading.Thread):
        return f'{{"kind":"thread","pid":{os.getpid()},"name":{_str_json(agent.name)}}}'
    if isinstance(agent, AGENT_TYPES.aio_task):
        return f'{{"kind":"task","pid":{os.getpid()},"name":{_str_json(agent.get_name())}}}'
    if isinstance(agent, (AGENT_TYPES.aio_future, AGENT_TYPES.cf_future)):
        return f'{{"kind":"future","pid":{os.getpid()},"name":null}}'
    d = describe_agent(agent)
    return _dumps({"kind": d["kind"], "pid": d["pid"], "name": d["name"]})


_MAX_SECONDS: Final = threading.TIMEOUT_MAX / 8
"""The longest lease, heartbeat or op_timeout: every wait on them stays a valid timeout."""


def _seconds(name: str, value: object) -> float:
    """``value`` as a number of seconds in ``(0, _MAX_SECONDS]``; ``TypeError`` or
    ``InvalidConfig`` (NaN and infinities included) at the constructor, not later."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not 0 < value <= _MAX_SECONDS:
        raise InvalidConfig(
            f"{name} must be a positive number of seconds (at most {_MAX_SECONDS:.0f}), "
            f"got {short_repr(value)}"
        )
    return float(value)


def _checked_arguments(
    *,
    namespace: object,
    indexed: Iterable[str],
    lease_ttl: object,
    heartbeat: object,
    op_timeout: object,
    stream_maxlen: object,
    node: object,
    manager: object,
) -> tuple[frozenset[str], float, float, float]:
    """``RedisRegistry``'s arguments checked at the call (``TypeError``/``InvalidConfig``,
    never later): its indexed attributes, lease TTL, heartbeat and op timeout."""
    _check_namespace(namespace)
    attrs = frozenset(indexed_names(indexed))
    ttl = _seconds("lease_ttl", lease_ttl)
    beat = ttl / 3 if heartbeat is None else _seconds("heartbeat", heartbeat)
    if not 0 < beat < ttl:
        raise InvalidConfig("heartbeat must be positive and shorter than lease_ttl")
    timeout = _seconds("op_timeout", op_timeout)
    _check_stream_node_manager(stream_maxlen, node, manager)
    return attrs, ttl, beat, timeout


def _check_namespace(namespace: object) -> None:
    """``InvalidConfig`` unless ``namespace`` is a non-empty str without braces."""
    if not isinstance(namespace, str) or not namespace or "{" in namespace or "}" in namespace:
        raise InvalidConfig(
            f"namespace must be a non-empty str without braces, got {short_repr(namespace)}"
        )
    check_unicode("namespace", namespace)


def _check_stream_node_manager(stream_maxlen: object, node: object, manager: object) -> None:
    """Check ``stream_maxlen`` (an int >= 1), ``node`` and ``manager`` (None or their type)."""
    if isinstance(stream_maxlen, bool) or not isinstance(stream_maxlen, int):
        raise TypeError(f"stream_maxlen must be an int, got {type(stream_maxlen).__name__}")
    if stream_maxlen < 1:
        raise InvalidConfig(f"stream_maxlen must be at least 1, got {stream_maxlen}")
    if node is not None and not isinstance(node, str):
        raise TypeError(f"node must be a str, got {type(node).__name__}")
    if node is not None:
        check_unicode("node", node)
    if manager is not None and not isinstance(manager, MonitorManager):
        raise TypeError(f"manager must be a MonitorManager, got {type(manager).__name__}")


class _Prepared:
    """One registration on its way (checked, encoded, not yet sent)."""

    __slots__ = (
        "agent",
        "argv",
        "died",
        "frozen",
        "key",
        "own",
        "own_dead",
        "prev",
        "registered_at",
    )

    def __init__(
        self, key: Hashable, agent: Any, frozen: Mapping[str, Any], at: float, own: _shared.Own
    ) -> None:
        self.key = key
        self.agent = agent
        self.frozen = frozen
        self.registered_at = at
        self.own = own
        self.prev: _shared.Own | None = None  # this node's registration it replaces
        self.argv: list[Any] = []  # REGISTER's ARGV (single register only)
        self.own_dead = False  # this node's previous agent under the key is dead
        self.died = False  # the agent died while its script ran


class _ClosedEntries(dict[Hashable, Entry]):
    """Stands in for the mirror's dict after ``close()``: every read raises
    ``Closed``, so ``lookup`` keeps its single dict call and pays nothing."""

    def _closed(self, *_: object) -> Any:
        raise Closed("this RedisRegistry is closed")

    get = __getitem__ = __contains__ = __iter__ = __len__ = values = items = keys = _closed


_CLOSED_ENTRIES: Final = _ClosedEntries()


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


class RedisRegistry(Registry):
    """The registry contract over Redis, for agents spread over several machines.

    Every node (process) constructs its own ``RedisRegistry`` on the same
    ``url`` and ``namespace``. Keys are ``str``, ``int`` or tuples of them;
    metadata is JSON (at most 64 KiB). Entries registered on this node hold the
    live agent; entries of other nodes hold a :class:`RemoteAgent` description.
    Reads (``lookup``, ``query``, ...) are answered by a local mirror; writes
    are one Redis round trip (``register_many``: one for the whole batch).
    After ``close()`` every call raises ``Closed``, reads included.
    ``BackendUnavailable`` (a ``ConnectionError``) within about ``op_timeout``
    seconds when Redis cannot be reached or answers with an error reply
    (``READONLY``, ``OOM``, ``LOADING``, ...); no call ever raises a redis-py
    exception. The constructor raises it too (``errno`` EAGAIN) when the process
    cannot start its threads, with nothing left open or running.

    Args:
        url: ``redis://[[user]:password@]host:port/db``, ``rediss://`` (TLS) or
            ``unix:///path``; AUTH, ACL users and TLS options go in the URL. A
            malformed URL, or a database index the server does not have, is
            ``InvalidConfig`` (a ``ValueError``); an unreachable server, one that
            is not Redis, or a refused login is ``BackendUnavailable``.
        namespace: isolates deployments sharing one Redis (one cluster slot).
        indexed: metadata attributes with a local index (``eq``/``in``).
        lease_ttl: seconds after which a silent node's entries are reaped.
        heartbeat: seconds between lease renewals (default ``lease_ttl / 3``).
        node: this node's name (default ``host:pid:random``), unique per process.
        manager: the MonitorManager watching local agents (default: own one).
        op_timeout: bound, in seconds, on every Redis call.
        stream_maxlen: approximate length the change stream is trimmed to; a
            node that falls further behind resynchronises from a snapshot.

    Example (``redis_url`` names your server, e.g. ``"redis://127.0.0.1:6379/0"``;
    under pytest, ``src/conftest.py`` starts a private one); two nodes:
        >>> import threading
        >>> from foundation import RedisRegistry, spawn_thread
        >>> stop = threading.Event()
        >>> with RedisRegistry(redis_url, indexed=("role",)) as a, \\
        ...      RedisRegistry(redis_url, indexed=("role",)) as b:
        ...     a.register(("worker", 1), spawn_thread(stop.wait), {"role": "io"})
        ...     b.wait_for_version(a.status().written)  # A's write has reached B
        ...     [e.agent.kind for e in b.find_by_attribute("role", "io")]
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
        import secrets
        import socket

        _load_implementation()
        _redis_conn.import_redis()  # the extra is optional: ImportError naming it
        _redis_conn.check_url(url)
        attrs, lease_ttl, beat, op_timeout = _checked_arguments(
            namespace=namespace,
            indexed=indexed,
            lease_ttl=lease_ttl,
            heartbeat=heartbeat,
            op_timeout=op_timeout,
            stream_maxlen=stream_maxlen,
            node=node,
            manager=manager,
        )
        name = node or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        owns_manager = manager is None
        sh = _shared.Shared(
            url=url,
            node=name,
            namespace=namespace,
            indexed=attrs,
            ttl=float(lease_ttl),
            beat=float(beat),
            op_timeout=float(op_timeout),
            maxlen=stream_maxlen,
            manager=manager if manager is not None else MonitorManager(name="redis-registry"),
        )
        self._sh = sh
        # The listeners' events (``_delivery.delivering``: the writer's tag of the
        # event being delivered, as on ``MemoryRegistry``).
        self._delivery = sh.delivery
        self._owns_manager = owns_manager
        self._entries = sh.entries  # the hot read path
        try:
            sh.client = _redis_conn.connect(url, op_timeout=op_timeout, name=f"foundation:{name}")
            tail = _redis_conn.connect(
                url,
                op_timeout=op_timeout + _shared.TAIL_BLOCK_MS / 1000,
                connect_timeout=op_timeout,
                name=f"foundation-tail:{name}",
            )
            # The tail holds ONE connection: one the server cut while the tail was
            # not reading (it pauses after its own writes, see _tail.OWN_QUIET_S)
            # then fails the next read, and the link recovers; a pooled client
            # would replace it silently.
            sh.tail_client = _redis_conn.import_redis().Redis(
                connection_pool=tail.connection_pool, single_connection_client=True
            )
            # Keep its owner: collecting it would disconnect the pool under the tail.
            self._tail_owner = tail
            c = sh.client
            sh.scripts = {
                "register": c.register_script(_scripts.REGISTER),
                "register_many": c.register_script(_scripts.REGISTER_MANY),
                "update": c.register_script(_scripts.UPDATE),
                "unregister": c.register_script(_scripts.UNREGISTER),
                "heartbeat": c.register_script(_scripts.HEARTBEAT),
                "release": c.register_script(_scripts.RELEASE),
                # A pure read: run so that Redis >= 7 serves it while writes
                # are paused (see _readscript).
                "snapshot": _readscript.ReadScript(_scripts.SNAPSHOT),
            }
            self._tail = _tail.Tail(sh)
            self._lease = _lease.Lease(sh, self._tail)
            sh.call("clearing our wake stream", c.delete, sh.k_wake)
            with sh.writing(public=False):
                self._lease.recover_locked()
        except BaseException:
            for client in (sh.client, sh.tail_client, getattr(self, "_tail_owner", None)):
                if client is not None:
                    client.close()
            if owns_manager:
                sh.manager.close()
            raise
        self._start_threads()

    def _start_threads(self) -> None:
        """Start the tail and lease threads. Without a thread (the process's thread
        limit) close all this construction opened, then raise ``BackendUnavailable``."""
        for thread in (self._tail.thread, self._lease.thread):
            try:
                thread.start()
            except RuntimeError as exc:  # "can't start new thread" (EAGAIN: thread limit)
                # The tail may be running already: close() stops and joins it,
                # releases the lease recover_locked wrote, deletes the wake stream and
                # closes the connections and the manager we own. Nobody holds this
                # registry yet: no call can race with this close.
                self.close()
                raise BackendUnavailable(
                    errno.EAGAIN,
                    f"RedisRegistry node {self._sh.node!r} cannot start thread "
                    f"{thread.name!r}: {exc}",
                ) from exc

    # ------------------------------------------------------------------ public API

    @property
    def node(self) -> str:
        """This node's name (``Entry.node`` of its registrations)."""
        return self._sh.node

    @property
    def manager(self) -> MonitorManager:
        """The monitor manager watching this node's local agents."""
        return self._sh.manager

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
            BackendUnavailable: Redis unreachable or unhealthy (the outcome is
                unknown; a write that did land is cleaned up at the next resync).
            Closed: the registry was closed.
            TypeError: ``replace`` is not ``True`` or ``False``.
        """
        sh = self._sh
        if sh.closed:
            raise Closed("this RedisRegistry is closed")
        check_bool(replace, "replace")
        p = self._prepare(key, agent, metadata)
        try:
            self._register_locked(p, replace)
        finally:
            # Once every lock is released: this call's events (queued under mlock
            # as the mirror applied them), and any queued before them, in order.
            sh.deliver()

    def _register_locked(self, p: _Prepared, replace: bool) -> None:
        """``register`` of the prepared ``p``, holding wlock."""
        sh = self._sh
        key, agent = p.key, p.agent
        with sh.writing():
            self._begin(p, replace)

            def doing() -> str:
                return f"registering {key!r:.200}"

            try:
                reply = sh.write_script("register", p.argv, doing)
                if reply[0] == b"NOLEASE":
                    # Our lease was lost (we were frozen or cut off): recover (which
                    # re-asserts everything else we hold), then try once more.
                    sh.link.lease_lost("a write found our lease gone")
                    self._lease.recover_locked()
                    reply = sh.write_script("register", p.argv, doing)
            except BaseException:
                sh.forget_own(key, p.own, p.prev)
                # A write that timed out may have landed: resync (its orphan goes).
                sh.link.resync_needed(f"the outcome of registering {key!r:.200} is unknown")
                raise
            error = self._finish(p, reply)
            if error is not None and not p.died:
                raise error
            if p.died:
                # Race: the agent died while the script ran (its on_down already
                # queued the delete). Delete it now and report it as not alive;
                # other nodes may have seen it registered for an instant.
                self._lease.flush_pending_down(key)
                raise NotAlive(key, agent)

    def register_many(
        self,
        items: Iterable[BatchItem],
        *,
        replace: bool = False,
    ) -> list[RegistryError | None]:
        """Register many live local agents in ONE Redis round trip; one outcome per item.

        As :meth:`Registry.register_many`: ``items`` are ``(key, agent)`` or
        ``(key, agent, metadata)``; each outcome is ``None`` (registered) or
        the error ``register`` would have raised for it, returned, not raised.
        Atomic per key, not per batch: one ``REGISTER_MANY`` script per chunk
        of up to 500 items (pipelined); a held key goes through the same checks
        as ``register``, the free keys of a chunk are written in bulk, with one
        change record for all of them. A key repeated in the batch is sent in a
        second round trip after the first (so it meets the first as two
        ``register`` calls would).

        Raises:
            TypeError: a malformed item, or ``replace`` not ``True`` or ``False``
                (before anything is registered).
            BackendUnavailable: Redis unreachable or unhealthy: items Redis did
                not confirm are not in the mirror and their monitors are
                released (confirmed ones stay; a write that landed unconfirmed
                is cleaned up at the next resync).
            Closed: the registry was closed.

        ``Registry.register_many`` has a runnable example (the same calls work here).
        """
        sh = self._sh
        if sh.closed:
            raise Closed("this RedisRegistry is closed")
        check_bool(replace, "replace")
        batch = batch_items(items)
        outcomes: list[RegistryError | None] = [None] * len(batch)
        for items_ in self._prepare_batch(batch, outcomes):
            if items_:
                self._register_round(items_, replace, outcomes)
        return outcomes

    def lookup(self, key: Hashable) -> Entry | None:
        """The entry for ``key`` from the local mirror, or ``None`` (never blocks on Redis).

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
        """
        t = type(key)
        if t is str:  # a str is a key in normal form as it is: one dict.get
            return self._entries.get(key)
        if t is not int and t not in PLAIN_SUBCLASSES:
            # The one key rule, hit or miss: True is no key even though True == 1,
            # and an object that is no key is never hashed or compared with ours.
            # (A member of a subclass that keeps its base's hash and equality, a
            # StrEnum member say, finds the entry of its plain value as it is.)
            try:
                key = validate_key(key)
            except InvalidKey:
                self._check_open()  # a closed registry says so first, whatever the key
                raise
        entry = self._entries.get(key)  # (Closed once closed: see _ClosedEntries)
        if entry is None:
            validate_key(key)  # a miss: InvalidKey for an int beyond 64 bits, say
        return entry

    def unregister(self, key: Hashable) -> bool:
        """Remove ``key`` on every node; True if it was registered.

        Raises:
            InvalidKey: ``key`` breaks the key rule (docs/keys-and-metadata.md).
            BackendUnavailable: Redis unreachable or unhealthy; nothing changes here.
            Closed: the registry was closed.
        """
        sh = self._sh
        if sh.closed:
            raise Closed("this RedisRegistry is closed")
        key, ek = normal_key(key)  # the one key rule (InvalidKey)
        try:
            return self._unregister_locked(key, ek)
        finally:
            sh.deliver()  # once every lock is released, in mirror order

    def _unregister_locked(self, key: Hashable, ek: str) -> bool:
        """``unregister`` of the normal ``key`` (encoded ``ek``), holding wlock."""
        sh = self._sh
        with sh.writing():
            self._lease.flush_pending_down(key)
            args = _scripts.UnregisterArgs(sh.maxlen, ek, "unregistered", "", "", "", "", sh.node)
            try:
                v = int(
                    sh.write_script(
                        "unregister", args.argv(), lambda: f"unregistering {key!r:.200}"
                    )
                )
            except FoundationError:
                sh.link.resync_needed(f"the outcome of unregistering {key!r:.200} is unknown")
                raise
            with sh.mlock:
                own = sh.own.pop(key, None)
                old = self._remove_unregistered(key, v, own)
                if old is not None and sh.listeners:
                    event = RegistryEvent("unregistered", old, reason="unregistered")
                    sh.queue([event], _write_tags.tag)
            if own is not None and own.monitor is not None:
                own.monitor.demonitor()
        return bool(v) or own is not None

    def _remove_unregistered(self, key: Hashable, v: int, own: _shared.Own | None) -> Entry | None:
        """Drop ``key`` from the mirror after UNREGISTER answered ``v`` (holding
        mlock); the entry removed, if any."""
        sh = self._sh
        m = sh.mirror
        if v and m.is_newer(key, v):
            sh.written = v
            return m.remove(key, v)
        if not v and own is not None:
            # Redis lost it (restarted, not yet re-asserted): still ours.
            return m.remove(key, m.versions.get(key, m.floor))
        return None

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of ``key`` (on any node); indexes follow.

        ``lookup`` and ``update_metadata`` agree: a live registration of this
        node that Redis lost (restarted empty, or our lease was reaped) is
        re-asserted first, then updated; one another node unregistered is not
        (``NotRegistered``, even before this node's mirror has seen that).

        Raises:
            NotRegistered: ``key`` is not registered.
            InvalidKey, InvalidMetadata: bad input; nothing changes.
            BackendUnavailable: Redis unreachable or unhealthy; nothing changes here.
            Closed: the registry was closed.
        """
        sh = self._sh
        if sh.closed:
            raise Closed("this RedisRegistry is closed")
        key, ek = normal_key(key)  # the one key rule (InvalidKey)
        frozen = freeze_metadata(metadata)
        meta = sh.utf8(metadata_json(frozen))  # keys in the caller's order
        if len(meta) > MAX_METADATA_BYTES:
            check_metadata_size(meta.decode(), MAX_METADATA_BYTES)  # raises InvalidMetadata
        ix = sh.ix_for(frozen)
        args = _scripts.UpdateArgs(sh.maxlen, ek, meta, ix, sh.node)
        try:
            with sh.writing():
                self._lease.flush_pending_down(key)
                reply = self._send_update(key, args.argv())
                if reply[0] == b"NOTREG":
                    raise NotRegistered(key)
                self._apply_update(key, ek, reply, frozen=frozen, meta=meta, ix=ix)
        finally:
            sh.deliver()  # once every lock is released, in mirror order

    def _send_update(self, key: Hashable, argv: list[Any]) -> Any:
        """Run UPDATE for ``key`` (holding wlock); a live registration of this node
        that Redis lost is re-asserted first. A failure asks for a resync."""
        sh = self._sh
        doing = f"updating {key!r:.200}"
        try:
            reply = sh.write_script("update", argv, doing)
            if reply[0] == b"NOTREG" and self._held_here(key) and not self._deleted_unseen(key):
                # Redis lost our live registration (it restarted empty, or our
                # lease was reaped) although lookup returns it: recover (which
                # re-asserts it with its current metadata), then update.
                sh.link.lease_lost(f"Redis lacks our live registration {key!r:.200}")
                self._lease.recover_locked()
                reply = sh.write_script("update", argv, doing)
        except FoundationError:
            sh.link.resync_needed(f"the outcome of updating {key!r:.200} is unknown")
            raise
        return reply

    def _deleted_unseen(self, key: Hashable) -> bool:
        """A delete of this node's registration of ``key`` is on the stream past our
        tail's position (holding wlock): another node unregistered it and our tail
        has not applied that yet. Then Redis did not lose it: re-asserting it would
        undo that unregister.

        Race: the tail may apply the record meanwhile (the answer stays right).
        A stream trimmed past our position finds nothing: as before, recover.
        """
        sh = self._sh
        own = sh.own.get(key)
        if own is None:
            return False
        with sh.mlock:
            start = sh.sid
        records = sh.call(
            f"looking for a delete of {key!r:.200} on the change stream",
            sh.client.xrange,
            sh.k_log,
            min="(" + s(start),
            max="+",
            count=int(sh.maxlen),
        )
        ek, head = own.ek.encode(), own.head.encode()
        # A head of "" (Redis had lost it) names whatever the node in "n" held.
        # Race: another node's heartbeat reaped our expired lease (we were frozen)
        # and our tail has not applied it yet: that delete (``lease_expired``) is
        # no unregister; our live agent's registration is re-asserted, as the
        # recovery does (``Lease._drop_deleted_unseen``), not NotRegistered.
        return any(
            f.get(b"op") == b"d"
            and f.get(b"k") == ek
            and f.get(b"dr") != b"lease_expired"
            and (f.get(b"h") == head or (f.get(b"h") == b"" and f.get(b"n") == sh.node_b))
            for _, f in records
        )

    def _apply_update(
        self,
        key: Hashable,
        ek: str,
        reply: Any,
        *,
        frozen: Mapping[str, Any],
        meta: bytes,
        ix: str,
    ) -> None:
        """Apply UPDATE's OK ``reply`` to the mirror (holding wlock); its event
        is queued under the same mlock."""
        sh = self._sh
        v = int(reply[1])
        sh.written = v
        with sh.mlock:
            own = sh.own.get(key)
            if own is not None:
                own.meta, own.ix = meta, ix
            m = sh.mirror
            if not m.is_newer(key, v):
                return
            known = key in sh.entries
            new = self._updated_entry(key, ek, frozen, meta, reply)
            if new is None:
                return
            m.put(new, v)
            # An entry this mirror had not seen yet (its registration record,
            # older, will be skipped) appears here: for local listeners it is
            # registered.
            if sh.listeners:
                kind: Literal["updated", "registered"] = "updated" if known else "registered"
                sh.queue([RegistryEvent(kind, new)], _write_tags.tag)

    def _updated_entry(
        self, key: Hashable, ek: str, frozen: Mapping[str, Any], meta: bytes, reply: Any
    ) -> Entry | None:
        """The entry of ``key`` with its new metadata after UPDATE (holding mlock)."""
        sh = self._sh
        old = sh.entries.get(key)
        if old is not None:
            return new_entry(key, old.agent, frozen, old.registered_at, old.node)
        # Our mirror has not seen this (remote) entry yet: build it
        # from the reply; the older record will be skipped. Redis may have lost
        # its head (None): then its owner writes it back, and the tail brings it.
        if len(reply) < 4 or reply[3] is None:
            return None
        try:
            return sh.entry_from_head(key, ek, s(reply[3]), meta, [])
        except (AttributeError, KeyError, TypeError, ValueError, RecursionError):
            # A head nobody can read (written by something else): no entry to show
            # (the update itself was made); raised, it leaked out of update_metadata.
            return None

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching every criterion, from the local mirror (index-backed for
        ``eq``/``in`` on an indexed attribute). ``Closed`` after ``close()``."""
        sh = self._sh
        self._check_open()
        compiled = compile_criteria(criteria)
        plans = index_plan(compiled, sh.indexed)
        with sh.mlock:
            candidates = self._indexed_candidates(plans) if plans else list(self._entries.values())
        return [e for e in candidates if matches(e.metadata, compiled)]

    def _indexed_candidates(self, plans: Sequence[IndexPlan]) -> list[Entry]:
        """The entries of the smallest index bucket set the ``plans`` name (holding mlock)."""
        best: set[Hashable] | None = None
        for plan in plans:
            found = self._sh.mirror.candidates(plan.attr, plan.values)
            if best is None or len(found) < len(best):
                best = found
        entries = self._entries
        return [entries[k] for k in best or () if k in entries]

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """Every entry in the mirror, optionally filtered by ``filter(metadata)``.
        ``Closed`` after ``close()``."""
        self._check_open()
        with self._sh.mlock:
            entries = list(self._entries.values())
        return filtered(entries, filter)

    def count(self) -> int:
        """Number of entries in the mirror (O(1)); ``Closed`` after ``close()``."""
        return len(self._entries)

    def indexed_attributes(self) -> frozenset[str]:
        """The attribute names given as ``indexed=``; ``Closed`` after ``close()``."""
        self._check_open()
        return self._sh.indexed

    def protocol_version(self) -> str:
        """The contract version this backend implements; ``Closed`` after ``close()``."""
        self._check_open()
        return super().protocol_version()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every change the mirror applies, local or remote.

        Events are delivered one at a time, in the order the mirror applied
        their changes (this node's writes and remote ones interleaved), by one
        thread at a time that holds no lock of the registry: the writing thread
        delivers its call's events before the call returns, unless another
        thread is delivering (that one delivers them too, and the writer does
        not wait); events of remote changes, of a recovery's resync and of
        local agents' deaths go to a courier thread
        (``foundation-redis-events``). So a slow listener delays later events,
        never the mirror, the heartbeats or another thread's write. A listener
        that raises is logged under ``foundation.registry.redis`` (with its
        traceback) and breaks nothing; an unsubscribed one gets no later event.

        Raises:
            TypeError: ``listener`` is not callable.
            Closed: the registry is closed.
        """
        self._check_open()
        return subscribe_to(self._sh, "listeners", self._sh.mlock, listener)

    def is_stale(self) -> bool:
        """True when the mirror may be behind Redis (cut off, unhealthy, recovering).
        ``Closed`` after ``close()``."""
        sh = self._sh
        self._check_open()
        connected = sh.link.state is _state.LinkState.CONNECTED
        return not connected or time.monotonic() - sh.last_beat_ok > sh.ttl

    def status(self) -> RedisStatus:
        """Connection, staleness and size figures of this node; ``Closed`` after ``close()``."""
        sh = self._sh
        self._check_open()
        link = sh.link
        return RedisStatus(
            node=sh.node,
            connected=link.reachable,
            stale=self.is_stale(),
            version=sh.tail_v,
            written=sh.written,
            entries=len(self._entries),
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
            eviction_policy=self._lease.memory_policy.policy,
        )

    def conflicts(self) -> list[Conflict]:
        """Registrations lost to another node while this node's lease was lost.
        ``Closed`` after ``close()``."""
        self._check_open()
        with self._sh.mlock:
            return list(self._sh.conflicts)

    def wait_for_version(self, version: int, timeout: float = 5.0) -> bool:
        """Wait until this node's mirror has applied every change up to ``version``
        (True), or ``timeout`` seconds passed (False).

        For read-after-write across nodes: pass the writer's ``status().written``.
        ``Closed`` after ``close()``, and if ``close()`` is called while waiting.
        """
        sh = self._sh
        self._check_open()
        with sh.applied:
            done = sh.applied.wait_for(
                lambda: (
                    sh.closed
                    or (sh.tail_v >= version and sh.link.state is _state.LinkState.CONNECTED)
                ),
                timeout,
            )
        self._check_open()
        return done

    def close(self) -> None:
        """Stop the threads, delete this node's registrations in Redis (a node that
        goes away takes its agents' registrations with it), release monitors and
        connections. Idempotent; bounded by a few ``op_timeout`` even if Redis is down."""
        sh = self._sh
        with sh.mlock:
            if sh.closed:
                return
            sh.closed = True
            sh.listeners = ()
            # From here every public read raises Closed (lookup included, at no
            # cost: its dict is swapped for one whose every access raises).
            self._entries = _CLOSED_ENTRIES
            sh.applied.notify_all()  # a wait_for_version in progress raises Closed
        self._close_async()  # later async writes meet the closed registry directly
        sh.stop.set()
        sh.link.close()
        sh.jobs.put(None)
        sh.poke_tail()
        if self._lease.thread.ident is not None:  # else a construction that could not start it
            self._lease.thread.join(timeout=sh.op_timeout * 3 + 1)
        try:
            with sh.writing(public=False):
                release = _scripts.ReleaseArgs(sh.maxlen, sh.node)
                sh.script("release", release, "releasing our lease")
        except FoundationError:
            pass  # Redis is down: the lease will expire and others reap our entries
        with sh.mlock:
            owns = list(sh.own.values())
            sh.own.clear()
            # Nothing stays behind: the mirror is emptied (reads raise Closed anyway).
            for key in list(sh.entries):
                sh.mirror.remove(key, sh.tail_v)
            sh.applied.notify_all()
        for own in owns:
            if own.monitor is not None:
                own.monitor.demonitor()
        if self._owns_manager:
            sh.manager.close()
        if self._tail.thread.ident is not None:  # as the lease thread above
            self._tail.thread.join(timeout=0.5)
        if self._tail.thread.is_alive():
            # Blocked in XREAD on a server that does not answer: cut the socket.
            sh.tail_client.connection_pool.disconnect()
            self._tail.thread.join(timeout=sh.op_timeout + _shared.TAIL_BLOCK_MS / 1000 + 1)
        with contextlib.suppress(FoundationError):
            sh.call("deleting our wake stream", sh.client.delete, sh.k_wake)
        sh.client.close()
        sh.tail_client.close()
        self._tail_owner.close()  # and its pool

    def __repr__(self) -> str:
        sh = self._sh
        size = "closed" if sh.closed else f"entries={len(sh.entries)}"
        return f"<RedisRegistry node={sh.node!r} url={sh.url!r} {size}>"

    # ------------------------------------------------------------------ registering

    def _prepare(self, key: Hashable, agent: Any, metadata: Mapping[str, Any] | None) -> _Prepared:
        """Check and encode one registration (no lock, no Redis); raises what
        ``register`` raises for bad input."""
        sh = self._sh
        key, ek, frozen, meta, prefix = self._encoded(key, agent, metadata, None)
        registered_at = time.time()
        head = f'{prefix}{registered_at!r},"s":{next(_seq)}}}'
        own = _shared.Own(agent, ek, head, meta, sh.ix_for(frozen) if sh.indexed else "")
        return _Prepared(key, agent, frozen, registered_at, own)

    def _prepare_batch(
        self,
        batch: list[tuple[Hashable, Any, Mapping[str, Any] | None]],
        outcomes: list[RegistryError | None],
    ) -> list[list[tuple[int, _Prepared]]]:
        """``_prepare`` of every item of a ``register_many`` call (no lock, no
        Redis): an invalid item gets its outcome now; the valid ones are split
        into rounds of distinct keys (a key's second item waits for its first).

        The items of round 0 share one ``registered_at`` (one call registers
        them); an item of a later round takes its own time, as a second
        ``register`` of the key would.
        """
        sh = self._sh
        ix_for = sh.ix_for if sh.indexed else None
        encoded = self._encoded
        new_own, new_prepared, seq = _shared.Own, _Prepared, _seq
        prefixes: dict[int, str] = {}
        rounds: list[list[tuple[int, _Prepared]]] = [[]]
        seen: dict[Hashable, int] = {}
        now = time.time()
        now_text = f'{now!r},"s":'
        for i, (given, agent, metadata) in enumerate(batch):
            try:
                key, ek, frozen, meta, prefix = encoded(given, agent, metadata, prefixes)
            except (InvalidKey, InvalidMetadata, UnsupportedAgent, NotAlive) as exc:
                outcomes[i] = exc
                continue
            n = seen.get(key, -1) + 1  # key: normalised (equal keys, one slot)
            seen[key] = n
            at, at_text = (now, now_text) if n == 0 else _now()
            # "s" makes every registration's head unique (the compare-and-delete token).
            head = f"{prefix}{at_text}{next(seq)}}}"
            own = new_own(agent, ek, head, meta, "" if ix_for is None else ix_for(frozen))
            if n == len(rounds):
                rounds.append([])
            rounds[n].append((i, new_prepared(key, agent, frozen, at, own)))
        return rounds

    def _encoded(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None,
        prefixes: dict[int, str] | None,
    ) -> tuple[Hashable, str, Mapping[str, Any], bytes, str]:
        """``(key, its JSON, frozen metadata, its JSON bytes, the head's prefix)``
        of one registration; raises what ``register`` raises for bad input.

        The head: who owns it, a description of the agent, when (the caller
        appends the time and a sequence number). ``prefixes``: the head prefixes
        of one ``register_many`` call by ``id(agent)`` (the batch holds every
        agent alive for the call, so an id names one agent).
        """
        sh = self._sh
        key, ek = normal_key(key)  # the one key rule (InvalidKey)
        frozen = freeze_metadata(metadata)
        meta = sh.utf8(metadata_json(frozen))
        if len(meta) > MAX_METADATA_BYTES:
            check_metadata_size(meta.decode(), MAX_METADATA_BYTES)  # raises InvalidMetadata
        prefix = None if prefixes is None else prefixes.get(id(agent))
        if prefix is None:
            if not is_alive(agent):  # UnsupportedAgent for a kind that cannot be monitored
                raise NotAlive(key, agent)
            prefix = f'{{"n":{sh.node_json},"a":{_agent_json(agent)},"t":'
            if prefixes is not None:
                prefixes[id(agent)] = prefix
        # else: found alive for an earlier item of this batch. Race: if it died
        # since, its monitor fires at once (_begin_all) and the item is NotAlive.
        return key, ek, frozen, meta, prefix

    def _begin(self, p: _Prepared, replace: bool) -> None:
        """Make ``p`` known locally (pending) and monitor it (holding wlock), and
        build REGISTER's ``p.argv``; raises ``AlreadyRegistered`` if this node
        holds the key and not ``replace``. (``_begin_all`` does this for a batch.)"""
        sh = self._sh
        key, own = p.key, p.own
        self._lease.flush_pending_down(key)
        prev = sh.own.get(key)
        prev_alive = prev is not None and is_alive(prev.agent)
        if prev_alive and not replace:
            raise AlreadyRegistered(key, sh.entries.get(key))
        p.prev = prev
        # Race: the registration is known locally (pending) BEFORE Redis has
        # it, so the tail, seeing our own record first, finds the live agent.
        with sh.mlock:
            sh.own[key] = own
        try:
            own.monitor = self._monitor_own(key, p.agent, own)
        except BaseException:
            sh.forget_own(key, own, prev)  # nothing of a failed register may stay
            raise
        p.own_dead = not prev_alive
        p.argv = _scripts.register_argv(
            maxlen=sh.maxlen,
            node=sh.node,
            ek=own.ek,
            head=own.head,
            meta=own.meta,
            ix=own.ix,
            mode="r" if replace else "n",
            own_dead=not prev_alive,
            writer=sh.node,
            grace_ms=sh.grace_ms,
        )

    def _finish(self, p: _Prepared, reply: Any) -> RegistryError | None:
        """Apply the script's ``reply`` for ``p`` to the mirror (holding wlock);
        the error of a refused registration (its local state undone), else None.
        ``p.died``: the agent died while the script ran (the caller deletes it)."""
        sh = self._sh
        key, own = p.key, p.own
        if reply[0] != b"OK":
            return self._refused(p, reply)
        v, first = int(reply[1]), int(reply[2])
        own.pending = False
        sh.written = max(sh.written, v)
        entry = new_entry(key, p.agent, p.frozen, p.registered_at, sh.node)
        # Race: a listener subscribed while this call runs may miss its events (as
        # on every backend); with no listener, no event objects are built at all.
        listening = bool(sh.listeners)
        events: list[RegistryEvent] = []
        with sh.mlock:
            held = sh.own.get(key) is own
            p.died = not held and self._died_meanwhile(p)
            if first:
                self._apply_dropped(key, first, reply, events if listening else None)
            m = sh.mirror
            if held and m.is_newer(key, v):
                old = m.put(entry, v)
                if listening:
                    _note_registered(old, entry, events)
            sh.own_records_applied(first or v, v, reply[5])  # the drop record is v - 1
            if events:  # in mirror order: queued under the same mlock
                sh.queue(events, _write_tags.tag)
        _demonitor_replaced(p.prev)
        return None

    def _died_meanwhile(self, p: _Prepared) -> bool:
        """``p``, no longer this node's registration of its key, went because its
        agent died while its script ran (its monitor fired: ``_on_down`` queued
        its delete, which only a writer flushes, and we hold wlock), not because
        another node's delete of it reached the tail first (holding mlock).

        Race: in that second case the registration was made, then removed by
        another node (the tail applied that newer record, with its event):
        the call succeeded; its agent is alive and no ``NotAlive`` is due.
        """
        pending = self._sh.pending_downs.get(p.key)
        return pending is not None and pending[1] == p.own.head

    def _apply_dropped(
        self, key: Hashable, first: int, reply: Any, events: list[RegistryEvent] | None
    ) -> None:
        """Remove the previous holder of ``key`` that REGISTER's ``reply`` dropped at
        version ``first`` (holding mlock); its event goes to ``events`` (None: no
        listener)."""
        sh = self._sh
        m = sh.mirror
        if m.is_newer(key, first):
            old = m.remove(key, first)
            if old is not None and events is not None:
                events.append(sh.removed_event(old, s(reply[3]), s(reply[4]), "", ""))

    def _refused(self, p: _Prepared, reply: Any) -> RegistryError:
        """The error of a registration the script refused (``reply`` not OK), its
        local state undone (holding wlock)."""
        sh = self._sh
        key, own = p.key, p.own
        if reply[0] == b"EXISTS":
            sh.forget_own(key, own, p.prev)
            return AlreadyRegistered(key, self._entry_from_reply(key, reply))
        sh.forget_own(key, own, p.prev)
        return BackendUnavailable(f"unexpected reply from Redis at {sh.url}: {reply!r:.200}")

    def _register_round(
        self,
        items: list[tuple[int, _Prepared]],
        replace: bool,
        outcomes: list[RegistryError | None],
    ) -> None:
        """Register ``items`` (distinct keys) in one pipelined round trip."""
        sh = self._sh
        died: list[_Prepared] = []
        try:
            failure = self._register_round_locked(items, replace, outcomes, died)
        finally:
            sh.deliver()  # once every lock is released, in mirror order
        if failure is not None:
            raise failure

    def _register_round_locked(
        self,
        items: list[tuple[int, _Prepared]],
        replace: bool,
        outcomes: list[RegistryError | None],
        died: list[_Prepared],
    ) -> BaseException | None:
        """``_register_round`` holding wlock; returns the failure to raise."""
        sh = self._sh
        with sh.writing():
            sent = self._begin_all(items, replace, outcomes)
            failure, todo = self._send_round(sent, replace, outcomes=outcomes, died=died)
            if failure is not None:
                # Nothing unconfirmed stays here: undo every item without an outcome.
                for _, p in todo:
                    sh.forget_own(p.key, p.own, p.prev)
                sh.link.resync_needed("the outcome of a register_many is unknown")
            else:
                for p in died:
                    # Race: the agent died while the script ran: delete it now.
                    with contextlib.suppress(FoundationError):
                        self._lease.flush_pending_down(p.key)
        return failure

    def _send_round(
        self,
        sent: list[tuple[int, _Prepared]],
        replace: bool,
        *,
        outcomes: list[RegistryError | None],
        died: list[_Prepared],
    ) -> tuple[BaseException | None, list[tuple[int, _Prepared]]]:
        """Send ``sent`` and apply the replies (holding wlock), once more after a
        lost lease; returns the first failure and the items left without an outcome."""
        sh = self._sh
        failure: BaseException | None = None
        todo = sent
        lease_retried = False
        while todo and failure is None:
            try:
                replies, bulk_records = self._pipelined(todo, replace)
            except BaseException as exc:
                failure = exc
                break
            failure, again = self._settle(
                todo, replies, lease_retried=lease_retried, outcomes=outcomes, died=died
            )
            with sh.mlock:  # their entries are in the mirror now (_settle)
                for first, last, sid in bulk_records:
                    sh.own_records_applied(first, last, sid)
            if again and failure is None:
                # Our lease was lost (we were frozen or cut off): recover (which
                # re-asserts everything else we hold), then send those once more.
                lease_retried = True
                sh.link.lease_lost("a write found our lease gone")
                try:
                    self._lease.recover_locked()
                except BaseException as exc:
                    failure = exc
            todo = again
        return failure, todo

    def _begin_all(
        self,
        items: list[tuple[int, _Prepared]],
        replace: bool,
        outcomes: list[RegistryError | None],
    ) -> list[tuple[int, _Prepared]]:
        """Claim every key of ``items`` locally (holding wlock); returns those to send.

        ``_begin`` for a batch of distinct keys, in three passes: the checks (a
        key this node holds alive gets its ``AlreadyRegistered`` outcome now),
        every claim under ONE ``mlock``, then the monitors (outside ``mlock``:
        a monitor of an agent already dead reports at once, and its ``_on_down``
        takes ``mlock``). On any other error every claim is undone and the error
        propagates.
        """
        sh = self._sh
        mine = sh.own
        claimed = self._claimable(items, replace, outcomes)
        # Race: as in _begin, every key is known locally (pending) BEFORE Redis
        # has it, so the tail or a resync seeing our records finds the live agents.
        with sh.mlock:
            for _, p in claimed:
                mine[p.key] = p.own
        try:
            for _, p in claimed:
                p.own.monitor = self._monitor_own(p.key, p.agent, p.own)
        except BaseException:
            for _, p in claimed:
                sh.forget_own(p.key, p.own, p.prev)  # nothing of a failed batch stays
            raise
        return claimed

    def _claimable(
        self,
        items: list[tuple[int, _Prepared]],
        replace: bool,
        outcomes: list[RegistryError | None],
    ) -> list[tuple[int, _Prepared]]:
        """The items of ``_begin_all`` this node may claim (their ``prev`` and
        ``own_dead`` set); a key it holds alive gets ``AlreadyRegistered`` unless
        ``replace``. A pending delete of a key is flushed first (if that fails,
        nothing is claimed yet)."""
        sh = self._sh
        mine = sh.own
        pending = sh.pending_downs
        claimable: list[tuple[int, _Prepared]] = []
        for i, p in items:
            key = p.key
            if key in pending:
                self._lease.flush_pending_down(key)
            prev = mine.get(key)
            prev_alive = prev is not None and is_alive(prev.agent)
            if prev_alive and not replace:
                outcomes[i] = AlreadyRegistered(key, sh.entries.get(key))
                continue
            p.prev = prev
            p.own_dead = not prev_alive
            claimable.append((i, p))
        return claimable

    def _monitor_own(self, key: Hashable, agent: Any, own: _shared.Own) -> Monitor:
        """Watch ``agent``, registered as ``own`` under ``key``: its death goes to ``_on_down``."""
        return self._sh.manager.monitor(agent, lambda down: self._on_down(key, own, down))

    def _settle(
        self,
        todo: list[tuple[int, _Prepared]],
        replies: list[Any],
        *,
        lease_retried: bool,
        outcomes: list[RegistryError | None],
        died: list[_Prepared],
    ) -> tuple[BaseException | None, list[tuple[int, _Prepared]]]:
        """Apply one round's replies; returns the first failure and the items to
        send again after a lost lease (none once ``lease_retried``)."""
        sh = self._sh
        failure: BaseException | None = None
        again: list[tuple[int, _Prepared]] = []
        bulk: list[tuple[int, _Prepared, int]] = []
        for (i, p), reply in zip(todo, replies, strict=True):
            if type(reply) is int:
                bulk.append((i, p, reply))  # the common case, applied below at once
            elif isinstance(reply, BaseException):
                failure = failure or sh.reply_error(reply, f"registering {p.key!r:.200}")
                sh.forget_own(p.key, p.own, p.prev)
            elif reply[0] == b"NOLEASE" and not lease_retried:
                again.append((i, p))
            else:
                error = self._settle_one(i, p, reply, outcomes=outcomes, died=died)
                failure = failure or error
        if bulk:
            self._settle_bulk(bulk, outcomes, died)
        return failure, again

    def _settle_one(
        self,
        i: int,
        p: _Prepared,
        reply: Any,
        *,
        outcomes: list[RegistryError | None],
        died: list[_Prepared],
    ) -> BackendUnavailable | None:
        """Apply item ``i``'s own reply (not a bulk one); its outcome goes to
        ``outcomes[i]`` unless Redis failed it (that failure is returned)."""
        error = self._finish(p, reply)
        if isinstance(error, BackendUnavailable):
            return error
        if p.died:
            outcomes[i] = NotAlive(p.key, p.agent)
            died.append(p)
        else:
            outcomes[i] = error
        return None

    def _settle_bulk(
        self,
        bulk: list[tuple[int, _Prepared, int]],
        outcomes: list[RegistryError | None],
        died: list[_Prepared],
    ) -> None:
        """Apply the bulk replies of one round; an agent that died meanwhile is NotAlive."""
        self._finish_bulk(bulk)
        for i, p, _ in bulk:
            if p.died:
                outcomes[i] = NotAlive(p.key, p.agent)
                died.append(p)

    def _finish_bulk(self, done: list[tuple[int, _Prepared, int]]) -> None:
        """Apply REGISTER_MANY's bulk replies (each item registered at its version,
        nothing displaced) to the mirror under one ``mlock`` (holding wlock); as
        ``_finish`` does for one reply. ``p.died`` as there."""
        sh = self._sh
        node = sh.node
        sh.written = max(sh.written, done[-1][2])  # versions ascend in batch order
        # Race: as in _finish, a listener subscribed meanwhile may miss these events.
        listening = bool(sh.listeners)
        events: list[RegistryEvent] = []
        with sh.mlock:
            m = sh.mirror
            own = sh.own
            versions, floor, put = m.versions, m.floor, m.put
            for _, p, v in done:
                p.own.pending = False  # (read only by writers, and we hold wlock)
                key = p.key
                if own.get(key) is not p.own:
                    p.died = self._died_meanwhile(p)
                    continue
                if v > versions.get(key, floor):  # m.is_newer(key, v)
                    entry = new_entry(key, p.agent, p.frozen, p.registered_at, node)
                    old = put(entry, v)
                    if listening:
                        _note_registered(old, entry, events)
            if events:  # in mirror order: queued under the same mlock
                sh.queue(events, _write_tags.tag)
        for _, p, _ in done:
            if p.prev is not None:
                _demonitor_replaced(p.prev)

    def _pipelined(
        self, items: list[tuple[int, _Prepared]], replace: bool
    ) -> tuple[list[Any], list[tuple[int, int, Any]]]:
        """One round trip: ``REGISTER_MANY`` over every item (chunks of
        ``_CHUNK`` items, pipelined, so no one script blocks Redis for long);
        a reply per item, an exception for the items of a failed chunk; and
        ``(first, last, stream id)`` of each bulk record written, in chunk order."""
        sh = self._sh
        script = sh.scripts["register_many"]
        chunks = self._chunks(items, replace)
        replies = self._send(chunks, script.sha)
        missing = [j for j, r in enumerate(replies) if isinstance(r, sh.noscript)]
        if missing:
            # Redis restarted or flushed its scripts: those chunks did not run.
            # Load the script and send them again (only them: the others ran).
            script.sha = sh.call("loading a script", sh.client.script_load, script.script)
            again = self._send([chunks[j] for j in missing], script.sha)
            for j, reply in zip(missing, again, strict=True):
                replies[j] = reply
        out: list[Any] = []
        bulk_records: list[tuple[int, int, Any]] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, BaseException):
                out += [reply] * len(chunk.items)
                continue
            *per_item, (first, last, sid) = reply  # REGISTER_MANY's last element
            out += per_item
            if first:
                bulk_records.append((int(first), int(last), sid))
        return out, bulk_records

    def _chunks(
        self, items: list[tuple[int, _Prepared]], replace: bool
    ) -> list[_scripts.RegisterManyArgs]:
        """The ``REGISTER_MANY`` arguments for ``items``, ``_CHUNK`` items per script."""
        sh = self._sh
        mode: Literal["n", "r"] = "r" if replace else "n"
        chunks = []
        for i in range(0, len(items), _CHUNK):
            owns = [p.own for _, p in items[i : i + _CHUNK]]
            chunks.append(
                _scripts.RegisterManyArgs(
                    sh.maxlen,
                    sh.node,
                    sh.node,
                    sh.grace_ms,
                    mode,
                    "".join(["1" if p.own_dead else "0" for _, p in items[i : i + _CHUNK]]),
                    [(o.ek, o.head, o.meta, o.ix) for o in owns],
                )
            )
        return chunks

    def _send(self, chunks: list[_scripts.RegisterManyArgs], sha: str) -> list[Any]:
        sh = self._sh
        # EVALSHA by hand: redis-py's pipelined Script asks SCRIPT EXISTS first,
        # a second round trip.
        pipe = sh.client.pipeline(transaction=False)
        for chunk in chunks:
            pipe.evalsha(sha, 1, *sh.keys, *chunk.argv())
        replies: list[Any] = sh.call("registering a batch", pipe.execute, raise_on_error=False)
        return replies

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._sh.closed:
            raise Closed("this RedisRegistry is closed")

    def _held_here(self, key: Hashable) -> bool:
        """``key`` is a live registration of this node that the mirror shows."""
        sh = self._sh
        own = sh.own.get(key)
        held = sh.entries.get(key)
        return (
            own is not None
            and not own.pending
            and held is not None
            and held.node == sh.node
            and is_alive(own.agent)
        )

    def _entry_from_reply(self, key: Hashable, reply: list[Any]) -> Entry | None:
        """The live entry named in an EXISTS reply (ours from the mirror, else remote)."""
        local = self._sh.entries.get(key)
        owner = s(reply[1])
        if local is not None and local.node == owner:
            return local
        try:
            head = json.loads(reply[2])
            a = head.get("a") or {}
            agent = RemoteAgent(owner, a.get("kind", "?"), a.get("pid"), a.get("name"))
            return new_entry(key, agent, metadata_from_json(reply[3]), head.get("t", 0.0), owner)
        except (TypeError, ValueError):
            return None

    # ------------------------------------------------------------------ local deaths

    def _on_down(self, key: Hashable, own: _shared.Own, down: Down) -> None:
        """A local agent died: drop it from the mirror NOW, delete it in Redis soon."""
        sh = self._sh
        with sh.mlock:
            if sh.own.get(key) is not own:
                return  # unregistered or replaced meanwhile
            del sh.own[key]
            entry = sh.entries.get(key)
            if entry is not None and entry.agent is own.agent and entry.node == sh.node:
                m = sh.mirror
                # Keep its version: any later record for the key still applies.
                m.remove(key, m.versions.get(key, m.floor))
                if sh.listeners:
                    sh.queue([RegistryEvent("unregistered", entry, reason="down", down=down)])
            sh.pending_downs[key] = (own.ek, own.head, down)
        sh.jobs.put(("down", key))
        # A courier runs the listeners: this may be a monitor thread (a slow
        # listener would delay every death it watches) or a writer holding wlock
        # (an agent found dead as its monitor started).
        sh.hand_off()


def _now() -> tuple[float, str]:
    """The time now, and its text in a head followed by the ``"s"`` field's name."""
    at = time.time()
    return at, f'{at!r},"s":'


def _note_registered(old: Entry | None, entry: Entry, events: list[RegistryEvent]) -> None:
    """Append the events of ``entry`` put in the mirror over ``old`` (None if none)."""
    if old is not None:
        events.append(RegistryEvent("unregistered", old, reason="replaced"))
    events.append(RegistryEvent("registered", entry))


def _demonitor_replaced(prev: _shared.Own | None) -> None:
    """Stop watching ``prev``, a registration this node held that Redis just replaced."""
    if prev is not None and prev.monitor is not None:
        prev.monitor.demonitor()  # its registration was just replaced in Redis
