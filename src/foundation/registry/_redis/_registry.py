"""``RedisRegistry``: the registry contract, shared by many nodes through Redis.

How it works (details in ``docs/redis.md``); one module per job:

- ``_scripts``: the Lua scripts. Every write (register, update, unregister,
  heartbeat+reap, release) is ONE script that writes the entry, its index sets
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
  make the later stream copy a no-op.

Local agents are monitored by this node's MonitorManager and removed from the
mirror the instant they die; the server-side delete follows from the lease
thread (and retries across outages). No public call raises a redis-py
exception: every failure is ``BackendUnavailable`` or ``InvalidConfig``
(``foundation._redis_conn``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from foundation import _redis_conn
from foundation.errors import (
    AlreadyRegistered,
    BackendUnavailable,
    FoundationError,
    InvalidKey,
    NotAlive,
    NotRegistered,
)
from foundation.liveness import (
    Down,
    MonitorManager,
    check_supported,
    describe_agent,
    is_alive,
)
from foundation.registry._query import compile_criteria, index_plan, matches
from foundation.registry._redis import _scripts
from foundation.registry._redis._codec import RemoteAgent, encode_key
from foundation.registry._redis._lease import Conflict, Lease
from foundation.registry._redis._scripts import (
    RegisterArgs,
    ReleaseArgs,
    UnregisterArgs,
    UpdateArgs,
)
from foundation.registry._redis._shared import TAIL_BLOCK_MS, Own, Shared, s
from foundation.registry._redis._state import LinkState
from foundation.registry._redis._tail import Tail
from foundation.registry._types import (
    Criterion,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    RegistryEvent,
)
from foundation.registry._validation import (
    check_metadata_size,
    freeze_metadata,
    metadata_from_json,
    metadata_to_json,
)

__all__ = ["MAX_METADATA_BYTES", "Conflict", "RedisRegistry", "RedisStatus"]

MAX_METADATA_BYTES: Final = 64 * 1024
"""Largest metadata accepted, as compact UTF-8 JSON (``InvalidMetadata`` beyond)."""

_seq = itertools.count(1)
_dumps = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode


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
    heartbeat healed (see docs/redis.md, "Leases").
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


class RedisRegistry(Registry):
    """The registry contract over Redis, for agents spread over several machines.

    Every node (process) constructs its own ``RedisRegistry`` on the same
    ``url`` and ``namespace``. Keys are ``str``, ``int`` or tuples of them;
    metadata is JSON (at most 64 KiB). Entries registered on this node hold the
    live agent; entries of other nodes hold a :class:`RemoteAgent` description.
    Reads (``lookup``, ``query``, ...) are answered by a local mirror; writes
    are one Redis round trip. ``BackendUnavailable`` (a ``ConnectionError``)
    within about ``op_timeout`` seconds when Redis cannot be reached or answers
    with an error reply (``READONLY``, ``OOM``, ``LOADING``, ...); no call ever
    raises a redis-py exception.

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
        _redis_conn.import_redis()  # the extra is optional: ImportError naming it
        _redis_conn.check_url(url)
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

        name = node or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        owns_manager = manager is None
        sh = Shared(
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
        self._owns_manager = owns_manager
        self._entries = sh.entries  # the hot read path
        try:
            sh.client = _redis_conn.connect(url, op_timeout=op_timeout, name=f"foundation:{name}")
            sh.tail_client = _redis_conn.connect(
                url,
                op_timeout=op_timeout + TAIL_BLOCK_MS / 1000,
                connect_timeout=op_timeout,
                name=f"foundation-tail:{name}",
            )
            c = sh.client
            sh.scripts = {
                "register": c.register_script(_scripts.REGISTER),
                "update": c.register_script(_scripts.UPDATE),
                "unregister": c.register_script(_scripts.UNREGISTER),
                "heartbeat": c.register_script(_scripts.HEARTBEAT),
                "release": c.register_script(_scripts.RELEASE),
                "snapshot": c.register_script(_scripts.SNAPSHOT),
            }
            self._tail = Tail(sh)
            self._lease = Lease(sh, self._tail)
            sh.call("clearing our wake stream", c.delete, sh.k_wake)
            with sh.writing(public=False):
                self._lease.recover_locked()
        except BaseException:
            for client in (sh.client, sh.tail_client):
                if client is not None:
                    client.close()
            if owns_manager:
                sh.manager.close()
            raise
        self._tail.thread.start()
        self._lease.thread.start()

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
        """
        sh = self._sh
        ek = encode_key(key)
        frozen = freeze_metadata(metadata)
        meta_text = metadata_to_json(frozen)
        check_metadata_size(meta_text, MAX_METADATA_BYTES)
        meta = sh.utf8(meta_text)
        check_supported(agent)
        if not is_alive(agent):
            raise NotAlive(key, agent)
        d = describe_agent(agent)
        registered_at = time.time()
        # The head: who owns it, a description of the agent, when; "s" makes every
        # registration's head unique (it is the compare-and-delete token).
        head = (
            f'{{"n":{sh.node_json},"a":{{"kind":{_dumps(d.get("kind"))},'
            f'"pid":{_dumps(d.get("pid"))},"name":{_dumps(d.get("name"))}}},'
            f'"t":{registered_at!r},"s":{next(_seq)}}}'
        )
        ix = sh.ix_for(frozen)
        own = Own(agent, ek, head, meta, ix)
        events: list[RegistryEvent] = []
        with sh.writing():
            self._lease.flush_pending_down(key)
            prev = sh.own.get(key)
            prev_alive = prev is not None and is_alive(prev.agent)
            if prev_alive and not replace:
                raise AlreadyRegistered(key, sh.entries.get(key))
            # Race: the registration is known locally (pending) BEFORE Redis has
            # it, so the tail, seeing our own record first, finds the live agent.
            with sh.mlock:
                sh.own[key] = own
            own.monitor = sh.manager.monitor(agent, lambda down: self._on_down(key, own, down))
            args = RegisterArgs(
                sh.maxlen,
                sh.node,
                ek,
                head,
                meta,
                ix,
                "r" if replace else "n",
                not prev_alive,
                sh.node,
                sh.grace_ms,
            )
            doing = f"registering {key!r}"
            try:
                reply = sh.script("register", args, doing)
                if reply[0] == b"NOLEASE":
                    # Our lease was lost (we were frozen or cut off): recover (which
                    # re-asserts everything else we hold), then try once more.
                    sh.link.lease_lost("a write found our lease gone")
                    self._lease.recover_locked()
                    reply = sh.script("register", args, doing)
            except BaseException:
                self._sh.forget_own(key, own, prev)
                # A write that timed out may have landed: resync (its orphan goes).
                sh.link.resync_needed(f"the outcome of registering {key!r} is unknown")
                raise
            if reply[0] == b"EXISTS":
                sh.forget_own(key, own, prev)
                raise AlreadyRegistered(key, self._entry_from_reply(key, reply))
            if reply[0] != b"OK":
                sh.forget_own(key, own, prev)
                raise BackendUnavailable(f"unexpected reply from Redis at {sh.url}: {reply!r}")
            own.pending = False
            v, first = int(reply[1]), int(reply[2])
            why, dr = s(reply[3]), s(reply[4])
            sh.written = v
            entry = Entry(key, agent, frozen, registered_at, sh.node)
            with sh.mlock:
                died = sh.own.get(key) is not own
                m = sh.mirror
                if first and m.is_newer(key, first):
                    old = m.remove(key, first)
                    if old is not None:
                        events.append(sh.removed_event(old, why, dr, "", ""))
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
                sh.emit(events)
                self._lease.flush_pending_down(key)
                raise NotAlive(key, agent)
        sh.emit(events)

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
            BackendUnavailable: Redis unreachable or unhealthy; nothing changes here.
        """
        sh = self._sh
        ek = encode_key(key)
        events: list[RegistryEvent] = []
        with sh.writing():
            self._lease.flush_pending_down(key)
            args = UnregisterArgs(sh.maxlen, ek, "unregistered", "", "", "", "", sh.node)
            try:
                v = int(sh.script("unregister", args, f"unregistering {key!r}"))
            except FoundationError:
                sh.link.resync_needed(f"the outcome of unregistering {key!r} is unknown")
                raise
            with sh.mlock:
                own = sh.own.pop(key, None)
                m = sh.mirror
                old = None
                if v and m.is_newer(key, v):
                    sh.written = v
                    old = m.remove(key, v)
                elif not v and own is not None:
                    # Redis lost it (restarted, not yet re-asserted): still ours.
                    old = m.remove(key, m.versions.get(key, m.floor))
                if old is not None:
                    events.append(RegistryEvent("unregistered", old, reason="unregistered"))
            if own is not None and own.monitor is not None:
                own.monitor.demonitor()
        sh.emit(events)
        return bool(v) or own is not None

    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of ``key`` (on any node); indexes follow.

        ``lookup`` and ``update_metadata`` agree: a live registration of this
        node that Redis lost (restarted empty, or our lease was reaped) is
        re-asserted first, then updated.

        Raises:
            NotRegistered: ``key`` is not registered.
            InvalidKey, InvalidMetadata: bad input; nothing changes.
            BackendUnavailable: Redis unreachable or unhealthy; nothing changes here.
        """
        sh = self._sh
        ek = encode_key(key)
        frozen = freeze_metadata(metadata)
        meta_text = metadata_to_json(frozen)
        check_metadata_size(meta_text, MAX_METADATA_BYTES)
        meta = sh.utf8(meta_text)
        ix = sh.ix_for(frozen)
        events: list[RegistryEvent] = []
        args = UpdateArgs(sh.maxlen, ek, meta, ix, sh.node)
        doing = f"updating {key!r}"
        with sh.writing():
            self._lease.flush_pending_down(key)
            try:
                reply = sh.script("update", args, doing)
                if reply[0] == b"NOTREG" and self._held_here(key):
                    # Redis lost our live registration (it restarted empty, or our
                    # lease was reaped) although lookup returns it: recover (which
                    # re-asserts it with its current metadata), then update.
                    sh.link.lease_lost(f"Redis lacks our live registration {key!r}")
                    self._lease.recover_locked()
                    reply = sh.script("update", args, doing)
            except FoundationError:
                sh.link.resync_needed(f"the outcome of updating {key!r} is unknown")
                raise
            if reply[0] == b"NOTREG":
                raise NotRegistered(key)
            v = int(reply[1])
            sh.written = v
            with sh.mlock:
                own = sh.own.get(key)
                if own is not None:
                    own.meta, own.ix = meta, ix
                m = sh.mirror
                if m.is_newer(key, v):
                    old = sh.entries.get(key)
                    if old is not None:
                        new: Entry | None = Entry(
                            key, old.agent, frozen, old.registered_at, old.node
                        )
                    else:
                        # Our mirror has not seen this (remote) entry yet: build it
                        # from the reply; the older record will be skipped.
                        new = sh.entry_from_head(key, ek, s(reply[3]), meta, [])
                    if new is not None:
                        m.put(new, v)
                        events.append(RegistryEvent("updated", new))
        sh.emit(events)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching every criterion, from the local mirror (index-backed for
        ``eq``/``in`` on an indexed attribute)."""
        sh = self._sh
        compiled = compile_criteria(criteria)
        plans = index_plan(compiled, sh.indexed)
        with sh.mlock:
            if plans:
                best: set[Hashable] | None = None
                for plan in plans:
                    found = sh.mirror.candidates(plan.attr, plan.values)
                    if best is None or len(found) < len(best):
                        best = found
                entries = self._entries
                candidates = [entries[k] for k in best or () if k in entries]
            else:
                candidates = list(self._entries.values())
        return [e for e in candidates if matches(e.metadata, compiled)]

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """Every entry in the mirror, optionally filtered by ``filter(metadata)``."""
        with self._sh.mlock:
            entries = list(self._entries.values())
        if filter is None:
            return entries
        return [e for e in entries if filter(e.metadata)]

    def count(self) -> int:
        """Number of entries in the mirror (O(1))."""
        return len(self._entries)

    def indexed_attributes(self) -> frozenset[str]:
        """The attribute names given as ``indexed=``."""
        return self._sh.indexed

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every change the mirror applies, local or remote.

        Events of this node's own writes are delivered in the writing thread;
        remote ones in the tail thread. A listener that raises is logged under
        ``foundation.registry.redis`` (with its traceback) and never breaks a
        write or a thread.
        """
        if not callable(listener):
            raise TypeError("listener must be callable")
        sh = self._sh
        with sh.mlock:
            sh.listeners = (*sh.listeners, listener)
        done = False

        def unsubscribe() -> None:
            nonlocal done
            with sh.mlock:
                if done:
                    return
                done = True
                current = sh.listeners
                for i, fn in enumerate(current):
                    if fn is listener:
                        sh.listeners = current[:i] + current[i + 1 :]
                        break

        return unsubscribe

    def is_stale(self) -> bool:
        """True when the mirror may be behind Redis (cut off, unhealthy, recovering)."""
        sh = self._sh
        return (
            sh.link.state is not LinkState.CONNECTED or time.monotonic() - sh.last_beat_ok > sh.ttl
        )

    def status(self) -> RedisStatus:
        """Connection, staleness and size figures of this node."""
        sh = self._sh
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
            recoveries=max(0, link.recoveries - 1),
            reasserts=sh.reasserts,
            reasserted=sh.reasserted,
            lease_extensions=sh.lease_extensions,
        )

    def conflicts(self) -> list[Conflict]:
        """Registrations lost to another node while this node's lease was lost."""
        with self._sh.mlock:
            return list(self._sh.conflicts)

    def wait_for_version(self, version: int, timeout: float = 5.0) -> bool:
        """Wait until this node's mirror has applied every change up to ``version``
        (True), or ``timeout`` seconds passed (False).

        For read-after-write across nodes: pass the writer's ``status().written``.
        """
        sh = self._sh
        with sh.applied:
            return sh.applied.wait_for(
                lambda: sh.tail_v >= version and sh.link.state is LinkState.CONNECTED, timeout
            )

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
        self._close_async()  # later async writes meet the closed registry directly
        sh.stop.set()
        sh.link.close()
        sh.jobs.put(None)
        sh.poke_tail()
        self._lease.thread.join(timeout=sh.op_timeout * 3 + 1)
        try:
            with sh.writing(public=False):
                sh.script("release", ReleaseArgs(sh.maxlen, sh.node), "releasing our lease")
        except FoundationError:
            pass  # Redis is down: the lease will expire and others reap our entries
        with sh.mlock:
            owns = list(sh.own.values())
            sh.own.clear()
            # Like MemoryRegistry: a closed registry is empty.
            for key in list(self._entries):
                sh.mirror.remove(key, sh.tail_v)
            sh.applied.notify_all()
        for own in owns:
            if own.monitor is not None:
                own.monitor.demonitor()
        if self._owns_manager:
            sh.manager.close()
        self._tail.thread.join(timeout=0.5)
        if self._tail.thread.is_alive():
            # Blocked in XREAD on a server that does not answer: cut the socket.
            sh.tail_client.connection_pool.disconnect()
            self._tail.thread.join(timeout=sh.op_timeout + TAIL_BLOCK_MS / 1000 + 1)
        with contextlib.suppress(FoundationError):
            sh.call("deleting our wake stream", sh.client.delete, sh.k_wake)
        sh.client.close()
        sh.tail_client.close()

    def __repr__(self) -> str:
        sh = self._sh
        return f"<RedisRegistry node={sh.node!r} url={sh.url!r} entries={len(self._entries)}>"

    # ------------------------------------------------------------------ helpers

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
        local = self._entries.get(key)
        owner = s(reply[1])
        if local is not None and local.node == owner:
            return local
        try:
            head = json.loads(reply[2])
            a = head.get("a") or {}
            agent = RemoteAgent(owner, a.get("kind", "?"), a.get("pid"), a.get("name"))
            return Entry(key, agent, metadata_from_json(reply[3]), head.get("t", 0.0), owner)
        except (TypeError, ValueError):
            return None

    # ------------------------------------------------------------------ local deaths

    def _on_down(self, key: Hashable, own: Own, down: Down) -> None:
        """A local agent died: drop it from the mirror NOW, delete it in Redis soon."""
        sh = self._sh
        event = None
        with sh.mlock:
            if sh.own.get(key) is not own:
                return  # unregistered or replaced meanwhile
            del sh.own[key]
            entry = sh.entries.get(key)
            if entry is not None and entry.agent is own.agent and entry.node == sh.node:
                m = sh.mirror
                # Keep its version: any later record for the key still applies.
                m.remove(key, m.versions.get(key, m.floor))
                event = RegistryEvent("unregistered", entry, reason="down", down=down)
            sh.pending_downs[key] = (own.ek, own.head, down)
        if event is not None:
            sh.emit([event])
        sh.jobs.put(("down", key))
