"""``Migration``'s steps return the event they recorded, and ``Migration(flags,
plan)`` starts on a store that refuses writes (a full disk, a read-only file),
as ``FeatureFlags`` does: the plan not recorded, one WARNING.
"""

from __future__ import annotations

import os

import pytest

from foundation.flags import (
    FeatureFlags,
    Flag,
    Migration,
    MigrationEvent,
    MigrationPlan,
    SQLiteFlagStore,
    Stage,
)
from tests._ci import needs_root
from tests.faults._subprocess import run_scenario

PLAN = MigrationPlan([Stage(1, "one", ["a"]), Stage(2, "two", ["b"])], name="plan")


def test_each_step_returns_the_event_it_recorded_not_the_plan_s_last(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "flags.db")
    with SQLiteFlagStore(path) as store, FeatureFlags([Flag("a"), Flag("b")], store=store) as ours:
        mine = Migration(ours, PLAN)
        other = Migration(FeatureFlags.from_store(store), PLAN)  # another writer, same store
        steps: list[MigrationEvent] = []
        steps.append(mine.advance(by="ana", reason="go"))
        other.advance(by="bob", reason="further")
        steps.append(mine.rollback_to(0, by="ana", reason="back"))
        other.advance(by="bob", reason="again")
        steps.append(mine.emergency_rollback("spike", by="oncall"))
        other.flags.close()
        history = mine.history()
    assert [(e.action, e.from_stage, e.to_stage, e.by, e.reason) for e in steps] == [
        ("advance", 0, 1, "ana", "go"),
        ("rollback", 2, 0, "ana", "back"),
        ("emergency_rollback", 1, 0, "oncall", "spike"),
    ]
    assert [history[i] for i in (0, 2, 4)] == steps  # as recorded, time included


def test_an_emergency_rollback_kept_during_an_outage_returns_the_event_kept() -> None:
    """Redis out of memory: the rollback is kept in the node copy (not committed);
    the event returned is the one kept, and the one committed when memory is back."""
    run_scenario(
        """
import tempfile
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
try:
    store = RedisFlagStore(srv.url, namespace="ev", cache_path=tempfile.mkdtemp() + "/copy",
                           timeout=0.5, resync_interval=0.3)
    flags = FeatureFlags([Flag("a")], store=store)
    migration = Migration(flags, MigrationPlan([Stage(1, "one", ["a"])], name="plan"))
    migration.advance(by="ana")
    srv.command("CONFIG", "SET", "maxmemory", "1")
    try:
        event = migration.emergency_rollback("error spike", by="oncall")
        assert (event.action, event.from_stage, event.to_stage) == ("emergency_rollback", 1, 0)
        assert [op.events for op in store.pending()] == [(event,)], store.pending()
        assert srv.command("HGET", "{ev}:flags:stages", "plan") == b"1"  # not committed
    finally:
        srv.command("CONFIG", "SET", "maxmemory", "0")
    wait_for(lambda: not store.pending(), "the rollback committed")
    assert migration.history()[-1] == event, migration.history()
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""
    )


# A store that refuses writes: the disk full (RLIMIT_FSIZE: writes past it fail
# with EFBIG), or, as root, a file this process may not write (uid nobody).
_REFUSING = {
    "disk_full": """
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
largest = max(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
resource.setrlimit(resource.RLIMIT_FSIZE, (largest, resource.RLIM_INFINITY))
""",
    "read_only": """
os.chmod(d, 0o755)
os.chown(d, 65534, 65534)  # the directory is nobody's, the file stays root's
os.chmod(path, 0o644)
os.setgid(65534)
os.setuid(65534)  # from here on, permissions apply
""",
}

_SCENARIO = """
import difflib, os, resource, signal, tempfile  # difflib now: uid nobody cannot read the lib later
from foundation import errors
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore, Stage
from tests._logs import keep_records

d = tempfile.mkdtemp()
path = os.path.join(d, "flags.db")
declared = [Flag("a"), Flag("b")]
first = MigrationPlan([Stage(1, "one", ["a"])], name="first")
with SQLiteFlagStore(path) as setup, FeatureFlags(declared, store=setup) as f:
    Migration(f, first)
{refuse}
warned = keep_records("foundation", level=logging.WARNING)
store = SQLiteFlagStore(path, busy_timeout=1.0)
flags = FeatureFlags(declared, store=store)
# A deploy's new plan, its stage name larger than any file may grow now.
second = MigrationPlan([Stage(1, "one-" + "x" * 2_000_000, ["b"])], name="second")
migration = Migration(flags, second)  # starts: the plan is not recorded
assert migration.status().stage == 0 and not flags.enabled("b")
assert sorted(store.plans()) == ["first"], sorted(store.plans())
notes = [m for m in warned.messages() if "migration plan 'second' not recorded" in m]
assert len(notes) == 1, warned.messages()
# A plan the library itself refuses is still the caller's error.
try:
    Migration(flags, MigrationPlan([Stage(1, "one", ["nope"])], name="bad"))
except errors.UnknownFlag:
    pass
else:
    raise AssertionError("an undeclared flag was accepted")
flags.close()
store.close()
print("OK")
"""


@pytest.mark.parametrize("fault", sorted(_REFUSING))
def test_migration_starts_with_a_warning_on_a_store_that_refuses_writes(fault: str) -> None:
    if fault == "read_only":
        needs_root("to drop to uid nobody")
    result = run_scenario(_SCENARIO.format(refuse=_REFUSING[fault]))
    assert "LOG WARNING foundation.flags [MainThread] migration plan 'second' not recorded" in (
        result.stderr
    ), result.stderr
