"""A migration step on a read-only replica while this node's emergency rollback
is pending, in a plain interpreter with a real redis-server.

The rollback is applied here and kept pending (``status().stage`` is 0), yet
``advance()`` judged Redis' stage (2, the plan's last) and raised
``MigrationError`` "at its last stage", while ``rollback_to`` and ``enable``
raised the pending switch's ``BackendUnavailable``. This node's kill switches
land before its own writes: a step refused on Redis' state commits them first,
so it raises their ``BackendUnavailable`` while Redis refuses them, and runs
on the state they leave once it takes them.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_SCENARIO = """
from foundation import FeatureFlags, Flag, Migration, MigrationPlan, Stage
from foundation.flags import RedisFlagStore
from tests.redis_support import RedisServer

PLAN = MigrationPlan([Stage(1, "one", ["a"]), Stage(2, "two", ["b"])], name="p")
srv = RedisServer(); srv.start()
try:
    store = RedisFlagStore(srv.url, namespace="ropa", timeout=1.0, resync_interval=0.3,
                           cache_path=None)
    flags = FeatureFlags([Flag("a"), Flag("b")], store=store)
    migration = Migration(flags, PLAN)
    migration.advance(by="ana"); migration.advance(by="ana")
    srv.make_read_only()
    wait_for(lambda: store.status().read_only and store.status().connected,
             "the store in sync with a read-only replica")
    print("emergency", migration.emergency_rollback("error spike", by="oncall").to_stage)
    print("stage", migration.status().stage, store.status().pending)
    print("advance", typed(lambda: migration.advance(by="ana")).split(":")[0])
    print("rollback", typed(lambda: migration.rollback_to(1, by="ana")).split(":")[0])
    srv.make_writable()
    wait_for(lambda: not store.status().pending, "the emergency rollback committed")
    print("advance", typed(lambda: migration.advance(by="ana")), migration.status().stage)
    print("history", [(e.action, e.to_stage) for e in migration.history()])
    assert store._thread.is_alive(), "the listener thread died"
    flags.close(); store.close()
finally:
    srv.stop()
print("OK")
"""


def test_a_step_on_a_replica_waits_for_the_pending_emergency_rollback() -> None:
    result = run_scenario(_SCENARIO)
    assert result.lines("emergency") == ["emergency 0"]
    assert result.lines("stage") == ["stage 0 1"]
    assert result.lines("advance") == ["advance BackendUnavailable", "advance ok 1"]
    assert result.lines("rollback") == ["rollback BackendUnavailable"]
    assert result.lines("history") == [
        "history [('advance', 1), ('advance', 2), ('emergency_rollback', 0), ('advance', 1)]"
    ]
