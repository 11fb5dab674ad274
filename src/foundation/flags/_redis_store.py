"""``RedisFlagStore``: flag state, history and migration stages shared through Redis.

Layout (``ns`` is the namespace; the braces make it a Redis Cluster hash tag, so
every key of one deployment lives in one slot and a transaction may touch them all):

``{ns}:flags:state``       hash   flag name -> ``FlagState`` JSON (runtime state only)
``{ns}:flags:history``     stream one entry per ``FlagChange``: ``change`` (JSON: the
                                  change as a delta, see ``_history``; older entries
                                  hold the whole record), ``origin`` (writing store),
                                  ``txn``, ``i``, ``n``, ``v``
``{ns}:flags:stages``      hash   plan -> committed migration stage
``{ns}:flags:migrations``  stream one entry per ``MigrationEvent``: ``event`` (JSON), ``v``,
                                  ``txn`` (older entries lack it)
``{ns}:flags:history:base`` hash flag name -> ``FlagState`` JSON: each flag's runtime
                                  state after the last trimmed history entry (the
                                  base the kept entries' deltas replay from)
``{ns}:flags:history:last`` hash flag name -> its latest trimmed change (greatest
                                  ``at``; a self-contained record, ``old`` in full)
``{ns}:flags:migrations:last`` hash plan -> its latest trimmed event (JSON)
``{ns}:flags:meta``        hash   ``version`` (committed transactions), ``epoch``,
                                  ``restored`` (a random id per restore from a copy),
                                  ``trimmed`` (id of the first entry kept by the last trim),
                                  ``mtrimmed`` (the same, of the migrations stream)
``{ns}:flags:catalogue``   hash   flag name -> ``FlagInfo`` JSON (declared flags)
``{ns}:flags:plans``       hash   plan name -> ``MigrationPlan`` JSON

The catalogue and plans are written directly (HSET, outside the versioned
transactions) and are not restored from the node copy: after Redis restarts
empty they come back when the applications construct their ``FeatureFlags`` and
``Migration`` again. The copy keeps the catalogue as last read or recorded
(``catalogue()`` answers from it during an outage, so a tool can list flags);
reading plans needs Redis (``BackendUnavailable`` otherwise).

Writes are optimistic transactions: ``WATCH`` the state, stage and meta hashes
(and the two streams: see ``_run_and_queue``),
read, run the caller's function, then ``MULTI``/``EXEC`` the state writes, their
history entries and ``version + 1`` together. A concurrent commit anywhere makes
``EXEC`` fail and the function is run again, so a read inside a transaction is
never stale at commit. ``version`` therefore numbers the committed transactions
of the deployment; ``epoch`` is a random id given when its data is first written.
Every commit changes ``meta`` with its data: a commit bumps ``version``, a restore
sets a new ``restored`` (even back to the same version), so equal ``meta`` before
and after a read means nothing was committed in between (reads use no MULTI).

A lost EXEC reply is not a conflict. redis-py reports a connection error or
timeout while WATCHing, EXEC's included, as ``WatchError``: the commit may have
landed. Running the function again would apply it twice (one ``advance()``
moving two stages), so the outcome is read back first (``_settle``, one round
trip on a fresh connection): every entry a commit appends carries its random
``txn`` id with its ``v``, and the newest entry at or below that version tells.
Landed: committed, the function's result returned. Not landed: retried as a
conflict. Redis unreachable: ``BackendUnavailable`` saying the write may or may
not be committed (and the listener resyncs: it skips this store's own entries);
a kill switch kept then takes the lost commit's times, so its replay finds it
already committed and writes nothing twice (``_sent_times``). An EXEC landing
late, after its read-back, is found by the attempts after it (``_landed_late``).

Retention (``history_limit``, see ``_history``): a commit whose EXEC finds the
stream longer than ``history_limit + trim_slack`` trims it to ``history_limit``
(``_trim``): it reads the base and the entries to drop, replays them into the
new base, and one Lua script checks that nobody trimmed or restored meanwhile
(``epoch``, ``restored``, ``trimmed`` unchanged), then writes the base, runs
``XTRIM MINID <cut>`` and sets ``trimmed`` -- atomically, so a reader (which
brackets its reads with ``meta``) sees the base and the stream of one cut.
Commits only append entries after the cut, so a trim never conflicts with them;
of two trimmers the second finds ``trimmed`` moved and does nothing, or (when
the first finished before its reads) counts again from an ``XLEN`` read with
the entries and finds nothing due: never a cut below ``history_limit``. Readers
of the history (``history``, the kill switch's check, the node copy) replay
from the base. A trim failing (Redis gone) only logs: the next commit retries.
The migrations stream keeps the last ``history_limit`` events of all plans (the
same rule, counted apart): a commit whose EXEC finds it over runs ``_TRIM_EVENTS``
(``XTRIM MAXLEN`` exactly, then ``mtrimmed`` := the first kept id, atomically).
Events are whole records: no base, and two trimmers only ever cut to a limit.
Stages live in ``{ns}:flags:stages``, never derived from events. The node copy
mirrors the cut (``mtrimmed``) as it mirrors ``trimmed``.
Each trim also keeps, per flag / per plan, the latest change / event it dropped
(greatest ``at``) in ``{ns}:flags:history:last`` / ``{ns}:flags:migrations:last``,
atomically with the cut (the trim scripts), unless a later one is there: a pending
kill switch is checked against them as well as the kept entries, so whether the
newer change it must yield to was trimmed never changes the decision (see
``committed_since``). No commit writes them: the commit path is unchanged. The
node copy mirrors them with the cut they belong to, and a restore puts them back.

Propagation: the history stream is also the change feed. Each store runs one
listener thread blocked in ``XREAD BLOCK`` on it, on a connection of its own;
Redis wakes it the moment a commit lands, and it calls the subscribers with that
transaction's changes (never a transaction this store object committed). An
entry holds only the change (a delta of the runtime state it replaced), so the
listener replays every entry, its own included, from the states of the copy at
its last catch-up, and hands subscribers whole ``FlagChange`` records. After
a disconnect, a Redis restart or a stream that went backwards, the listener
resynchronises and tells subscribers ``[]`` ("reload"). ``FeatureFlags.enabled()``
never touches Redis: it reads the caller's local cache.

Outages (see also ``docs/flags-outages.md``)
---------------------------------------------

*The node copy.* Each store keeps the deployment's last committed state, stages,
version and history (as the stream holds it: its stream ids and trim base) in a
local SQLite file (``cache_path``; default ``$FOUNDATION_CACHE_DIR``, else
``$XDG_CACHE_HOME/foundation``, else ``~/.cache/foundation``, file
``flags-<namespace>-<hash of namespace and redacted URL>.sqlite3``;
``cache_path=None`` keeps it in memory for the life of
the process). It is refreshed after every commit this store sees; its history
stays a copy of Redis' stream, never a spliced one (each entry is a delta of the
one before): a refresh appends only while Redis still holds the copy's last
entries, else it takes the whole stream (Redis back from an older snapshot).
A trimmed stream is mirrored as it is: the copy holds Redis' base and the
entries from the same cut on (a suffix of the stream at the copy's version; a
trim landing after the last commit a copy mirrored reaches it with the
listener's periodic check, within ``resync_interval``). While Redis
cannot be reached, reads (``load_states``, ``history``, ``migration_stage``,
``migration_history``) answer from it and ``stale`` is True. A store constructed
while Redis is down starts from its copy (stale) if it has one; without a copy
it raises ``BackendUnavailable`` as before (nothing to serve).
A read that Redis answers with a newer version than the copy first brings
the copy up to it: a node never serves a state its copy lacks, so neither the
copy served during an outage nor a restore from it takes back what it served.
Likewise a write returns only once the writer's copy holds it: if Redis goes
away (or restarts empty) between the commit and the copy's refresh, the copy
takes the commit from what the transaction wrote (when it was exactly one
version behind); otherwise the write raises ``BackendUnavailable`` (committed
or not, as when EXEC's reply is lost) and nothing serves it.

*Restore, newest version first.* When a store reaches Redis and Redis holds an
OLDER version than its copy -- no ``meta`` key at all (restarted empty, flushed)
or a smaller ``version`` (restarted from an old snapshot) -- it restores state,
stages, history and migration history from its copy, in one Lua script that
first re-checks the version: the copy replaces Redis only if Redis is still
older. So when several nodes restore at once, the first one writes, the others
find an equal or newer version and do nothing (history is never duplicated),
and a node with an older copy never overwrites a newer one. A node whose copy
is older than Redis (or of another epoch) refreshes its copy from Redis. Caveat:
a node without a copy that writes to an empty Redis before any node restored
writes version 1, which a restore then replaces.

*The kill switch.* ``FeatureFlags.disable`` and ``Migration.emergency_rollback``
go through ``kill_switch``: if Redis cannot be reached (the store is stale, or
the commit fails with ``BackendUnavailable``), the switch-off is applied to this
node's view at once (reads see it), recorded in the copy with its ``by``,
``reason`` and time (``pending()``), and committed when Redis returns (before
the store says it is in sync). Rule: it is committed -- switching the flags off
again on top of whatever state is committed then, and moving the plan to stage
0 -- unless a change to one of its flags (or an event of its plan) committed by
anyone carries a LATER time (``at``) than the kill switch: that newer decision
wins, the pending kill switch is dropped with a WARNING log and a
``foundation.flags.pending_superseded`` event. It is never dropped silently. The
rule holds on a trimmed history too (the ``last`` hashes above). Any
other write during an outage raises ``BackendUnavailable`` within about
``timeout`` and changes nothing.

Events (``foundation.telemetry``; each also a log line under ``foundation.flags``):

``foundation.flags.stale``               lost Redis (or started without it); serving the copy
``foundation.flags.started_from_cache``  constructed during an outage, from the copy
``foundation.flags.restored``            this node restored Redis from its copy
``foundation.flags.pending_recorded``    a kill switch was recorded during an outage
``foundation.flags.pending_committed``   a pending kill switch was committed
``foundation.flags.pending_superseded``  a pending kill switch lost to a newer change
``foundation.flags.in_sync``             back in sync with Redis
``foundation.flags.read_only``           Redis is a read-only replica (ROLE, or a READONLY reply)
``foundation.flags.writable``            it accepts writes again

``stale`` is reported once per transition (from the last ``in_sync``), whichever
step failed, also a resync that had already stopped following Redis.

*A read-only replica* (a failover, ``REPLICAOF``): reads follow it, ``status()``
says ``read_only``; every write raises ``BackendUnavailable`` except the kill
switch, applied locally and committed (and the catalogue recorded again) by the
resync that follows its return to writable (seen by ``ROLE`` every
``resync_interval``). Reads use no MULTI (see ``_pull``): an out-of-memory
Redis 7 refuses queued commands, not plain reads.

Each event's data holds ``namespace`` and ``url`` (redacted) and what it is
about (``version``, ``flags``, ``plans``, ``by``, ``reason``, ``at``, ``error``,
``superseded_by``). Listener faults are logged under ``foundation.flags.redis``;
the listener never dies: it retries with backoff.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from dataclasses import replace as _replace
from typing import TYPE_CHECKING, Any, TypeVar

from foundation import _flap, telemetry
from foundation._listeners import check_listener
from foundation._redis_conn import (
    NoAnswerWindow,
    check_url,
    connect,
    error_kind,
    import_redis,
    redact_url,
    tls_failure,
    translated,
)
from foundation._redis_memory_policy import EvictionCheck
from foundation._retry import RetryBackoff
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FlagError,
    InvalidConfig,
    InvalidFlagValue,
    bounded_repr,
)
from foundation.flags._history import Replay, encode_json
from foundation.flags._node_cache import (
    NodeCache,
    PendingKillSwitch,
    Snapshot,
    default_cache_path,
    stream_key,
)
from foundation.flags._store import (
    DEFAULT_HISTORY_LIMIT,
    FlagChange,
    FlagInfo,
    FlagState,
    FlagStore,
    MigrationEvent,
    StoreTransaction,
    catalogue_entries,
    check_history_limit,
    check_key,
    check_put,
    check_put_migration,
    events_to_keep,
    log_trim,
    plan_from_json,
    plan_to_json,
    report_callback_error,
    trim_slack,
)

if TYPE_CHECKING:
    # sqlite3, uuid and pathlib are imported where used (`import foundation` stays cheap).
    from pathlib import Path

    from foundation.flags._migration import MigrationPlan

__all__ = ["RedisFlagStore", "RedisFlagStoreStatus"]

T = TypeVar("T")

log = logging.getLogger("foundation.flags")
listener_log = logging.getLogger("foundation.flags.redis")

_META = ("version", "epoch", "restored", "trimmed", "mtrimmed")
"""The meta fields read around a consistent read: ``restored`` is a token each
restore sets, so a FLUSHALL and a restore back to the same version still differ;
``trimmed`` / ``mtrimmed`` move with each trim of the history / the migrations
stream (which changes no version)."""

_MAX_ATTEMPTS = 1000  # optimistic retries before a transaction gives up (pathological contention)

# The stores of this process not yet closed, for gauges read at collection time
# (foundation.metrics reads their node copy's state: never from under one of their locks).
_live_lock = threading.Lock()
_live: weakref.WeakSet[RedisFlagStore] = weakref.WeakSet()


def copies_in_memory() -> dict[str, bool]:
    """Per namespace, whether an open ``RedisFlagStore`` of this process keeps its
    node copy in memory (``foundation.metrics`` collects it). No I/O and no store
    lock: one flag read per store, so a collection costs next to nothing."""
    with _live_lock:  # a store added meanwhile must not break the iteration
        stores = list(_live)
    found: dict[str, bool] = {}
    for store in stores:
        # Race: a store closing meanwhile reports its last value once more.
        found[store.namespace] = found.get(store.namespace, False) or store._cache.in_memory
    return found


# Restore the deployment from a node copy, only if Redis is still older than it.
# KEYS: meta, state, stages, history, migrations, history base, the latest trimmed
# change per flag, the latest trimmed event per plan. ARGV[1]: the copy as JSON (its
# base and ``trimmed`` too: its history replays from that base). ARGV[2] 'lost':
# also restore at the copy's own version and epoch if Redis lost keys of it (evicted
# under an allkeys-* maxmemory-policy): fewer flag states or stages than the copy
# holds at that version (only a commit changes them, and every commit moves the
# version), or a history or migrations stream gone while the copy holds entries.
_RESTORE = """
local data = cjson.decode(ARGV[1])
local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end
local function lost()
  local m = redis.call('HMGET', KEYS[1], 'version', 'epoch')
  if m[1] ~= data.version or m[2] ~= data.epoch then return false end
  return redis.call('HLEN', KEYS[2]) < count(data.states)
      or redis.call('HLEN', KEYS[3]) < count(data.stages)
      or (#data.history > 0 and redis.call('EXISTS', KEYS[4]) == 0)
      or (#data.migrations > 0 and redis.call('EXISTS', KEYS[5]) == 0)
end
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(data.version)
    and not (ARGV[2] == 'lost' and lost()) then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
for name, state in pairs(data.states) do redis.call('HSET', KEYS[2], name, state) end
for plan, stage in pairs(data.stages) do redis.call('HSET', KEYS[3], plan, stage) end
for _, e in ipairs(data.history) do redis.call('XADD', KEYS[4], e[1], unpack(e[2])) end
for _, e in ipairs(data.migrations) do redis.call('XADD', KEYS[5], e[1], unpack(e[2])) end
for name, state in pairs(data.base) do redis.call('HSET', KEYS[6], name, state) end
for name, record in pairs(data.hlast) do redis.call('HSET', KEYS[7], name, record) end
for plan, event in pairs(data.mlast) do redis.call('HSET', KEYS[8], plan, event) end
redis.call('HSET', KEYS[1], 'version', data.version, 'epoch', data.epoch,
           'restored', data.restored)
if data.trimmed ~= '' then
  redis.call('HSET', KEYS[1], 'trimmed', data.trimmed)
else
  redis.call('HDEL', KEYS[1], 'trimmed')
end
if data.mtrimmed ~= '' then
  redis.call('HSET', KEYS[1], 'mtrimmed', data.mtrimmed)
else
  redis.call('HDEL', KEYS[1], 'mtrimmed')
end
return 1
"""

# Trim the history to the entries from ARGV[4] on, with ARGV[5] (JSON: flag ->
# state) as the new base and ARGV[6] (JSON: flag -> record) as the flags' latest
# trimmed changes that moved, only if nobody trimmed or restored since the trimmer
# read the entries it replayed (ARGV[1..3]: the epoch, restored and trimmed it
# read; '' for none). Commits only append after the cut: they need no check.
# KEYS: meta, history, history base, latest trimmed change per flag. Returns the
# entries trimmed, -1 if it moved.
_TRIM = """
local m = redis.call('HMGET', KEYS[1], 'epoch', 'restored', 'trimmed')
if (m[1] or '') ~= ARGV[1] or (m[2] or '') ~= ARGV[2] or (m[3] or '') ~= ARGV[3] then
  return -1
end
local n = redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
redis.call('DEL', KEYS[3])
for name, state in pairs(cjson.decode(ARGV[5])) do redis.call('HSET', KEYS[3], name, state) end
for name, record in pairs(cjson.decode(ARGV[6])) do redis.call('HSET', KEYS[4], name, record) end
redis.call('HSET', KEYS[1], 'trimmed', ARGV[4])
return n
"""

# Trim the migrations stream to its last ARGV[1] events (exactly) and record the
# first kept id in meta's `mtrimmed` (what node copies mirror). Events are whole
# records: no base, no check; commits only append. Before the cut, each plan's
# latest event among those dropped (greatest `at`; the later entry on a tie) goes
# to KEYS[3] unless it holds a later one: a pending emergency rollback is checked
# against it (see committed_since). An event that does not decode is dropped
# unrecorded (readers of the stream refuse it anyway). KEYS: meta, migrations,
# latest trimmed event per plan. Returns the events trimmed.
_TRIM_EVENTS = """
local drop = redis.call('XLEN', KEYS[2]) - tonumber(ARGV[1])
if drop <= 0 then
  return 0
end
local latest = {}
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', drop)) do
  local f = e[2]
  for i = 1, #f - 1, 2 do
    if f[i] == 'event' then
      local ok, ev = pcall(cjson.decode, f[i + 1])
      if ok and type(ev) == 'table' and type(ev.plan) == 'string'
          and type(ev.at) == 'number' then
        local seen = latest[ev.plan]
        if seen == nil or ev.at >= seen[1] then latest[ev.plan] = {ev.at, f[i + 1]} end
      end
    end
  end
end
for plan, e in pairs(latest) do
  local kept = redis.call('HGET', KEYS[3], plan)
  local later = false
  if kept then
    local ok, k = pcall(cjson.decode, kept)
    later = ok and type(k) == 'table' and type(k.at) == 'number' and k.at > e[1]
  end
  if not later then redis.call('HSET', KEYS[3], plan, e[2]) end
end
local n = redis.call('XTRIM', KEYS[2], 'MAXLEN', ARGV[1])
if n > 0 then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  redis.call('HSET', KEYS[1], 'mtrimmed', first[1][1])
end
return n
"""


_DIVERGED = Snapshot(0, None, {}, {}, [], [], full=True)
"""``_read_snapshot``'s answer when Redis no longer holds the copy's last entries."""


_READ_BACK_PAGE = 64
"""Stream entries read per round trip when looking up a commit whose reply was lost."""


class _Retry(Exception):
    """One attempt of ``RedisFlagStore.transaction`` is over: try again."""


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


class _FailedFast(BackendUnavailable):
    """A write refused at once: one timed out moments ago (``_fail_fast``)."""


class _Behind(Exception):
    """Redis holds an older version than this node's copy, or lost keys of the copy's
    own version (evicted): restore before writing."""


class _LandedLate(Exception):
    """An earlier attempt's commit, read back as not there, landed since: it is the
    transaction's commit (``commit``, made by the run that returned ``result``)."""

    def __init__(self, commit: _Commit, result: Any) -> None:
        super().__init__(commit.version)
        self.commit, self.result = commit, result


class _ReplyLost(Exception):
    """EXEC was (maybe) sent and no reply came (``cause``): its outcome is unknown."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Unconfirmed(BackendUnavailable):
    """A commit sent to Redis that this node cannot confirm: it may or may not have
    landed (or Redis may have lost it since). ``changes`` and ``events`` are what it
    wrote: a kill switch kept for later takes their times (``_sent_times``), so its
    replay finds them in the history if they landed and writes nothing twice."""

    def __init__(
        self,
        message: str,
        changes: Iterable[FlagChange] = (),
        events: Iterable[MigrationEvent] = (),
    ) -> None:
        super().__init__(message)
        self.changes = tuple(changes)
        self.events = tuple(events)


@dataclass(frozen=True, slots=True)
class RedisFlagStoreStatus:
    """What a ``RedisFlagStore`` knows about itself (``status()``).

    ``connected``: the listener follows Redis. ``stale``: answers come from the
    node copy. ``version``: the copy's version. ``pending``: kill switches not
    yet committed (``pending_flags``: the flags they switch off).
    ``restores``: times this store restored Redis from its copy.
    ``stale_since``: wall-clock time (``time.time()``) of the last transition
    into stale, None while not stale. ``read_only``: Redis is a read-only
    replica (``ROLE``, or a ``READONLY`` reply): reads work, writes other than
    the kill switch fail with ``BackendUnavailable``. ``copy_in_memory``: the
    node copy's file failed (disk full, I/O error, locked, deleted...), so the
    copy lives in memory, not durable, until a retry writes it back (see
    docs/flags-outages.md, "The node copy"). ``eviction_policy``: the server's
    ``maxmemory-policy`` when it may evict this store's keys (``maxmemory`` set,
    an ``allkeys-*`` policy; logged once at WARNING), else None (also when
    ``INFO`` is refused): see docs/flags-outages.md, "An evicting Redis".
    """

    connected: bool
    stale: bool
    version: int
    pending: int
    cache_path: Path | None
    last_error: str | None
    restores: int
    resyncs: int
    stale_since: float | None = None
    pending_flags: tuple[str, ...] = ()
    read_only: bool = False
    copy_in_memory: bool = False
    eviction_policy: str | None = None


def _check_name(name: object, what: str) -> None:
    check_key(name, what)  # the rule of every store: a non-empty, valid-Unicode str


def _off(state: FlagState) -> FlagState:
    return _replace(state, switch=False)


class _Staged(StoreTransaction):
    """Validation and staging shared by the Redis and the local transaction."""

    def __init__(self) -> None:
        self.puts: dict[str, FlagState | None] = {}
        self.changes: list[FlagChange] = []
        # Per change: (the runtime state it replaces, the one it writes): its record
        # is a delta of the first (see _history).
        self.bases: list[tuple[FlagState | None, FlagState | None]] = []
        self.stage_puts: dict[str, int] = {}
        self.events: list[MigrationEvent] = []

    def put(self, name: str, state: FlagState | None, change: FlagChange) -> None:
        # Validate before staging: bad input raises and nothing is written.
        check_put(name, state, change)
        before = self.get(name)  # under WATCH in Redis: still the state at EXEC
        self.puts[name] = state
        self.changes.append(change)
        self.bases.append((before, state))

    def put_migration(self, plan: str, stage: int, event: MigrationEvent) -> None:
        # A stage the node copies (SQLite) cannot hold would poison every node.
        check_put_migration(plan, stage, event)
        self.stage_puts[plan] = stage
        self.events.append(event)


class _RedisTransaction(_Staged):
    """Reads go to Redis under WATCH (cached per transaction); writes are staged."""

    def __init__(self, store: RedisFlagStore, pipe: Any) -> None:
        super().__init__()
        self._store = store
        self._pipe = pipe
        self._states: dict[str, str] | None = None
        self._decoded: dict[str, FlagState | None] = {}
        self._stages: dict[str, str] | None = None
        self.trimmed: str | None = None  # meta's `trimmed` read under WATCH
        self.mtrimmed: str | None = None  # ... and `mtrimmed`

    def get(self, name: str) -> FlagState | None:
        _check_name(name, "flag name")
        if name in self.puts:
            return self.puts[name]
        if name in self._decoded:
            return self._decoded[name]
        if self._states is None:
            # One HGETALL under WATCH: later commits anywhere abort our EXEC.
            self._states = self._pipe.hgetall(self._store._k_state)
        raw = self._states.get(name)
        state = None if raw is None else self._store._decode_state(raw)
        self._decoded[name] = state  # put() reads it again: the base of its record
        return state

    def migration_stage(self, plan: str) -> int:
        _check_name(plan, "plan name")
        if plan in self.stage_puts:
            return self.stage_puts[plan]
        if self._stages is None:
            self._stages = self._pipe.hgetall(self._store._k_stages)
        return self._store._decode_stage(self._stages.get(plan))

    def committed_since(
        self, op: PendingKillSwitch
    ) -> tuple[list[FlagChange | MigrationEvent], bool]:
        """(changes/events of ``op``'s flags and plans committed LATER than ``op.at``,
        whether ``op`` itself is already committed). Read under WATCH: every
        commit bumps the watched version, so a commit landing meanwhile retries us.

        The streams may have been trimmed since ``op`` was recorded (more than
        ``history_limit`` commits during this node's outage): each trim kept, per
        flag and per plan, its latest change/event among those it dropped (the
        ``last`` hashes, see ``_trim`` and ``_TRIM_EVENTS``), and that one is checked
        too. Any change later than ``op.at`` trimmed away implies that a change at
        least as late is in the ``last`` hash, so the decision is the one an
        untrimmed stream gives. (``superseded_by`` then names, per flag or plan,
        the latest of the trimmed ones only.)
        """
        store, pipe = self._store, self._pipe
        flags, plans = list(op.stored), list(op.plans)
        # Deltas: replayed from the base of the last trim (see _trim).
        base = pipe.hgetall(store._k_base)
        entries = pipe.xrange(store._k_history)
        hlast = pipe.hmget(store._k_hlast, flags) if flags else []
        events = pipe.xrange(store._k_migrations) if plans else []
        mlast = pipe.hmget(store._k_mlast, plans) if plans else []
        # Race: a trim between these reads (a base of one cut with the entries of
        # another, or entries dropped after we read the stream and before we read
        # the `last` hash: in neither). A trim moves meta's `trimmed` / `mtrimmed`;
        # meta is watched, so EXEC would fail anyway, but a superseded kill switch
        # writes nothing (no EXEC): retry now, before deciding on a mismatched read.
        if list(pipe.hmget(store._k_meta, "trimmed", "mtrimmed")) != [self.trimmed, self.mtrimmed]:
            raise _Retry
        newer: list[FlagChange | MigrationEvent] = []
        seen_changes = self._changes_since(
            op, newer, base, entries, dict(zip(flags, hlast, strict=True))
        )
        seen_events = self._events_since(op, newer, events, dict(zip(plans, mlast, strict=True)))
        # A commit is atomic: seeing any part of op means all of it was committed
        # (a crash between the commit and dropping the pending record).
        return newer, bool(seen_changes or seen_events)

    def _changes_since(
        self,
        op: PendingKillSwitch,
        newer: list[FlagChange | MigrationEvent],
        base: dict[str, str],
        entries: list[tuple[str, dict[str, str]]],
        lasts: dict[str, str | None],
    ) -> set[tuple[str, float, str | None, str | None]]:
        """Append to ``newer`` the changes of ``op``'s flags later than it; return its own seen."""
        store = self._store
        own = {(c.flag, c.at, c.by, c.reason) for c in op.changes}
        seen_changes: set[tuple[str, float, str | None, str | None]] = set()
        # The latest trimmed change of each flag first: it precedes every kept entry.
        trimmed = [store._decode_last(text) for text in lasts.values() if text is not None]
        replay = Replay(store._feed_states(base), flags=frozenset(op.stored))
        kept = (store._decode_change(fields, replay) for _id, fields in entries)
        for change in itertools.chain(trimmed, kept):
            if change is None:
                continue
            key = (change.flag, change.at, change.by, change.reason)
            if key in own:
                seen_changes.add(key)
            elif change.at > op.at:
                newer.append(change)
        return seen_changes

    def _events_since(
        self,
        op: PendingKillSwitch,
        newer: list[FlagChange | MigrationEvent],
        entries: list[tuple[str, dict[str, str]]],
        lasts: dict[str, str | None],
    ) -> set[tuple[str, str, float, str | None, str | None]]:
        """Append to ``newer`` the events of ``op``'s plans later than it; return its own seen."""
        store = self._store
        own_events = {(e.plan, e.action, e.at, e.by, e.reason) for e in op.events}
        seen_events: set[tuple[str, str, float, str | None, str | None]] = set()
        # The latest trimmed event of each plan first: it precedes every kept entry.
        trimmed = [store._decode_event({"event": text}) for text in lasts.values() if text]
        kept = (store._decode_event(fields) for _id, fields in entries)
        for event in itertools.chain(trimmed, kept):
            if event.plan not in op.plans:
                continue
            ekey = (event.plan, event.action, event.at, event.by, event.reason)
            if ekey in own_events:
                seen_events.add(ekey)
            elif event.at > op.at:
                newer.append(event)
        return seen_events


class _LocalTransaction(_Staged):
    """A transaction over the node copy (plus pending kill switches), for ``kill_switch``."""

    def __init__(self, store: RedisFlagStore) -> None:
        super().__init__()
        self._store = store
        self._states: dict[str, FlagState] | None = None

    def get(self, name: str) -> FlagState | None:
        _check_name(name, "flag name")
        if name in self.puts:
            return self.puts[name]
        if self._states is None:
            self._states = self._store._local_states()
        return self._states.get(name)

    def migration_stage(self, plan: str) -> int:
        _check_name(plan, "plan name")
        if plan in self.stage_puts:
            return self.stage_puts[plan]
        return self._store._local_stage(plan)


class _Commit:
    """What one transaction's EXEC commits (``_queue_writes``), to mirror into the copy.

    ``epoch`` is the deployment's epoch after the commit, ``base_epoch`` the one
    read under WATCH (None: a new deployment). The stream ids are EXEC's
    replies at ``history_at`` / ``migrations_at``.
    """

    __slots__ = (
        "base_epoch",
        "changes",
        "epoch",
        "events",
        "history",
        "history_at",
        "length_at",
        "migrations",
        "migrations_at",
        "mlength_at",
        "puts",
        "stage_puts",
        "token",
        "version",
    )

    def __init__(self, version: int, epoch: str | None, base_epoch: str | None, token: str) -> None:
        self.version = version
        self.epoch = epoch
        self.base_epoch = base_epoch
        # The commit's id: every entry it appends (both streams) carries it as `txn`,
        # so a commit whose EXEC reply was lost can be looked up (``_landed``).
        self.token = token
        self.changes: list[FlagChange] = []  # what the body staged (see _Unconfirmed)
        self.events: list[MigrationEvent] = []
        self.puts: dict[str, str | None] = {}
        self.stage_puts: dict[str, int] = {}
        self.history: list[dict[str, str]] = []
        self.migrations: list[dict[str, str]] = []
        self.history_at = 0
        self.migrations_at = 0
        self.length_at: int | None = None  # EXEC's reply to XLEN of the history, if queued
        self.mlength_at: int | None = None  # ... and of the migrations stream

    @staticmethod
    def entries(
        replies: list[Any], at: int, fields: list[dict[str, str]]
    ) -> list[tuple[str, dict[str, str]]]:
        ids = replies[at : at + len(fields)]
        if len(ids) != len(fields):
            raise IndexError("EXEC returned fewer replies than commands queued")
        return [(str(i), f) for i, f in zip(ids, fields, strict=True)]


class RedisFlagStore(FlagStore):
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

    def _start_listener(self) -> None:
        """Start the listener thread. Without a thread (the process's thread limit)
        close the connections and the node copy ``_first_sync`` opened, then raise
        ``BackendUnavailable``: nothing of this store is left open."""
        self._thread = threading.Thread(
            target=self._listen, name=f"foundation-flags-redis[{self.namespace}]", daemon=True
        )
        try:
            self._thread.start()
        except RuntimeError as exc:  # "can't start new thread" (EAGAIN: thread limit)
            # No thread ran and nobody holds this store yet: nothing can race.
            self._closed = True
            self._close_clients()
            self._cache.close()
            if self._created_copy:  # the node copy this start created: no file left
                self._remove_cache_files()
            raise BackendUnavailable(
                errno.EAGAIN,
                f"flag store {self.namespace!r} cannot start its listener thread: {exc}",
            ) from exc

    # ------------------------------------------------------------------ helpers

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

    def _init_state(self) -> None:
        """Locks, events and the listener's bookkeeping, before any connection."""
        self._lock = threading.Lock()  # guards _callbacks and _closed
        self._txn_lock = threading.Lock()  # one local transaction at a time: fewer WATCH retries
        self._conn_lock = threading.Lock()  # creating the write client
        self._copy_lock = threading.RLock()  # one refresh/restore of the node copy at a time
        self._callbacks: list[Callable[[list[FlagChange]], None]] = []
        self._closed = False
        self._stop = threading.Event()
        self._synced = threading.Event()  # set while the listener is connected and caught up
        self._resync_wanted = threading.Event()  # a reader saw Redis go back
        self._replay_wanted = threading.Event()  # a kill switch was recorded locally
        self._listener_client_id: int | None = None
        self._last_error: str | None = None
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
        self._client: Any = None
        self._listen_client: Any = None
        self._restore_script: Any = None
        self._trim_script: Any = None
        self._trim_events_script: Any = None
        self._trims = 0  # trims this store made (the first is logged at INFO)
        self._next_trim_at = 0  # after a failed trim: the stream length to try again at
        self._event_trims = 0  # ... the same, of the migrations stream
        self._next_event_trim_at = 0

    def _first_sync(self) -> None:
        """Connect and catch up, or start stale from the node copy if Redis is down."""
        created = self.cache_path is not None and not self._cache.has_data()
        self._created_copy = created  # a start that fails later removes it too
        has_copy = not created and self._cache.has_data()
        try:
            client = self._ensure_clients()
            self._catch_up()
            self._check_memory_policy(client)
            if not self._check_role():  # a read-only replica: they wait (see _resync)
                self._replay_pending()
        except BackendUnavailable as exc:
            if not has_copy:
                self._close_clients()
                self._cache.close()
                if created:
                    self._remove_cache_files()
                raise
            self._start_from_copy(exc)
        except BaseException:
            self._close_clients()
            self._cache.close()
            raise
        else:
            self._synced.set()

    def _remove_cache_files(self) -> None:
        """Delete the node copy's files this start created (the copy is closed)."""
        from pathlib import Path

        if self.cache_path is not None:  # leave no empty file behind
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(f"{self.cache_path}{suffix}").unlink()

    def _start_from_copy(self, exc: BackendUnavailable) -> None:
        """Start stale from the node copy: Redis was unreachable at start (``exc``)."""
        # Start from the node copy (stale); the listener catches up later.
        self._last_error = str(exc)
        self._stale_since = time.time()
        if _read_only_error(exc):
            self._note_read_only(True, str(exc))
        log.warning(
            "flag store %r: Redis at %s unavailable at start (%s); "
            "starting from the node copy at version %d (stale)",
            self.namespace, self._url, exc, self._cache.version,
        )  # fmt: skip
        self._event(
            "started_from_cache",
            version=0 if self._closed else self._cache.version,
            cache_path=str(self.cache_path) if self.cache_path else None,
            error=str(exc),
        )
        self._event("stale", error=str(exc))

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

    # ------------------------------------------------------- the node copy

    def _restore_if_behind(self) -> bool:
        """Restore Redis from this node's copy if Redis holds an older version, or
        lost keys of the copy's own version (evicted: see ``_lost_keys``). Atomic."""
        import uuid

        client = self._ensure_clients()
        with self._copy_lock, self._translated("restoring flags from the node copy"):
            raw_version, lost = self._lost_keys(client)
            if not lost and not self._copy_behind_check(raw_version):
                return False
            cache = self._cache
            version = cache.version
            base, trimmed, history = cache.history_with_base()
            # Race: another process sharing the file mirroring a later cut between
            # the two reads: its `last` records are the same or later ones, each of a
            # change or event the stream held before, so a check reads no less.
            hlast, mlast = cache.lasts()
            payload = {
                "version": str(version),
                "epoch": cache.epoch or uuid.uuid4().hex,
                "restored": uuid.uuid4().hex,  # a new meta, even at the same version
                "states": cache.states(),
                "stages": {p: str(s) for p, s in cache.stages().items()},
                "history": [[i, _flat(f)] for i, f in history],
                "migrations": [[i, _flat(f)] for i, f in cache.migrations()],
                "base": base,
                "hlast": hlast,
                "mlast": mlast,
                "trimmed": trimmed or "",
                "mtrimmed": cache.mtrimmed or "",
            }
            # The script re-checks the version itself: of nodes restoring at
            # once, only the first (or the one with the newest copy) writes.
            done = int(
                self._restore_script(
                    keys=self._keys(), args=[json.dumps(payload), "lost" if lost else ""]
                )
            )
        if done and lost:
            self._restores += 1
            log.warning(
                "flag store %r: Redis at %s lost keys of version %s (%s: evicted? its "
                "maxmemory-policy must be noeviction); restored %d flag states and %d "
                "history entries from this node's copy",
                self.namespace, self._url, raw_version, ", ".join(lost),
                len(payload["states"]), len(payload["history"]),
            )  # fmt: skip
            self._event(
                "restored",
                version=version,
                previous=int(raw_version or 0),
                flags=sorted(payload["states"]),
                changes=len(payload["history"]),
            )
        elif done:
            self._restores += 1
            log.warning(
                "flag store %r: Redis at %s held an older version (%s) than this node's "
                "copy (%d); restored %d flag states and %d history entries from it",
                self.namespace, self._url, raw_version or "none", version,
                len(payload["states"]), len(payload["history"]),
            )  # fmt: skip
            self._event(
                "restored",
                version=version,
                previous=None if raw_version is None else int(raw_version),
                flags=sorted(payload["states"]),
                changes=len(payload["history"]),
            )
        return bool(done)

    def _lost_keys(self, client: Any) -> tuple[str | None, list[str]]:
        """(Redis' version, the keys Redis lost of the copy's version: evicted).

        At the copy's own version and epoch, Redis holds what the copy holds:
        only a commit changes the flag states and stages, and every commit moves
        the version; a trim shortens a stream, never empties it. So fewer states
        or stages than the copy, or a stream gone that the copy has entries of,
        means Redis deleted keys (eviction under an ``allkeys-*`` policy, a manual
        ``DEL``). One round trip, read in the restore's place (``_RESTORE``
        checks again, atomically, before it writes).
        """
        cache = self._cache
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k_meta, "version", "epoch")
            pipe.hlen(self._k_state)
            pipe.hlen(self._k_stages)
            pipe.exists(self._k_history)
            pipe.exists(self._k_migrations)
            (raw_version, epoch), states, stages, history, migrations = pipe.execute()
        version, copy_epoch = cache.version, cache.epoch
        if (
            raw_version is None
            or _check_version(raw_version, self._k_meta) != version
            or epoch != copy_epoch
        ):
            return raw_version, []
        # Race (the resync check holds no _copy_lock): this node's commit confirmed
        # into the copy between these reads, so the copy's states are of a later
        # version than Redis was read at. Read its version again: moved, no verdict
        # (the next check compares again).
        ids = cache.last_ids()
        held = (len(cache.states()), len(cache.stages()))
        if cache.version != version or cache.epoch != copy_epoch:
            return raw_version, []
        lost = [
            key
            for key, gone in (
                (self._k_state, states < held[0]),
                (self._k_stages, stages < held[1]),
                (self._k_history, not history and ids[0] is not None),
                (self._k_migrations, not migrations and ids[1] is not None),
            )
            if gone
        ]
        return raw_version, lost

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

    def _pull(self) -> bool:
        """Refresh the copy from one consistent read of Redis; False if Redis is older
        (or lost a stream of the copy's version: a resync is asked for, it restores).

        No MULTI: Redis 7 refuses commands queued in MULTI while it is out of
        memory (``maxmemory``, ``noeviction``) although it still serves plain
        reads. Race: a commit landing amid the reads. Every commit (EXEC, or the
        restore script) changes ``meta`` atomically with its data, so the
        reads sit between two reads of ``meta`` in one pipeline: equal ``meta``
        means no commit landed in between; otherwise read again.

        The copy's history stays a run of Redis' (each entry is a delta of
        the one before, see ``_history``), from the same cut with the same base
        once Redis trimmed it (the base and ``trimmed`` are read with the rest,
        see ``NodeCache.apply``): a refresh appends only what follows
        the copy's last entries, and only while Redis still holds those (read
        inclusively). Redis back from an older snapshot (same epoch) with other
        commits past the copy's version does not: the refresh then takes all
        of Redis' history instead of chaining it onto entries Redis lost.
        """
        client = self._ensure_clients()
        with self._copy_lock, self._translated("refreshing the node copy"):
            whole = False  # the copy's tails are not in Redis: read everything
            for _ in range(_MAX_ATTEMPTS):
                meta, tails = self._copy_meta(client)
                if self._copy_behind_check(meta[0]):
                    return False  # the caller restores (or the listener will)
                since = None if whole else self._copy_since(meta, tails)
                if (
                    since is not None
                    and ((since[0] and not tails[0]) or (since[1] and not tails[1]))
                    and self._lost_keys(client)[1]  # (a round trip only then)
                ):
                    # Race: Redis lost (evicted) a stream the copy holds entries
                    # of, at the copy's own version and epoch, and this refresh
                    # (the listener's after a reply it read before the loss, a
                    # write's, a read's) comes before any check. Taken whole, as
                    # a divergence, it would empty the copy's history too: then
                    # nothing could restore it. It is a loss (see _lost_keys):
                    # the resync restores it from the copy.
                    self._resync_wanted.set()
                    return False
                if (
                    since == tails
                    and self._cache.version == int(meta[0] or 0)
                    and self._cache.trimmed == meta[3]
                    and self._cache.mtrimmed == meta[4]
                ):
                    return True  # nothing new (the copy's tails and trims included)
                snap = self._read_snapshot(client, meta, since)
                if snap is None:
                    continue  # a commit landed meanwhile: read again
                if snap is _DIVERGED:
                    whole = True
                    continue
                self._cache.apply(snap)
                return True
        return True  # pragma: no cover - a thousand commits in a row

    def _copy_meta(self, client: Any) -> tuple[list[Any], tuple[str | None, str | None]]:
        """(Redis' meta, the ids of its two streams' last entries: None when empty)."""
        with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self._k_meta, *_META)
            pipe.xrevrange(self._k_history, count=1)
            pipe.xrevrange(self._k_migrations, count=1)
            meta, history, migrations = pipe.execute()
        return list(meta), (_tail_id(history), _tail_id(migrations))

    def _copy_since(
        self, meta: list[Any], tails: tuple[str | None, str | None]
    ) -> tuple[str | None, str | None] | None:
        """The copy's last stream ids if the copy is of this deployment (None: read all)."""
        cache = self._cache
        if meta[0] is None or cache.epoch != meta[1] or not cache.has_data():
            return None
        kept = cache.trimmed
        if kept is not None and (meta[3] is None or stream_key(meta[3]) < stream_key(kept)):
            # Redis' stream goes back further than the copy's (restored from an
            # untrimmed copy): the copy's base is not the base of Redis' entries.
            return None
        cut = cache.mtrimmed
        if cut is not None and (meta[4] is None or stream_key(meta[4]) < stream_key(cut)):
            return None  # likewise Redis' migrations stream: take it whole
        return cache.last_ids()

    def _read_snapshot(
        self, client: Any, meta: list[Any], since: tuple[str | None, str | None] | None
    ) -> Snapshot | None:
        """Redis at ``meta`` (None: it moved), entries after ``since`` (None: all);
        ``_DIVERGED`` when Redis no longer holds the copy's last entries.

        The base (a state per flag ever trimmed) and the ``last`` hashes are read
        only when the copy needs them: a whole read, or a cut (of that stream) the
        copy does not hold yet. At the copy's cut
        it is the copy's base already (a base is what the entries before the cut
        left), so a refresh after each commit costs O(its change), not O(flags).
        """
        new_cut = since is None or self._cache.trimmed != meta[3]
        new_mcut = since is None or self._cache.mtrimmed != meta[4]
        with client.pipeline(transaction=False) as pipe:
            self._queue_copy_reads(pipe, since)
            if new_cut:
                pipe.hgetall(self._k_base)
                pipe.hgetall(self._k_hlast)  # moves with the base (see _trim)
            if new_mcut:
                pipe.hgetall(self._k_mlast)  # moves with `mtrimmed` (see _TRIM_EVENTS)
            pipe.hmget(self._k_meta, *_META)
            replies = pipe.execute()
        states, stages, history, migrations = replies[:4]
        rest = iter(replies[4:])
        base, hlast = (next(rest), next(rest)) if new_cut else (None, None)
        mlast = next(rest) if new_mcut else None
        after = next(rest)
        if list(after) != meta:
            return None
        history, migrations = _stream_entries(history), _stream_entries(migrations)
        if since is not None:
            if not (_starts_at(history, since[0]) and _starts_at(migrations, since[1])):
                return _DIVERGED
            history, migrations = history[bool(since[0]) :], migrations[bool(since[1]) :]
        stage_map = self._decode_stages(stages)
        version = int(meta[0] or 0)
        return Snapshot(
            version,
            meta[1],
            dict(states),
            stage_map,
            history,
            migrations,
            full=since is None,
            base=None if base is None else dict(base),
            trimmed=meta[3],
            mtrimmed=meta[4],
            hlast=None if hlast is None else dict(hlast),
            mlast=None if mlast is None else dict(mlast),
        )

    def _queue_copy_reads(self, pipe: Any, since: tuple[str | None, str | None] | None) -> None:
        """The reads of a refresh: streams FROM the copy's last ids (inclusive) if ``since``."""
        last_h, last_m = since or (None, None)
        pipe.hgetall(self._k_state)
        pipe.hgetall(self._k_stages)
        pipe.xrange(self._k_history, last_h or "-", "+")
        pipe.xrange(self._k_migrations, last_m or "-", "+")

    def _local_states(self) -> dict[str, FlagState]:
        """The copy's states with pending kill switches applied."""
        pending = self._cache.pending()
        states = {n: self._decode_state(s) for n, s in self._cache.states().items()}
        for op in pending:
            op.overlay(states)
        return states

    def _local_stage(self, plan: str) -> int:
        if any(plan in op.plans for op in self._cache.pending()):
            return 0
        return self._cache.stages().get(plan, 0)

    def _read(self, doing: str, queue: Callable[[Any], None]) -> Any:
        """One Redis read (consistent with meta, see ``_consistent_read``), or None:
        answer from the copy.

        None when the listener is not following Redis (stale), when Redis is
        unreachable, or when Redis holds an older version than the copy (it
        restarted empty: the listener is poked to restore it).
        """
        if not self._synced.is_set():
            return None
        try:
            raw_version, epoch, result = self._consistent_read(doing, queue)
        except BackendUnavailable as exc:
            log.debug("flag store %r: %s; answering from the node copy", self.namespace, exc)
            return None
        self._redis_answered()
        if self._copy_behind_check(raw_version):
            self._resync_wanted.set()
            self._wake_listener()
            return None
        # Race: Redis restarting empty while this node's copy lags what it has
        # served. The listener delivers a change (subscribers reload: this read)
        # BEFORE it refreshes the copy, and any other node's commit may land
        # between a refresh and a read. Were this answer, newer than the copy,
        # returned and Redis then killed, this node would restore Redis from its
        # OLDER copy (first come, first restored) and reload from it: flags the
        # callers already saw changed would revert until a node with a newer copy
        # restored over it (seen in bench_chaos' flags row). So the copy catches
        # up (same version and epoch, or newer) before a newer answer leaves: a
        # node never serves what its copy does not hold, whichever node restores.
        cache = self._cache
        if raw_version is not None and (int(raw_version) > cache.version or epoch != cache.epoch):
            return self._once_copied(result)
        return result

    def _consistent_read(
        self, doing: str, queue: Callable[[Any], None]
    ) -> tuple[str | None, str | None, Any]:
        """(version, epoch, the read ``queue`` queues) at one version, without MULTI.

        Race: a commit between the reads; see ``_pull`` (meta read before and
        after in one pipeline, read again if it moved). Every commit bumps
        ``version`` and every restore sets a new ``restored`` token, so a
        FLUSHALL then a restore back to the same version and epoch in between
        also reads again. No MULTI: an out-of-memory Redis 7 refuses queued
        commands but serves plain reads. ``queue`` may queue several reads
        (their replies as a list).
        """
        client = self._ensure_clients()
        with self._translated(doing):
            for _ in range(_MAX_ATTEMPTS):
                with client.pipeline(transaction=False) as pipe:
                    pipe.hmget(self._k_meta, *_META)
                    queue(pipe)
                    pipe.hmget(self._k_meta, *_META)
                    before, *result, after = pipe.execute()
                if list(before) == list(after):
                    return before[0], before[1], result[0] if len(result) == 1 else result
        raise FlagError(  # pragma: no cover - a thousand commits in a row
            f"{doing}: gave up after {_MAX_ATTEMPTS} concurrent commits"
        )

    def _once_copied(self, result: Any) -> Any:
        """``result`` (newer than the copy) once the copy caught up, or None (see ``_read``)."""
        try:
            current = self._pull()
        except BackendUnavailable as exc:  # Redis went away meanwhile
            log.debug("flag store %r: %s; answering from the node copy", self.namespace, exc)
            return None
        except FlagError as exc:  # corrupt data in Redis: not a reason to fail the read
            log.warning("flag store %r: node copy not refreshed: %s", self.namespace, exc)
            return result
        if not current:  # Redis went back meanwhile: restore it first
            self._resync_wanted.set()
            self._wake_listener()
            return None
        return result

    # ------------------------------------------------------------------ FlagStore

    def load_states(self) -> dict[str, FlagState]:
        """Every runtime state (Redis, else the node copy), pending kill switches applied."""
        self._check_open()
        with self._lock:
            self._load_marks.deliveries = self._deliveries
        # Race: a pending kill switch being committed. Read the pending list
        # FIRST: the replay commits to Redis and only then drops the pending
        # record, so we see it pending, or committed, never neither.
        pending = self._cache.pending()
        raw = self._read("loading flag states", lambda p: p.hgetall(self._k_state))
        if raw is None:
            raw = self._cache.states()
        states = {name: self._decode_state(text) for name, text in raw.items()}
        for op in pending:
            op.overlay(states)
        return states

    def transaction(self, fn: Callable[[StoreTransaction], T]) -> T:
        """Run ``fn(txn)`` and commit its writes atomically (WATCH/MULTI/EXEC, retried)."""
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
            run = _TxnRun()
            for _ in range(_MAX_ATTEMPTS):
                self._check_open()
                try:
                    result = self._attempt(fn, run)
                except _Retry:
                    continue
                except BackendUnavailable as exc:
                    self._last_error = str(exc)  # status() says it at once
                    if (
                        isinstance(exc.__cause__, Exception)
                        and error_kind(exc.__cause__) == "timeout"
                    ):
                        self._no_answer.timed_out(str(exc))
                    raise
                self._redis_answered()
                return result
        raise FlagError(
            f"flag transaction gave up after {_MAX_ATTEMPTS} conflicting concurrent commits"
        )

    def _redis_answered(self) -> None:
        """A write or read Redis answered: writes try Redis again (``_fail_fast``)."""
        self._no_answer.answered()

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

    def _trim_if_due(self, length: Any) -> None:
        """Trim the history if ``length`` (its XLEN after our commit) is over
        ``history_limit + trim_slack``. Never fails the commit: a trim that cannot
        be done (Redis gone, an unreadable entry) logs, and a later commit retries."""
        limit = self.history_limit
        if limit is None or int(length) <= limit + trim_slack(limit):
            return
        if int(length) < self._next_trim_at:
            return  # the last attempt failed: retry once the stream grew by trim_slack
        try:
            dropped = self._trim(int(length) - limit, limit)
        except (BackendUnavailable, FlagError) as exc:
            self._next_trim_at = int(length) + trim_slack(limit)
            log.warning("flag store %r: history not trimmed (%s)", self.namespace, exc)
            return
        self._next_trim_at = 0
        if dropped > 0:
            self._trims += 1
            log_trim(self, dropped, limit, self._trims)

    def _trim_events_if_due(self, length: Any) -> None:
        """Trim the migrations stream to ``history_limit`` if ``length`` (its XLEN after
        our commit) is over ``history_limit + trim_slack``; never fails the commit
        (as ``_trim_if_due``). Race: another node trimming too: each cuts to its own
        limit (the smallest wins), never below it, and commits only append."""
        keep = events_to_keep(int(length), self.history_limit)
        if keep is None or int(length) < self._next_event_trim_at:
            return
        try:
            with self._translated("trimming the migration history"):
                self._ensure_clients()
                dropped = int(
                    self._trim_events_script(
                        keys=[self._k_meta, self._k_migrations, self._k_mlast], args=[keep]
                    )
                )
        except (BackendUnavailable, FlagError) as exc:
            self._next_event_trim_at = int(length) + trim_slack(keep)
            log.warning("flag store %r: migration history not trimmed (%s)", self.namespace, exc)
            return
        self._next_event_trim_at = 0
        if dropped > 0:
            self._event_trims += 1
            log_trim(self, dropped, keep, self._event_trims, "migration history")

    def _trim(self, most: int, limit: int) -> int:
        """Drop the oldest history entries into the base down to ``limit`` entries, at
        most ``most`` of them (see the module docs, "Retention"); the entries
        dropped (0: someone else trimmed meanwhile).

        How many is counted again here, from an ``XLEN`` read with the entries:
        Race: another node trimming between our EXEC (whose XLEN made the trim
        due) and these reads. Counted from that XLEN, both would drop a trim's
        worth: the stream fell to ``limit - trim_slack`` and history() lost
        records it must keep. Commits landing meanwhile only append after the
        entries read (they can only make us keep more); a trim or a restore
        landing between these reads and the script moves ``trimmed`` or
        ``restored``, which the script checks before it writes anything. The
        ``last`` hash read here is written only by trims and restores, so that
        check covers it too: its update (each dropped flag's latest change, kept
        where it is at least as late as the one there) is never based on a stale read.
        """
        client = self._ensure_clients()
        with self._translated("trimming the flag history"):
            with client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._k_meta, *_META)
                pipe.hgetall(self._k_base)
                pipe.hgetall(self._k_hlast)
                pipe.xrange(self._k_history, count=most + 1)
                pipe.xlen(self._k_history)
                pipe.hmget(self._k_meta, *_META)
                before, base, lasts, entries, length, after = pipe.execute()
            # Race: a trim or restore between the reads (a commit is harmless: it
            # appends): the base and the entries may be of two cuts. Leave it to
            # the next commit.
            if list(before)[1:4] != list(after)[1:4]:
                return 0
            if int(length) <= limit + trim_slack(limit):
                return 0  # another node trimmed since our EXEC: not due any more
            count = min(int(length) - limit, len(entries) - 1)
            if count <= 0:
                return 0
            replay = Replay(self._feed_states(base))
            latest: dict[str, FlagChange] = {}  # per flag, its latest change dropped
            for _id, fields in entries[:count]:
                change = self._decode_change(fields, replay)
                if change is not None and (
                    change.flag not in latest or change.at >= latest[change.flag].at
                ):
                    latest[change.flag] = change
            new_base = {name: state.to_json() for name, state in replay.states.items()}
            moved = {
                flag: encode_json(change, None, change.new)  # self-contained: old in full
                for flag, change in latest.items()
                if change.at >= _last_at(lasts.get(flag))
            }
            epoch, restored, trimmed = (x or "" for x in list(before)[1:4])
            done = self._trim_script(
                keys=[self._k_meta, self._k_history, self._k_base, self._k_hlast],
                args=[
                    epoch,
                    restored,
                    trimmed,
                    str(entries[count][0]),
                    json.dumps(new_base),
                    json.dumps(moved),
                ],
            )
        return int(done)

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
        wrote nothing. ``_Behind`` when Redis is older than the copy (or lost
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
            ("HMGET", self._k_meta, "version", "epoch", "trimmed", "mtrimmed"),
            ("HLEN", self._k_state),
            ("HLEN", self._k_stages),
            ("EXISTS", self._k_history),
            ("EXISTS", self._k_migrations),
        )
        raw_version, epoch, trimmed, mtrimmed = meta
        _check_version(raw_version, self._k_meta)
        held = self._cache.holdings()  # one local read: (version, epoch, counts...)
        if raw_version is None:
            if held[0] > 0 or held[2] > 0:
                raise _Behind  # (as _copy_behind_check)
        elif int(raw_version) < held[0]:
            raise _Behind
        elif (int(raw_version), epoch) == held[:2] and (
            states < held[2] or stages < held[3] or (held[4] and not history)
            or (held[5] and not migrations)
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
            return result, None
        pipe.multi()
        return result, self._queue_writes(pipe, txn, int(raw_version or 0) + 1, epoch)

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
        self, pipe: Any, txn: _RedisTransaction, version: int, epoch: str | None
    ) -> _Commit:
        """Queue the transaction's writes (after MULTI); return what EXEC will commit."""
        import uuid

        txn_id = uuid.uuid4().hex
        v = str(version)
        meta: dict[str, str] = {"version": v}
        if epoch is None:
            meta["epoch"] = uuid.uuid4().hex
        commit = _Commit(version, meta.get("epoch", epoch), epoch, txn_id)
        commit.changes, commit.events = txn.changes, txn.events
        pipe.hset(self._k_meta, mapping=meta)
        replies = 1
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
            fields = {
                "change": encode_json(change, before, stored),
                "origin": self._origin,
                "txn": txn_id,
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

    def kill_switch(self, fn: Callable[[StoreTransaction], T]) -> T:
        """Commit a switch-off write; during an outage, apply and record it locally.

        See the module docs ("The kill switch"). Raises what ``transaction``
        raises, except ``BackendUnavailable`` for a write that only turns
        switches off (and moves plans to stage 0 by ``emergency_rollback``).
        """
        self._check_open()
        if self._synced.is_set():
            try:
                return self.transaction(fn)
            except BackendUnavailable as exc:
                if not self._defer_kill_switches:
                    raise
                return self._defer(fn, exc, refused=True)
        elif not self._defer_kill_switches:
            return self.transaction(fn)  # BackendUnavailable unless Redis is back
        else:
            # Known outage: do not wait for a timeout, the kill switch is urgent.
            cause = BackendUnavailable(
                f"Redis at {self._url} is unavailable (this node is stale: {self._last_error})"
            )
        return self._defer(fn, cause)

    def _defer(
        self, fn: Callable[[StoreTransaction], T], cause: BackendUnavailable, refused: bool = False
    ) -> T:
        """Apply ``fn`` to this node's view and keep it pending (see ``kill_switch``);
        ``refused``: its commit just failed (``cause``), the store still in sync."""
        with self._txn_lock:
            self._check_open()
            txn = _LocalTransaction(self)
            result = fn(txn)
            if not txn.changes and not txn.events:
                return result
            stored = _kill_switch_states(txn, cause)
            if not self._cache.has_data():
                raise cause  # no copy of the deployment to apply it to
            op = _pending_op(txn, stored)
            if isinstance(cause, _Unconfirmed):
                op = _sent_times(op, cause)
            try:
                op_id = self._cache.add_pending(op)
            except FlagError as exc:  # the copy is unusable: nowhere to keep it
                raise cause from exc
        log.warning(
            "flag store %r: Redis unavailable (%s); kill switch by %s (%s) applied locally "
            "to %s and recorded; it will be committed when Redis returns",
            self.namespace, cause, op.by, op.reason, ", ".join(op.flags + op.plans),
        )  # fmt: skip
        self._event("pending_recorded", **self._op_data(_replace(op, id=op_id)))
        if refused and not self._read_only:
            # This node now serves what Redis lacks: stale at once, as the listener
            # would say only once its next turn's replay fails (up to its XREAD
            # block later). Its resync commits the switch and brings it in sync.
            # (A read-only replica stays in sync: the switch waits for writable.)
            # (Failed fast: the timeout behind it is the error, as the listener's.)
            timed_out = BackendUnavailable(self._no_answer.error)
            error = timed_out if isinstance(cause, _FailedFast) else cause
            self._went_stale(error, "cannot commit a kill switch to")
            self._resync_wanted.set()
        # The listener commits it at its next turn (within its XREAD block time
        # if connected). No CLIENT UNBLOCK here: on a frozen Redis that call would
        # itself wait for the timeout, and the kill switch must return at once.
        self._replay_wanted.set()
        return result

    def _op_data(self, op: PendingKillSwitch) -> dict[str, Any]:
        return {
            "id": op.id,
            "flags": list(op.flags),
            "plans": list(op.plans),
            "by": op.by,
            "reason": op.reason,
            "at": op.at,
        }

    def pending(self) -> list[PendingKillSwitch]:
        """Kill switches recorded during an outage and not yet committed, oldest first."""
        self._check_open()
        return self._cache.pending()

    def _replay_pending(self) -> None:
        """Commit (or drop as superseded) every pending kill switch, oldest first."""
        self._replay_wanted.clear()
        superseded = False
        for op in self._cache.pending():
            newer, already = self.transaction(functools.partial(self._replay_one, op=op))
            # Committed (or superseded) first, dropped second: a crash in between
            # replays it, and committed_since() then sees it is already there.
            # Race: Redis may go away again right after the commit. The pending
            # record goes only once the node copy holds the commit (a failed
            # refresh raises and leaves it pending; the next replay finds it
            # "already" committed): otherwise a read served from the copy would
            # show the killed flag on again.
            if not self._pull():
                self._replay_wanted.set()  # Redis is behind the copy: restore, then replay
                return
            # By id and content: a write-back during this replay may have renumbered
            # op (its id clashed with another process's kill switch); see NodeCache.
            self._cache.remove_pending(op)
            if newer:
                superseded = True
                log.warning(
                    "flag store %r: the kill switch by %s (%s) on %s, recorded during the "
                    "outage at %s, was SUPERSEDED by newer committed changes and not applied: %s",
                    self.namespace, op.by, op.reason, ", ".join(op.flags + op.plans),
                    time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(op.at)), newer,
                )  # fmt: skip
                self._event("pending_superseded", **self._op_data(op), superseded_by=newer)
            else:
                log.info(
                    "flag store %r: kill switch by %s (%s) on %s committed%s",
                    self.namespace, op.by, op.reason, ", ".join(op.flags + op.plans),
                    " (it already was)" if already else "",
                )  # fmt: skip
                self._event("pending_committed", **self._op_data(op), already=already)
        if superseded:
            self._deliver([])  # the local switch-off is lifted: subscribers reload

    def _replay_one(
        self, txn: StoreTransaction, op: PendingKillSwitch
    ) -> tuple[list[FlagChange | MigrationEvent], bool]:
        """The body of a pending kill switch's commit: (newer changes, already committed)."""
        if not isinstance(txn, _RedisTransaction):  # pragma: no cover
            raise TypeError("a pending kill switch replays on Redis only")
        newer, already = txn.committed_since(op)
        if newer or already:
            return newer, already  # write nothing
        for name, stored in op.stored.items():
            _replay_switch_off(txn, op, name, stored)
        for event in op.events:
            stage = txn.migration_stage(event.plan)
            txn.put_migration(event.plan, 0, _replace(event, from_stage=stage))
        return newer, already

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

        read = self._read("reading history", queue)
        if read is None:
            base, _trimmed, entries = self._cache.history_with_base()
        else:
            base, entries = read
        replay = Replay(self._feed_states(base), flags=None if flag is None else frozenset({flag}))
        out: list[FlagChange] = []
        for _id, fields in entries:
            change = self._decode_change(fields, replay)
            if change is not None:
                out.append(change)
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
        entries = self._read("reading migration history", lambda p: p.xrange(self._k_migrations))
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

    def _copy_of(
        self, key: str
    ) -> tuple[Callable[[], dict[str, str]], Callable[[dict[str, str]], None]]:
        """How the copy reads and keeps the Redis hash ``key`` (catalogue or plans)."""
        cache = self._cache
        if key == self._k_catalogue:
            return cache.catalogue, cache.set_catalogue
        return cache.plans, cache.set_plans

    def _hash_or_copy(self, key: str, doing: str) -> dict[str, str]:
        """The hash ``key`` from Redis (kept in the copy), else from the copy: the
        catalogue and the migration plans.

        ``BackendUnavailable`` when Redis cannot answer and the copy kept none.
        """
        self._check_open()
        read_copy, _ = self._copy_of(key)
        if not self._synced.is_set():
            # Stale (Redis was out of reach at start, or is now): the copy answers
            # when it kept the hash, as _read does, with no call to Redis. On a
            # frozen Redis each call would wait a whole timeout in connect(): a
            # command reading the catalogue and the plans waited several in a row.
            kept = read_copy()
            if kept:
                return kept
        try:
            raw = self._read_hash(key, doing)
        except BackendUnavailable:
            kept = read_copy()
            if not kept:
                raise
            return kept
        if self._synced.is_set():
            self._keep(key, raw)
            return raw
        # Not following Redis yet (just constructed, or recovering): Redis may have
        # restarted empty and not be restored yet, so an empty answer is no answer.
        return raw or read_copy()

    def _keep(self, key: str, raw: dict[str, str]) -> None:
        """Keep ``raw`` (the hash ``key`` read from Redis) in the copy; best effort."""
        read_copy, keep = self._copy_of(key)
        try:
            if read_copy() != raw:
                keep(raw)
        except FlagError as exc:  # an unusable copy: the read itself succeeded
            log.debug("flag store %r: %s not kept in the copy: %s", self.namespace, key, exc)

    def record_plan(self, name: str, plan: MigrationPlan) -> None:
        self._check_open()
        _check_name(name, "plan name")
        self._record(self._k_plans, {name: plan_to_json(plan)}, "recording a migration plan")

    def plans(self) -> dict[str, MigrationPlan]:
        """The recorded plans (Redis; during an outage the copy's, if it kept them)."""
        raw = self._hash_or_copy(self._k_plans, "reading migration plans")
        return {name: plan_from_json(text) for name, text in raw.items()}

    def _has_data(self) -> bool:
        """Whether the namespace holds any flag data (``open_store`` creates nothing)."""
        self._check_open()
        keys = [*self._keys(), self._k_catalogue, self._k_plans]
        with self._translated("looking for the flag store"):
            return bool(self._ensure_clients().exists(*keys))

    def _read_hash(self, key: str, doing: str) -> dict[str, str]:
        self._check_open()
        client = self._ensure_clients()
        with self._translated(doing):
            return dict(client.hgetall(key))

    def _record(self, key: str, entries: dict[str, str], doing: str) -> None:
        """HSET ``entries`` unless all are there. Kept in memory too: each resync
        records them again (Redis may have restarted empty, or been unreachable:
        then this raises BackendUnavailable at once, and the resync records them)."""
        with self._lock:
            self._check_open()
            self._recorded.setdefault(key, {}).update(entries)
        if not self._synced.is_set():
            raise BackendUnavailable(
                f"Redis at {self._url} is not reachable now; {doing} when it returns"
            )
        if self._read_only:
            raise BackendUnavailable(
                f"Redis at {self._url} is a read-only replica now; {doing} when it accepts writes"
            )
        self._record_now(key, entries, doing)

    def _record_now(self, key: str, entries: dict[str, str], doing: str) -> None:
        # Compare first: every process that starts records its declarations, and
        # most find them recorded. Two writers of one name: the last HSET wins.
        current = self._read_hash(key, doing)
        if entries and not current.items() >= entries.items():
            with self._translated(doing):
                self._ensure_clients().hset(key, mapping=entries)
            current.update(entries)
        if key in (self._k_catalogue, self._k_plans):
            self._keep(key, current)

    def _record_again(self) -> None:
        """Record what this store recorded before (part of a resync); a failure only logs."""
        with self._lock:
            recorded = {key: dict(entries) for key, entries in self._recorded.items()}
        for key, entries in recorded.items():
            try:
                self._record_now(key, entries, "recording the catalogue again")
            except FlagError as exc:
                log.warning("flag store %r: %s", self.namespace, exc)
            except BackendUnavailable:
                raise  # the resync fails and is retried

    def subscribe(self, callback: Callable[[list[FlagChange]], None]) -> Callable[[], None]:
        """Call ``callback(changes)`` on the listener thread after another store's commit."""
        check_listener(callback)
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
                self._callbacks.remove(callback)  # one subscription, as everywhere

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

    def _wake_listener(self) -> None:
        """Best effort: end the listener's current XREAD BLOCK early (it loops at once)."""
        client_id, client = self._listener_client_id, self._client
        if client_id is not None and client is not None:
            with contextlib.suppress(Exception):
                client.client_unblock(client_id)

    def close(self) -> None:
        """Stop the listener thread, close both connections and the copy; idempotent."""
        with self._lock:
            if self._closed:
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

    def _close_clients(self) -> None:
        for client in (self._client, self._listen_client):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
                    client.connection_pool.disconnect()

    # ------------------------------------------------------------------ listener

    def _listen(self) -> None:
        backoff = RetryBackoff(base=0.05, cap=1.0)
        pending: dict[str, list[tuple[str, FlagChange]]] = {}
        need_resync = not self._synced.is_set()
        next_check = time.monotonic() + self._resync_interval
        try:
            while not self._stop.is_set():
                try:
                    if need_resync or self._resync_wanted.is_set():
                        self._resync()
                        pending.clear()
                        need_resync = False
                        backoff.reset()
                    else:
                        self._replay_if_wanted()
                    self._send_welcomes()
                    reply = self._read_streams()
                    if self._stop.is_set():
                        break
                    if reply:
                        self._take_reply(reply, pending)
                    if time.monotonic() >= next_check:
                        next_check = time.monotonic() + self._resync_interval
                        need_resync = self._redis_went_back()
                    # Redis answered this turn's every call: writes, and the next
                    # turn's replay of kill switches, stop failing fast (see
                    # _fail_fast). Here, after the last call: one answered after
                    # a write timed out counts (a reply read just before Redis
                    # froze again only lets one more write wait its own timeout).
                    self._redis_answered()
                    self._flap_over()
                except Exception as exc:  # the listener survives anything; see _fault
                    if self._stop.is_set():
                        break
                    self._fault(exc)
                    need_resync = True
                    self._stop.wait(backoff.next())
        finally:
            self._listener_stopped()

    def _replay_if_wanted(self) -> None:
        """Commit the pending kill switches if a replay was asked for (``_replay_wanted``).

        Not on a read-only replica: the commit would fail (and the listener go
        stale for it); the resync after it accepts writes again replays them."""
        if self._replay_wanted.is_set() and not self._read_only:
            with self._translated("committing pending kill switches"):
                self._replay_pending()

    def _listener_stopped(self) -> None:
        """The listener's last step: not synced, its socket closed (the copy too once closed)."""
        self._synced.clear()
        with contextlib.suppress(Exception):
            if self._listen_client is not None:
                self._listen_client.close()
        if self._closed:
            self._cache.close()

    def _read_streams(self) -> Any:
        """One blocking XREAD of the history and migration streams."""
        with self._translated("following the change stream"):
            client = self._ensure_listen_client()
            return client.xread(
                {self._k_history: self._last_id, self._k_migrations: self._last_mig_id},
                count=256,
                block=self._block_ms,
            )

    def _take_reply(self, reply: Any, pending: dict[str, list[tuple[str, FlagChange]]]) -> None:
        """Deliver the history entries of an XREAD reply, then refresh the copy."""
        for stream, entries in reply:
            if stream == self._k_history and entries and self._may_have_skipped(entries[0][1]):
                # Race: a trim dropped entries this listener had not read (it lags
                # more than history_limit entries): its replayed states miss them.
                # Resynchronise; subscribers reload.
                self._resync_wanted.set()
                self._deliver([])
                return
            if stream == self._k_history:
                self._consume(entries, pending)
            elif entries:
                self._last_mig_id = str(entries[-1][0])
        # Deliver first (propagation latency), copy second: the
        # writer refreshed its own copy right after its commit, so a
        # crash of Redis in between loses the change from no copy. A
        # subscriber's reload (load_states) refreshes this copy itself
        # before it answers with anything newer (see _read).
        self._pull()

    def _may_have_skipped(self, first: dict[str, str]) -> bool:
        """Whether entries between the last one read and ``first`` (the next XREAD
        reply's) may have been trimmed unread.

        Not when ``first`` is the entry right after the last one read (same
        transaction, next index; or index 0 of the next version): the common case
        costs no round trip. Otherwise (after a catch-up, a migration-only commit,
        a lag) one HGET of meta's ``trimmed``, read after the XREAD reply, so a
        trim that landed before it is seen (a later one at worst resyncs for
        nothing): trimmed past the last entry read means entries may be lost.
        """
        last, pos = self._last_pos, _position(first)
        if last is not None and pos is not None:
            version, txn, i, n = last
            if i + 1 < n and pos[:3] == (version, txn, i + 1):
                return False
            if i + 1 >= n and pos[0] == version + 1 and pos[2] == 0:
                return False
        with self._translated("reading the history's trim"):
            cut = self._ensure_listen_client().hget(self._k_meta, "trimmed")
        return cut is not None and stream_key(str(cut)) > stream_key(self._last_id)

    def _mark_stale(self, exc: Exception) -> bool:
        """Stale, ``exc`` the last error; True if this is the transition (report it once).

        Race: the listener's fault and a writer's refused kill switch at once:
        the lock makes one of them the transition. The time of the transition
        is set first, so a status() that says stale has its stale_since.
        """
        with self._lock:
            first = self._stale_since is None  # first since "in sync"
            if first:
                self._stale_since = time.time()
            self._last_error = str(exc)
            self._synced.clear()
        return first

    def _went_stale(self, exc: Exception, what: str) -> None:
        """``_mark_stale``, reported (a log line and an event) on the transition."""
        if self._mark_stale(exc):
            self._report_stale(exc, what)

    def _report_stale(self, exc: Exception, what: str) -> None:
        """The stale transition: a WARNING (DEBUG within a flap) and an event.

        Race: a resync may complete between ``_mark_stale`` and the drop below
        (a writer's refused kill switch): the damper then sees the drop after
        that return, and up again at the resync the writer asked for.
        """
        with self._lock:
            flap = self._damper.drop(str(exc))
        if flap == "first":
            log.warning(
                "flag store %r: Redis at %s failed again, with the same error, right after "
                "the store came back in sync (%s): a fault that cuts some of its connections "
                "only (CLIENT KILL, client eviction: maxmemory-clients); the store goes on "
                "resyncing by itself; its stale and in-sync lines are logged at DEBUG until "
                "it stays in sync %.0f s",
                self.namespace, self._url, exc, _flap.FLAP_WINDOW,
            )  # fmt: skip
        log.log(
            logging.WARNING if flap == "usual" else logging.DEBUG,
            "flag store %r %s Redis at %s (%s); serving the node copy (stale)",
            self.namespace, what, self._url, exc,
        )  # fmt: skip
        self._event("stale", error=str(exc))

    def _flap_again(self, exc: Exception, what: str) -> None:
        """A listener fault while stale in a flap: another cause ends the flap and is
        said as a new outage (the flap's drop was at DEBUG); the same one, once the
        flap window has passed with no return to sync, ends it at WARNING."""
        with self._lock:
            same = self._damper.again(str(exc))
            lingers = self._damper.lingers() if same else None
        if not same:
            log.warning(
                "flag store %r %s Redis at %s (%s); serving the node copy (stale)",
                self.namespace, what, self._url, exc,
            )  # fmt: skip
        elif lingers is not None:
            log.warning(
                "flag store %r: still not in sync with Redis at %s %.0f s after the last of "
                "%d repeated failure(s) (%s); serving the node copy (stale); retrying with "
                "backoff",
                self.namespace, self._url, lingers.seconds, lingers.drops, exc,
            )  # fmt: skip

    def _flap_over(self) -> None:
        """Say that a flap ended (in sync ``FLAP_WINDOW`` s): its resyncs were logged
        at DEBUG, so without this line the log would end at the flap's WARNING."""
        if not self._damper.flapping or not self._synced.is_set():
            return  # (the listener's hot path: cheap checks without the lock)
        with self._lock:
            over = self._damper.over()
        if over is not None:
            log.info(
                "flag store %r: in sync with Redis at %s for %.0f s since the last of %d "
                "repeated failure(s) (%s): the flap is over",
                self.namespace, self._url, over.seconds, over.drops, over.cause,
            )  # fmt: skip

    def _fault(self, exc: Exception) -> None:
        """Log a listener fault, mark the store stale (one event per transition)."""
        first = self._mark_stale(exc)
        if _read_only_error(exc):
            self._note_read_only(True, str(exc))
        tls = tls_failure(str(exc)) if isinstance(exc, BackendUnavailable) else None
        if tls is not None and tls != self._tls_warned:
            # An outage that turns into a TLS failure (a certificate the clients
            # do not trust) needs an operator: once at WARNING, until in sync.
            self._tls_warned = tls
            log.warning("flag store %r: %s; retrying with backoff", self.namespace, exc)
        elif isinstance(exc, BackendUnavailable):
            listener_log.debug("flag listener %r: %s", self.namespace, exc)
        else:  # not an outage: corrupt data, a broken copy, a bug; keep the traceback
            listener_log.error(
                "flag listener %r failed; retrying with backoff", self.namespace, exc_info=exc
            )
        # An outage, or anything else that stops the listener (corrupt data,
        # a bug): either way answers come from the copy, but say which.
        lost = "lost" if isinstance(exc, BackendUnavailable) else "cannot follow"
        if first:
            self._report_stale(exc, lost)
        elif self._damper.flapping:
            self._flap_again(exc, lost)
        # Drop sockets that may be dead: the next attempt starts on fresh ones.
        # Race: a writer may be mid-call on a socket of _client's pool (e.g. in
        # its own timeout against a frozen Redis): closing it under the writer
        # turned that writer's "no answer in time" into "Bad file descriptor".
        # Only idle sockets go; a writer's own error handling drops its socket.
        if self._listen_client is not None:
            with contextlib.suppress(Exception):
                self._listen_client.connection_pool.disconnect()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.connection_pool.disconnect(inuse_connections=False)
        if self._listen_client is not None:
            with contextlib.suppress(Exception):
                self._listen_client.connection.disconnect()

    def _check_memory_policy(self, client: Any) -> None:
        """Redis answered: may it evict our keys? (``EvictionCheck``; a refused INFO
        fails nothing.) Race: Redis freezing (or going) just then. The timeout is
        this step's failure, like any other step's of a (re)sync: raised, not
        swallowed only for ``ROLE`` right after to wait a second timeout."""
        with self._translated("reading INFO memory"):
            self._memory_policy.check(client, raise_unreachable=True)

    def _check_role(self) -> bool:
        """Whether Redis is a read-only replica now (``ROLE``); noted, see ``_note_read_only``.

        A server that refuses ``ROLE`` (ACL, a proxy) keeps the last known answer.
        """
        client = self._ensure_clients()
        try:
            with self._translated("reading the server's role"):
                role = client.execute_command("ROLE")
        except BackendUnavailable as exc:
            if error_kind(exc.__cause__ or exc) not in ("NOPERM", "response"):
                raise  # unreachable: the resync fails and is retried
            return self._read_only
        replica = bool(role) and str(role[0]) in ("slave", "replica")
        self._note_read_only(replica, "ROLE: replica" if replica else None)
        return replica

    def _note_read_only(self, read_only: bool, cause: str | None = None) -> None:
        """Record whether Redis is a read-only replica: a log line and an event per
        transition (``read_only``, then ``writable``)."""
        if self._read_only == read_only:
            return  # no transition (checked again under the lock)
        with self._lock:  # Race: a writer and the listener noting it at once: one report
            if self._read_only == read_only:
                return
            self._read_only = read_only
        if read_only:
            log.warning(
                "flag store %r: Redis at %s is a read-only replica (%s); flag writes fail "
                "until it accepts writes (kill switches are applied locally and committed then)",
                self.namespace, self._url, cause,
            )  # fmt: skip
            self._event("read_only", error=cause)
        else:
            log.warning(
                "flag store %r: Redis at %s accepts writes again", self.namespace, self._url
            )
            self._event("writable")

    def _tails(self) -> tuple[str, str]:
        client = self._ensure_listen_client()
        with self._translated("reading the change stream's tail"):
            self._listener_client_id = int(client.client_id())
            out = []
            for key in (self._k_history, self._k_migrations):
                tail = client.xrevrange(key, count=1)
                out.append(str(tail[0][0]) if tail else "0-0")
        return out[0], out[1]

    def _resync(self) -> None:
        """Reconnect; restore Redis or refresh the copy; commit pending kill switches."""
        self._resync_wanted.clear()
        self._synced.clear()
        client = self._ensure_clients()
        self._catch_up()
        self._check_memory_policy(client)
        read_only = self._check_role()
        # Redis answered: the replay below must not fail fast for a write that
        # timed out before it came back (the resync would fail, stale, for up to
        # a timeout: see _fail_fast).
        self._redis_answered()
        if not read_only:
            # A read-only replica: reads follow it, writes would fail. The kill
            # switches stay pending until it accepts writes (_redis_went_back).
            with self._translated("committing pending kill switches"):
                self._replay_pending()
            self._record_again()
        self._resyncs += 1
        self._tls_warned = None
        with self._lock:
            # Race: a writer's refused kill switch marking it stale (_mark_stale)
            # meanwhile: before, in sync here and its resync (wanted) runs next;
            # after, stale; never stale with no stale_since or the reverse.
            self._stale_since = None
            self._synced.set()
            flapping = self._damper.up()
        log.log(
            logging.DEBUG if flapping else logging.INFO,
            "flag store %r in sync with Redis at %s (version %d%s)",
            self.namespace, self._url, self._cache.version,
            "; a read-only replica: writes fail" if self._read_only else "",
        )  # fmt: skip
        self._event("in_sync", version=self._cache.version, read_only=self._read_only)
        # Whatever happened while we were away is unknown: "reload".
        self._deliver([])

    def _catch_up(self) -> None:
        """Restore Redis if it is older than the copy, then follow it from here on.

        Race: a commit landing between reading the stream's tails and the copy's
        refresh. Tails first: such a commit is then in both the refresh and the
        next XREAD (whose refresh is a no-op, and which the version floor keeps
        from being delivered twice); the other order would miss it in both.
        """
        with self._copy_lock:
            self._restore_if_behind()
            self._last_id, self._last_mig_id = self._tails()
            self._pull()
            # Entries up to this version are in the state subscribers (re)load,
            # and in the copy's states, from which later entries' deltas replay
            # (read under _copy_lock: the copy's version and states agree).
            self._floor = self._cache.version
            self._feed = Replay(self._feed_states(self._cache.states()))
            self._feed_at = (self._floor, "")
            self._last_pos = None

    def _redis_went_back(self) -> bool:
        """True if Redis is older than the copy, the stream's tail is behind what we
        read, or Redis accepts writes again after being a read-only replica."""
        was_read_only = self._read_only
        if not self._check_role() and was_read_only:
            return True  # writable again: resync (commits the pending kill switches)
        client = self._ensure_listen_client()
        with self._translated("checking the change stream"):
            raw_version, trimmed, mtrimmed = client.hmget(
                self._k_meta, "version", "trimmed", "mtrimmed"
            )
            if self._copy_behind_check(raw_version):
                return True
            if self._lost_keys(client)[1]:
                return True  # keys evicted: the resync restores them from the copy
            tail = client.xrevrange(self._k_history, count=1)
        if self._last_id != "0-0" and (
            not tail or stream_key(str(tail[0][0])) < stream_key(self._last_id)
        ):
            return True
        if trimmed != self._cache.trimmed or mtrimmed != self._cache.mtrimmed:
            # Race: another node's trim landed after the commit this copy last
            # mirrored. A trim changes no version and adds no entry, so nothing
            # wakes the listener for it: mirror it here, within resync_interval,
            # so the copy holds Redis' cut and base (what a restore puts back).
            self._pull()
        return False

    def _consume(
        self, entries: list[tuple[str, dict[str, str]]], pending: dict[str, list[Any]]
    ) -> None:
        for entry_id, fields in entries:
            self._last_id = str(entry_id)
            self._last_pos = _position(fields)
            version = fields.get("v", "")
            if version.isdigit() and 0 < int(version) <= self._floor:
                continue  # already in the state loaded at the last catch-up
            txn = fields.get("txn", entry_id)
            try:
                self._check_order(version, txn)
                # Every entry is replayed, ours included: it is the base of the next delta.
                change = self._decode_change(fields, self._feed)
                n = int(fields.get("n", "1"))
            except (FlagError, ValueError):
                # A malformed entry written by someone else, or a stream that went
                # back: reload instead of guessing, and resynchronise (the
                # replayed states no longer match the stream).
                self._resync_wanted.set()
                self._deliver([])
                return
            if change is None or fields.get("origin") == self._origin:
                continue  # our own commit: the writer already knows it
            group = pending.setdefault(txn, [])
            group.append((entry_id, change))
            # One transaction's entries are contiguous (EXEC is atomic) but one
            # XREAD batch may end mid-transaction: deliver only complete ones.
            if len(group) >= n:
                del pending[txn]
                self._deliver([c for _, c in group])

    def _check_order(self, version: str, txn: str) -> None:
        """FlagError if an entry's version is older than the last replayed one's.

        Race: Redis restarted and was restored from a copy that missed the last
        commits this listener replayed, and new commits landed before the
        periodic check noticed (``_redis_went_back``). Their deltas are based
        on states this listener's replay no longer matches: caught here at the
        first such entry (same version, another transaction included).
        """
        if not version.isdigit():
            return  # an entry without a version: nothing to compare
        at = (int(version), txn)
        last_version, last_txn = self._feed_at
        if at[0] < last_version or (at[0] == last_version and txn != last_txn):
            raise FlagError(f"the change stream went back to version {version}")
        self._feed_at = at

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
        for callback in callbacks:
            try:
                callback(list(changes))
            except Exception as exc:  # a subscriber must never kill the listener
                report_callback_error(exc, callback)


_DEAD_SOCKET = ("closed by server", "reset by peer", "broken pipe", "error 32 ", "error 104 ")


_PIPELINE_CLASSES: dict[type, type] = {}


def _watch_pipeline(redis: Any, client: Any) -> Any:
    """``client.pipeline(transaction=True)``, except that a pipeline whose socket
    died (a timeout or an I/O error) while WATCHing never reconnects to undo it.

    Race: Redis freezing (or the network going dark) after ``WATCH`` was
    answered, before ``EXEC``: a read of ``fn`` (or of meta) times out while
    WATCHing. redis-py has already dropped that socket (and its WATCH with it),
    yet its ``reset()``, run by its own failure handler and again as the ``with``
    block ends, reconnects only to send ``UNWATCH``: on a frozen Redis one
    timeout more each, so the write waited three timeouts, not one (and
    ``_fail_fast``'s bound, one timeout for all queued writers, did not hold).
    A dropped socket has no WATCH left: skip the UNWATCH then. redis-py then
    reports that read's failure as ``WatchError("A TimeoutError occurred while
    watching ...")``: it leaves the block as the failure itself (a timeout
    arms ``_fail_fast``, a dead pooled socket gets ``_commit_failed``'s retry).
    (EXEC's own lost reply is ``_execute``'s, inside the block.)
    """
    pipe = client.pipeline(transaction=True)
    base = type(pipe)
    cls = _PIPELINE_CLASSES.get(base)
    if cls is None:
        lost_kinds = (redis.ConnectionError, redis.TimeoutError)

        class _WatchPipeline(base):  # type: ignore[misc,valid-type]
            watching: bool  # (redis-py's: set by WATCH, cleared by EXEC and reset)

            def reset(self) -> None:
                conn = self.connection
                if self.watching and conn is not None and getattr(conn, "_sock", 0) is None:
                    self.watching = False  # the socket is gone: no WATCH to undo
                super().reset()

            def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
                self.reset()
                if isinstance(exc, redis.WatchError):
                    lost = exc.__cause__ or exc.__context__
                    if isinstance(lost, lost_kinds):
                        raise lost from None

        cls = _PIPELINE_CLASSES[base] = _WatchPipeline
    # The pipeline redis-py built, given this behaviour: no dependency on its
    # constructor's arguments (the subclass has no state of its own).
    pipe.__class__ = cls
    return pipe


def _check_version(raw: str | None, key: str) -> int:
    """Meta's ``version`` as read (None: no meta) as a number; ``FlagError`` when
    something else wrote it there: ``int()`` raised ``ValueError`` out of every
    public read and write (a public call raises only Foundation errors)."""
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise FlagError(f"corrupt version in {key}: {raw!r:.100}")
    return int(raw)


def _read_watched(pipe: Any, redis: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """The replies to ``commands`` (reads), sent in ONE round trip on the connection
    ``pipe`` WATCHes on (redis-py sends each command of a WATCHing pipeline alone).

    No health check (its reconnect would drop the WATCH unseen). A reply that
    never came (a timeout, a dropped socket) leaves the socket out of step:
    it is closed, and its WATCH with it, so ``_watch_pipeline`` sends no UNWATCH
    and the failure leaves the block as itself, as a lone read's would. An error
    reply (WRONGTYPE, NOPERM) is raised once every reply is read.
    """
    conn = pipe.connection  # (WATCH took it from the pool)
    replies: list[Any] = []
    refused: Exception | None = None
    try:
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                refused = refused or exc
                replies.append(None)
    except BaseException:
        conn.disconnect()
        raise
    if refused is not None:
        raise refused
    return replies


def _dead_socket(exc: BaseException | None) -> bool:
    """True for the errors of a pooled socket the server closed (after a restart):
    worth one immediate retry on a new one. Not for refusals or timeouts."""
    text = str(exc).lower()
    return exc is not None and any(k in text for k in _DEAD_SOCKET)


def _read_only_error(exc: BaseException) -> bool:
    """Whether ``exc`` (a translated error) is a ``READONLY`` reply: a read-only replica."""
    cause = exc.__cause__
    return cause is not None and error_kind(cause) == "READONLY"


def _kill_switch_states(txn: _LocalTransaction, cause: BackendUnavailable) -> dict[str, FlagState]:
    """The states ``txn`` puts; raise ``cause`` unless it only switches off / rolls back."""
    stored: dict[str, FlagState] = {}
    for name, state in txn.puts.items():
        if state is None or state.switch:
            raise cause  # not a kill switch: it must reach Redis or fail
        stored[name] = state
    if any(s != 0 for s in txn.stage_puts.values()) or any(
        e.action != "emergency_rollback" for e in txn.events
    ):
        raise cause
    return stored


def _pending_op(txn: _LocalTransaction, stored: dict[str, FlagState]) -> PendingKillSwitch:
    """The pending kill switch recording ``txn`` (not yet numbered: id 0)."""
    first: FlagChange | MigrationEvent = (txn.changes or txn.events)[0]
    at = min([c.at for c in txn.changes] + [e.at for e in txn.events])
    return PendingKillSwitch(
        0, tuple(txn.changes), stored, tuple(txn.events), at, first.by, first.reason
    )


def _sent_times(op: PendingKillSwitch, sent: _Unconfirmed) -> PendingKillSwitch:
    """``op`` with the times of ``sent``, the unconfirmed commit of the same call.

    Race: a kill switch whose commit landed but could not be confirmed (its
    EXEC's reply lost, Redis gone before the read-back) is kept and replayed.
    Its body ran again on the copy and took new times; ``committed_since`` knows
    a kill switch by its records' times, so with those it would not find the
    landed commit and would write it again (an emergency rollback recorded
    twice, the second "from stage 0"). A record of the same flag (plan and
    action), ``by`` and ``reason`` takes the time ``sent`` carried.
    """
    flag_at = {(c.flag, c.by, c.reason): c.at for c in sent.changes}
    plan_at = {(e.plan, e.action, e.by, e.reason): e.at for e in sent.events}
    changes = tuple(_replace(c, at=flag_at.get((c.flag, c.by, c.reason), c.at)) for c in op.changes)
    events = tuple(
        _replace(e, at=plan_at.get((e.plan, e.action, e.by, e.reason), e.at)) for e in op.events
    )
    at = min([c.at for c in changes] + [e.at for e in events])
    return _replace(op, changes=changes, events=events, at=at)


def _replay_switch_off(
    txn: StoreTransaction, op: PendingKillSwitch, name: str, stored: FlagState
) -> None:
    """Put ``name`` of a pending kill switch: off from its current state (no-op if it is)."""
    current = txn.get(name)
    new = stored if current is None else _off(current)
    if new == current:
        return
    change = next(c for c in op.changes if c.flag == name)
    old = change.old if current is None else current
    txn.put(name, new, _replace(change, old=old, new=new))


def _with_puts(states: dict[str, str], puts: dict[str, str | None]) -> dict[str, str]:
    """``states`` (changed in place) with a commit's puts applied: None deletes a state."""
    for name, state in puts.items():
        if state is None:
            states.pop(name, None)
        else:
            states[name] = state
    return states


def _position(fields: dict[str, str]) -> tuple[int, str, int, int] | None:
    """(version, txn, i, n) of a history entry (None: an entry without them)."""
    try:
        return int(fields["v"]), fields["txn"], int(fields["i"]), int(fields["n"])
    except (KeyError, ValueError):
        return None


def _tail_id(reply: Any) -> str | None:
    """The id of an ``XREVRANGE ... COUNT 1`` reply's entry (None: an empty stream)."""
    return str(reply[0][0]) if reply else None


def _starts_at(entries: list[tuple[str, dict[str, str]]], last: str | None) -> bool:
    """Whether ``entries`` (read from ``last`` inclusive) begin with the copy's ``last``."""
    return last is None or (bool(entries) and entries[0][0] == last)


def _stream_entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """An XRANGE reply as (entry id, fields) pairs, as a ``Snapshot`` keeps them."""
    return [(str(i), dict(f)) for i, f in raw]


def _unsent_on_dead_socket(exc: BackendUnavailable, executing: bool) -> bool:
    """Whether a commit failed before EXEC was sent, on a socket the server closed."""
    return not executing and _dead_socket(exc.__cause__)


def _last_at(text: str | None) -> float:
    """The ``at`` of a latest-trimmed record (``{ns}:flags:history:last``); -inf for none
    (or one that does not read: the trim replaces it)."""
    if text is None:
        return -math.inf
    try:
        at = json.loads(text)["at"]
        return float(at) if isinstance(at, int | float) else -math.inf
    except (ValueError, TypeError, KeyError, RecursionError):
        return -math.inf


def _flat(fields: dict[str, str]) -> list[str]:
    out: list[str] = []
    for key, value in fields.items():
        out += [key, value]
    return out
