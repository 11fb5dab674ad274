"""``foundation flags`` while Redis is down or out of memory.

Each scenario runs in a plain interpreter (``tests.faults._subprocess``: default
hooks, no library thread may die): a "service" there holds a ``RedisFlagStore``
with its default node copy (``FOUNDATION_CACHE_DIR``), and the CLI runs as a
subprocess of it, on the same machine, as an operator would run it.

- Reads answer from the service's node copy during an outage, and say so on
  stderr; without a copy they fail and leave no file behind.
- ``flags disable`` during an outage refuses, naming the admin page of a
  running node; nothing is recorded in the shared copy (see
  ``foundation.flags._urls`` for why).
- Reads work while Redis is out of memory (it refuses MULTI, not reads).
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_COMMON = """
import json, os, subprocess, tempfile
from foundation.flags import FeatureFlags, Flag, RedisFlagStore
from tests.redis_support import RedisServer

cache_dir = tempfile.mkdtemp()
os.environ["FOUNDATION_CACHE_DIR"] = cache_dir  # the service's and the CLI's default copy

def cli(url, *args, env=None):
    cmd = [sys.executable, "-m", "foundation.cli", "--json", "--store", url + "?namespace=shop"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})), check=False)

def no_thread_death(result):
    for sign in ("Exception in thread", "Traceback"):
        assert sign not in result.stderr, result.stderr

srv = RedisServer(); srv.start()
store = RedisFlagStore(srv.url, namespace="shop", timeout=0.5, resync_interval=0.3)
flags = FeatureFlags([Flag("beta", description="new")], store=store)
flags.enable("beta", by="ana", reason="launch")
"""

_END = """
assert store._thread.is_alive(), "the service's listener died"
print("threads", library_threads(), flush=True)
flags.close(); store.close(); srv.stop()
print("OK")
"""


def test_reads_answer_from_the_node_copy_during_an_outage() -> None:
    run_scenario(
        _COMMON
        + """
srv.kill()
wait_for(lambda: store.status().stale, "the service is stale")
listed = cli(srv.url, "flags", "list")
no_thread_death(listed)
assert listed.returncode == 0, listed.stderr
rows = {row["name"]: row for row in json.loads(listed.stdout)}
assert rows["beta"]["enabled"] is True and rows["beta"]["description"] == "new", rows
assert "Redis unreachable" in listed.stderr and "node copy" in listed.stderr, listed.stderr
history = cli(srv.url, "flags", "history")
assert history.returncode == 0, history.stderr
assert [c["by"] for c in json.loads(history.stdout)["changes"]] == ["ana"], history.stdout
shown = cli(srv.url, "flags", "show", "beta")
assert shown.returncode == 0 and json.loads(shown.stdout)["enabled"] is True, shown

# A machine without a copy: the same failure as before, and no file left behind.
elsewhere = tempfile.mkdtemp()
bare = cli(srv.url, "flags", "list", env={"FOUNDATION_CACHE_DIR": elsewhere})
no_thread_death(bare)
assert bare.returncode == 69 and bare.stderr.startswith("BackendUnavailable:"), bare.stderr
assert os.listdir(elsewhere) == [], os.listdir(elsewhere)
srv.start()
wait_for(lambda: store.status().connected, "the service back in sync")
"""
        + _END
    )


def test_disable_during_an_outage_names_the_admin_page_and_records_nothing() -> None:
    run_scenario(
        _COMMON
        + """
srv.kill()
wait_for(lambda: store.status().stale, "the service is stale")
refused = cli(srv.url, "flags", "disable", "beta", "--by", "oncall", "--reason", "3am")
no_thread_death(refused)
assert refused.returncode == 69, (refused.stdout, refused.stderr)
error = refused.stderr.strip().splitlines()[-1]
assert error.startswith("BackendUnavailable:"), refused.stderr
assert "POST /api/flags/beta/disable" in error and "admin page" in error, error
assert store.status().pending == 0 and store.pending() == []  # nothing in the shared copy
assert flags.enabled("beta")
srv.start()
wait_for(lambda: store.status().connected, "the service back in sync")
assert flags.enabled("beta") and flags.state("beta").switch is True  # nothing committed
# Redis up: the same command commits, with no warning on stderr.
done = cli(srv.url, "flags", "disable", "beta", "--by", "oncall", "--reason", "3am")
assert done.returncode == 0 and done.stderr == "", (done.stdout, done.stderr)
wait_for(lambda: not flags.enabled("beta"), "the service hears the kill switch")
"""
        + _END
    )


def test_reads_work_while_redis_is_out_of_memory() -> None:
    run_scenario(
        _COMMON
        + """
srv.oom_on()
for args in (["flags", "list"], ["flags", "show", "beta"], ["flags", "history"],
             ["flags", "value", "beta"]):
    # A machine without a copy: every answer comes from Redis itself.
    got = cli(srv.url, *args, env={"FOUNDATION_CACHE_DIR": tempfile.mkdtemp()})
    no_thread_death(got)
    assert got.returncode == 0 and got.stderr == "", (args, got.stderr)
    assert "beta" in got.stdout, got.stdout
srv.oom_off()
"""
        + _END
    )


def test_migration_status_reads_the_copy_and_emergency_is_refused_during_an_outage() -> None:
    # The copy keeps the recorded plans: `migration status` answers from it. An
    # emergency rollback is refused as `flags disable` is: the command would be
    # gone before Redis returns, and the running service would not apply a
    # rollback another process left in the copy.
    run_scenario(
        _COMMON
        + """
from foundation.flags import DEFAULT_FLAGS, Migration, MigrationPlan
flags.close()
flags = FeatureFlags([Flag("beta"), *DEFAULT_FLAGS], store=store)
migration = Migration(flags, MigrationPlan.default())
migration.advance(by="ana")
srv.kill()
wait_for(lambda: store.status().stale, "the service is stale")
status = cli(srv.url, "migration", "status")
no_thread_death(status)
assert status.returncode == 0, status.stderr
assert json.loads(status.stdout)["stage"] == 1, status.stdout
assert "node copy" in status.stderr, status.stderr
refused = cli(srv.url, "migration", "emergency", "error spike", "--by", "oncall")
no_thread_death(refused)
assert refused.returncode == 69, (refused.stdout, refused.stderr)
error = refused.stderr.strip().splitlines()[-1]
assert error.startswith("BackendUnavailable:"), refused.stderr
assert "admin page" in error, error  # the kill-switch refusal, not a failed plan read
assert store.status().pending == 0 and store.pending() == []  # nothing in the shared copy
srv.start()
wait_for(lambda: store.status().connected, "the service back in sync")
assert migration.status().stage == 1  # nothing committed meanwhile
"""
        + _END
    )
