"""SQLite persistence under faults, outside pytest (default hooks).

``SQLiteFlagStore`` and the node copy of ``RedisFlagStore`` (``NodeCache``) with
the disk full (``RLIMIT_FSIZE``: writes past it fail with EFBIG), the write lock
held by another process, a read-only file, and the file deleted, replaced or
truncated under a running store. Each scenario drives a ``FeatureFlags`` and
checks: only ``foundation.errors`` escape a public call, nothing is half-stored
(state and history agree), reads keep working, the store recovers, an operator
finds a log line saying what happened, and no library thread died.
"""

from __future__ import annotations

import os

import pytest

from tests._ci import needs_root
from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer

# Shared by the scenarios: `expect` runs a public call that must fail with a
# foundation.errors type (never sqlite3's own); `consistent` checks that every
# flag's stored state is the last change its history records.
_HELPERS = """
import os, signal, resource, sqlite3, subprocess, tempfile
from foundation import errors

def expect(error, call):
    try:
        call()
    except Exception as exc:
        assert type(exc).__module__ == "foundation.errors", repr(exc)
        assert isinstance(exc, error), repr(exc)
        return exc
    raise AssertionError(f"{call} did not raise {error.__name__}")

def consistent(store):
    last = {}
    for change in store.history():
        last[change.flag] = change.new
    states = store.load_states()
    assert {n: s for n, s in last.items() if s is not None} == states, (last, states)

def limit_file_size(extra):
    # Writes past the limit fail with EFBIG (SIGXFSZ ignored), as on a full disk.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    largest = max(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + extra, resource.RLIM_INFINITY))

def unlimit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)

# Another process holding the write lock (BEGIN EXCLUSIVE) until told to let go.
HOLDER = '''
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
db.execute("CREATE TABLE IF NOT EXISTS holder (x)")
print("HELD", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
'''

def hold_lock(path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "HELD"
    return holder

def release(holder):
    holder.stdin.write("go\\n")
    holder.stdin.close()
    assert holder.wait(timeout=20) == 0
"""

_SQLITE_SETUP = """
from foundation import FeatureFlags, Flag, SQLiteFlagStore
from foundation.flags import DEFAULT_FLAGS, Migration, MigrationPlan
d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")
store = SQLiteFlagStore(path, busy_timeout=1.0)
names = [f"f{i}" for i in range(10)]
flags = FeatureFlags([Flag(n) for n in names] + list(DEFAULT_FLAGS), store=store)
flags.subscribe(lambda change: None)  # starts the store's watcher thread
migration = Migration(flags, MigrationPlan.default())
flags.enable("f0", by="ana")
watcher = [t for t in library_threads() if t.startswith("foundation-sqlite-flags")]
assert watcher, library_threads()
"""

_DISK_FULL = """
limit_file_size(20_000)
for i in range(200):  # until the file cannot grow
    try:
        flags.allow(names[i % 10], "user-" + "x" * 500 + str(i), by="ana")
    except errors.FlagError as exc:
        assert type(exc).__module__ == "foundation.errors", repr(exc)
        break
else:
    raise AssertionError("the file size limit never bit")
expect(errors.FlagError, lambda: flags.disable("f0", by="ana"))
expect(errors.FlagError, lambda: flags.set_percentage("f1", 50, by="ana"))
expect(errors.FlagError, lambda: migration.advance(by="ops"))
# Nothing half-stored; reads keep working.
consistent(store)
assert flags.enabled("f0") and store.load_states()["f0"].switch
assert migration.status().stage == 0 and store.migration_stage(migration.plan.name) == 0
assert library_threads() == watcher, library_threads()

unlimit_file_size()  # space is back
flags.disable("f0", by="ana")
flags.set_percentage("f1", 50, by="ana")
migration.advance(by="ops")
assert not flags.enabled("f0") and store.migration_stage(migration.plan.name) == 1
consistent(store)
assert library_threads() == watcher, library_threads()
flags.close()
store.close()
print("OK")
"""


def test_disk_full_refuses_whole_writes_with_a_log_line_and_recovers() -> None:
    result = run_scenario(_HELPERS + _SQLITE_SETUP + _DISK_FULL)
    # What an operator reads: which store, what SQLite said, what it likely means.
    assert "LOG WARNING foundation.flags [MainThread] flag store" in result.stderr, result.stderr
    assert "disk full or the file size limit" in result.stderr, result.stderr
    assert "nothing was written" in result.stderr, result.stderr


_LOCKED = """
holder = hold_lock(path)
try:
    # Another store opens and reads while the lock is held (its schema is there).
    second = SQLiteFlagStore(path, busy_timeout=1.0)
    assert second.load_states()["f0"].switch
    exc = expect(errors.BackendUnavailable, lambda: flags.disable("f0", by="ana"))
    assert "busy_timeout=1.0s" in str(exc), exc
    expect(errors.BackendUnavailable, lambda: migration.advance(by="ops"))
    assert flags.enabled("f0") and len(flags.history()) == 1
    assert store.load_states()["f0"].switch
    assert library_threads() == watcher, library_threads()
finally:
    release(holder)
flags.disable("f0", by="ana")
wait_for(lambda: not second.load_states()["f0"].switch, "the other store to see the write")
consistent(store)
assert library_threads() == watcher, library_threads()
second.close()
flags.close()
store.close()
print("OK")
"""


def test_a_long_write_lock_bounds_writes_and_leaves_opening_and_reads_working() -> None:
    result = run_scenario(_HELPERS + _SQLITE_SETUP + _LOCKED)
    lines = result.stderr.splitlines()
    locked = [line for line in lines if "stayed locked by another connection" in line]
    # One WARNING for the lock, its repeat (the advance's) at DEBUG: a caller
    # retrying (AutoRollback at every interval) logged one WARNING per try.
    store_log = [line.split(" [")[0] for line in locked if " foundation.flags [" in line]
    assert store_log == ["LOG WARNING foundation.flags", "LOG DEBUG foundation.flags"], locked
    assert sum("takes writes again" in line for line in lines) == 1, result.stderr


_MOVED = """
other_dir = tempfile.mkdtemp()
if FAULT == "deleted":
    for name in os.listdir(d):
        os.remove(os.path.join(d, name))
else:  # another flag store renamed over the file (a backup restored in place)
    other = SQLiteFlagStore(os.path.join(other_dir, "other.db"))
    other.close()
    os.rename(os.path.join(other_dir, "other.db"), path)
exc = expect(errors.FlagError, lambda: flags.disable("f0", by="ana"))
assert "deleted or replaced" in str(exc), exc
expect(errors.FlagError, lambda: migration.advance(by="ops"))
# Reads keep answering (from the file this process holds): stale, not broken.
assert flags.enabled("f0") and store.load_states()["f0"].switch
assert [c.flag for c in flags.history()] == ["f0"]
wait_for(lambda: "was deleted or replaced" in open(LOG).read(), "the watcher's log line")
assert library_threads() == watcher, library_threads()
flags.close()
store.close()
print("OK")
"""


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_file_deleted_or_replaced_in_use_refuses_writes_and_says_so(
    fault: str, tmp_path: os.PathLike[str]
) -> None:
    log = os.path.join(tmp_path, "log")
    setup = (
        f"FAULT = {fault!r}\nLOG = {log!r}\n"
        "logging.getLogger().addHandler(logging.FileHandler(LOG))\n"
    )
    result = run_scenario(setup + _HELPERS + _SQLITE_SETUP + _MOVED)
    assert result.stderr.count("LOG ERROR foundation.flags") == 1, result.stderr
    assert "writes are refused" in result.stderr, result.stderr


_TRUNCATED = """
c = sqlite3.connect(path)
c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
page = c.execute("PRAGMA page_size").fetchone()[0]
c.close()
# Pages 1 (the schema) and 2 kept: every table's later pages are gone, however many
# tables the schema has (a third of the file kept the history's page whole once the
# schema grew).
os.truncate(path, 2 * page)
# A commit after the truncation (page 1 only, which is still there), so the
# watcher's next poll sees data_version move whenever it last looked: the
# checkpoint above moved it too, and a poll between the two read the file whole.
poke = sqlite3.connect(path, isolation_level=None)
poke.execute("PRAGMA user_version = 1")
poke.close()
wait_for(lambda: "the watcher cannot read the file" in open(LOG).read(), "the watcher's warning")
exc = expect(errors.FlagError, lambda: store.history())
assert "not a usable flag store" in str(exc), exc
expect(errors.FlagError, lambda: flags.disable("f0", by="ana"))
assert flags.enabled("f0")  # served from memory
assert library_threads() == watcher, library_threads()
flags.close()
store.close()
print("OK")
"""


def test_a_truncated_file_is_reported_once_by_the_watcher_which_survives(
    tmp_path: os.PathLike[str],
) -> None:
    log = os.path.join(tmp_path, "log")
    setup = f"LOG = {log!r}\nlogging.getLogger().addHandler(logging.FileHandler(LOG))\n"
    result = run_scenario(setup + _HELPERS + _SQLITE_SETUP + _TRUNCATED)
    # Once per episode, not once per poll.
    assert result.stderr.count("the watcher cannot read the file") == 1, result.stderr
    assert "SQLITE_CORRUPT" in result.stderr, result.stderr


_READ_ONLY = """
from foundation import FeatureFlags, Flag, SQLiteFlagStore
d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")
declared = [Flag("a"), Flag("b")]  # recorded now: a read-only file cannot record them later
with SQLiteFlagStore(path) as setup, FeatureFlags(declared, store=setup) as f:
    f.enable("a", by="root")  # as root: also imports what the store uses later
os.chmod(d, 0o755)
os.chown(d, 65534, 65534)  # the directory is nobody's, the file stays root's
os.chmod(path, 0o644)
os.setgid(65534)
os.setuid(65534)  # from here on, permissions apply
store = SQLiteFlagStore(path, busy_timeout=1.0)
flags = FeatureFlags(declared, store=store)
flags.subscribe(lambda change: None)
exc = expect(errors.FlagError, lambda: flags.enable("b", by="nobody"))
assert "SQLITE_READONLY" in str(exc), exc
assert flags.enabled("a") and not flags.enabled("b")
assert [c.flag for c in flags.history()] == ["a"]
consistent(store)
assert any(t.startswith("foundation-sqlite-flags") for t in library_threads())
# A new declaration cannot be recorded in a read-only file: a WARNING, and the
# service starts (it records the catalogue again at its next start).
newer = FeatureFlags([*declared, Flag("c")], store=store)
assert newer.enabled("a") and not newer.enabled("c")
newer.close()
flags.close()
store.close()
print("OK")
"""


def test_a_read_only_file_refuses_writes_with_a_hint_and_keeps_reading() -> None:
    needs_root("to make a file this process may not write, as uid nobody")
    result = run_scenario(_HELPERS + _READ_ONLY)
    assert "can this process write the file and its directory?" in result.stderr
    assert "LOG WARNING foundation.flags" in result.stderr, result.stderr
    assert "flag catalogue not recorded" in result.stderr, result.stderr


# ----------------------------------------------------------------- node copy

_REDIS_SETUP = """
from foundation import FeatureFlags, Flag, RedisFlagStore
from foundation.flags import _node_cache
_node_cache.RETRY_FILE_AFTER = RETRY
d = tempfile.mkdtemp()
path = os.path.join(d, "copy.sqlite3")
store = RedisFlagStore(URL, namespace="faults", cache_path=path)
names = [f"f{i}" for i in range(10)]
flags = FeatureFlags([Flag(n) for n in names], store=store)
flags.enable("f0", by="ana")
listener = library_threads()
assert listener, listener

def file_version():
    try:
        with sqlite3.connect(path) as c:
            row = c.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else None
    except sqlite3.Error:
        return None

def healthy_writes(count):
    for i in range(count):
        flags.allow(names[i % 10], f"user-{i}", by="ana")
    flags.disable("f0", by="ana")  # the kill switch too
    assert not flags.enabled("f0")
    status = store.status()
    assert status.connected and not status.stale, status
    consistent(store)
    assert library_threads() == listener, library_threads()
"""

_COPY_FAULTS = {
    "disk_full": ("limit_file_size(0)", "unlimit_file_size()"),
    "locked": ("holder = hold_lock(path)", "release(holder)"),
    "deleted": ("for f in os.listdir(d): os.remove(os.path.join(d, f))", "pass"),
    "truncated": (
        "c = sqlite3.connect(path); c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()\n"
        "os.truncate(path, 2048)",
        "pass",
    ),
}

_COPY_SCENARIO = """
{fault}
flags.allow("f1", "first", by="ana")  # the first write meets the fault
# status() says where the copy is meanwhile (a deleted file is replaced at once
# by a new one, written whole: no wait for a retry there). Read right after that
# write: after more, a retry (RETRY s later) may find the file usable again
# (truncated), on a loaded machine within the writes that follow.
in_memory = store.status().copy_in_memory
healthy_writes(20)          # Redis is fine: so are writes, reads and status
assert in_memory or FAULT == "deleted"
{repair}
count = iter(range(10**6))

def write_then_compare():  # a write (a commit) lets the copy try its file again
    flags.allow("f1", "later-%d" % next(count), by="ana")
    return file_version() == store.status().version

wait_for(write_then_compare, "the file to hold the copy again")
assert not store.status().copy_in_memory
assert library_threads() == listener, library_threads()
flags.close()
store.close()
print("OK")
"""


@pytest.mark.parametrize("fault", sorted(_COPY_FAULTS))
def test_a_failing_node_copy_never_breaks_a_healthy_redis_store(
    fault: str, fresh_redis: RedisServer
) -> None:
    inject, repair = _COPY_FAULTS[fault]
    script = (
        f"URL = {fresh_redis.url!r}\nRETRY = 0.2\nFAULT = {fault!r}\n"
        + _HELPERS
        + _REDIS_SETUP
        + _COPY_SCENARIO.format(fault=inject, repair=repair)
    )
    result = run_scenario(script, timeout=120)
    if fault != "truncated":  # truncated: the copy may be read whole from memory first
        assert "LOG WARNING foundation.flags" in result.stderr, result.stderr
    assert "in memory, not durable until" in result.stderr, result.stderr
    assert "is written to its file again" in result.stderr, result.stderr
    assert "lost Redis" not in result.stderr, result.stderr  # Redis never went away
