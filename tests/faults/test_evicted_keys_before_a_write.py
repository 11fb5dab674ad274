"""A flag write that comes after Redis lost keys, before any check noticed.

Redis evicting keys (an ``allkeys-*`` ``maxmemory-policy``; the test deletes
them, as such an eviction does) while ``{ns}:flags:meta`` stays: the versions
agree, and the store noticed the loss only at a resync or at the listener's
periodic check (``resync_interval``). A write committed before that check
committed on top of the loss: the version moved, the same-version comparison
never fired again, the copy followed Redis past it, and the evicted flags read
their defaults for good: a kill-switched flag (default on) read on again, in
this process and in a process without a copy (measured: ``restores`` 0, copy
states ``['third']``, ``kill`` True). Now the write's WATCHed read of meta
carries the counts that comparison needs (same round trip), and a write that
finds a loss restores from the copy first. ``resync_interval`` is an hour here:
no check but the write's can find the loss.

Also: the (re)sync's ``INFO memory`` (is the policy evicting?) timing out on a
frozen Redis is that (re)sync's failure, like any other step's, instead of
being swallowed for ``ROLE`` to wait a second timeout right after.

Each scenario runs against a real redis-server, in a subprocess with the
interpreter's default hooks; no library thread dies.
"""

from __future__ import annotations

from tests.faults._redis_scenarios import FROZEN_PROBES, RECORDS
from tests.faults._subprocess import run_scenario

_SETUP = (
    RECORDS
    + """
import os, tempfile
import redis as redis_py
from foundation import FeatureFlags, Flag, RedisFlagStore
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
URL = server.url
FLAGS = [Flag("kill", default=True), Flag("other"), Flag("third")]
opened = []

class LostRecords(Records):
    def lost(self):
        return [r for r in self.records if "lost keys of version" in r.getMessage()]

records = LostRecords()
logging.getLogger("foundation").addHandler(records)

def open_store():
    # resync_interval 1 h: neither the listener's periodic check nor a resync
    # compares Redis with the copy during the scenario; only a write can.
    store = RedisFlagStore(URL, namespace="ev", timeout=2.0, resync_interval=3600.0,
                           cache_path=os.path.join(tempfile.mkdtemp(), "copy.sqlite3"))
    opened.append(store)
    return store

def without_copy():
    # A process without this node's copy (the CLI, a new node): what Redis holds.
    fresh = RedisFlagStore(URL, namespace="ev", timeout=2.0, cache_path=None)
    try:
        return (FeatureFlags(FLAGS, store=fresh).enabled("kill"),
                [c.new.switch for c in fresh.history("kill")])
    finally:
        fresh.close()

store = open_store()
flags = FeatureFlags(FLAGS, store=store)
threads_before = library_threads()
flags.disable("kill", by="ops", reason="incident")
flags.enable("other")
raw = redis_py.Redis.from_url(URL)
assert store.status().restores == 0 and store.status().version == 2
"""
)

_END = """
    assert set(threads_before) <= set(library_threads()), (threads_before, library_threads())
    print("OK")
finally:
    for x in reversed(opened):
        x.close()
    server.stop()
"""

_STATE_LOST = """
try:
    raw.delete("{ev}:flags:state")            # evicted, meta kept: same version
    flags.enable("third")                     # another flag's write, before any check
    assert raw.hget("{ev}:flags:state", "kill") is not None, raw.hgetall("{ev}:flags:state")
    status = store.status()
    assert (status.restores, status.version) == (1, 3), status
    assert flags.enabled("kill") is False and flags.enabled("third") and flags.enabled("other")
    assert FeatureFlags(FLAGS, store=store).enabled("kill") is False  # from the copy
    assert without_copy() == (False, [False])
    (line,) = records.lost()
    assert line.levelno == logging.WARNING and "{ev}:flags:state" in line.getMessage(), line
    assert "version 2" in line.getMessage(), line.getMessage()

    # Nothing lost any more: the next writes restore nothing.
    flags.enable("other")
    flags.disable("third")
    assert store.status().restores == 1 and len(records.lost()) == 1
"""


def test_a_write_after_the_state_hash_was_evicted_restores_it_first() -> None:
    """The state hash evicted, then another flag's write: the kill-switched flag
    stays off here, in a new ``FeatureFlags`` and in a process without a copy."""
    run_scenario(_SETUP + _STATE_LOST + _END, timeout=120)


_HISTORY_LOST = """
try:
    raw.delete("{ev}:flags:history")          # evicted: the write's XADD would recreate it
    flags.disable("other")                    # a kill switch write: the same path
    assert store.status().restores == 1, store.status()
    assert [c.flag for c in store.history()] == ["kill", "other", "other"]
    assert without_copy() == (False, [False])
    (line,) = records.lost()
    assert "{ev}:flags:history" in line.getMessage(), line.getMessage()
"""


def test_a_write_after_the_history_was_evicted_restores_it_first() -> None:
    """The history stream evicted, then a write: without the check its ``XADD``
    started a new stream (the copy then took it, dropping the old entries)."""
    run_scenario(_SETUP + _HISTORY_LOST + _END, timeout=120)


_LOST_DURING_THE_WRITE = """
try:
    real = store.transaction
    runs = []

    def transaction(fn):
        def body(txn):
            runs.append(1)
            if len(runs) == 1:
                # Evicted after this attempt's WATCHed read of meta and the counts,
                # before its EXEC: the streams are watched too, so EXEC fails and
                # the next attempt finds the loss.
                raw.delete("{ev}:flags:history")
            return fn(txn)
        return real(body)

    store.transaction = transaction
    flags.enable("third")
    assert len(runs) == 2, runs
    assert store.status().restores == 1, store.status()
    assert without_copy() == (False, [False])
    assert [c.flag for c in store.history()] == ["kill", "other", "third"]
"""


def test_keys_evicted_between_the_write_read_and_its_exec_fail_the_exec() -> None:
    """The loss lands inside the write (after its read, before EXEC): the WATCH on
    the streams fails that EXEC, the retry restores first and commits after."""
    run_scenario(_SETUP + _LOST_DURING_THE_WRITE + _END, timeout=120)


_INFO_FROZEN = """
from foundation._redis_memory_policy import EvictionCheck

def stopped():                                    # SIGSTOP taken: the kernel says "T"
    with open(f"/proc/{server.process.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"

class FreezesAtInfo(EvictionCheck):
    armed = False
    def check(self, client, **kwargs):
        if FreezesAtInfo.armed:
            FreezesAtInfo.armed = False
            server.freeze()                       # Redis freezes as INFO is sent
            wait_for(stopped, "redis-server to stop")
        return super().check(client, **kwargs)

try:
    store._memory_policy = FreezesAtInfo(logging.getLogger("foundation.flags"), "x", URL)
    FreezesAtInfo.armed = True
    raw.client_kill_filter(_type="normal", skipme=True)  # the listener resyncs
    # (the cut itself makes it stale first; then the resync fails at INFO)
    wait_for(lambda: "reading INFO memory" in (store.status().last_error or ""),
             "the resync to fail at INFO memory", timeout=30)
    assert store.stale
    error = store.status().last_error
    assert "no answer in time" in error, error
    server.thaw()
    wait_for(lambda: store.synced and not store.stale, "in sync again", timeout=30)
    flags.enable("third")
    assert without_copy() == (False, [False])
"""


def test_info_memory_timing_out_in_a_resync_fails_that_resync() -> None:
    """Redis freezing as the resync reads ``INFO memory``: the resync fails on that
    timeout (stale, said in ``last_error``), not on ``ROLE``'s a timeout later."""
    run_scenario(_SETUP + _INFO_FROZEN + _END, timeout=120)  # (stop() thaws)


_FROZEN_AT_THE_READ = (
    """
from foundation.errors import BackendUnavailable
import foundation.flags._redis_store._commit as redis_store

"""
    + FROZEN_PROBES
    + """

real_read = redis_store._read_watched
armed = [True]

def read_watched(pipe, redis, *commands):
    if armed and armed.pop():
        # WATCH was answered; Redis freezes before the read of meta and the counts.
        store._wake_listener()                    # its XREAD starts again: a full block
        server.freeze()
        wait_for(stopped, "redis-server to stop")
    return real_read(pipe, redis, *commands)

try:
    redis_store._read_watched = read_watched
    try:
        flags.enable("third")
        raise AssertionError("a write to a frozen Redis returned")
    except BackendUnavailable as exc:
        first = exc
    assert "no answer in time" in str(first), str(first)
    assert queued_connections() == 0, "the writer reconnected to the frozen Redis to UNWATCH"
    try:
        flags.enable("third")
        raise AssertionError("a write to a frozen Redis returned")
    except BackendUnavailable as exc:
        assert "timed out moments ago" in str(exc), str(exc)  # fails fast
    server.thaw()

    def write_succeeds():
        try:
            flags.enable("third")
        except BackendUnavailable:
            return False                          # not yet back (or the window)
        return True

    wait_for(write_succeeds, "a write to succeed after the thaw", timeout=30)
    assert store.status().restores == 0 and without_copy() == (False, [False])
"""
)


def test_a_freeze_at_the_write_read_costs_one_timeout_and_no_unwatch() -> None:
    """Redis freezing after WATCH, as the write reads meta and the counts in one
    round trip: one timeout, no reconnect to UNWATCH the dead socket, the next
    write fails fast, and all works once Redis thaws (as for a lone read)."""
    run_scenario(_SETUP + _FROZEN_AT_THE_READ + _END, timeout=120)


_PULLED_AFTER_THE_LOSS = """
try:
    raw.delete("{ev}:flags:history")          # evicted, meta kept: same version
    # A refresh of the copy now: the listener's after a reply it read before the
    # loss (measured: under load, after the write of 'other'), a read's, a write's.
    # Taken as a divergence it emptied the copy's history too.
    assert store._pull() is False             # a loss: a resync is asked for
    assert len(store._cache.history()) == 2   # the copy keeps what it held
    store._wake_listener()
    wait_for(lambda: store.status().restores == 1, "the resync to restore the history")
    assert without_copy() == (False, [False])
    assert [c.flag for c in store.history()] == ["kill", "other"]
"""


def test_a_refresh_after_a_stream_was_evicted_keeps_the_copy_and_restores() -> None:
    """The history evicted, then a refresh of the copy at the same version: the
    copy keeps its entries (not taken as a divergence) and the resync restores."""
    run_scenario(_SETUP + _PULLED_AFTER_THE_LOSS + _END, timeout=120)
