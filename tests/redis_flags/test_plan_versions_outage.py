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

from foundation import errors
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage
from foundation.flags._store import plan_flag_field, plan_to_json
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
srv.stop()  # (a scenario's server outlives it otherwise: nothing else stops it)
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


def test_a_wrongtype_key_records_nothing_and_says_so(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plan is recorded only with its flags kept: a plan flags (or plans) key that is
    no hash records neither, and the WARNING says so (before: the plan recorded, its
    older version's flags lost, under a "not recorded" WARNING)."""
    namespace = f"wrongtype-{id(tmp_path)}"
    key = "{" + namespace + "}:flags:"
    redis_server.command("SET", key + "plan_flags", "junk")
    store = RedisFlagStore(redis_server.url, namespace=namespace, cache_path=None)
    flags = FeatureFlags(DECLARED, store=store)
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        Migration(flags, NEW)
    warned = [r.getMessage() for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(warned) == 1, warned
    assert f"Redis key {key}plan_flags holds a string, not a hash" in warned[0], warned
    assert "migration plan 'p' not recorded, nor its flags" in warned[0], warned
    assert redis_server.command("HGET", key + "plans", "p") is None  # before: recorded
    with pytest.raises(errors.FlagError, match="not recorded"):
        store.record_plan("p", NEW)  # typed, from foundation.errors
    assert redis_server.command("GET", key + "plan_flags") == b"junk"
    # The key removed, the plan is recorded with its flags.
    redis_server.command("DEL", key + "plan_flags")
    store.record_plan("p", NEW)
    assert store.plan_flags("p") == {"a": 1, "b": 2}
    flags.close()
    store.close()


# The plan not recorded (a plan flags key that is no hash) is recorded again at each
# resync: a WARNING, and the resync goes on (before: BackendUnavailable from the
# resync's record, which failed again and again, the store stale for good).
_WRONGTYPE_RESYNC = """
from foundation.flags import (
    FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage,
)
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
srv.command("SET", "{ops}:flags:plan_flags", "junk")
store = RedisFlagStore(srv.url, namespace="ops", cache_path=None, timeout=0.5)
flags = FeatureFlags([Flag("a")], store=store)
Migration(flags, MigrationPlan([Stage(1, "one", ("a",))], name="p"))
before = store.status().resyncs
srv.command("CLIENT", "KILL", "TYPE", "normal")  # the store's connections: a resync
wait_for(lambda: store.status().resyncs > before and store.synced, "in sync again")
print("plans", srv.command("HKEYS", "{ops}:flags:plans"))
flags.close(); store.close(); srv.stop()
print("OK")
"""


def test_a_wrongtype_plan_flags_key_does_not_stop_the_resync() -> None:
    result = run_scenario(_WRONGTYPE_RESYNC)
    assert "plans []" in result.stdout, result.stdout
    warned = [line for line in result.stderr.splitlines() if "holds a string" in line]
    assert warned, result.stderr
    assert all("WARNING" in line for line in warned), warned


def test_a_wrongtype_plans_key_adds_no_plan_flags(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    namespace = f"wrongtype-plans-{id(tmp_path)}"
    key = "{" + namespace + "}:flags:"
    redis_server.command("SET", key + "plans", "junk")
    with (
        RedisFlagStore(redis_server.url, namespace=namespace, cache_path=None) as store,
        pytest.raises(errors.FlagError, match=r"plans holds a string, not a hash"),
    ):
        store.record_plan("p", NEW)
    assert redis_server.command("EXISTS", key + "plan_flags") == 0


# A node records its plan while Redis is frozen: it cannot read the plan recorded
# now, which an older library (no plan flags) recorded after this node's sync, so its
# copy has none either. Its record, written when Redis returns, keeps that older
# plan's flags all the same: the union is taken by Redis at write time.
_FROZEN_AT_RECORD = """
import os, tempfile
from foundation.flags import (
    FeatureFlags, Flag, Migration, MigrationPlan, RedisFlagStore, Stage,
)
from foundation.flags._store import plan_to_json
from tests.redis_support import RedisServer

srv = RedisServer(); srv.start()
DECLARED = (Flag("a"), Flag("b"))
WIDE = MigrationPlan([Stage(1, "one", ("a",)), Stage(2, "two", ("b",), "high")], name="p")
NARROW = MigrationPlan([Stage(1, "one", ("a",))], name="p")
here = os.path.join(tempfile.mkdtemp(), "copy.sqlite3")
store = RedisFlagStore(srv.url, namespace="ops", cache_path=here, timeout=0.5, resync_interval=0.2)
flags = FeatureFlags(DECLARED, store=store)
# An older library's node records its 2-stage plan (the record only) and is at stage 2.
srv.command("HSET", "{ops}:flags:plans", "p", plan_to_json(WIDE))
flags.enable("a", by="old node"); flags.enable("b", by="old node")

srv.freeze()
migration = Migration(flags, NARROW)  # the plan recorded now cannot be read
wait_for(lambda: store.stale, "the node sees the outage")
srv.thaw()
narrow = plan_to_json(NARROW).encode()
wait_for(lambda: srv.command("HGET", "{ops}:flags:plans", "p") == narrow, "written back")
wait_for(lambda: not store.stale, "in sync again")
print("redis hash", sorted(f.decode() for f in srv.command("HKEYS", "{ops}:flags:plan_flags")))
print("plan flags", sorted(store.plan_flags("p").items()))
with RedisFlagStore(srv.url, namespace="ops", cache_path=None) as other:
    print("another node", sorted(other.plan_flags("p").items()))
migration.emergency_rollback("error spike", by="oncall")
print("served", flags.enabled("a"), flags.enabled("b"))
flags.close(); store.close(); srv.stop()
print("OK")
"""


def test_a_plan_recorded_while_redis_is_frozen_keeps_the_older_record_s_flags() -> None:
    result = run_scenario(_FROZEN_AT_RECORD)
    # Before the fix: ['["p", "a", 1]'], plan flags [('a', 1)], b left on.
    assert 'redis hash [\'["p", "a", 1]\', \'["p", "b", 2]\']' in result.stdout, result.stdout
    assert "plan flags [('a', 1), ('b', 2)]" in result.stdout, result.stdout
    assert "another node [('a', 1), ('b', 2)]" in result.stdout, result.stdout
    assert "served False False" in result.stdout, result.stdout


# Flag and plan names the script quotes as Python's json.dumps does (plan_flag_field).
ODD = ("plain", 'quo"te', "back\\slash/slash", "tab\tnl\n\x01\x7f", "caf\u00e9", "\U0001f680 x")


def test_the_older_record_s_flags_are_added_as_plan_flag_field_writes_them(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Fields equal to those Python writes (an older library reads them, and no field
    is written twice in two spellings), whatever the names."""
    namespace = f"quoting-{id(tmp_path)}"
    name = 'plän/"x"'
    older = MigrationPlan([Stage(1, "one", ODD[:3]), Stage(2, "two", ODD[3:], "high")], name=name)
    redis_server.command("HSET", "{" + namespace + "}:flags:plans", name, plan_to_json(older))
    mine = MigrationPlan([Stage(1, "one", ("a",))], name=name)
    with (
        caplog.at_level(logging.WARNING, logger="foundation.flags"),
        RedisFlagStore(redis_server.url, namespace=namespace, cache_path=None) as store,
    ):
        store.record_plan(name, mine)
        expected = [(f, s.number) for s in older.stages for f in s.flags] + [("a", 1)]
        assert store.plan_flags(name) == dict(expected)
    fields = redis_server.command("HKEYS", "{" + namespace + "}:flags:plan_flags")
    assert sorted(f.decode() for f in fields) == sorted(
        plan_flag_field(name, f, n) for f, n in expected
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "record",
    [
        "not json",
        '{"name": "p", "stages": {"1": {"number": 1, "flags": ["b"]}}}',
        '{"name": "p", "stages": [{"number": "x", "name": "one", "flags": ["b"]}]}',
        '{"name": "p", "stages": [{"number": 1, "name": "one", "flags": [3]}]}',
        '{"name": "p", "stages": [{"number": 1, "name": "one", "flags": ["\\udc00"]}]}',
    ],
)
def test_an_unreadable_older_record_is_a_warning_and_the_plan_is_recorded(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, record: str
) -> None:
    namespace = f"unreadable-{id(tmp_path)}"
    redis_server.command("HSET", "{" + namespace + "}:flags:plans", "p", record)
    with (
        caplog.at_level(logging.WARNING, logger="foundation.flags"),
        RedisFlagStore(redis_server.url, namespace=namespace, cache_path=None) as store,
    ):
        store.record_plan("p", NEW)
        assert store.plan_flags("p") == {"a": 1, "b": 2}
        assert store.plans()["p"].to_dict() == NEW.to_dict()
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("recorded plan unreadable" in w for w in warned), warned
