"""The kill switch and the emergency rollback while the Redis flag store fails.

An operator at 3 a.m. rolls a migration back (``Migration.emergency_rollback``)
or turns a flag off (``disable``, ``set(name, False)``) while Redis is frozen
(SIGSTOP), out of memory, killed while the node copy's disk is full, or while
the node itself crashes. Each scenario runs in a plain interpreter with the
default hooks (``tests.faults._subprocess.run_scenario``), with a real
redis-server and another node in its own OS process, and checks:

- the switch-off applies in this process at once (every actor, the allowed one
  included; the plan at stage 0), and says so in one WARNING line;
- any other write is refused with ``BackendUnavailable`` and changes nothing;
- the other node keeps answering its last state during the outage, and hears
  the switch-off once Redis is back; the rollback is committed once (one event,
  one change per flag), whole;
- ``enable`` afterwards resumes the rollout exactly (percentage and overrides).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

# Node A is this interpreter; node B ("other") is a child process sharing the
# namespace, answering `ask` with what its FeatureFlags and store say now.
_COMMON = """
import os, signal, subprocess, sys, tempfile
from foundation import errors, telemetry
from foundation.flags import (
    FeatureFlags, Flag, FlagState, Migration, MigrationPlan, RedisFlagStore, Stage,
)
from tests.redis_support import RedisServer
from tests._logs import keep_records

FLAGS = (Flag("beta"), Flag("gamma"), Flag("kill_switch", default=True))
PLAN = MigrationPlan([Stage(1, "beta", ["beta"]), Stage(2, "gamma", ["gamma"])], name="plan")
NS = "ks"
work = tempfile.mkdtemp()

events = []
for name in ("pending_recorded", "pending_committed", "pending_superseded"):
    telemetry.attach("foundation.flags." + name,
                     lambda n, d: events.append(n.removeprefix("foundation.flags.")))

warned = keep_records("foundation", level=logging.WARNING)

def open_store(url, path, **kw):
    return RedisFlagStore(url, namespace=NS, cache_path=path, timeout=0.5,
                          resync_interval=0.3, **kw)

OTHER = '''
import sys
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
store = RedisFlagStore(sys.argv[1], namespace=sys.argv[2], cache_path=sys.argv[3],
                       timeout=0.5, resync_interval=0.3)
flags = FeatureFlags([Flag("beta"), Flag("gamma"), Flag("kill_switch", default=True)],
                     store=store)
print("ready", flush=True)
for line in sys.stdin:
    print("=", flags.enabled("beta", "vip"), flags.enabled("beta", "u-1"),
          flags.enabled("gamma"), flags.enabled("kill_switch"), flush=True)
flags.close(); store.close()
'''

class Other:
    # Node B: enabled(beta, vip), enabled(beta, u-1), enabled(gamma), enabled(kill_switch).
    def __init__(self, url):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OTHER, url, NS, os.path.join(work, "b.sqlite3")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self):
        self.proc.stdin.write("ask\\n"); self.proc.stdin.flush()
        return self.proc.stdout.readline().split()[1:]

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0

ALL_ON = ["True", "True", "True", "True"]

def at_stage_two(flags):
    # beta: 0 % rollout plus an allowed actor; gamma on; both by the plan at stage 2.
    migration = Migration(flags, PLAN)
    migration.advance(by="ana"); migration.advance(by="ana")
    flags.set_percentage("beta", 100, by="ana", reason="rollout")
    flags.allow("beta", "vip", by="ana", reason="vip first")
    return migration

def node_a_at_stage_two(url):
    # Node A (its copy in a.sqlite3) at stage 2, and node B once it sees that.
    sa = open_store(url, os.path.join(work, "a.sqlite3"))
    a = FeatureFlags(FLAGS, store=sa)
    migration = at_stage_two(a)
    other = Other(url)
    wait_for(lambda: other.ask() == ALL_ON, "node B sees stage 2")
    return sa, a, migration, other

def rolled_back_here(flags, migration):
    assert migration.status().stage == 0
    assert not flags.enabled("beta", "vip") and not flags.enabled("beta", "u-1")
    assert not flags.enabled("gamma")

def refused(call):
    try:
        call()
    except errors.BackendUnavailable:
        return
    raise AssertionError(f"{call} was not refused during the outage")

def committed_once(flags, migration):
    actions = [(e.action, e.from_stage, e.to_stage) for e in migration.history()]
    assert actions == [("advance", 0, 1), ("advance", 1, 2), ("emergency_rollback", 2, 0)], actions
    offs = [(c.flag, c.by) for c in flags.history()
            if c.flag in PLAN.flags and c.old.switch and not c.new.switch]
    assert sorted(offs) == [("beta", "oncall"), ("gamma", "oncall")], offs

def resumes_exactly(flags, other):
    flags.enable("beta", by="oncall", reason="false alarm")
    assert flags.state("beta") == FlagState(True, 100.0, frozenset({"vip"})), flags.state("beta")
    wait_for(lambda: other.ask()[:2] == ["True", "True"], "node B to resume beta's rollout")
"""


def test_emergency_rollback_on_a_frozen_redis_applies_here_and_commits_once() -> None:
    """SIGSTOP while in sync: the first call waits one timeout, then applies locally."""
    result = run_scenario(
        _COMMON
        + """
srv = RedisServer(); srv.start()
try:
    sa, a, migration, other = node_a_at_stage_two(srv.url)
    srv.process.send_signal(signal.SIGSTOP)
    try:
        migration.emergency_rollback("error spike", by="oncall")  # returns: no error
        rolled_back_here(a, migration)
        a.set("kill_switch", False, by="oncall", reason="belt and braces")
        assert not a.enabled("kill_switch")
        assert [p.flags for p in sa.pending()] == [("beta", "gamma"), ("kill_switch",)]
        assert sa.pending()[0].plans == ("plan",)
        assert sa.status().pending_flags == ("beta", "gamma", "kill_switch"), sa.status()
        refused(lambda: a.enable("gamma", by="ana"))
        refused(lambda: a.set_percentage("beta", 5, by="ana"))
        refused(lambda: migration.advance(by="ana"))
        rolled_back_here(a, migration)
        assert a.state("beta") == FlagState(False, 100.0, frozenset({"vip"})), a.state("beta")
        # Node B cannot know yet: it answers its last state, at once (memory).
        assert other.ask() == ALL_ON
    finally:
        srv.process.send_signal(signal.SIGCONT)
    wait_for(lambda: not sa.pending() and sa.synced, "both kill switches committed")
    wait_for(lambda: other.ask() == ["False", "False", "False", "False"], "node B hears them")
    assert events.count("pending_committed") == 2 and "pending_superseded" not in events, events
    committed_once(a, migration)
    assert srv.command("HGET", "{ks}:flags:stages", "plan") == b"0"
    recorded = [w for w in warned.messages() if "applied locally" in w]
    assert len(recorded) == 2 and "beta, gamma, plan" in recorded[0], recorded
    resumes_exactly(a, other)
    assert sa._thread.is_alive()
    other.close(); a.close(); sa.close()
finally:
    srv.stop()
print("OK")
"""
    )
    assert "applied locally" in result.stderr, result.stderr


def test_emergency_rollback_while_redis_is_out_of_memory_waits_for_memory() -> None:
    """OOM (maxmemory 1, noeviction): MULTI is refused; the rollback is kept and committed."""
    run_scenario(
        _COMMON
        + """
srv = RedisServer(); srv.start()
try:
    sa, a, migration, other = node_a_at_stage_two(srv.url)
    srv.command("CONFIG", "SET", "maxmemory", "1")
    try:
        migration.emergency_rollback("error spike", by="oncall")
        rolled_back_here(a, migration)
        assert [p.plans for p in sa.pending()] == [("plan",)], sa.pending()
        refused(lambda: a.allow("gamma", "zed", by="ana"))
        assert a.state("gamma").allow == frozenset()
        assert other.ask() == ALL_ON  # B still reads Redis: nothing was committed
        assert srv.command("HGET", "{ks}:flags:stages", "plan") == b"2"
    finally:
        srv.command("CONFIG", "SET", "maxmemory", "0")
    wait_for(lambda: not sa.pending(), "the rollback committed")
    wait_for(lambda: other.ask()[:3] == ["False", "False", "False"], "node B hears it")
    committed_once(a, migration)
    resumes_exactly(a, other)
    other.close(); a.close(); sa.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_set_false_is_the_kill_switch_during_an_outage() -> None:
    """``set(name, False)`` is ``disable``: applied here and kept while Redis is down."""
    run_scenario(
        _COMMON
        + """
srv = RedisServer(); srv.start()
try:
    sa = open_store(srv.url, os.path.join(work, "a.sqlite3"))
    a = FeatureFlags(FLAGS, store=sa)
    a.set("beta", True, by="ana")
    srv.kill()
    wait_for(lambda: sa.stale, "node A stale")
    a.set("beta", False, by="oncall", reason="incident")  # no BackendUnavailable
    assert not a.enabled("beta")
    assert [(p.flags, p.by, p.reason) for p in sa.pending()] == [(("beta",), "oncall", "incident")]
    refused(lambda: a.set("gamma", True, by="ana"))  # turning on must reach Redis
    assert not a.enabled("gamma")
    srv.start()  # empty: restored from A's copy, then the kill switch committed
    wait_for(lambda: not sa.pending() and sa.synced, "the kill switch committed")
    assert [(c.flag, c.new.switch, c.by) for c in a.history()] == [
        ("beta", True, "ana"), ("beta", False, "oncall")]
    assert not a.enabled("beta")
    a.close(); sa.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_a_kill_switch_with_redis_down_and_the_copy_disk_full_is_kept_in_memory() -> None:
    """Both fail: the rollback applies, is kept in memory (said so), and committed
    after Redis restarts empty; the copy file catches up once it can be written."""
    run_scenario(
        _COMMON
        + """
import resource, sqlite3
from foundation.flags import _node_cache
_node_cache.RETRY_FILE_AFTER = 0.2
srv = RedisServer(); srv.start()
try:
    path = os.path.join(work, "a.sqlite3")
    sa = open_store(srv.url, path)
    a = FeatureFlags(FLAGS, store=sa)
    migration = at_stage_two(a)
    other = Other(srv.url)
    wait_for(lambda: other.ask() == ALL_ON, "node B sees stage 2")
    # The disk is full for node A: its copy cannot grow (writes fail with EFBIG).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(os.path.getsize(os.path.join(work, f)) for f in os.listdir(work))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))
    srv.kill()
    wait_for(lambda: sa.stale, "node A stale")
    migration.emergency_rollback("error spike", by="oncall")
    rolled_back_here(a, migration)
    status = sa.status()
    assert status.copy_in_memory and status.pending == 1, status
    said = warned.messages()
    assert any("not durable until the file can be written" in w for w in said), said
    assert other.ask() == ALL_ON  # B serves its last state from memory
    srv.start()  # empty: A restores it from the copy it keeps in memory, then commits
    wait_for(lambda: not sa.pending() and sa.synced, "the rollback committed")
    wait_for(lambda: other.ask()[:3] == ["False", "False", "False"], "node B hears it")
    committed_once(a, migration)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
    count = iter(range(10**6))

    def file_caught_up():  # a commit lets the copy try its file again
        a.allow("gamma", "later-%d" % next(count), by="ana")
        with sqlite3.connect(path) as c:
            version = c.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            pending = c.execute("SELECT count(*) FROM pending").fetchone()
        return int(version[0]) == sa.status().version and pending == (0,)

    wait_for(file_caught_up, "the copy file to hold the rollback, nothing pending")
    assert not sa.status().copy_in_memory
    other.close(); a.close(); sa.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_a_node_that_crashed_with_a_pending_rollback_restarts_rolled_back() -> None:
    """Node A dies (SIGKILL) after an emergency rollback during an outage; restarted
    while Redis is still down, it serves the rollback from its copy, then commits it."""
    run_scenario(
        _COMMON
        + """
CHILD = '''
import os, signal, sys, time
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
store = RedisFlagStore(sys.argv[1], namespace=sys.argv[2], cache_path=sys.argv[3],
                       timeout=0.5, resync_interval=0.3)
flags = FeatureFlags([Flag("beta"), Flag("gamma"), Flag("kill_switch", default=True)],
                     store=store)
plan = MigrationPlan([Stage(1, "beta", ["beta"]), Stage(2, "gamma", ["gamma"])], name="plan")
migration = Migration(flags, plan)
migration.advance(by="ana"); migration.advance(by="ana")
print("advanced", flush=True)
sys.stdin.readline()  # Redis is killed meanwhile
deadline = time.monotonic() + 20
while not store.stale:
    assert time.monotonic() < deadline, "never stale"
    time.sleep(0.005)  # sleep-ok: polling with a deadline
migration.emergency_rollback("error spike", by="oncall")
print("rolled back", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
'''
srv = RedisServer(); srv.start()
try:
    path = os.path.join(work, "a.sqlite3")
    child = subprocess.Popen([sys.executable, "-c", CHILD, srv.url, NS, path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "advanced"
    srv.kill()
    child.stdin.write("go\\n"); child.stdin.flush()
    assert child.stdout.readline().strip() == "rolled back"
    assert child.wait(timeout=30) == -signal.SIGKILL
    sa = open_store(srv.url, path)  # Redis still down: from the copy, with its pending
    assert sa.stale
    a = FeatureFlags(FLAGS, store=sa)
    migration = Migration(a, PLAN)
    rolled_back_here(a, migration)
    assert [(p.by, p.plans) for p in sa.pending()] == [("oncall", ("plan",))], sa.pending()
    srv.start()  # empty: restored from the copy, then the rollback committed
    wait_for(lambda: not sa.pending() and sa.synced, "the rollback committed")
    committed_once(a, migration)
    rolled_back_here(a, migration)
    assert events.count("pending_committed") == 1, events
    a.close(); sa.close()
finally:
    srv.stop()
print("OK")
"""
    )


def test_auto_rollback_during_an_outage_warns_once_and_rolls_back_when_redis_returns() -> None:
    """A breach while Redis is down: the one-stage rollback cannot be written (it is not
    a kill switch). One WARNING says so, naming the breach, not an ERROR blaming the
    health source at every check; once Redis is back the stages are rolled back."""
    result = run_scenario(
        _COMMON
        + """
from foundation.flags import AutoRollback, HealthSample, HealthThresholds
srv = RedisServer(); srv.start()
try:
    sa = open_store(srv.url, os.path.join(work, "a.sqlite3"))
    a = FeatureFlags(FLAGS, store=sa)
    at_stage_two(a)
    calls, bad = [], threading.Event()

    def health():
        calls.append(1)
        return HealthSample(error_rate=0.5 if bad.is_set() else 0.0)

    migration = Migration(a, PLAN, health=health,
                          thresholds=HealthThresholds(max_error_rate=0.1))
    with AutoRollback(migration, interval=0.05) as watcher:
        srv.kill()
        wait_for(lambda: sa.stale, "node A stale")
        bad.set()
        wait_for(lambda: isinstance(watcher.last_error, errors.BackendUnavailable),
                 "a rollback refused")
        seen = len(calls)
        wait_for(lambda: len(calls) >= seen + 5, "five more checks")
        said = [w for w in warned.messages() if "automatic rollback could not be written" in w]
        assert len(said) == 1 and "error rate 0.5 > 0.1" in said[0], said
        assert migration.status().stage == 2 and a.enabled("gamma"), "nothing changed"
        srv.start()  # empty: restored from the copy; the next checks roll back
        wait_for(lambda: migration.status().stage == 0, "rolled back to stage 0")
    actions = [(e.action, e.to_stage) for e in migration.history()]
    assert actions[-2:] == [("auto_rollback", 1), ("auto_rollback", 0)], actions
    assert not a.enabled("beta", "vip") and not a.enabled("gamma")
    a.close(); sa.close()
finally:
    srv.stop()
print("OK")
"""
    )
    assert "auto-rollback health source" not in result.stderr, result.stderr
    assert "LOG ERROR" not in result.stderr, result.stderr


def test_a_kill_switch_kept_on_a_refused_commit_is_in_status_at_once() -> None:
    """OOM: the kill switch's commit is refused and it is kept. ``status()`` says so
    at once (stale, the OOM error, the pending flag), not only once the listener's
    next turn (up to its XREAD block, 2 s here) fails to replay it; a plain write
    refused likewise leaves its error in ``last_error``."""
    run_scenario(
        _COMMON
        + """
srv = RedisServer(); srv.start()
try:
    sa = RedisFlagStore(srv.url, namespace=NS, cache_path=os.path.join(work, "a.sqlite3"),
                        timeout=0.5, resync_interval=5.0)
    a = FeatureFlags(FLAGS, store=sa)
    a.enable("beta", by="ana")
    wait_for(lambda: sa.synced, "in sync")
    srv.command("CONFIG", "SET", "maxmemory", "1")
    try:
        refused(lambda: a.allow("gamma", "zed", by="ana"))
        status = sa.status()
        assert "OOM" in (status.last_error or ""), status
        assert status.connected and not status.stale, status  # a refusal changed nothing
        a.disable("beta", by="oncall", reason="error spike")
        status = sa.status()
        assert status.pending == 1 and status.pending_flags == ("beta",), status
        assert status.stale and not status.connected and status.stale_since, status
        assert "OOM" in (status.last_error or ""), status
        assert not a.enabled("beta", "vip")
    finally:
        srv.command("CONFIG", "SET", "maxmemory", "0")
    wait_for(lambda: not sa.pending() and sa.synced, "committed, in sync")
    assert sa.load_states()["beta"].switch is False
    stale = [w for w in warned.messages() if "(stale)" in w]
    assert len(stale) == 1, stale  # one transition, one line
    a.close(); sa.close()
finally:
    srv.stop()
print("OK")
"""
    )
