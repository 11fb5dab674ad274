"""State shared by the parts of one ``RedisRegistry`` node (facade, lease, tail).

Locks (always taken in this order, never the other way round):

- ``wlock`` (an ``RLock``) serialises this node's writes and its recovery:
  register, update, unregister, the lease thread's deletes and the whole
  heartbeat-reassert-resync procedure. Bounded: a writer waits at most a few
  ``op_timeout`` for it, then reports ``BackendUnavailable``; and a public
  write that finds a call timed out moments ago, none succeeded since, fails
  at once (``fail_fast``), so N writers queued on a frozen Redis cost one
  timeout, not N; a writer waiting for the lock looks again while it waits,
  and the lease thread's deletes of dead agents fail fast too (retried once
  Redis answers).
- ``mlock`` guards the mirror, ``own``, ``pending_downs``, the tail position,
  the listener tuple and the order of the event queue. Never held across a
  Redis call or a listener.

Events: whoever applies a change to the mirror queues its events
(:meth:`Shared.queue`) under the same ``mlock``, so the queue order is the
mirror order, whichever thread made the change (a writer, the tail, a
recovery, a monitor). Listeners run once every lock is released: an API
writer delivers (:meth:`Shared.deliver`; if another thread is delivering, that
one delivers its events too and the writer returns at once); the tail, the
lease thread and a monitor's death callback hand them to a courier thread
(:meth:`Shared.hand_off`), never running a listener themselves: a slow
listener delays later events, never the mirror, a heartbeat or another
thread's write.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import queue
import select
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, Final

from foundation import _redis_conn, telemetry
from foundation._listeners import DeliveryQueue
from foundation.errors import BackendUnavailable, Closed, FoundationError, InvalidMetadata
from foundation.liveness import Down, Monitor, MonitorManager
from foundation.registry._redis._codec import RemoteAgent, index_names, s
from foundation.registry._redis._mirror import Mirror
from foundation.registry._redis._state import Link
from foundation.registry._types import Entry, Listener, RegistryEvent, UnregisterReason, new_entry
from foundation.registry._validation import metadata_from_json

if TYPE_CHECKING:  # _holds imports this module
    from foundation.registry._redis._holds import Holds

__all__ = [
    "TAIL_BLOCK_MS",
    "UNREADABLE",
    "Doing",
    "Job",
    "Own",
    "Shared",
    "down_fields",
    "expand_record",
    "own_version_reused_why",
    "record_span",
    "s",
]

TAIL_BLOCK_MS: Final = 5000
_HAS_POLL: Final = hasattr(select, "poll")  # not on Windows: redis-py's check only
_POLL_READ: Final = (
    select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP if _HAS_POLL else 0
)

_NODES: Final[weakref.WeakSet[Shared]] = weakref.WeakSet()
"""Every live node of this process (see ``_forget_write_connections``)."""


def _forget_write_connections() -> None:
    """In a forked child: no node may write on its parent's write connection.

    The child inherits the socket: a write there would interleave with the
    parent's on one Redis connection, and either process could read the
    other's reply. The child's next write takes a connection of its own from
    the pool (redis-py's pool resets itself in a new process); the inherited
    one is closed in the child only (redis-py never shuts down a socket of
    another process) once nothing refers to it.
    """
    for sh in list(_NODES):
        sh.wconn = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_write_connections)

Doing = str | Callable[[], str]
"""What a Redis call is doing, for messages: the text, or a callable building it
(the hot write paths build it only if the call fails or round trips are timed)."""

Job = tuple[str, Any]
"""Work for the lease thread: ``("down", key)``, ``("orphan", (key, ek, head))``,
``("wake", None)``."""


class Own:
    """A registration made by this node (its agent is a live local handle).

    ``pending`` while its ``register`` call has not finished: a recovery run
    inline by that call must not re-assert it (the call writes it itself).
    ``at``: the stream id of the record that registered it (``""`` until
    known; a re-assert that finds it in Redis fills it in when the reply of
    its register was lost), its place in the server's order (a re-assert
    sends it). ``unregistering`` while an ``unregister`` call's script for it
    is on its way (that call decides how it went); ``died``: the ``Down`` its
    monitor reported meanwhile (``_claims.on_down``), None if none.
    """

    __slots__ = (
        "agent",
        "at",
        "died",
        "ek",
        "head",
        "ix",
        "meta",
        "monitor",
        "pending",
        "unregistering",
    )

    def __init__(self, agent: Any, ek: str, head: str, meta: bytes, ix: str) -> None:
        self.agent = agent
        self.ek = ek
        self.head = head
        self.meta = meta
        self.ix = ix
        self.monitor: Monitor | None = None
        self.pending = True
        self.at = ""
        self.unregistering = False
        self.died: Down | None = None


def _doing_text(doing: Doing) -> str:
    return doing if type(doing) is str else doing()  # type: ignore[operator]


def down_fields(down: Down | None) -> tuple[str, str, str]:
    """``Down`` as the (reason, exit_code, signal) strings of a change record."""
    if down is None:
        return ("", "", "")
    return (
        down.reason,
        "" if down.exit_code is None else str(down.exit_code),
        "" if down.signal is None else str(down.signal),
    )


def _down_from(dr: str, dc: str, ds: str) -> Down:
    return Down(
        dr or "noproc",  # type: ignore[arg-type]
        exit_code=int(dc) if dc else None,
        signal=int(ds) if ds else None,
    )


UNREADABLE: Final = (
    AttributeError,
    KeyError,
    TypeError,
    ValueError,
    RecursionError,
    FoundationError,
)
"""What parsing an entry of a snapshot (head, metadata, encoded key) raises when
something other than this library wrote it."""


def record_span(fields: Mapping[bytes, bytes]) -> int:
    """How many versions a change record covers: ``c`` of a bulk record, else 1."""
    c = fields.get(b"c")
    return 1 if c is None else int(c)


def expand_record(v: int, fields: dict[bytes, bytes]) -> list[tuple[int, dict[bytes, bytes]]]:
    """A change record of version ``v`` as ``(version, fields)`` of single records:
    a bulk record (``op 'R'``, written by ``_scripts.REGISTER_MANY``) becomes its
    ``op 'r'`` items."""
    if fields[b"op"] != b"R":
        return [(v, fields)]
    parts = fields[b"p"].split(b"\n")
    n = int(fields[b"c"])
    if len(parts) != 3 * n:
        raise ValueError(f"a bulk change record of version {v} is malformed")
    w = fields[b"w"]
    return [
        (
            v + j,
            {
                b"op": b"r",
                b"w": w,
                b"k": parts[3 * j],
                b"h": parts[3 * j + 1],
                b"m": parts[3 * j + 2],
            },
        )
        for j in range(n)
    ]


class _Writing:
    """The context of ``Shared.writing``."""

    __slots__ = ("fast", "public", "sh")

    def __init__(self, sh: Shared, public: bool, fast: bool) -> None:
        self.sh = sh
        self.public = public
        self.fast = fast  # fails at once while Redis is known not to answer

    def __enter__(self) -> None:
        sh = self.sh
        if self.public and sh.closed:
            raise Closed("this RedisRegistry is closed")
        if self.fast:
            sh.fail_fast()  # Redis just timed out: no wait for the lock, nor for Redis
        # Bounded: a writer stuck on an unresponsive Redis holds the lock for at
        # most a few op_timeout; waiting longer than that is an outage.
        wlock = sh.wlock
        # Race: a Ctrl-C is raised at the first check after acquire() returned
        # (the call's own end), before any statement of ours: the lock is held
        # then, and with no __exit__ to come (__enter__ raised) it stayed held
        # for ever: the lease thread's jobs waited for it (a dead agent's entry
        # stayed in Redis, no recovery ran) and close() waited out its join.
        # So the acquire is inside the try, and whatever raises releases the
        # level taken here (the count says whether it was taken; an interpreter
        # whose RLock has no count falls back on the result, as before).
        levels = getattr(wlock, "_recursion_count", None)
        before = levels() if levels is not None else 0
        taken = False
        try:
            taken = self._take(wlock)
            if not taken:
                raise BackendUnavailable(f"Redis at {sh.url} is not answering (writes are queued)")
            if self.public and sh.closed:
                # Race: close() held the lock while this writer waited; going on
                # would re-create the closed node's lease (a NOLEASE reply starts
                # a recovery).
                raise Closed("this RedisRegistry is closed")
            if self.fast:
                # Race: the writer (or lease thread) that held the lock while this
                # one waited may have just timed out on a frozen Redis: fail as it
                # did rather than wait a timeout of our own, so N queued writers
                # cost one timeout, not N (the lock is released, nothing was sent).
                sh.fail_fast()
        except BaseException:
            if (levels() > before) if levels is not None else taken:
                wlock.release()
            raise

    def _take(self, wlock: Any) -> bool:
        """Acquire ``wlock`` within ``4 * op_timeout`` (False if not).

        A fast writer waits in slices of ``op_timeout / 4`` and looks at
        ``fail_fast`` between them. Race: the holder (a writer, or the lease
        thread deleting a dead agent's entry) may time out on a frozen Redis
        while we wait, and the lease thread may take the lock again at once
        (an RLock is not fair: a recovery's heartbeat, the next dead agent's
        delete), each holding it a timeout more; a writer that only looked
        once it had the lock waited behind all of them (up to 4 timeouts).
        So it fails at the first look after the holder's timeout (within
        about ``op_timeout`` in all, as documented), nothing sent.
        """
        sh = self.sh
        wait = sh.op_timeout * 4
        if not self.fast:
            return bool(wlock.acquire(timeout=wait))
        step = sh.op_timeout / 4
        if wlock.acquire(timeout=step):  # the common case: no monotonic() call
            return True
        deadline = time.monotonic() + wait - step
        while True:
            if self.public and sh.closed:
                # Race: close() holds the lock (its release timing out on a frozen
                # Redis): the node is closed, as a writer that got the lock says.
                raise Closed("this RedisRegistry is closed")
            sh.fail_fast()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if wlock.acquire(timeout=min(step, left)):
                return True

    def __exit__(self, *exc: object) -> None:
        # Replaced by ``wlock.__exit__`` in each node's subclass (see Shared.__init__).
        self.sh.wlock.release()


def _writing_class(wlock: Any) -> type[_Writing]:
    """The ``_Writing`` of one node, whose ``__exit__`` is ``wlock``'s own.

    Race: a Ctrl-C is raised at the first instruction of a Python function too:
    a Python ``__exit__`` could be interrupted before it released ``wlock``, and
    the with statement does not call it again: the lock stayed held for ever.
    The lock's own ``__exit__`` is C: nothing runs before the release."""
    return type(
        "_Writing", (_Writing,), {"__slots__": (), "__exit__": staticmethod(wlock.__exit__)}
    )


def _writings(sh: Shared) -> tuple[_Writing, _Writing, _Writing]:
    """The public, the private and the private fast ``_Writing`` of the node ``sh``."""
    writing = _writing_class(sh.wlock)
    return writing(sh, True, True), writing(sh, False, False), writing(sh, False, True)


def own_version_reused_why(v: int) -> str:
    """Why a node recovers when version ``v`` of its own change record was given
    to another record (``Shared.note_own_write``)."""
    return (
        f"Redis went back to older data in place (version {v} of a change record "
        "this node wrote was given to another record: DEBUG RELOAD of an old dump, "
        "SWAPDB, or the counter itself lost)"
    )


class Shared:
    """Everything the facade, the lease and the tail of one node share."""

    #: ``close()`` ran to its end (``RedisRegistry.close``: a cut one did not).
    released = False

    #: The tail's removed registrations and held entries (set by the tail; see
    #: ``_holds``): this node's own unregister or replace of a held key drops it.
    holds: Holds

    #: The client owning the tail's pool (``_lifecycle.connect``): kept here, as
    #: long as the threads that hold this node. Collecting it closes the pool
    #: (redis-py), cutting the tail's read: a registry dropped without close()
    #: (a returned function's local) logged a false outage.
    tail_owner: Any = None

    def __init__(
        self,
        *,
        url: str,
        node: str,
        namespace: str,
        indexed: frozenset[str],
        ttl: float,
        beat: float,
        op_timeout: float,
        maxlen: int,
        manager: MonitorManager,
    ) -> None:
        self.url = _redis_conn.redact_url(url)
        self.node = node
        self.node_b = node.encode()
        self.node_json = json.dumps(node)
        self.indexed = indexed
        self.ttl = ttl
        self.beat = beat
        # A gap longer than this since the last heartbeat of ANY node is a global
        # outage (see _scripts "the global-outage lease rule").
        self.grace_ms = int(min(beat * 1.5, ttl / 2) * 1000)
        self.op_timeout = op_timeout
        self.maxlen = str(int(maxlen))
        self.prefix = "{" + namespace + "}"
        self.k_log = self.prefix + ":log"
        self.k_wake = f"{self.prefix}:wake:{node}"
        self.k_wake_b = self.k_wake.encode()
        self.keys = [self.k_log]  # KEYS[1] of every script (see _scripts)
        self.manager = manager

        self.mirror = Mirror(indexed)
        # The hot read path: ``lookup`` is a single get on this dict.
        self.entries = self.mirror.entries
        self.mlock = threading.Lock()
        self.wlock = threading.RLock()
        self.own: dict[Hashable, Own] = {}
        self.pending_downs: dict[Hashable, tuple[str, str, Down]] = {}
        self.listeners: tuple[Listener, ...] = ()
        # The listeners' events, appended under mlock (queue order: mirror order).
        self.delivery: DeliveryQueue[RegistryEvent] = DeliveryQueue(
            self,
            "listeners",
            "RedisRegistry listener",
            area="registry.redis",
            courier_name="foundation-redis-events",
        )
        self.conflicts: list[Any] = []
        self.closed = False
        self.stop = threading.Event()
        self.jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.link = Link(node, namespace=namespace, wake=self.wake_lease)
        # Tail position (guarded by mlock): last version / stream ids applied, and
        # a generation bumped by every resync so an in-flight tail batch is dropped.
        self.tail_v = 0
        self.sid: bytes | str = "0-0"
        self.wake_id: bytes | str = "0-0"
        self.gen = 0
        self.applied = threading.Condition(self.mlock)  # notified as the tail advances
        self.written = 0  # version of this node's last write
        self.last_beat_ok = time.monotonic()
        self.reasserts = 0  # recoveries that wrote at least one registration back
        self.reasserted = 0  # registrations written back by those
        self.lease_extensions = 0  # global outages this node's heartbeat healed

        self.errors = _redis_conn.redis_errors()
        exceptions = _redis_conn.import_redis().exceptions
        self.noscript: type[BaseException] = exceptions.NoScriptError
        # What the pool treats as a stale connection when it lends one (see _ready).
        self.stale_errors: tuple[type[BaseException], ...] = (
            exceptions.ConnectionError,
            exceptions.TimeoutError,
            OSError,
        )
        self.client: Any = None
        # The write connection (see write_script): taken from the client's pool at
        # the first write and never given back, so client.close() closes it too.
        self.wconn: Any = None
        _NODES.add(self)  # a forked child drops it (see _forget_write_connections)
        self._poll: Any = select.poll() if _HAS_POLL else None  # _ready's, under wlock
        self.tail_client: Any = None
        self.scripts: dict[str, Any] = {}
        self._public_writing, self._private_writing, self._job_writing = _writings(self)

    # ------------------------------------------------------------------ Redis calls

    def call(self, doing: Doing, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one Redis call: any redis-py failure is reported to the link and
        raised as ``BackendUnavailable`` (or ``InvalidConfig``). ``doing`` names
        the call in messages: a ``str``, or a callable building it (only when needed)."""
        timed = telemetry.has_listeners(_redis_conn.ROUND_TRIP_EVENT)  # metrics installed
        began = time.perf_counter() if timed else 0.0
        try:
            try:
                result = fn(*args, **kwargs)
            except self.errors:
                raise
            except Exception as exc:
                if not _redis_conn.raised_inside_redis_py(exc):
                    raise  # ours: unchanged
                raise _redis_conn.redis_py_failure(exc) from exc
        except self.errors as exc:
            text = _doing_text(doing)
            if timed:
                _redis_conn.report_round_trip(began, ok=False, doing=text, url=self.url)
            err = _redis_conn.translate_error(exc, url=self.url, doing=text)
            if isinstance(err, BackendUnavailable):
                self.link.failed(exc, str(err))
            raise err from exc
        if timed:
            _redis_conn.report_round_trip(began, ok=True, doing=_doing_text(doing), url=self.url)
        self.link.ok()
        return result

    def write_script(self, name: str, argv: list[Any], doing: Doing) -> Any:
        """Run the script ``name`` with ``argv`` (holding wlock), as :meth:`script`
        does, on this node's write connection: ``EVALSHA`` sent and read on the
        connection itself, without redis-py's per-command client layer (its
        connection-pool round, retry wrapper and metrics, about a third of a
        round trip's CPU time). Failures are the same: redis-py's connection
        drops itself on any I/O error or timeout (a late reply is never read
        by the next write), an error reply leaves it in sync, and ``call``
        translates either. Only this node's API writes use it, and they hold
        ``wlock``, so the connection is never shared."""
        return self.call(doing, self._write_evalsha, self.scripts[name], argv)

    def _write_evalsha(self, script: Any, argv: list[Any]) -> Any:
        conn = self.wconn
        if conn is None:
            # Checked by the pool as it lends it; kept (never released).
            conn = self.wconn = self.client.connection_pool.get_connection()
        else:
            self._ready(conn)
        conn.send_command("EVALSHA", script.sha, 1, self.k_log, *argv)
        try:
            return conn.read_response()
        except self.noscript:
            # Redis restarted or flushed its scripts: load it and run it again.
            script.sha = self.client.script_load(script.script)
            conn.send_command("EVALSHA", script.sha, 1, self.k_log, *argv)
            return conn.read_response()

    def _ready(self, conn: Any) -> None:
        """The check redis-py's pool makes before lending a connection: one with
        something to read (a reply nobody read, or the server closed it: a
        restart) is replaced by a fresh one, so a write never fails, or reads a
        stale reply, because of an idle connection the server dropped.

        First one ``poll`` of its socket (one system call; redis-py's own check
        makes three): nothing to read there means nothing to read at all, since
        every write reads its whole reply and Redis sends nothing unasked (RESP2,
        no push messages). Anything else, or a connection of another shape,
        takes redis-py's check."""
        sock = getattr(conn, "_sock", None)
        if sock is None and hasattr(conn, "_sock"):
            # Dropped (a timeout or an I/O error): connect once, as the pool does
            # for an unconnected connection; a failure is this write's. (Below,
            # redis-py's check would connect inside its retry: twice, so a write
            # to a frozen server would wait two op_timeouts.) A fresh connection
            # has nothing to read.
            conn.connect()
            return
        if sock is not None and self._poll is not None:
            poll = self._poll
            try:
                poll.register(sock, _POLL_READ)
                try:
                    quiet = not poll.poll(0)
                finally:
                    poll.unregister(sock)
            except (OSError, ValueError, KeyError):
                quiet = False  # a closed or odd socket: redis-py's check decides
            if quiet:
                # Race: the server may close it right after this check (so may it
                # after redis-py's): the write then fails as BackendUnavailable,
                # its outcome unknown, and the caller asks for a resync.
                return
        stale = self.stale_errors
        try:
            if conn.can_read():
                raise stale[0]("Connection has data")
        except stale:
            conn.disconnect()
            conn.connect()
            if conn.can_read():
                raise stale[0]("Connection not ready") from None

    def script(self, name: str, args: Any, doing: str, client: Any = None) -> Any:
        """Run the script ``name`` with ``args`` (a ``*Args`` of ``_scripts``)."""
        if client is not None:
            return self.scripts[name](keys=self.keys, args=args.argv(), client=client)
        return self.call(doing, self._evalsha, self.scripts[name], args.argv())

    def _evalsha(self, script: Any, argv: list[Any]) -> Any:
        """``EVALSHA`` of a registered script; loads it if Redis lacks it (what
        redis-py's ``Script.__call__`` does, without its per-call import)."""
        try:
            return self.client.evalsha(script.sha, 1, self.k_log, *argv)
        except self.noscript:
            # Redis restarted or flushed its scripts: load it and run it again.
            script.sha = self.client.script_load(script.script)
            return self.client.evalsha(script.sha, 1, self.k_log, *argv)

    def reply_error(self, reply: BaseException, doing: str) -> FoundationError:
        """A failed pipeline reply, translated and reported like a raised one."""
        err = _redis_conn.translate_error(reply, url=self.url, doing=doing)
        if isinstance(err, BackendUnavailable):
            self.link.failed(reply, str(err))
        return err

    def fail_fast(self) -> None:
        """``BackendUnavailable`` at once if a Redis call timed out less than
        ``op_timeout`` ago and none succeeded since (``Link.fast_fail``)."""
        why = self.link.fast_fail(self.op_timeout)
        if why is not None:
            raise BackendUnavailable(
                f"Redis at {self.url} is not answering (a call timed out moments ago, "
                f"none succeeded since; not retried for up to op_timeout): {why}"
            )

    def writing(self, *, public: bool = True, fast: bool = False) -> _Writing:
        """``with sh.writing():`` holds ``wlock`` (bounded wait); a public write on a
        closed node fails. Public writes, and private ones asked ``fast`` (the
        lease thread's deletes), fail at once while Redis is known not to answer
        (``fail_fast``). (A class, not a generator: every write enters it; one
        object per kind, shared: it holds no state of its own.)"""
        if public:
            return self._public_writing
        return self._job_writing if fast else self._private_writing

    def wake_lease(self) -> None:
        """Wake the lease thread (a recovery is needed)."""
        self.jobs.put(("wake", None))

    def poke_tail(self) -> None:
        """Wake our tail thread (it blocks in XREAD on our wake stream too)."""
        # If Redis is down, the tail is not blocked in XREAD either.
        with contextlib.suppress(FoundationError):
            self.call("waking the tail", self.client.xadd, self.k_wake, {"w": "1"}, maxlen=16)

    def own_records_applied(self, first: int, last: int, sid: Any) -> None:
        """This node's API write made the change records of versions ``first`` ..
        ``last`` (one script's, the last one at stream id ``sid``) and has just
        applied them to the mirror (holding mlock). If they are the next ones
        the tail would read, move the tail past them: it would only skip them
        (a node's own writes are applied by the writer), and reading them is
        most of what the tail costs while this node writes.

        Race: the tail may be reading them right now (an ``XREAD`` sent from the
        old position): it skips every record at or below ``tail_v``.
        """
        if self.tail_v == first - 1:
            ahead = self.mirror.own_ahead
            if ahead and ahead[0] <= last:
                # Another write of ours noted a version this one was just given
                # (noted writes are always past the tail): Redis went back.
                self.own_version_reused(ahead[0])
            self.tail_v = last
            self.sid = sid
            self.applied.notify_all()

    def note_own_write(self, first: int) -> None:
        """This node's API write made a change record starting at version ``first``
        (``w`` naming this node) and applied it to the mirror (holding mlock).

        Redis may go back to older data in place (``SWAPDB``, ``DEBUG RELOAD``)
        while this node's tail is behind its own writes, and other nodes may
        write as many records after it before our heartbeat: its change counter
        is then back at or past every version we saw, and the heartbeat sees
        nothing. In one history a version is given once, so the tail checks
        that the records it reads at the versions noted here are ours, starting
        there (``Tail._own_write_gone``); a version given to a second write of
        ours is the same sign. Only API writes are noted (the lease thread's
        deletes are not: the tail checks nothing at their versions).

        Races: the tail's ``XREAD`` may hold this record, answered before this
        write took mlock: if the tail has not applied that batch yet, the note
        comes first and the batch meets it; if it has, ``first`` is at or below
        the tail and nothing is noted (in one history that record was ours,
        which the tail skipped). Not handled: Redis going back and other nodes
        writing past ``first`` within that moment (the tail then applied
        another node's record of that version as the next one). A
        ``register_many`` settles its single items before its bulk records:
        noted out of version order. A resync empties ``own_ahead`` (``Mirror.rebase``)
        holding wlock, as every writer does: no write is between its snapshot
        and that.
        """
        if first <= self.tail_v:
            return  # (and 0: the write made no record)
        ahead = self.mirror.own_ahead
        if not ahead or ahead[-1] < first:
            ahead.append(first)  # the usual case: writes are noted in version order
            return
        i = bisect.bisect_left(ahead, first)
        if ahead[i] == first:
            self.own_version_reused(first)
            return
        ahead.insert(i, first)  # a register_many's bulk record (see above)

    def own_version_reused(self, v: int) -> None:
        """Version ``v``, of a change record this node wrote, belongs to another
        record: Redis went back to older data in place (holding mlock). What the
        heartbeat does when Redis's change counter is found below it: recover
        (re-assert, resync)."""
        self.link.resync_needed(own_version_reused_why(v))

    # ------------------------------------------------------------------ events

    def queue(self, events: list[RegistryEvent], tag: object = None) -> None:
        """Queue ``events`` for the listeners (holding mlock, in the block that
        applied their change to the mirror: the queue order is the mirror
        order). ``tag``: the writer's ``_write_tags.tag`` (None: not an API
        write's). Nothing is queued while nobody listens.

        Race: a writer and the tail (or a recovery) change one key in turn;
        events handed over after mlock was released could cross (a node's
        register heard after the unregister that followed it)."""
        if events and self.listeners:
            pending = self.delivery.pending
            for event in events:
                pending.append((event, tag))

    def deliver(self) -> None:
        """Deliver the queued events in this thread, an API writer holding no
        lock of the node (unless another thread delivers: it delivers them)."""
        if self.delivery.pending:
            self.delivery.deliver()

    def hand_off(self) -> None:
        """Deliver the queued events from a courier thread (called by the tail,
        the lease thread and monitor callbacks, which never run a listener: a
        slow one would stop the mirror, the heartbeats or death detection)."""
        if self.delivery.pending:
            self.delivery.hand_off()

    def removed_event(self, old: Entry, why: str, dr: str, dc: str, ds: str) -> RegistryEvent:
        reason: UnregisterReason = why if why in ("replaced", "down") else "unregistered"  # type: ignore[assignment]
        # down=None when the death was noticed before its monitor reported it
        # (a dead local agent replaced by a new registration), as MemoryRegistry does.
        down = _down_from(dr, dc, ds) if reason == "down" and dr else None
        return RegistryEvent("unregistered", old, reason=reason, down=down)

    # ------------------------------------------------------------------ entries

    def entry_from_head(
        self,
        key: Hashable,
        ek: str,
        head_text: str,
        meta: bytes,
        orphans: list[tuple[Hashable, str, str]],
    ) -> Entry | None:
        """Build a mirror entry (holding mlock); None, and an orphan to delete, for
        an entry of this node with no live local registration behind it."""
        head = json.loads(head_text)
        node = head["n"]
        if node == self.node:
            own = self.own.get(key)
            if own is None or own.head != head_text:
                orphans.append((key, ek, head_text))
                return None
            agent: Any = own.agent
        else:
            a = head.get("a") or {}
            agent = RemoteAgent(node, a.get("kind", "?"), a.get("pid"), a.get("name"))
        return new_entry(key, agent, metadata_from_json(meta), head["t"], node)

    def forget_own(self, key: Hashable, own: Own, prev: Own | None = None) -> None:
        """Undo the pending local registration of a failed register."""
        with self.mlock:
            if self.own.get(key) is own:
                if prev is not None:
                    self.own[key] = prev
                else:
                    del self.own[key]
        if own.monitor is not None:
            own.monitor.demonitor()

    def ix_for(self, frozen: Mapping[str, Any]) -> str:
        """The ``ix`` argument of the scripts: the index set names of ``frozen``."""
        names = index_names(self.prefix, self.indexed, frozen)
        return json.dumps(names, separators=(",", ":")) if names else ""

    @staticmethod
    def utf8(text: str) -> bytes:
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidMetadata(f"metadata is not valid Unicode text: {exc}") from None
