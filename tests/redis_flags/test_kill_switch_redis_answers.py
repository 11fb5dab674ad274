"""A kill switch on a stale store commits when Redis answers, outside pytest.

A store is stale from the moment its listener fails until the listener's resync
ends. Redis may answer all along: it has come back and the listener waits out
its backoff, or only the listener's connection was cut (``CLIENT KILL``).
Before, ``disable()`` in that window was always kept pending with a WARNING
"Redis unavailable (... Connection refused)", and committed up to 0.7 s later,
while an ``enable()`` just before it committed at once. Now a kill switch on a
stale store tries Redis as any write does and is kept only if that commit
fails, naming its failure. It is still kept without trying when Redis let the
last call time out and answered nothing since (a frozen server: trying would
wait a timeout), and when kill switches of this node are still pending (it goes
after them, in order).

Each scenario holds the store's copy lock while it needs the store stale: the
listener's resync takes that lock to catch up, so it cannot end meanwhile (the
scenario's own writes take it again, reentrantly, on the same thread).
Scenarios run in a plain interpreter (default hooks): Redis is killed, frozen.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_START = """
import os, tempfile
import redis
from foundation import FeatureFlags, Flag, RedisFlagStore, telemetry
from tests._logs import keep_records
from tests.redis_support import RedisServer

said = keep_records("foundation", level=logging.INFO)
recorded = []
telemetry.attach("foundation.flags.pending_recorded", lambda name, data: recorded.append(data))
server = RedisServer()
server.start()
admin = redis.Redis.from_url(server.url, decode_responses=True)
store = RedisFlagStore(server.url, namespace="f", timeout=0.5, resync_interval=0.5,
                       cache_path=os.path.join(tempfile.mkdtemp(), "copy.sqlite3"))
flags = FeatureFlags([Flag("a", default=True), Flag("b", default=True), Flag("c")],
                     store=store)
threads = library_threads()

def kept():
    return [r.getMessage() for r in said
            if r.levelno == logging.WARNING and "kill switch by" in r.getMessage()]

def in_redis(flag):
    return admin.hget("{f}:flags:state", flag)

def settle():
    wait_for(lambda: store.synced and not store.pending(), "the store back in sync")
    assert library_threads() == threads, (threads, library_threads())

def finish():
    flags.close()
    store.close()
    print("OK")
"""


_AFTER_RESTART = (
    _START
    + """
try:
    flags.enable("c")
    server.kill()
    wait_for(lambda: store.stale, "the store stale")
    with store._copy_lock:  # the listener cannot resync: stale while Redis answers
        server.start()  # empty: the first write restores it from the copy
        flags.enable("c", by="ops")
        flags.disable("a", by="oncall", reason="incident")
        print("STALE", store.stale)
        print("PENDING", len(store.pending()), len(recorded))
        print("KEPT", kept())
        print("REDIS", '"switch": false' in (in_redis("a") or ""))
    settle()
    history = [(c.flag, c.by) for c in flags.history("a")]
    assert history == [("a", "oncall")], history
    finish()
finally:
    server.stop()
"""
)


_LISTENER_CUT = (
    _START
    + """
try:
    flags.enable("c")
    # The listener back in its blocking read (flag "b"), so past its refresh of
    # the copy after "c": held by us meanwhile, the copy lock stopped it there,
    # and it never read again to notice the cut (under load, ~2 runs in 5).
    wait_for(lambda: any(c["name"] == "foundation-flags-listener[f]" and "b" in c["flags"]
                         for c in admin.client_list()), "the listener blocked in its read")
    with store._copy_lock:  # the listener cannot resync: stale while Redis answers
        def kill_listener():
            # (Polled: under load the listener may be between connections.)
            for c in admin.client_list():
                if c["name"] == "foundation-flags-listener[f]":
                    admin.client_kill_filter(_id=c["id"])
                    return True
            return False

        wait_for(kill_listener, "the listener's connection, to kill it")
        wait_for(lambda: store.stale, "the store stale")
        flags.disable("a", by="oncall", reason="incident")
        print("STALE", store.stale)
        print("PENDING", len(store.pending()), len(recorded))
        print("KEPT", kept())
        print("REDIS", '"switch": false' in (in_redis("a") or ""))
    settle()
    finish()
finally:
    server.stop()
"""
)


_FROZEN = (
    _START
    + """
try:
    server.freeze()
    try:
        wait_for(lambda: store.stale, "the store stale (its listener timed out)")
        flags.disable("a", by="oncall", reason="incident")
        # Not tried: no write waited for the frozen server (none timed out).
        print("TRIED", store._no_answer.last_timeout != 0.0)
        print("PENDING", len(store.pending()))
        print("KEPT", kept())
    finally:
        server.thaw()
    settle()
    assert '"switch": false' in in_redis("a")
    finish()
finally:
    server.stop()
"""
)


_IN_ORDER = (
    _START
    + """
try:
    server.kill()
    wait_for(lambda: store.stale, "the store stale")
    flags.disable("a", by="oncall", reason="first")  # refused: kept
    with store._copy_lock:  # the listener cannot resync (nor commit "first")
        server.start()
        flags.disable("b", by="oncall", reason="second")  # kept behind "first"
        print("PENDING", [op.reason for op in store.pending()])
        print("KEPT", kept())
    settle()
    print("ORDER", [(c.flag, c.reason) for c in flags.history()])
    superseded = [m for m in said.messages() if "SUPERSEDED" in m]
    assert not superseded, superseded
    finish()
finally:
    server.stop()
"""
)


def test_a_kill_switch_commits_at_once_when_redis_is_back() -> None:
    result = run_scenario(_AFTER_RESTART, timeout=60)
    assert result.lines("STALE") == ["STALE True"], result.stdout
    assert result.lines("PENDING") == ["PENDING 0 0"], result.stdout
    assert result.lines("KEPT") == ["KEPT []"], result.stdout
    assert result.lines("REDIS") == ["REDIS True"], result.stdout


def test_a_kill_switch_commits_at_once_after_a_cut_of_the_listener_only() -> None:
    result = run_scenario(_LISTENER_CUT, timeout=60)
    assert result.lines("STALE") == ["STALE True"], result.stdout
    assert result.lines("PENDING") == ["PENDING 0 0"], result.stdout
    assert result.lines("KEPT") == ["KEPT []"], result.stdout
    assert result.lines("REDIS") == ["REDIS True"], result.stdout


def test_a_kill_switch_on_a_frozen_redis_is_kept_without_waiting_a_timeout() -> None:
    result = run_scenario(_FROZEN, timeout=60)
    assert result.lines("TRIED") == ["TRIED False"], result.stdout
    assert result.lines("PENDING") == ["PENDING 1"], result.stdout
    (kept,) = result.lines("KEPT")
    assert "is not answering (this node is stale:" in kept, kept
    assert "Timeout" in kept, kept


def test_a_kill_switch_goes_after_the_pending_ones() -> None:
    result = run_scenario(_IN_ORDER, timeout=60)
    assert result.lines("PENDING") == ["PENDING ['first', 'second']"], result.stdout
    (kept,) = result.lines("KEPT")
    assert "Redis unavailable" in kept, kept  # "first": its commit was refused
    assert "1 earlier kill switch(es) of this node are not committed yet" in kept, kept
    assert "it will be committed after them" in kept, kept
    assert result.lines("ORDER") == ["ORDER [('a', 'first'), ('b', 'second')]"], result.stdout
