"""An old deploy's emergency rollback during a Redis outage turns off the flag a newer
version of the plan turned on: the node copy keeps every flag any version named.

The outages in a plain interpreter (``run_scenario``): Redis is killed or restarted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
from tests.faults._subprocess import run_scenario
from tests.redis_support import RedisServer

DECLARED = (Flag("a"), Flag("b"))
NEW = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",), "high")], name="p")

_SCENARIO = """
import os, tempfile
from foundation.flags import (
    FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage,
)
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
DECLARED = (Flag("a"), Flag("b"))
NEW = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",), "high")], name="p")
OLD = MigrationPlan([Stage(1, "one", ("a",))], name="p")

# The new deploy, on another machine, advances to stage 2.
new_store = RedisFlagStore(srv.url, namespace="ops", cache_path=None)
new_flags = FeatureFlags(DECLARED, store=new_store)
new = Migration(new_flags, NEW)
new.advance(by="deploy"); new.advance(by="deploy")

# An old node (its copy on this machine) starts and records its 1-stage plan.
here = os.path.join(tempfile.mkdtemp(), "copy.sqlite3")
old_store = RedisFlagStore(srv.url, namespace="ops", cache_path=here, timeout=0.5)
old_flags = FeatureFlags(DECLARED, store=old_store)
old = Migration(old_flags, OLD)
wait_for(lambda: old_flags.enabled("a") and old_flags.enabled("b"), "stage 2 heard")

srv.kill()
wait_for(lambda: old_store.stale, "the old node sees the outage")
event = old.emergency_rollback("error spike", by="oncall")
print("pending", len(old_store.pending()))
print("served", old_flags.enabled("a"), old_flags.enabled("b"))
kept = getattr(old_store, "plan_flags", None)  # none before the fix: the test fails above
print("plan flags from the copy", kept and sorted(kept("p").items()))
for closing in (old_flags, old_store, new_flags, new_store):
    closing.close()
print("OK")
"""


def test_an_old_deploys_emergency_rollback_in_an_outage_turns_off_every_version_s_flags() -> None:
    result = run_scenario(_SCENARIO)
    assert "served False False" in result.stdout  # before the fix: b (stage 2) stayed on
    assert "pending 1" in result.stdout
    assert "plan flags from the copy [('a', 1), ('b', 2)]" in result.stdout


# Redis restarts empty: the flag states and stage come back from a node's copy, the
# plan flags hash does not; plan_flags() answers Redis' hash with the copy's.
_RESTARTED_EMPTY = """
import os, tempfile
from foundation.flags import (
    FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage,
)
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
DECLARED = (Flag("a"), Flag("b"))
NEW = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",), "high")], name="p")
OLD = MigrationPlan([Stage(1, "one", ("a",))], name="p")

new_store = RedisFlagStore(srv.url, namespace="ops", cache_path=None)
new_flags = FeatureFlags(DECLARED, store=new_store)
new = Migration(new_flags, NEW)
new.advance(by="deploy"); new.advance(by="deploy")

here = os.path.join(tempfile.mkdtemp(), "copy.sqlite3")
store = RedisFlagStore(srv.url, namespace="ops", cache_path=here, timeout=0.5, resync_interval=0.2)
flags = FeatureFlags(DECLARED, store=store)
wait_for(lambda: flags.enabled("a") and flags.enabled("b"), "stage 2 heard")
wait_for(lambda: store.plan_flags("p") == {"a": 1, "b": 2}, "the copy keeps the plan flags")
new_flags.close(); new_store.close()  # the new deploy's node goes away

srv.restart()  # empty
wait_for(lambda: srv.command("EXISTS", "{ops}:flags:stages") == 1, "restored from the copy")
wait_for(lambda: not store.stale, "in sync again")
print("redis hash", srv.command("HGETALL", "{ops}:flags:plan_flags"))
print("plan flags", sorted(store.plan_flags("p").items()))  # before the fix: []
for closing in (flags, store):
    closing.close()
print("OK")
"""


def test_plan_flags_answer_the_copy_s_too_after_redis_restarted_empty() -> None:
    result = run_scenario(_RESTARTED_EMPTY)
    assert "redis hash []" in result.stdout, result.stdout
    assert "plan flags [('a', 1), ('b', 2)]" in result.stdout, result.stdout


def _commands_until_the_kill_switch_writes(
    server: RedisServer, act: Callable[[], None]
) -> list[str]:
    """Every command Redis served from ``act()``'s start to its first EXEC (MONITOR)."""
    client = redis.Redis.from_url(server.url, decode_responses=True)
    seen: list[str] = []
    with client.monitor() as monitor:
        client.ping()  # MONITOR is on from here
        act()
        while not seen or seen[-1] != "EXEC":
            seen.append(str(monitor.next_command()["command"]))
    client.close()
    return seen


def test_the_kill_switch_and_status_read_the_plan_flags_from_the_copy(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """No Redis read before the kill switch's own write (on a frozen Redis each read
    waited a whole timeout): the copy holds what the other versions named."""
    url, namespace = redis_server.url, f"monitor-{id(tmp_path)}"
    with RedisFlagStore(url, namespace=namespace, cache_path=None) as setup:
        flags = FeatureFlags(DECLARED, store=setup)
        Migration(flags, NEW).advance(by="deploy")
        flags.close()
    with RedisFlagStore(url, namespace=namespace, cache_path=tmp_path / "copy.sqlite3") as store:
        flags = FeatureFlags(DECLARED, store=store)  # its first sync keeps the hashes
        migration = Migration.from_store(flags, "p")

        def act() -> None:
            assert migration.status().stage == 1
            migration.emergency_rollback("error spike", by="oncall")

        seen = _commands_until_the_kill_switch_writes(redis_server, act)
        flags.close()
    reads = [c for c in seen if c.startswith(("HGET", "HMGET")) and "plan" in c]
    # status() reads the plan record once (another version may have recorded it);
    # before the fix also the plan flags, twice more (status and the kill switch).
    assert reads == [f"HGETALL {{{namespace}}}:flags:plans"], seen


def test_a_wrongtype_plan_flags_key_does_not_stop_the_plan_record(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    namespace = f"wrongtype-{id(tmp_path)}"
    redis_server.command("SET", "{" + namespace + "}:flags:plan_flags", "junk")
    store = RedisFlagStore(redis_server.url, namespace=namespace, cache_path=None)
    flags = FeatureFlags(DECLARED, store=store)
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        Migration(flags, NEW)  # the plan flags refused: a WARNING
    assert any("not recorded" in r.getMessage() for r in caplog.records)
    assert redis_server.command("HGET", "{" + namespace + "}:flags:plans", "p")  # before: None
    flags.close()
    store.close()
