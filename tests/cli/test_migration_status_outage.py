"""``foundation migration status`` during an outage, on a machine whose service
runs ``FeatureFlags`` only (the plan recorded and advanced from another machine).

Before the fix the service's node copy kept no plans (nothing here read them
while in sync), so the command exited 69 (``BackendUnavailable``) although
docs/flags-outages.md says it answers from the copy. The scenario runs in a
plain interpreter (``run_scenario``); the CLI runs as a subprocess of it.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario


def test_migration_status_answers_from_the_service_copy_during_an_outage() -> None:
    run_scenario(
        """
import json, os, subprocess, tempfile
from foundation.flags import DEFAULT_FLAGS, FeatureFlags, Migration, MigrationPlan, RedisFlagStore
from tests.redis_support import RedisServer

os.environ["FOUNDATION_CACHE_DIR"] = tempfile.mkdtemp()  # the service's and the CLI's copy
srv = RedisServer(); srv.start()

def cli(*args):
    cmd = [sys.executable, "-m", "foundation.cli", "--json", "--store", srv.url + "?namespace=shop"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)

# Another machine (a copy of its own elsewhere) records and advances the plan.
other = RedisFlagStore(srv.url, namespace="shop", cache_path=None)
other_flags = FeatureFlags(DEFAULT_FLAGS, store=other)
Migration(other_flags, MigrationPlan.default()).advance(by="ana", reason="canary green")
other_flags.close(); other.close()

# The service here: FeatureFlags only.
store = RedisFlagStore(srv.url, namespace="shop", timeout=0.5, resync_interval=0.3)
flags = FeatureFlags(DEFAULT_FLAGS, store=store)
srv.kill()
wait_for(lambda: store.stale, "the service is stale")

status = cli("migration", "status")
assert "Traceback" not in status.stderr, status.stderr
assert status.returncode == 0, (status.returncode, status.stderr)
data = json.loads(status.stdout)
assert data["plan"] == "default" and data["stage"] == 1, data
assert "Redis unreachable" in status.stderr and "node copy" in status.stderr, status.stderr
flags.close(); store.close()
print("OK")
"""
    )
