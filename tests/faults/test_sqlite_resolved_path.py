"""A ``SQLiteFlagStore`` opened through a symlink, or by a relative path before a chdir.

Through a symlinked file the store checked ``<link>-wal`` and ``<link>-shm``,
which SQLite never creates (it keeps them beside the link's target): a deleted
-wal went unnoticed, writes were accepted into a file no other process read.
With a relative path and a later ``os.chdir()`` (a daemon, ``gunicorn
--chdir``), the watcher opened the path in the new directory: an empty stray
file, and other processes' changes never delivered. The path is now resolved
once, at construction. Plain interpreters (``run_scenario``): the scenario
changes its directory and deletes files under the store.
"""

from __future__ import annotations

from textwrap import dedent

from tests.faults._subprocess import run_scenario

_COMMON = """
import os, subprocess, sys, tempfile
from foundation import errors
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore

ENABLE = '''
import sys
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
with SQLiteFlagStore(sys.argv[1]) as s, FeatureFlags([Flag("beta")], store=s) as f:
    f.set("beta", sys.argv[2] == "on", by="ops")
'''

def another_process_sets(path, value):
    proc = subprocess.run(
        [sys.executable, "-c", ENABLE, path, value],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
"""


def test_a_deleted_wal_beside_a_symlinks_target_makes_the_store_stale() -> None:
    run_scenario(
        _COMMON
        + dedent(
            """
        d = tempfile.mkdtemp()
        real = os.path.join(d, "real.db"); link = os.path.join(d, "flags.db")
        SQLiteFlagStore(real).close()
        os.symlink(real, link)
        store = SQLiteFlagStore(link)
        flags = FeatureFlags([Flag("beta")], store=store)
        flags.set("beta", False, by="x")
        assert os.path.exists(real + "-wal") and not os.path.exists(link + "-wal")
        os.remove(real + "-wal"); os.remove(real + "-shm")  # a tmp reaper
        try:
            flags.set("beta", True, by="x")
        except errors.FlagError as exc:
            assert "-wal" in str(exc), exc
        else:
            raise AssertionError("a write into the deleted -wal was accepted")
        assert store.stale
        flags.close(); store.close()
        print("OK")
        """
        )
    )


def test_a_symlinked_store_raises_no_false_alarm() -> None:
    # The control: other processes writing through the link, no file deleted.
    run_scenario(
        _COMMON
        + dedent(
            """
        d = tempfile.mkdtemp()
        real = os.path.join(d, "real.db"); link = os.path.join(d, "flags.db")
        SQLiteFlagStore(real).close()
        os.symlink(real, link)
        store = SQLiteFlagStore(link)
        flags = FeatureFlags([Flag("beta")], store=store)
        another_process_sets(link, "on")
        wait_for(lambda: flags.enabled("beta"), "the change through the link")
        flags.set("beta", False, by="x")
        another_process_sets(real, "on")
        wait_for(lambda: flags.enabled("beta"), "the change to the target")
        assert not store.stale
        flags.close(); store.close()
        print("OK")
        """
        )
    )


def test_a_relative_path_keeps_its_file_after_a_chdir() -> None:
    run_scenario(
        _COMMON
        + dedent(
            """
        d = tempfile.mkdtemp(); os.chdir(d)
        store = SQLiteFlagStore("flags.db")  # module level in an application
        elsewhere = tempfile.mkdtemp(); os.chdir(elsewhere)  # a daemon's chdir
        flags = FeatureFlags([Flag("beta")], store=store)  # the watcher starts here
        another_process_sets(os.path.join(d, "flags.db"), "on")
        wait_for(lambda: flags.enabled("beta"), "another process's change")
        flags.set("beta", False, by="x")  # the writer, reopened or not, is the same file
        another_process_sets(os.path.join(d, "flags.db"), "on")
        wait_for(lambda: flags.enabled("beta"), "another process's second change")
        assert os.listdir(elsewhere) == [], os.listdir(elsewhere)
        assert not store.stale
        flags.close(); store.close()
        print("OK")
        """
        )
    )


def test_a_store_reopened_read_write_after_a_chdir_keeps_its_file() -> None:
    # _connect(existing=True) (a writer found read-only is opened again) opens
    # the file fixed at construction, not the relative path in the new directory.
    run_scenario(
        _COMMON
        + dedent(
            """
        d = tempfile.mkdtemp(); os.chdir(d)
        store = SQLiteFlagStore("flags.db")
        elsewhere = tempfile.mkdtemp(); os.chdir(elsewhere)
        SQLiteFlagStore("flags.db").close()  # another store of that name here
        conn = store._connect(timeout=1.0, existing=True)
        (name,) = [row[2] for row in conn.execute("PRAGMA database_list")]
        conn.close()
        assert os.path.realpath(name) == os.path.realpath(os.path.join(d, "flags.db")), name
        store.close()
        print("OK")
        """
        )
    )
