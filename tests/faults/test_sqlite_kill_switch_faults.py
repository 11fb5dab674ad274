"""The kill switch and the emergency rollback on a failing ``SQLiteFlagStore``.

SQLite has no outage to wait out: a kill switch (``disable``,
``Migration.emergency_rollback``) that cannot be written is refused like any
other write (``FlagStore.kill_switch`` defaults to ``transaction``). Each
scenario (disk full, the write lock held by another process, a file this
process may not write) runs in a plain interpreter with the default hooks and
another process reading the same file, and checks what an operator needs:

- a ``foundation.errors`` type for each refused call, and one WARNING line
  saying that nothing was written (its repeats at DEBUG until a write
  succeeds: a caller retrying must not flood the log);
- nothing half-changed: the plan's stage, its flags, the flag history and the
  migration history as before, here (memory and file) and in the other process;
- once the fault is repaired, the same store (no restart) takes the rollback,
  the other process hears it, and ``enable`` resumes the rollout exactly.
"""

from __future__ import annotations

import pytest

from tests._ci import needs_root
from tests.faults._subprocess import run_scenario

_SETUP = """
import os, resource, signal, subprocess, sys, tempfile
from foundation import errors
from foundation.flags import (
    FeatureFlags, Flag, FlagState, Migration, MigrationPlan, SQLiteFlagStore, Stage,
)
from tests._logs import keep_records

FLAGS = [Flag("beta"), Flag("gamma")] + [Flag(f"f{i}") for i in range(10)]
PLAN = MigrationPlan([Stage(1, "beta", ["beta"]), Stage(2, "gamma", ["gamma"])], name="plan")
d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")

warned = keep_records("foundation", level=logging.WARNING)

def at_stage_two():
    with SQLiteFlagStore(path) as store, FeatureFlags(FLAGS, store=store) as flags:
        migration = Migration(flags, PLAN)
        migration.advance(by="ana"); migration.advance(by="ana")
        flags.set_percentage("beta", 100, by="ana", reason="rollout")
        flags.allow("beta", "vip", by="ana", reason="vip first")

def open_node():
    # This process's store, flags (with a subscriber) and migration, as a service has them.
    store = SQLiteFlagStore(path, busy_timeout=1.0)
    flags = FeatureFlags(FLAGS, store=store)
    migration = Migration(flags, PLAN)
    flags.subscribe(lambda change: None)
    return store, flags, migration

OTHER = '''
import os, random, sqlite3, sys, uuid
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
if sys.argv[2] == "nobody":  # it opens the file first: its -wal and -shm are nobody's
    os.setegid(65534); os.seteuid(65534)
store = SQLiteFlagStore(sys.argv[1])
if sys.argv[2] == "nobody":  # back to root: the interpreter's own files are root's
    os.seteuid(0); os.setegid(0)
flags = FeatureFlags([Flag("beta"), Flag("gamma")] + [Flag(f"f{i}") for i in range(10)],
                     store=store)
flags.subscribe(lambda change: None)  # its watcher hears the other process's writes
print("ready", flush=True)
for line in sys.stdin:
    print("=", flags.enabled("beta", "vip"), flags.enabled("beta", "u-1"),
          flags.enabled("gamma"), store.migration_stage("plan"), flush=True)
flags.close(); store.close()
'''

class Other:
    # Another process on the same file: beta for vip, beta for u-1, gamma, the stage.
    def __init__(self, user="root"):
        self.proc = subprocess.Popen([sys.executable, "-c", OTHER, path, user],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self):
        self.proc.stdin.write("ask\\n"); self.proc.stdin.flush()
        return self.proc.stdout.readline().split()[1:]

    def close(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0

def snapshot(store, flags, migration):
    return (
        store.load_states(),
        store.migration_stage("plan"),
        [(c.flag, c.old, c.new, c.by) for c in store.history()],
        [(e.action, e.to_stage) for e in migration.history()],
        [flags.enabled("beta", "vip"), flags.enabled("beta", "u-1"), flags.enabled("gamma")],
    )

def refused(call, error):
    try:
        call()
    except Exception as exc:
        assert type(exc).__module__ == "foundation.errors", repr(exc)
        assert isinstance(exc, error), repr(exc)
        return exc
    raise AssertionError(f"{call} was not refused")

def check(error, store, flags, migration, other):
    before = snapshot(store, flags, migration)
    assert before[1] == 2 and before[4] == [True, True, True], before
    seen = len(warned)
    refused(lambda: migration.emergency_rollback("error spike", by="oncall"), error)
    refused(lambda: flags.disable("gamma", by="oncall"), error)
    refused(lambda: flags.set("beta", False, by="oncall"), error)
    said = [w for w in warned.messages()[seen:] if "nothing was written" in w]
    # One WARNING for the failure until a write succeeds (the disk-full set-up's
    # refused write said it already): the three refusals add at most one.
    assert len(said) <= 1 and len(warned) == seen + len(said), warned.messages()[seen:]
    assert [w for w in warned.messages() if "nothing was written" in w], warned.messages()
    assert snapshot(store, flags, migration) == before  # nothing half-changed
    assert other.ask() == ["True", "True", "True", "2"]

def recovers(store, flags, migration, other):
    migration.emergency_rollback("error spike", by="oncall")
    assert migration.status().stage == 0
    assert not flags.enabled("beta", "vip") and not flags.enabled("gamma")
    wait_for(lambda: other.ask() == ["False", "False", "False", "0"], "the other process")
    actions = [(e.action, e.from_stage, e.to_stage) for e in migration.history()]
    assert actions[-1] == ("emergency_rollback", 2, 0) and len(actions) == 3, actions
    flags.enable("beta", by="oncall", reason="false alarm")
    assert flags.state("beta") == FlagState(True, 100.0, frozenset({"vip"})), flags.state("beta")
    wait_for(lambda: other.ask()[:2] == ["True", "True"], "the other process resumes beta")
    assert any(t.startswith("foundation-sqlite-flags") for t in library_threads())
"""

_SCENARIOS = {
    # RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk.
    "disk_full": (
        """
at_stage_two()
store, flags, migration = open_node()
other = Other()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
largest = max(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 20_000, resource.RLIM_INFINITY))
for i in range(300):  # until the file cannot grow
    try:
        flags.allow(f"f{i % 10}", "user-" + "x" * 500 + str(i), by="ana")
    except errors.FlagError:
        break
else:
    raise AssertionError("the file size limit never bit")
""",
        "errors.FlagError",
        "resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)",
    ),
    # Another process holds the write lock (BEGIN EXCLUSIVE) until told to let go.
    "locked": (
        """
at_stage_two()
store, flags, migration = open_node()
other = Other()
HOLDER = '''
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("HELD", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
'''
holder = subprocess.Popen([sys.executable, "-c", HOLDER, path],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
assert holder.stdout.readline().strip() == "HELD"
""",
        "errors.BackendUnavailable",
        "holder.stdin.write('go\\\\n'); holder.stdin.close(); assert holder.wait(timeout=20) == 0",
    ),
    # The file is root's and both processes run as nobody (effective ids), in a
    # directory of nobody's (its -wal and -shm files are nobody's): SQLite opens the
    # file read-only. The repair gives nobody the files; the same store then writes.
    "read_only": (
        """
at_stage_two()
os.chmod(d, 0o755)
os.chown(d, 65534, 65534)
other = Other("nobody")  # started as root (nobody may not run this interpreter)
os.setegid(65534); os.seteuid(65534)  # from here on, permissions apply
store, flags, migration = open_node()

def give_nobody_the_files():  # the file and its -wal (the -shm already is nobody's)
    os.seteuid(0); os.setegid(0)
    for name in os.listdir(d):
        os.chown(os.path.join(d, name), 65534, 65534)
    os.setegid(65534); os.seteuid(65534)
""",
        "errors.FlagError",
        "give_nobody_the_files()",
    ),
}

_RUN = """
try:
    check({error}, store, flags, migration, other)
finally:
    {repair}
recovers(store, flags, migration, other)
other.close(); flags.close(); store.close()
print("OK")
"""


@pytest.mark.parametrize("fault", sorted(_SCENARIOS))
def test_a_kill_switch_on_a_failing_sqlite_store_is_refused_whole_and_works_once_repaired(
    fault: str,
) -> None:
    if fault == "read_only":
        needs_root("to make a file this process may not write, then repair it")
    inject, error, repair = _SCENARIOS[fault]
    result = run_scenario(_SETUP + inject + _RUN.format(error=error, repair=repair))
    assert "LOG WARNING foundation.flags [MainThread] flag store" in result.stderr, result.stderr
