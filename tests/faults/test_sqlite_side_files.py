"""The -wal and -shm files of a ``SQLiteFlagStore`` deleted while in use.

An operator's cleanup or a tmp reaper deleting them leaves this process writing
into a -wal no other process opens: its commits (an emergency rollback among
them) were reported done, yet no other process saw them and they were gone
when it exited. Such a store now behaves as one whose file was deleted: one
ERROR, every write refused with ``FlagError``, nothing written, reads go on.
And since SQLite itself removes them only when the last connection closes,
other processes opening, writing, checkpointing and closing the store while
this one holds it must raise no false alarm. Plain interpreter, default hooks.
"""

from __future__ import annotations

import os

import pytest

from tests._ci import needs_root
from tests.faults._subprocess import run_scenario

_HELPERS = """
import os, subprocess, sys, tempfile
from foundation import errors
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore, Stage

logging.getLogger().addHandler(logging.FileHandler(LOG))
FLAGS = [Flag("beta"), Flag("gamma"), Flag("f0")]
PLAN = MigrationPlan([Stage(1, "beta", ["beta"]), Stage(2, "gamma", ["gamma"])], name="plan")
d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")

def expect(error, call):
    try:
        call()
    except Exception as exc:
        assert type(exc).__module__ == "foundation.errors", repr(exc)
        assert isinstance(exc, error), repr(exc)
        return exc
    raise AssertionError(f"{call} did not raise {error.__name__}")

def in_another_process(code):
    # A plain process on the same file: it prints what it read.
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, sqlite3\\n" + code, path],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()

OTHER_STAGE = '''
from foundation.flags import SQLiteFlagStore
with SQLiteFlagStore(sys.argv[1]) as store:
    print(store.migration_stage("plan"))
'''
CHECKPOINT = '''
db = sqlite3.connect(sys.argv[1]); db.execute("PRAGMA wal_checkpoint(TRUNCATE)"); db.close()
'''
"""

_OPEN = """
store = SQLiteFlagStore(path, busy_timeout=1.0)
flags = FeatureFlags(FLAGS, store=store)
migration = Migration(flags, PLAN)
flags.subscribe(lambda change: None)  # starts the store's watcher thread
migration.advance(by="ana"); migration.advance(by="ana")
watcher = [t for t in library_threads() if t.startswith("foundation-sqlite-flags")]
assert watcher, library_threads()
"""

_DELETED = """
# Into the file, so that what other processes read does not hang on the -wal.
in_another_process(CHECKPOINT)
for suffix in DELETED:
    os.remove(path + suffix)
# The emergency rollback, then any write: refused, not "done" into a lost file.
exc = expect(errors.FlagError, lambda: migration.emergency_rollback("incident", by="oncall"))
assert "deleted or replaced" in str(exc) and DELETED[0] in str(exc), exc
expect(errors.FlagError, lambda: flags.disable("f0", by="oncall"))
expect(errors.FlagError, lambda: migration.advance(by="ops"))
# What this process says is what every other process reads: nothing changed.
assert migration.status().stage == 2 and flags.enabled("gamma")
assert in_another_process(OTHER_STAGE) == "2"
assert [e.action for e in migration.history()] == ["advance", "advance"]
wait_for(lambda: "was deleted or replaced" in open(LOG).read(), "the ERROR line")
assert library_threads() == watcher, library_threads()
flags.close()
store.close()
# Reopened (a restart), the store works on the files now at the path.
with SQLiteFlagStore(path) as again, FeatureFlags(FLAGS, store=again) as flags:
    Migration(flags, PLAN).emergency_rollback("incident", by="oncall")
assert in_another_process(OTHER_STAGE) == "0"
print("OK")
"""


@pytest.mark.parametrize("deleted", [("-wal", "-shm"), ("-wal",), ("-shm",)], ids="+".join)
def test_a_wal_or_shm_file_deleted_in_use_refuses_writes_the_emergency_rollback_too(
    deleted: tuple[str, ...], tmp_path: os.PathLike[str]
) -> None:
    log = os.path.join(tmp_path, "log")
    setup = f"LOG = {log!r}\nDELETED = {deleted!r}\n"
    result = run_scenario(setup + _HELPERS + _OPEN + _DELETED)
    # One ERROR (whoever notices first: a write or the watcher), naming the file.
    assert result.stderr.count("LOG ERROR foundation.flags") == 1, result.stderr
    assert f"its {deleted[0]} file" in result.stderr, result.stderr
    assert "writes are refused" in result.stderr, result.stderr


_NO_FALSE_ALARM = """
WRITER = '''
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
with SQLiteFlagStore(sys.argv[1]) as store, FeatureFlags([Flag("f0")], store=store) as flags:
    flags.allow("f0", "user-" + str(len(flags.history())), by="other")
'''
HOLDER = '''
from foundation.flags import SQLiteFlagStore
store = SQLiteFlagStore(sys.argv[1])
print("OPEN", flush=True)
sys.stdin.readline()
store.close()
'''
seen = []
flags.subscribe(seen.append)
# A process that opened the file before this one (it made the -wal and -shm of a
# fresh start) closes while this store holds it.
store.close(); flags.close()
for suffix in ("", "-wal", "-shm"):  # the last close removed the -wal and -shm
    if os.path.exists(path + suffix):
        os.remove(path + suffix)
holder = subprocess.Popen(
    [sys.executable, "-c", "import sys\\n" + HOLDER, path],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
)
assert holder.stdout.readline().strip() == "OPEN"
store = SQLiteFlagStore(path, busy_timeout=1.0)
flags = FeatureFlags(FLAGS, store=store)
flags.subscribe(seen.append)
holder.stdin.write("close\\n"); holder.stdin.close()
assert holder.wait(timeout=60) == 0
flags.enable("f0", by="ana")
# A second store in this process, closed while the first goes on.
with SQLiteFlagStore(path) as second, FeatureFlags(FLAGS, store=second) as other:
    other.allow("f0", "second", by="ana")
flags.allow("f0", "first", by="ana")
for i in range(3):  # processes that open, write, close; a checkpoint truncating the -wal
    in_another_process(WRITER)
    in_another_process(CHECKPOINT)
    flags.allow("f0", f"after-{i}", by="ana")
wait_for(lambda: len(seen) >= 4, "the watcher to follow the other processes")
migration = Migration(flags, PLAN)
migration.advance(by="ana")
assert in_another_process(OTHER_STAGE) == "1"
migration.emergency_rollback("drill", by="ana")
assert in_another_process(OTHER_STAGE) == "0"
assert library_threads() == watcher, library_threads()
flags.close()
store.close()
print("OK")
"""


def test_other_processes_opening_writing_and_closing_the_store_raise_no_false_alarm(
    tmp_path: os.PathLike[str],
) -> None:
    log = os.path.join(tmp_path, "log")
    result = run_scenario(f"LOG = {log!r}\n" + _HELPERS + _OPEN + _NO_FALSE_ALARM)
    assert "deleted or replaced" not in result.stderr, result.stderr
    assert "LOG ERROR" not in result.stderr, result.stderr
    # (The emergency rollback's own WARNING is foundation.flags.migration's.)
    assert "LOG WARNING foundation.flags [" not in result.stderr, result.stderr


_READ_ONLY = """
with SQLiteFlagStore(path) as setup, FeatureFlags(FLAGS, store=setup) as flags:
    Migration(flags, PLAN).advance(by="root")
for where in (d, path):
    os.chown(where, 65534, 65534)
os.chmod(path, 0o444)  # read-only to its owner, nobody
os.setgid(65534)
os.setuid(65534)  # from here on, permissions apply
store = SQLiteFlagStore(path, busy_timeout=1.0)
flags = FeatureFlags(FLAGS, store=store)
migration = Migration(flags, PLAN)
flags.subscribe(lambda change: None)
# SQLite made the -wal and -shm with the database's mode.
assert {os.stat(path + s).st_mode & 0o777 for s in ("-wal", "-shm")} == {0o444}
exc = expect(errors.FlagError, lambda: migration.advance(by="ops"))
assert "SQLITE_READONLY" in str(exc), exc
os.chmod(path, 0o644)  # the operator makes the database writable (only it)
# The first write after the repair goes through: the same store, no restart.
migration.emergency_rollback("incident", by="oncall")
assert migration.status().stage == 0 and not flags.enabled("beta")
with SQLiteFlagStore(path) as other:  # (nobody may not run this venv's python)
    assert other.migration_stage("plan") == 0
assert [e.action for e in migration.history()] == ["advance", "emergency_rollback"]
flags.enable("f0", by="ops")
flags.close()
store.close()
print("OK")
"""


def test_the_first_write_after_a_read_only_file_is_made_writable_goes_through(
    tmp_path: os.PathLike[str],
) -> None:
    needs_root("to make a file this process may not write, as uid nobody")
    log = os.path.join(tmp_path, "log")
    os.chmod(tmp_path, 0o777)  # the scenario, as nobody, writes its log there
    result = run_scenario(f"LOG = {log!r}\n" + _HELPERS + _READ_ONLY)
    # Only the write before the repair was refused; its WARNING shows the modes of
    # the file and of the -wal and -shm SQLite made read-only with it.
    assert result.stderr.count("nothing was written") == 1, result.stderr
    assert "file 0444 uid 65534, -wal 0444 uid 65534, -shm 0444" in result.stderr, result.stderr
