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
- this module: the facade (the public methods, construction, ``close``).
  Reads are answered by the mirror; a node applies the result of its own
  writes at once (read-your-writes), per-key versions make the later stream
  copy a no-op, and when its records are the next ones on the stream the
  writer moves its tail past them (they are never read back). API writes go
  out on the node's write connection (``Shared.write_script``). Its parts:
  ``_arguments`` (the constructor's checks), ``_prepare`` (a registration
  checked and encoded), ``_claims`` (a key claimed locally, its agent
  monitored; a local death), ``_replies`` (a write's reply applied to the
  mirror), ``_batch`` (``register_many``'s round trips), ``_update``
  (``update_metadata``'s write path), ``_records`` (``Conflict``,
  ``RedisStatus``), ``_lifecycle`` (connections and scripts opened, a node
  shut down).

Local agents are monitored by this node's MonitorManager and removed from the
mirror the instant they die; the server-side delete follows from the lease
thread (and retries across outages). No public call raises a redis-py
exception: every failure is ``BackendUnavailable`` or ``InvalidConfig``
(``foundation._redis_conn``).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from foundation import _fork, _redis_conn
from foundation._listeners import subscribe_to
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FoundationError,
    InvalidKey,
    NotAlive,
    NotRegistered,
    RegistryError,
)
from foundation.liveness import MonitorManager
from foundation.registry._plain import PLAIN_SUBCLASSES
from foundation.registry._query import IndexPlan, compile_criteria, index_plan, matching
from foundation.registry._redis._codec import metadata_json, normal_key
from foundation.registry._redis._records import Conflict, RedisStatus, status_of
from foundation.registry._types import (
    BatchItem,
    Criterion,
    Entry,
    Listener,
    MetadataFilter,
    Registry,
    batch_items,
    filtered,
)
from foundation.registry._validation import (
    MAX_METADATA_BYTES,
    check_bool,
    check_metadata_size,
    freeze_metadata,
    validate_key,
)

if TYPE_CHECKING:
    # Implementation modules: imported by the first RedisRegistry(), not by
    # `import foundation` (see _load_implementation).
    from foundation.registry._redis import (
        _arguments,
        _batch,
        _claims,
        _lease,
        _lifecycle,
        _prepare,
        _replies,
        _scripts,
        _shared,
        _state,
        _tail,
        _update,
    )

__all__ = ["MAX_METADATA_BYTES", "Conflict", "RedisRegistry", "RedisStatus"]


def _load_implementation() -> None:
    """Import the modules a ``RedisRegistry`` runs on (Lua scripts, lease, tail,
    its write paths).

    Called first by the constructor, so ``import foundation`` never pays for
    them (the one way to defer an implementation module: ``foundation._public``).
    Two constructors racing both import; the import lock makes the second a
    dictionary lookup, and both bind the same module objects.
    """
    global _arguments, _batch, _claims, _lease, _lifecycle, _prepare, _replies
    global _scripts, _shared, _state, _tail, _update
    from foundation.registry._redis import (
        _arguments,
        _batch,
        _claims,
        _lease,
        _lifecycle,
        _prepare,
        _replies,
        _scripts,
        _shared,
        _state,
        _tail,
        _update,
    )


class _ClosedEntries(dict[Hashable, Entry]):
    """Stands in for the mirror's dict after ``close()``: every read raises
    ``Closed``, so ``lookup`` keeps its single dict call and pays nothing."""

    def _closed(self, *_: object) -> Any:
        raise Closed("this RedisRegistry is closed")

    get = __getitem__ = __contains__ = __iter__ = __len__ = values = items = keys = _closed


_CLOSED_ENTRIES: Final = _ClosedEntries()


class _ForkedEntries(_ClosedEntries):
    """The mirror's dict of a registry inherited across fork(): ``Closed`` naming it."""

    def _closed(self, *_: object) -> Any:
        raise _fork.forked_closed("RedisRegistry")

    get = __getitem__ = __contains__ = __iter__ = __len__ = values = items = keys = _closed


_FORKED_ENTRIES: Final = _ForkedEntries()


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

    #: Each event carries its writer's ``_write_tags.tag`` (``_delivery``): a
    #: ``MigratingRegistry`` recognises its own calls' events by it.
    _events_carry_write_tags = True
    #: Inherited across fork(): closed in the child (see ``_inherited_by_fork``).
    _forked = False

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
        attrs, lease_ttl, beat, op_timeout = _arguments.checked_arguments(
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
            _lifecycle.connect(sh, url, name, op_timeout)
            _lifecycle.load_scripts(sh)
            self._tail = _tail.Tail(sh)
            self._lease = _lease.Lease(sh, self._tail)
            sh.call("clearing our wake stream", sh.client.delete, sh.k_wake)
            with sh.writing(public=False):
                self._lease.recover_locked()
        except BaseException:
            for client in (sh.client, sh.tail_client, sh.tail_owner):
                if client is not None:
                    client.close()
            if owns_manager:
                sh.manager.close()
            raise
        self._start_threads()
        _fork.track(self)  # closed in a forked child (see _inherited_by_fork)

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
            raise self._closed_error()
        check_bool(replace, "replace")
        p = _prepare.prepare(sh, key, agent, metadata)
        try:
            self._register_locked(p, replace)
        finally:
            # Once every lock is released: this call's events (queued under mlock
            # as the mirror applied them), and any queued before them, in order.
            sh.deliver()

    def _register_locked(self, p: _prepare.Prepared, replace: bool) -> None:
        """``register`` of the prepared ``p``, holding wlock."""
        sh = self._sh
        key, agent = p.key, p.agent
        with sh.writing():
            _claims.begin(sh, self._lease, p, replace)

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
            error = _replies.finish(sh, p, reply)
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
        change record for all of them. A key met again in the batch goes in a
        later round trip than its previous item (so it meets it as two
        ``register`` calls would); with ``replace=True`` the items after it
        go there too (see ``prepare_batch``). Listeners hear the events of one
        ``register`` call per item, in input order, as on ``MemoryRegistry``.

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
            raise self._closed_error()
        check_bool(replace, "replace")
        batch = batch_items(items)
        outcomes: list[RegistryError | None] = [None] * len(batch)
        for items_ in _prepare.prepare_batch(sh, batch, outcomes, replace):
            if items_:
                _batch.register_round(sh, self._lease, items_, replace, outcomes)
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
            raise self._closed_error()
        key, ek = normal_key(key)  # the one key rule (InvalidKey)
        try:
            return self._unregister_locked(key, ek)
        finally:
            sh.deliver()  # once every lock is released, in mirror order

    def _unregister_locked(self, key: Hashable, ek: str) -> bool:
        """``unregister`` of the normal ``key`` (encoded ``ek``), holding wlock.

        One outcome, decided by Redis, for the return value, this node's one
        event and every other node's (the script's change record). Races with
        the death of our agent of the key (comments at each step)."""
        sh = self._sh
        with sh.writing():
            # Race: a death reported from here on (on_down, a monitor thread) is
            # left to this call: no "down" event nor delete of its own.
            own = _claims.unregistering(sh, key)
            try:
                # Race: a death reported before that has its delete pending (not
                # yet run by the lease thread, which needs the wlock we hold):
                # flushed first, Redis records "down" (as its event here said),
                # and the script below finds nothing to remove: False.
                self._lease.flush_pending_down(key)
                v = self._unregister_script(key, ek)
            except BaseException:
                # Outcome unknown (resync asked for): a death reported meanwhile
                # is handled now, as if no unregister had been attempted.
                _claims.end_unregistering(sh, key, own)
                raise
            with sh.mlock:
                mine = _replies.apply_unregister(sh, key, v, own)
            if mine is not None and mine.monitor is not None:
                mine.monitor.demonitor()
        return bool(v) or mine is not None

    def _unregister_script(self, key: Hashable, ek: str) -> int:
        """Run UNREGISTER for ``key`` (holding wlock): the version of its change
        record (the key was removed: "unregistered"), or 0 (Redis had no entry)."""
        sh = self._sh
        args = _scripts.UnregisterArgs(sh.maxlen, ek, "unregistered", "", "", "", "", sh.node)
        try:
            return int(
                sh.write_script("unregister", args.argv(), lambda: f"unregistering {key!r:.200}")
            )
        except FoundationError:
            sh.link.resync_needed(f"the outcome of unregistering {key!r:.200} is unknown")
            raise

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
            raise self._closed_error()
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
                reply = _update.send_update(sh, self._lease, key, args.argv())
                if reply[0] == b"NOTREG":
                    raise NotRegistered(key)
                _update.apply_update(sh, key, ek, reply, frozen=frozen, meta=meta, ix=ix)
        finally:
            sh.deliver()  # once every lock is released, in mirror order

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching every criterion, from the local mirror (index-backed for
        ``eq``/``in`` on an indexed attribute). ``Closed`` after ``close()``."""
        sh = self._sh
        self._check_open()
        compiled = compile_criteria(criteria)
        plans = index_plan(compiled, sh.indexed)
        with sh.mlock:
            candidates = self._indexed_candidates(plans) if plans else list(self._entries.values())
        return matching(candidates, compiled)

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
        self._check_open()
        return status_of(
            self._sh,
            stale=self.is_stale(),
            entries=len(self._entries),
            eviction_policy=self._lease.memory_policy.policy,
        )

    def conflicts(self) -> list[Conflict]:
        """Registrations given up to another node by a re-assert: the other node
        registered the key while this node's lease was lost, or after Redis lost
        (or a write of this node whose reply was lost removed) this node's
        registration. ``Closed`` after ``close()``."""
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
        # Race: a Ctrl-C lands at any call in here. Once sh.closed was set, the
        # next close() returned at once: a close cut before its end left the
        # lease and tail threads running, the node's registrations in Redis,
        # its monitors and connections for good. So only a close() that ran to
        # its end (sh.released) makes the next one return; every other runs
        # the steps again (each is idempotent), as MonitorManager.close() does.
        with sh.mlock:
            if sh.released:
                return
            sh.closed = True
            sh.listeners = ()
            # From here every public read raises Closed (lookup included, at no
            # cost: its dict is swapped for one whose every access raises).
            self._entries = _CLOSED_ENTRIES
            sh.applied.notify_all()  # a wait_for_version in progress raises Closed
        self._close_async()  # later async writes meet the closed registry directly
        _lifecycle.shut_down(sh, self._lease, self._tail, self._owns_manager)
        sh.released = True

    def __repr__(self) -> str:
        sh = self._sh
        size = "closed" if sh.closed else f"entries={len(sh.entries)}"
        return f"<RedisRegistry node={sh.node!r} url={sh.url!r} {size}>"

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._sh.closed:
            raise self._closed_error()

    def _closed_error(self) -> Closed:
        if self._forked:
            return _fork.forked_closed("RedisRegistry")
        return Closed("this RedisRegistry is closed")

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): closed, with no I/O.

        The child has no lease nor tail thread, and shares the parent's node
        name and lease: its ``unregister()`` or ``close()`` deleted the
        parent's registrations in Redis, cluster-wide. Every call raises
        ``Closed`` naming fork() (reads too: the mirror is frozen), and
        ``close()`` does nothing (``released``): no release, no delete, no
        socket shut down (redis-py never shuts down another process's). The
        mirror lock is new (a parent thread may have held it at the fork);
        the manager is closed by its own fork hook (``liveness._manager``).
        """
        sh = self._sh
        sh.mlock = threading.Lock()
        sh.applied = threading.Condition(sh.mlock)
        sh.listeners = ()
        self._forked = sh.closed = sh.released = True
        self._entries = _FORKED_ENTRIES
        self._async_closed, self._async_executor = True, None  # its threads are the parent's
