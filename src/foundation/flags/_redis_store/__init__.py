"""``RedisFlagStore``: flag state, history and migration stages shared through Redis.

Layout (``ns`` is the namespace; the braces make it a Redis Cluster hash tag, so
every key of one deployment lives in one slot and a transaction may touch them all):

``{ns}:flags:state``       hash   flag name -> ``FlagState`` JSON (runtime state only)
``{ns}:flags:history``     stream one entry per ``FlagChange``: ``change`` (JSON: the
                                  change as a delta, see ``_history``; older entries
                                  hold the whole record), ``origin`` (writing store),
                                  ``txn``, ``i``, ``n``, ``v``, and ``sub`` (the writing
                                  subscriber of that store, meaningful to it only; absent
                                  when none: not told back to it)
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
                                  ``mtrimmed`` (the same, of the migrations stream),
                                  ``nstates`` (``<version>:<count>``: the flag states
                                  that version's commit or restore left; a write
                                  finding fewer is refused, see ``_check_states_kept``),
                                  ``nstages`` (the same, of the plans in the stages hash),
                                  ``unbased`` (JSON list: flags whose history base was
                                  lost with entries kept; their next commit writes a
                                  whole record, see ``_Trims._rebased``)
``{ns}:flags:catalogue``   hash   flag name -> ``FlagInfo`` JSON (declared flags)
``{ns}:flags:plans``       hash   plan name -> ``MigrationPlan`` JSON
``{ns}:flags:plan_flags``  hash   ``[plan, flag, stage]`` (JSON) -> ``"1"``: every flag any
                                  recorded version of a plan named (``plan_flags``;
                                  add-only; with the plan's record and the flags
                                  of the record it replaces, in one script)

The catalogue, plans and plan flags are written directly (HSET, a plan with its
flags by one script; outside the versioned transactions) and are not restored
from the node copy: after Redis restarts empty they come back when the
applications record them again (each store at each resync, before committing its
pending kill switches; a store restoring Redis writes what its application
recorded in the restore's own script, where Redis lacks it, so no reader finds
restored flag data without its catalogue). The copy
keeps them, fetched at each
sync (the plans and plan flags also after migration events) and merged with
each read or record (``_keep``): ``catalogue()``, ``plans()`` and
``plan_flags()`` answer from it during an outage, so a tool can list flags and
show a migration, and an emergency rollback turns off every version's flags
(``BackendUnavailable`` without a copy).

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
is older than Redis (or of another epoch) refreshes its copy from Redis; one
whose last commits Redis lacks at the same epoch (an older snapshot, then a
write by a process without the newer copy: a fork) takes Redis' state, but keeps
its lost kill switches and emergency rollbacks pending with their original
times, committed again under the rule below, with a WARNING (``_lost_commits``). Caveat:
a node without a copy that writes to an empty Redis before any node restored
writes version 1, which a restore then replaces.

*The kill switch.* ``FeatureFlags.disable`` and ``Migration.emergency_rollback``
go through ``kill_switch``: if Redis cannot take it (the commit fails with
``BackendUnavailable``; or the store is stale and Redis let its last call time
out with no answer since, so no commit is tried; or earlier kill switches of
this node are still pending: it goes after them), the switch-off is applied to this
node's view at once (reads see it), recorded in the copy with its ``by``,
``reason`` and time (``pending()``), and committed when Redis returns (before
the store says it is in sync). Rule: it is committed -- switching the flags off
again on top of whatever state is committed then, and moving the plan to stage
0 -- unless a change to one of its flags (or an event of its plan) committed by
anyone carries a LATER time (``at``) than the kill switch: that newer decision
wins, the pending kill switch is dropped with a WARNING log and a
``foundation.flags.pending_superseded`` event. It is never dropped silently. One
found already committed (a lost reply, a crash before its record was dropped) was
applied, whatever came after it: ``pending_committed`` with ``already=True`` and
the later changes in ``followed_by``, never "superseded". The
rule holds on a trimmed history too (the ``last`` hashes above). Any
other write during an outage raises ``BackendUnavailable`` within about
``timeout`` and changes nothing.

Events (``foundation.telemetry``; each also a log line under ``foundation.flags``):

``foundation.flags.stale``               lost Redis (or started without it); serving the copy
``foundation.flags.started_from_cache``  constructed during an outage, from the copy
``foundation.flags.restored``            this node restored Redis from its copy
``foundation.flags.pending_recorded``    a kill switch recorded in an outage (or kept after a fork)
``foundation.flags.pending_committed``   a pending kill switch was committed
``foundation.flags.pending_superseded``  a pending kill switch lost to a newer change
``foundation.flags.in_sync``             back in sync with Redis (after subscribers reloaded)
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

Modules: ``RedisFlagStore`` (``_store``: the constructor and the ``FlagStore``
calls) builds on one layer per job, each a base class of the next:
``_core`` (keys, state, connections, decoding, delivery), ``_health`` (stale,
flaps, faults, read-only), ``_copy`` (the node copy, restores, consistent
reads), ``_trim`` (retention), ``_commit`` (the attempts of a transaction),
``_kill_switch`` (held kill switches), ``_records`` (catalogue, plans) and
``_listener`` (the listener thread). Beside them: ``_scripts`` (Lua),
``_pipeline`` (the WATCHing pipeline), ``_lost_commits`` (what a copy lost to a fork),
``_txn`` (the transactions handed to
``fn``), ``_errors`` (a commit attempt's outcomes), ``_status`` and ``_shared``.
"""

from foundation.flags._redis_store._status import RedisFlagStoreStatus
from foundation.flags._redis_store._status import copies_in_memory as copies_in_memory
from foundation.flags._redis_store._status import store_gauges as store_gauges
from foundation.flags._redis_store._store import RedisFlagStore

__all__ = ["RedisFlagStore", "RedisFlagStoreStatus"]
