"""``RedisObserver``: a read-only view of a ``RedisRegistry`` namespace, for tools.

An observer is not a node: it holds no lease, registers nothing and writes
nothing to Redis (the ``foundation agents`` command and the admin server use
it, so watching a production namespace cannot change it). It keeps a mirror of
the namespace's entries, filled by the registry's own ``SNAPSHOT`` script (in
its ``no-writes`` form on Redis >= 7, so it answers while writes are paused:
see ``_readscript``) and kept current by one thread following the change
stream ``P:log`` (the records every node's tail applies), in version order:

- a version gap (the stream was trimmed past us), a failed read, or a change
  counter that went backwards (Redis restarted empty) makes it take a fresh
  snapshot, and listeners hear the differences;
- every agent belongs to another process, so every entry's ``agent`` is a
  ``RemoteAgent`` description;
- the last ``recent`` deaths (``unregistered`` events with reason ``"down"``)
  are remembered with the time they were seen (``recently_dead()``);
- a death whose delete a failover then lost (the old master kept it, the
  promoted one did not) is not shown registered again by the resync: the
  registration is held, as a node's tail holds it (``_holds``, the one
  implementation), until a record of its key decides or two of the
  namespace's leases pass (read from Redis: ``_lease_s``).

Reads (``list_all``, ``lookup``, ``query``, ``count``) answer from the mirror,
which is as fresh as the stream (milliseconds behind the writers); while
Redis cannot be reached they answer the last state seen and ``connected`` is
False. Listeners never run on the observer's thread: it applies a change to
the mirror and queues its events (``DeliveryQueue``, in the order of the
changes), and a short-lived courier thread (``foundation-observer-events``)
calls the listeners, one event at a time, as a ``RedisRegistry``'s tail
does. So a slow or stuck listener delays the listeners of later changes,
never the mirror (reads keep up) nor ``close()``. A listener must not raise
(an exception is logged under ``foundation.registry.redis`` and passed to
``sys.unraisablehook`` if one is installed; the next listener runs).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from foundation import _flap, _fork, _redis_conn
from foundation._listeners import DeliveryQueue, Listeners
from foundation._retry import RetryBackoff
from foundation.errors import BackendUnavailable, Closed, FoundationError, InvalidConfig
from foundation.registry._query import compile_criteria, matching
from foundation.registry._redis._codec import RemoteAgent, decode_key
from foundation.registry._redis._holds import Gone, Holds, deletes_kept, say_shown
from foundation.registry._redis._mirror import Mirror, same_registration
from foundation.registry._redis._readscript import ReadScript
from foundation.registry._redis._scripts import SNAPSHOT, SnapshotArgs
from foundation.registry._redis._shared import (
    UNREADABLE,
    _down_from,
    expand_record,
    record_span,
)
from foundation.registry._types import Criterion, Entry, RegistryEvent, UnregisterReason, new_entry
from foundation.registry._validation import metadata_from_json, validate_key

__all__ = ["Death", "ObserverStatus", "RedisObserver"]

log = logging.getLogger("foundation.registry.redis")

BLOCK_MS: Final = 2000
"""Longest XREAD block; after an idle one the observer checks the change counter."""

Listener = Callable[[RegistryEvent], None]

HOLD_S: Final = 10.0
"""Seconds a registration is held whose delete this observer heard and a resync's
snapshot lost (see ``_holds``), and a delete is remembered for that (counted
while the stream is read), when the namespace's lease is unknown (no node has a
lease: see ``_lease_s``): two default leases (5 s). A node holds two of its own."""

MAX_ERROR_CHARS: Final = 500
"""``ObserverStatus.last_error`` is cut to this many characters."""


@dataclass(frozen=True, slots=True)
class Death:
    """An agent seen dying (``event.reason == "down"``), ``at`` Unix time when seen."""

    at: float
    event: RegistryEvent


@dataclass(frozen=True, slots=True)
class ObserverStatus:
    """What ``RedisObserver.status()`` reports (named as ``RedisStatus``).

    ``state``: ``"connected"`` or ``"disconnected"`` (Redis cannot be reached:
    reads show the last state seen); ``connected``: ``state == "connected"``;
    ``stale``: the mirror may be behind Redis (while disconnected);
    ``last_error``: the last failure the observer's thread met (at most
    ``MAX_ERROR_CHARS`` characters), None if none; ``state_since``: when
    ``state`` was entered (``time.time()``).
    """

    state: str
    connected: bool
    stale: bool
    last_error: str | None
    state_since: float


def _bounded(text: str) -> str:
    """``text`` cut to ``MAX_ERROR_CHARS`` characters (an ellipsis marks a cut)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class RedisObserver:
    """Follow the entries of one ``RedisRegistry`` namespace without joining it.

    Usage, with a redis-server running::

        observer = RedisObserver("redis://127.0.0.1:6379/0", namespace="shop")
        observer.count(), observer.query([("role", "eq", "io")])
        observer.close()

    Raises (constructor): ``InvalidConfig`` for a malformed URL or namespace,
    ``BackendUnavailable`` when Redis cannot be reached (nothing to show yet)
    or (``errno`` EAGAIN) its thread cannot start; nothing is left open then.
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
        recent: int = 100,
    ) -> None:
        _redis_conn.check_url(url)
        _check_arguments(namespace, timeout)
        self.namespace = namespace
        self.url = _redis_conn.redact_url(url)
        self._prefix = "{" + namespace + "}"
        self._k_log = self._prefix + ":log"
        self._k_ver = self._prefix + ":ver"
        self._k_nodes = self._prefix + ":nodes"
        self._k_leases = self._prefix + ":leases"
        self._k_lastbeat = self._prefix + ":lastbeat"
        self._errors = _redis_conn.redis_errors()
        self._lock = threading.Lock()  # the mirror, the stream position, the event queue's order
        self._mirror = Mirror(())
        self._tail_v = 0
        self._sid = "0-0"
        # Deletes heard that a failover may lose, and the entries a resync holds
        # because its snapshot's history lost them (the observer's thread's own;
        # the mirror changes under _lock as always; see _holds).
        self._holds = Holds(HOLD_S)
        # The change record being applied: stream id, ``v`` field, writer (the
        # observer's thread's own, for Holds.note_delete).
        self._rec: tuple[bytes, bytes, bytes] = (b"0-0", b"0", b"")
        self._listeners: Listeners[RegistryEvent] = Listeners(
            "RedisObserver listener", area="registry.redis"
        )
        # The listeners' events, queued under _lock by the thread that applied
        # their change (queue order: mirror order), delivered by a courier.
        self._delivery: DeliveryQueue[RegistryEvent] = DeliveryQueue(
            self._listeners,
            "current",
            "RedisObserver listener",
            area="registry.redis",
            courier_name="foundation-observer-events",
        )
        self._deaths: collections.deque[Death] = collections.deque(maxlen=max(1, recent))
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._closed = False
        self._last_error: str | None = None
        self._state_since = time.time()
        self._lost_at = time.monotonic()  # when connected was last left (the outage's start)
        # Flaps: the tail cut over and over while Redis answers (CLIENT KILL in a
        # loop, client eviction, a flapping proxy) is lost and back within
        # milliseconds each time. One WARNING says so, the repeats are logged at
        # DEBUG (``_flap``, as a registry node's ``Link``). Only the observer's
        # thread calls it (``_lost``, ``_set_connected``, ``_flap_over``): no lock.
        self._damper = _flap.FlapDamper()
        self._client = _redis_conn.connect(
            url, op_timeout=timeout, name=f"foundation-observer[{namespace}]"
        )
        try:
            self._tail_client = _redis_conn.connect(
                url,
                op_timeout=timeout + BLOCK_MS / 1000,
                connect_timeout=timeout,
                name=f"foundation-observer-tail[{namespace}]",
            )
        except BaseException:
            self._client.close()
            raise
        try:
            self._snapshot_script = ReadScript(SNAPSHOT)
            self._resync(emit=False)
            self._tail_id: int | None = self._call(
                "identifying the tail connection", self._tail_client.client_id
            )
        except BaseException:
            self._close_clients()
            raise
        self._connected.set()
        self._thread = threading.Thread(
            target=self._loop, name=f"foundation-redis-observer[{namespace}]", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread" (EAGAIN: thread limit)
            # Nothing ran and nobody holds this observer yet: close what it opened.
            self._closed = True
            self._close_clients()
            raise BackendUnavailable(
                errno.EAGAIN, f"observer of {namespace!r} cannot start its thread: {exc}"
            ) from exc
        _fork.track(self)  # closed in a forked child (see _inherited_by_fork)

    def _inherited_by_fork(self) -> None:
        """In a forked child (``foundation._fork``): closed, with no I/O.

        The child has no thread: reads served a frozen mirror, and ``close()``
        sent ``CLIENT UNBLOCK`` for the parent's tail connection. Every call
        raises ``Closed`` naming fork(); ``close()`` does nothing
        (``_released``); the lock is new (a parent thread may have held it).
        """
        self._lock = threading.Lock()
        self._closed = self._forked = self._released = True

    # ------------------------------------------------------------------ reads

    def list_all(self) -> list[Entry]:
        """Every entry of the namespace (as of the last change seen), by key order of arrival."""
        self._check_open()
        return list(self._mirror.entries.values())

    def lookup(self, key: Hashable) -> Entry | None:
        """The entry of ``key``, or None (``InvalidKey`` if ``key`` breaks the key rule)."""
        self._check_open()
        return self._mirror.entries.get(validate_key(key))

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries whose metadata matches every criterion (the registries' one query rule)."""
        self._check_open()  # first: Closed before the criteria are judged
        compiled = compile_criteria(criteria)
        return matching(self.list_all(), compiled)

    def count(self) -> int:
        self._check_open()
        return len(self._mirror.entries)

    def recently_dead(self) -> list[Death]:
        """The last deaths seen (reason ``"down"``, with their ``Down``), oldest first."""
        self._check_open()
        with self._lock:
            return list(self._deaths)

    def nodes(self) -> dict[str, Any]:
        """The registry nodes of the namespace and their descriptions (one Redis read)."""
        self._check_open()
        raw = self._call("reading the node list", self._client.hgetall, self._k_nodes)
        out: dict[str, Any] = {}
        for node, text in raw.items():
            try:
                out[node.decode()] = json.loads(text)
            except ValueError:
                out[node.decode()] = text.decode(errors="replace")
        return out

    @property
    def connected(self) -> bool:
        """False while Redis cannot be reached (reads then show the last state seen)."""
        return self._connected.is_set() and not self._closed

    def status(self) -> ObserverStatus:
        """The observer's connection, as ``RedisRegistry.status()`` names it
        (``state``, ``stale``, ``last_error``); ``Closed`` after ``close()``."""
        self._check_open()
        # Read without the lock: each field is one atomic read; a transition
        # racing this call shows either side of it.
        connected = self._connected.is_set()
        return ObserverStatus(
            state="connected" if connected else "disconnected",
            connected=connected,
            stale=not connected,
            last_error=self._last_error,
            state_since=self._state_since,
        )

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` for every change seen, in the order seen, on a
        courier thread (never the observer's: see the module docs); returns an
        unsubscribe callable."""
        with self._lock:
            self._check_open()
        return self._listeners.subscribe(listener)

    def close(self) -> None:
        """Stop the thread and close the connections; idempotent. Never waits for
        a listener (events not yet delivered are dropped: a listener running
        now finishes on its courier); bounded by the Redis calls' timeouts."""
        # Race: a Ctrl-C lands at any call in here. Once _closed was set, the
        # next close() returned at once: a close cut before its end left the
        # thread running and the connections open for good. Only a close that
        # ran to its end (_released) makes the next one return; the steps are
        # idempotent.
        with self._lock:
            if self._released:
                return
            self._closed = True
            self._stop.set()
            # The courier reads the listeners before each event: it delivers
            # what is still queued to nobody (only it pops the queue).
            self._listeners.clear()
        if self._tail_id is not None:
            # Best effort: end the tail's blocking XREAD now rather than in BLOCK_MS.
            with contextlib.suppress(*self._errors):
                self._client.client_unblock(self._tail_id)
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._close_clients()
        self._released = True

    def __enter__(self) -> RedisObserver:
        self._check_open()  # entering a closed observer is Closed, as every closeable
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisObserver {self.namespace!r} at {self.url}>"

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            if self._forked:
                raise _fork.forked_closed("RedisObserver")
            raise Closed("this RedisObserver is closed")

    def _close_clients(self) -> None:
        for client in (self._client, getattr(self, "_tail_client", None)):
            if client is not None:
                with contextlib.suppress(*self._errors):
                    client.close()

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            raise _redis_conn.translate_error(exc, url=self.url, doing=doing) from exc

    def _loop(self) -> None:
        backoff = RetryBackoff()
        resync = False
        while not self._stop.is_set():
            try:
                if resync:
                    self._resync(emit=True)
                    # The tail may have reconnected (a restart, a failover): close()
                    # unblocks its read by this id, which the server gave anew.
                    self._tail_id = self._call(
                        "identifying the tail connection", self._tail_client.client_id
                    )
                    resync = False
                    self._set_connected()
                    backoff.reset()
                with self._lock:
                    sid = self._sid
                resp = self._call(
                    "reading the change stream",
                    self._tail_client.xread,
                    {self._k_log: sid},
                    count=1000,
                    # Wake up for the next held entry that falls due (at least
                    # 1 ms: BLOCK 0 waits for ever).
                    block=max(1, int(self._holds.wait(BLOCK_MS / 1000) * 1000)),
                )
                if self._stop.is_set():
                    return
                resync = self._after_read(resp)
                backoff.reset()
                if self._damper.flapping:
                    self._flap_over()
            except FoundationError as exc:
                if self._stop.is_set():
                    return
                self._lost(exc)
                resync = True  # whatever happened meanwhile, a snapshot covers it
                self._stop.wait(backoff.next())
            except Exception as exc:
                log.exception("observer of %r: unexpected error (carrying on)", self.namespace)
                self._last_error = _bounded(f"{type(exc).__name__}: {exc}")
                resync = True
                self._stop.wait(backoff.next())

    def _set_connected(self) -> None:
        """Redis answers again (after a snapshot): connected, with one INFO line, as a
        registry node says its ``disconnected -> connected`` (DEBUG within a flap,
        whose losses are at DEBUG too). ``last_error`` keeps the failure: it is the
        last one met, not the current one (``state`` says that)."""
        if self._connected.is_set():
            return
        flapping = self._damper.up()
        outage = time.monotonic() - self._lost_at
        self._state_since = time.time()
        self._connected.set()
        log.log(
            logging.DEBUG if flapping else logging.INFO,
            "observer of %r: disconnected -> connected: Redis answers again; the mirror "
            "is current (resynchronised from a snapshot) (after %.1f s)",
            self.namespace,
            outage,
            extra={"namespace": self.namespace, "state": "connected", "outage_seconds": outage},
        )

    def _lost(self, exc: FoundationError) -> None:
        """Redis failed the loop with ``exc``: disconnected, and it is the last error.
        A WARNING when it was connected, but one per flap (``_flap``): the same
        failure right after each return is logged at DEBUG."""
        self._last_error = _bounded(str(exc))
        if not self._connected.is_set():
            self._lost_again(exc)
            return
        verdict = self._damper.drop(str(exc))
        if verdict == "first":
            log.warning(
                "observer of %r: Redis failed again, with the same error, right after the "
                "observer reconnected (%s): a fault that cuts some of its connections only "
                "(CLIENT KILL, client eviction: maxmemory-clients, a proxy); it goes on "
                "reconnecting by itself; its losses are logged at DEBUG until it stays "
                "connected %.0f s",
                self.namespace,
                exc,
                _flap.FLAP_WINDOW,
            )
        log.log(
            logging.WARNING if verdict == "usual" else logging.DEBUG,
            "observer of %r lost Redis (%s); retrying",
            self.namespace,
            exc,
        )
        self._state_since = time.time()
        self._lost_at = time.monotonic()
        self._connected.clear()

    def _lost_again(self, exc: FoundationError) -> None:
        """A failed retry while disconnected in a flap: another cause ends the flap
        (a new outage, at WARNING); the same one, ``FLAP_WINDOW`` s after the
        flap's last loss (at DEBUG) with no return, is said at WARNING once."""
        if not self._damper.flapping:
            return
        if not self._damper.again(str(exc)):
            log.warning("observer of %r lost Redis (%s); retrying", self.namespace, exc)
            return
        gone = self._damper.lingers()
        if gone is not None:
            log.warning(
                "observer of %r: still disconnected %.0f s after the last of %d repeated "
                "failure(s) (%s): %s; retrying",
                self.namespace,
                gone.seconds,
                gone.drops,
                gone.cause,
                exc,
            )

    def _flap_over(self) -> None:
        """Say that a flap ended (connected ``FLAP_WINDOW`` s since its last
        return): its losses were logged at DEBUG, so without this line the log
        would end at the flap's WARNING. Called after each read that succeeded
        (at least every ``BLOCK_MS``)."""
        over = self._damper.over()
        if over is not None:
            log.info(
                "observer of %r: connected for %.0f s since the last of %d repeated "
                "failure(s) (%s): the flap is over",
                self.namespace,
                over.seconds,
                over.drops,
                over.cause,
            )

    def _after_read(self, resp: list[Any]) -> bool:
        """Apply one XREAD reply or, after an idle read, check the change counter;
        True if a snapshot is needed. Then shows the held entries that fell due
        (after the records, which decide first; not before a resync, which does)."""
        if resp:
            resync = self._apply(resp)
        else:
            # Idle: a counter below ours means Redis restarted (emptied).
            raw = self._call("reading the change counter", self._client.get, self._k_ver)
            resync = int(raw or 0) < self._tail_v
        if self._holds.held and not resync:
            self._release_due()
        return resync

    def _apply(self, resp: list[Any]) -> bool:
        """Apply one XREAD reply in version order; True if a snapshot is needed (a gap)."""
        events: list[RegistryEvent] = []
        gap = False
        with self._lock:
            m = self._mirror
            for _name, records in resp:
                for rid, fields in records:
                    v = int(fields[b"v"])
                    if v != self._tail_v + 1:
                        gap = True  # trimmed past us, or a reset: resynchronise
                        break
                    self._tail_v = v + record_span(fields) - 1
                    self._sid = rid.decode() if isinstance(rid, bytes) else str(rid)
                    self._rec = (rid, fields[b"v"], fields.get(b"w", b""))
                    for iv, f in expand_record(v, fields):
                        self._apply_record(m, iv, f, events)
            self._queue(events)
        self._hand_off()
        return gap

    def _release_due(self) -> None:
        """Show the held entries whose time is up, told ``registered`` (see
        ``Holds.release_due``): only a record or the time ends a hold here, the
        observer deletes nothing (the owner's recovery or a reap does)."""
        events: list[RegistryEvent] = []
        with self._lock:
            shown = self._holds.release_due(self._mirror, events)
            self._queue(events)
        say_shown(f"observer of {self.namespace!r}", shown)
        self._hand_off()

    def _apply_record(
        self, m: Mirror, v: int, f: dict[bytes, bytes], events: list[RegistryEvent]
    ) -> None:
        op = f[b"op"]
        key = decode_key(f[b"k"])
        if not m.is_newer(key, v):
            return
        if self._holds.held:
            # A record of a held entry's key decides it (see Holds.decide): an
            # update shows it, told ``registered``, before the update.
            self._holds.decide(m, key, op, v, events)
        if op == b"r":
            self._apply_register(m, v, key, f, events)
        elif op == b"u":
            self._apply_update(m, v, key, f, events)
        elif op == b"d":
            self._apply_delete(m, v, key, f, events)

    def _apply_register(
        self, m: Mirror, v: int, key: Hashable, f: dict[bytes, bytes], events: list[RegistryEvent]
    ) -> None:
        events.extend(m.apply_registration(_entry(key, f[b"h"], f[b"m"]), v))

    def _apply_update(
        self, m: Mirror, v: int, key: Hashable, f: dict[bytes, bytes], events: list[RegistryEvent]
    ) -> None:
        held = m.entries.get(key)
        if held is None:
            m.versions[key] = v
            return
        meta = metadata_from_json(f[b"m"])
        updated = new_entry(key, held.agent, meta, held.registered_at, held.node)
        m.put(updated, v)
        if held.metadata != updated.metadata:
            events.append(RegistryEvent("updated", updated))

    def _apply_delete(
        self, m: Mirror, v: int, key: Hashable, f: dict[bytes, bytes], events: list[RegistryEvent]
    ) -> None:
        gone = m.remove(key, v)
        if gone is None:
            return
        # A failover can lose this delete after we heard it: remember it (every
        # entry is another process's: the observer owns none).
        self._holds.note_delete(gone, f[b"k"], *self._rec)
        why, dr = f.get(b"why", b"").decode(), f.get(b"dr", b"").decode()
        reason: UnregisterReason = "unregistered"
        if why == "replaced":
            reason = "replaced"
        elif why == "down":
            reason = "down"
        down = None
        if reason == "down" and dr:
            down = _down_from(dr, f.get(b"dc", b"").decode(), f.get(b"ds", b"").decode())
        event = RegistryEvent("unregistered", gone, reason=reason, down=down)
        if reason == "down":
            self._deaths.append(Death(time.time(), event))
        events.append(event)

    def _resync(self, *, emit: bool) -> None:
        """Replace the mirror by a snapshot; with ``emit``, listeners hear the differences."""
        reply = self._call(
            "taking a snapshot",
            self._snapshot_script.run,
            self._client,
            [self._k_log],
            SnapshotArgs("0").argv(),
        )
        ver, sid, heads, metas = int(reply[0]), reply[1], reply[2], reply[3]
        meta_by = dict(zip(metas[::2], metas[1::2], strict=True))
        fresh = self._snapshot_entries(heads, meta_by)
        doubtful, kept = self._deletes_kept(heads)
        events: list[RegistryEvent] = []
        with self._lock:
            m = self._mirror
            if doubtful or self._holds.held:
                self._holds.hold(fresh, m.entries, doubtful, kept)
            _apply_snapshot(m, fresh, ver, events)
            m.rebase(ver)
            self._tail_v = ver
            self._sid = sid.decode() if isinstance(sid, bytes) else str(sid)
            if emit:
                self._queue(events)
        self._hand_off()

    def _deletes_kept(self, heads: list[bytes]) -> tuple[dict[Hashable, Gone], set[Hashable]]:
        """The registrations this observer heard deleted that the snapshot
        ``heads`` holds again, and those whose delete its history holds (one
        pipelined round trip, only when there are any: see ``_holds``). Only the
        observer's thread changes the mirror and the holds: nothing moves
        between this and the snapshot's application."""
        with self._lock:
            doubtful = self._holds.doubtful(heads, self._mirror.entries, _head_entry)
        if not doubtful:
            return doubtful, set()
        # Held as long as a node holds them: two of the namespace's leases.
        self._holds.keep = 2 * self._lease_s()
        kept: set[Hashable] = self._call(
            "checking the change stream",
            deletes_kept,
            self._client.pipeline(transaction=False),
            self._k_log,
            doubtful,
        )
        return doubtful, kept

    def _lease_s(self) -> float:
        """The namespace's ``lease_ttl`` (seconds), ``HOLD_S / 2`` when unknown.

        An observer is given none, but Redis tells it: a heartbeat sets
        ``P:lastbeat`` to its time and its node's deadline in ``P:leases`` to that
        time plus the node's ``lease_ttl`` (a heal shifts both alike), so the
        latest deadline less ``P:lastbeat`` is the ``lease_ttl`` of the node that
        renewed last (every node of a namespace has the same one, docs/redis.md;
        that node gone since: another's, up to one heartbeat less). One round
        trip, made only by a resync that has entries to hold or tell."""
        pipe = self._client.pipeline(transaction=False)
        pipe.get(self._k_lastbeat)
        pipe.zrange(self._k_leases, -1, -1, withscores=True)
        last, latest = self._call("reading the namespace's lease", pipe.execute)
        try:
            lease_ms = float(latest[0][1]) - float(last)
        except (IndexError, TypeError, ValueError):
            return HOLD_S / 2  # no node has a lease (or junk): the default lease
        return lease_ms / 1000 if lease_ms > 0 else HOLD_S / 2

    def _snapshot_entries(
        self, heads: list[bytes], meta_by: dict[bytes, bytes]
    ) -> dict[Hashable, Entry]:
        """The entries of a snapshot's heads and metadata (the unreadable left out)."""
        fresh: dict[Hashable, Entry] = {}
        unreadable = 0
        for ekb, head in zip(heads[::2], heads[1::2], strict=True):
            try:
                key = decode_key(ekb)
                fresh[key] = _entry(key, head, meta_by.get(ekb, b"{}"))
            except UNREADABLE:
                # An entry nobody can read (written by something else): left out,
                # as the registry's nodes do. Raised, it failed every snapshot:
                # the observer (``foundation agents``, the admin page) never connected.
                unreadable += 1
        if unreadable:
            log.warning(
                "observer of %r: %d entr(ies) in Redis could not be read (not written "
                "by this library?): left out",
                self.namespace,
                unreadable,
            )
        return fresh

    def _queue(self, events: list[RegistryEvent]) -> None:
        """Queue ``events`` for the listeners (holding ``_lock``, in the block that
        applied their change: the queue order is the mirror order). Nothing is
        queued while nobody listens.

        Race: a subscribe racing with this either gets these events or not
        (as with any observer list); one racing with an earlier queued event's
        delivery may hear it (the courier reads the listeners per event)."""
        if events and self._listeners.current:
            pending = self._delivery.pending
            for event in events:
                pending.append((event, None))

    def _hand_off(self) -> None:
        """Deliver the queued events from a courier thread: the observer's thread
        never runs a listener (a stuck one would freeze the mirror and ``close()``)."""
        if self._delivery.pending:
            self._delivery.hand_off()


def _check_arguments(namespace: object, timeout: object) -> None:
    """``InvalidConfig`` for a malformed ``namespace`` or ``timeout``."""
    if not isinstance(namespace, str) or not namespace or "{" in namespace or "}" in namespace:
        raise InvalidConfig(f"namespace must be a non-empty str without braces: {namespace!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidConfig(f"timeout must be a positive number, not {timeout!r}")


def _apply_snapshot(
    m: Mirror, fresh: dict[Hashable, Entry], ver: int, events: list[RegistryEvent]
) -> None:
    """Make ``m`` hold the entries ``fresh`` of a snapshot at ``ver``, appending the
    differences to ``events`` (holding the observer's lock)."""
    for key, held in list(m.entries.items()):
        if key not in fresh:
            m.remove(key, ver)
            events.append(RegistryEvent("unregistered", held, reason="unregistered"))
    for key, new in fresh.items():
        old = m.entries.get(key)
        if old is None or not same_registration(old, new):
            m.put(new, ver)
            if old is not None:
                events.append(RegistryEvent("unregistered", old, reason="replaced"))
            events.append(RegistryEvent("registered", new))
        elif old.metadata != new.metadata:
            m.put(new, ver)
            events.append(RegistryEvent("updated", new))


def _head_entry(key: Hashable, ek: str, head: str) -> Entry:
    """The entry of a snapshot's head, metadata aside (for ``Holds.doubtful``)."""
    return _entry(key, head, b"{}")


def _entry(key: Hashable, head_raw: bytes | str, meta: bytes) -> Entry:
    head = json.loads(head_raw)
    a = head.get("a") or {}
    node = head["n"]
    agent = RemoteAgent(node, a.get("kind", "?"), a.get("pid"), a.get("name"))
    return new_entry(key, agent, metadata_from_json(meta), head["t"], node)
