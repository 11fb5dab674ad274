"""A ``SQLiteFlagStore`` file deleted (or replaced) while other processes hold it.

1. ``rm flags.db`` while a process holds it left its -wal and -shm at the path:
   every new process (a restarted worker) failed to open the store ("disk I/O
   error", SQLITE_IOERR_SHORT_READ) and left a 4096-byte file, until the last old
   process exited. Now the first new process removes the leftovers (one WARNING)
   and creates the file; new processes starting at once lose no write.
2. A commit, then the file deleted or replaced before another process's watcher
   read it: that process went stale having heard nothing, and served the state
   before the commit for good, though the old file it still reads holds it. Now
   it drains the old file first: its listeners hear the commit.

Real processes on real files; plain interpreter, default hooks (``run_scenario``).
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import run_scenario

_COMMON = """
import os, subprocess, sys, tempfile
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore

d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")

def spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", code, path, *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

def finish(proc):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out.strip()
"""

_RESTART = """
HOLDER = '''
import sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
s = SQLiteFlagStore(sys.argv[1]); f = FeatureFlags([Flag("a")], store=s)
f.allow("a", "old", by="old")
print("OPEN", flush=True)
sys.stdin.readline()
f.close(); s.close()
'''
WORKER = '''
import sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
with SQLiteFlagStore(sys.argv[1]) as s, FeatureFlags([Flag("a")], store=s) as f:
    for i in range(20):
        f.allow("a", sys.argv[2] + "-" + str(i), by=sys.argv[2])
    print(len(f.history()))
'''
holder = spawn(HOLDER)
assert holder.stdout.readline().strip() == "OPEN"
os.remove(path)  # an operator's reset; the holder keeps the old file, -wal and -shm
assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
if MODE == "one-by-one":
    counts = [finish(spawn(WORKER, f"w{k}")) for k in range(3)]
    assert counts == ["20", "40", "60"], counts
else:  # restarted workers all at once: the creation race
    workers = [spawn(WORKER, f"w{k}") for k in range(4)]
    counts = [finish(w) for w in workers]
# The holder, stale, closes: the new file and its commits stay.
holder.stdin.write("close\\n"); holder.stdin.flush()
assert finish(holder) == ""
with SQLiteFlagStore(path) as s, FeatureFlags([Flag("a")], store=s) as f:
    history = f.history()
    allowed = f.state("a").allow
expected = 60 if MODE == "one-by-one" else 80
assert len(history) == expected, (len(history), counts)
assert len(allowed) == expected and "old" not in allowed, sorted(allowed)
assert sorted(os.listdir(d)) == ["flags.db"], os.listdir(d)
assert library_threads() == [], library_threads()
print("OK")
"""


@pytest.mark.parametrize("mode", ["one-by-one", "at-once"])
def test_new_processes_open_a_file_deleted_while_another_process_holds_it(mode: str) -> None:
    result = run_scenario(f"MODE = {mode!r}\n" + _COMMON + _RESTART)
    # The scenario's own log shows nothing: the warning is the first worker's, whose
    # stderr the scenario checked was clean of errors (finish() asserts exit 0).
    assert "LOG ERROR" not in result.stderr, result.stderr


_WARNED = """
HOLDER = '''
import sys
from foundation.flags import SQLiteFlagStore
s = SQLiteFlagStore(sys.argv[1])
print("OPEN", flush=True)
sys.stdin.readline()
s.close()
'''
holder = spawn(HOLDER)
assert holder.stdout.readline().strip() == "OPEN"
os.remove(path)
# This process is the restarted worker: it creates the file anew, one WARNING.
with SQLiteFlagStore(path) as s, FeatureFlags([Flag("a")], store=s) as f:
    f.enable("a", by="new")
with SQLiteFlagStore(path) as s, FeatureFlags([Flag("a")], store=s) as f:  # no leftover now
    assert f.enabled("a")
holder.stdin.write("close\\n"); holder.stdin.flush()
assert finish(holder) == ""
with SQLiteFlagStore(path) as s, FeatureFlags([Flag("a")], store=s) as f:
    assert f.enabled("a") and [c.by for c in f.history()] == ["new"]
print("OK")
"""


def test_removing_the_leftovers_of_a_deleted_file_logs_one_warning_naming_them() -> None:
    result = run_scenario(_COMMON + _WARNED)
    worse = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("LOG WARNING", "LOG ERROR", "LOG CRITICAL"))
    ]
    assert len(worse) == 1, result.stderr
    assert worse[0].startswith("LOG WARNING foundation.flags"), worse
    assert "flags.db-wal and " in worse[0], worse
    assert "flags.db-shm left over from a deleted database" in worse[0], worse


_DRAIN = """
WRITER = '''
import os, sqlite3, sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
path, fault = sys.argv[1], sys.argv[2]
s = SQLiteFlagStore(path); f = FeatureFlags([Flag("a")], store=s)
f.disable("a", by="oncall", reason="kill")  # acknowledged, then at once:
if fault == "deleted":
    os.remove(path)
else:  # a copy (the commit in it) renamed over the file
    src = sqlite3.connect(path); dst = sqlite3.connect(path + ".new")
    src.backup(dst); dst.close(); src.close()
    os.replace(path + ".new", path)
f.close(); s.close()
'''
with SQLiteFlagStore(path) as s, FeatureFlags([Flag("a")], store=s) as f:
    f.enable("a", by="setup")
# A long poll interval: the watcher does not look between the commit and the move.
store = SQLiteFlagStore(path, poll_interval=2.0)
flags = FeatureFlags([Flag("a")], store=store)
heard = []
flags.subscribe(lambda change: heard.append((change.by, change.reason)))
watcher = library_threads()
assert flags.enabled("a")
finish(spawn(WRITER, FAULT))
wait_for(lambda: store.stale, "the store to go stale")
wait_for(lambda: heard, "the listener to hear the last commit of the old file")
assert heard == [("oncall", "kill")], heard
assert not flags.enabled("a")  # reads answer from the old file, the commit included
assert library_threads() == watcher, library_threads()
flags.close()
store.close()
print("OK")
"""


@pytest.mark.parametrize("fault", ["deleted", "replaced"])
def test_a_commit_just_before_the_file_is_moved_is_heard_before_going_stale(fault: str) -> None:
    result = run_scenario(f"FAULT = {fault!r}\n" + _COMMON + _DRAIN)
    assert result.stderr.count("LOG ERROR foundation.flags") == 1, result.stderr
    assert "was deleted or replaced while in use" in result.stderr, result.stderr


_WATCHER_OPEN = """
# A long poll interval: the file is deleted before the watcher first opens it.
store = SQLiteFlagStore(path, poll_interval=2.0)
flags = FeatureFlags([Flag("a")], store=store)  # its subscription starts the watcher
os.remove(path)
wait_for(lambda: store.stale, "the store to go stale")
# The watcher never made the file anew (an empty one, without the creation lock).
assert not os.path.exists(path), os.listdir(d)
flags.close()
store.close()
print("OK")
"""


def test_a_watcher_opening_after_the_file_was_deleted_does_not_create_it() -> None:
    result = run_scenario(_COMMON + _WATCHER_OPEN)
    assert result.stderr.count("LOG ERROR foundation.flags") == 1, result.stderr


_OLD_CLOSES = """
HOLDER = '''
import sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
s = SQLiteFlagStore(sys.argv[1]); f = FeatureFlags([Flag("a")], store=s)
f.allow("a", "old", by="old")
print("OPEN", flush=True)
sys.stdin.readline()
f.close(); s.close()
'''
READER = '''
import sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
with SQLiteFlagStore(sys.argv[1]) as s, FeatureFlags([Flag("a")], store=s) as f:
    print(len(f.history()))
'''
holder = spawn(HOLDER)
assert holder.stdout.readline().strip() == "OPEN"
os.remove(path)
store = SQLiteFlagStore(path)  # created anew, its -wal and -shm fresh
flags = FeatureFlags([Flag("a")], store=store)
for i in range(5):
    flags.allow("a", f"n{i}", by="new")
# The last process holding the deleted file closes while this one holds the new
# file: SQLite checkpoints and removes a -wal and -shm by name on a last close,
# but not for a moved database (its "has moved" check), so the new ones stay.
holder.stdin.write("close\\n"); holder.stdin.flush()
assert finish(holder) == ""
assert sorted(os.listdir(d)) == ["flags.db", "flags.db-shm", "flags.db-wal"], os.listdir(d)
for i in range(5, 10):
    flags.allow("a", f"n{i}", by="new")
assert finish(spawn(READER)) == "10"  # another process sees every commit
flags.close()
store.close()
print("OK")
"""


def test_the_last_old_process_closing_keeps_the_new_files_wal() -> None:
    run_scenario(_COMMON + _OLD_CLOSES)
