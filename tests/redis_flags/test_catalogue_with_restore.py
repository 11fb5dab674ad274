"""A node restoring an empty Redis writes its catalogue with the restore, before its replay.

Found by an explorer (/tmp/flagsx/cli_after_restore.py): a node with a node copy
kept 300 emergency rollbacks pending while Redis was down; Redis restarted
empty; the node's resync restored the flag data, committed the kill switches one
transaction at a time, and only then recorded the catalogue again. For the whole
replay, ``foundation flags show f1`` (``FeatureFlags.from_store``) found the
namespace and no declaration: ``UnknownFlag: unknown flag 'f1'``, exit 1 (a name
no application declared), for a declared flag, right after a Redis restart.

Now the restore's script writes the catalogue and plans this node's application
recorded, and the resync records them again before the replay. Observed with
real parts: a ``foundation.flags.restored`` telemetry listener (called on the
listener thread, right after the restore, before the replay) runs the command
and ``FeatureFlags.from_store``; a second connection polls the keys atomically
(MULTI) through the whole resync.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
import os, subprocess, tempfile
import redis
from foundation import telemetry
from foundation.flags import DEFAULT_FLAGS, FeatureFlags, Migration, MigrationPlan, RedisFlagStore
from tests.redis_support import RedisServer

N, NS = 40, "catres"
FLAG = DEFAULT_FLAGS[0].name
srv = RedisServer(); srv.start()
import atexit; atexit.register(srv.stop)  # no redis-server left by a failed run
tmp = tempfile.mkdtemp()
node = RedisFlagStore(srv.url, namespace=NS, timeout=0.5, resync_interval=0.2,
                      cache_path=os.path.join(tmp, "node.sqlite3"))
flags = FeatureFlags(DEFAULT_FLAGS, store=node)
migration = Migration(flags, MigrationPlan.default())
migration.advance(by="ana", reason="go")
srv.kill()
wait_for(lambda: node.stale, "the node stale")
for i in range(N):
    migration.emergency_rollback(f"spike {i}", by="oncall")
assert len(node.pending()) == N, node.pending()

raw = redis.Redis.from_url(srv.url, decode_responses=True)
KEYS = [f"{{{NS}}}:flags:{k}" for k in ("meta", "catalogue", "plans")]

def look():
    # (meta, catalogue, plans) exist, read in one transaction: one moment of Redis.
    with raw.pipeline(transaction=True) as pipe:
        for key in KEYS:
            pipe.exists(key)
        return tuple(bool(n) for n in pipe.execute())

stop = threading.Event()
seen = {"looks": 0, "during_replay": 0, "without": []}

def poll():
    while not stop.is_set():
        try:
            meta, catalogue, plans = look()
        except redis.RedisError:
            time.sleep(0.002)  # sleep-ok: poll interval, Redis not back yet
            continue
        replaying = bool(node.pending())
        seen["looks"] += 1
        seen["during_replay"] += meta and replaying
        if meta and not (catalogue and plans):
            seen["without"].append((catalogue, plans, replaying))
        time.sleep(0.001)  # sleep-ok: poll interval

at_restore = {}

def on_restored(name, data):
    # On the node's listener thread, right after the restore, before the replay.
    try:
        at_restore["look"] = look()
        at_restore["pending"] = len(node.pending())
        tool_store = RedisFlagStore(srv.url, namespace=NS, timeout=0.5, cache_path=None)
        try:
            tool = FeatureFlags.from_store(tool_store)
            at_restore["names"] = sorted(tool.names)
            tool.close()
        finally:
            tool_store.close()
        env = dict(os.environ, FOUNDATION_CACHE_DIR=tempfile.mkdtemp())
        cli = subprocess.run(
            [sys.executable, "-m", "foundation.cli", "flags", "show", FLAG,
             "--store", f"{srv.url}?namespace={NS}", "--json"],
            capture_output=True, text=True, timeout=60, env=env,
        )
        at_restore["cli"] = (cli.returncode, cli.stderr.strip()[:200])
    except Exception as exc:
        at_restore["error"] = repr(exc)

telemetry.attach("foundation.flags.restored", on_restored)
poller = threading.Thread(target=poll, name="test-poller"); poller.start()
srv.start()  # empty: no persistence
wait_for(lambda: node.synced and not node.stale and not node.pending(), "replayed", 60)
stop.set(); poller.join()
print("AT_RESTORE", at_restore.get("look"), at_restore.get("pending"),
      at_restore.get("error"), flush=True)
print("NAMES", at_restore.get("names") == sorted(f.name for f in DEFAULT_FLAGS), flush=True)
print("CLI", at_restore.get("cli"), flush=True)
print("WITHOUT", len(seen["without"]), seen["without"][:3], flush=True)
print("DURING", seen["during_replay"] > 0, seen["looks"] > 0, flush=True)
print("STAGE", migration.status().stage, node.status().restores, flush=True)
assert node._thread.is_alive(), "the listener thread died"
flags.close(); node.close(); raw.close(); srv.kill()
print("OK", flush=True)
"""


def test_a_restore_writes_the_catalogue_before_its_pending_kill_switches() -> None:
    result = run_scenario(_SCENARIO, timeout=150)
    # Right after the restore, before the replay of the 40 kill switches: the
    # flag data is there with the catalogue and the plan (before: without).
    assert result.lines("AT_RESTORE") == ["AT_RESTORE (True, True, True) 40 None"], result.stdout
    assert result.lines("NAMES") == ["NAMES True"], result.stdout
    # The command finds the declared flag (before: rc 1, UnknownFlag).
    (cli,) = result.lines("CLI")
    assert cli.startswith("CLI (0, "), result.stdout
    # At no moment of the resync did Redis hold flag data without them.
    assert result.lines("WITHOUT") == ["WITHOUT 0 []"], result.stdout
    assert result.lines("DURING") == ["DURING True True"], result.stdout
    assert result.lines("STAGE") == ["STAGE 0 1"], result.stdout


# The restore writes only what Redis lacks: a catalogue key that is no hash is left
# to the resync's record (its WARNING, as before), the restore and the resync go on;
# a plan Redis records otherwise is not replaced by the restore (the record after it
# applies its own rules: ours replaces it, with the union of their flags).
_KEPT = """
import os, tempfile
import redis
from foundation import telemetry
from foundation.flags import DEFAULT_FLAGS, FeatureFlags, Migration, MigrationPlan, RedisFlagStore
from foundation.flags import Stage
from foundation.flags._store import plan_to_json
from tests.redis_flags._proxy import CutProxy
from tests.redis_support import RedisServer

NS = "catkept"
srv = RedisServer(); srv.start()
import atexit; atexit.register(srv.stop)
proxy = CutProxy(srv.port)
node = RedisFlagStore(proxy.url, namespace=NS, timeout=0.5, resync_interval=0.2,
                      cache_path=os.path.join(tempfile.mkdtemp(), "node.sqlite3"))
flags = FeatureFlags(DEFAULT_FLAGS, store=node)
migration = Migration(flags, MigrationPlan.default())
migration.advance(by="ana", reason="go")
ours = plan_to_json(MigrationPlan.default())
proxy.cut()
wait_for(lambda: node.stale, "the node stale")
raw = redis.Redis.from_url(srv.url, decode_responses=True)
raw.flushall()  # as restarted empty; then another hand writes before the node is back
other = plan_to_json(MigrationPlan([Stage(1, "one", [DEFAULT_FLAGS[0].name])], name="default"))
raw.set(f"{{{NS}}}:flags:catalogue", "x")
raw.hset(f"{{{NS}}}:flags:plans", "default", other)
at_restore = {}
def on_restored(name, data):
    at_restore["plan"] = raw.hget(f"{{{NS}}}:flags:plans", "default") == other
    at_restore["catalogue"] = raw.type(f"{{{NS}}}:flags:catalogue")
telemetry.attach("foundation.flags.restored", on_restored)
proxy.restore()
wait_for(lambda: node.synced and not node.stale and node.status().restores == 1, "restored")
print("AT_RESTORE", at_restore, flush=True)
print("AFTER", raw.hget(f"{{{NS}}}:flags:plans", "default") == ours,
      raw.get(f"{{{NS}}}:flags:catalogue"), migration.status().stage, flush=True)
assert node._thread.is_alive(), "the listener thread died"
flags.close(); node.close(); raw.close(); proxy.close(); srv.kill()
print("OK", flush=True)
"""


def test_the_restore_replaces_no_record_and_skips_a_key_that_is_no_hash() -> None:
    result = run_scenario(_KEPT, timeout=150)
    assert result.lines("AT_RESTORE") == ["AT_RESTORE {'plan': True, 'catalogue': 'string'}"], (
        result.stdout
    )
    assert result.lines("AFTER") == ["AFTER True x 1"], result.stdout
    warned = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("LOG WARNING") and "holds a string, not a hash" in line
    ]
    assert warned, result.stderr
