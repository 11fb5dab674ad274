"""A write by a store with no copy of Redis' version never commits over lost migration stages.

Redis (``allkeys-*`` policy, or a manual ``DEL``) drops ``{ns}:flags:stages`` (plan ->
committed stage) while ``{ns}:flags:meta`` stays. A store with a copy of that version
restores it before it writes; one without (a new process, ``cache_path=None``) has
nothing to compare with. Before: its write committed on top, every node's copy then
followed Redis, and the plan read stage 0 for good (its flags still on: its next
``advance`` replayed stage 1). Meta's ``nstages`` (``<version>:<count>``, written by
every commit and restore next to ``nstates``) tells it: fewer stages than that is a
loss, the write is refused (BackendUnavailable, nothing written) until a node with a
copy restores.
"""

from __future__ import annotations

import pytest

from foundation.errors import BackendUnavailable
from foundation.flags import Migration, MigrationPlan, Stage
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer

ROLLOUT = MigrationPlan([Stage(1, "one", ["beta"])], name="rollout")
SECOND = MigrationPlan([Stage(1, "one", ["gamma"])], name="second")


def _keys(namespace: str) -> tuple[str, str]:
    return f"{{{namespace}}}:flags:stages", f"{{{namespace}}}:flags:meta"


def test_a_write_without_a_copy_is_refused_over_an_evicted_stages_hash(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    holder = open_store(redis_server.url)
    Migration(open_flags(holder), ROLLOUT).advance(by="ops", reason="stage 1")
    copy_path = holder.cache_path
    holder.close()  # the only copy of version 1, offline

    raw = raw_client(redis_server.url)
    stages, meta = _keys(namespace)
    raw.delete(stages)  # evicted; meta (and the state hash) kept

    fresh = open_store(redis_server.url, cache_path=None)
    fresh_flags = open_flags(fresh)
    # Before the fix: committed (version 2 on top of the loss), and below the copy's
    # node then followed Redis: the plan read stage 0 for good.
    with pytest.raises(BackendUnavailable, match="lost migration stages of version 1") as info:
        fresh_flags.enable("gamma", by="dev", reason="launch")
    assert type(info.value) is BackendUnavailable  # the public type, not a private one
    assert f"HDEL {meta} nstages" in str(info.value)  # says how to accept the loss
    # Nothing written: Redis still at version 1, the loss left for a copy to restore.
    assert raw.hget(meta, "version") == b"1"
    assert raw.exists(stages) == 0
    assert raw.xlen(f"{{{namespace}}}:flags:history") == 1

    # The copy's node comes back: it restores version 1, the stage included.
    back = open_store(redis_server.url, cache_path=copy_path)
    back_flags = open_flags(back)
    assert wait_until(lambda: raw.hget(stages, "rollout") == b"1")
    # Now the write goes through, on top of the restored stages.
    fresh_flags.enable("gamma", by="dev", reason="launch")
    assert wait_until(lambda: back.status().version == 2)
    assert back.migration_stage("rollout") == 1
    assert fresh.migration_stage("rollout") == 1
    assert Migration(back_flags, ROLLOUT).status().stage == 1
    assert raw.hget(meta, "nstages") == b"2:1"


def test_the_stage_count_follows_every_commit(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    store = open_store(redis_server.url)
    flags = open_flags(store)
    _stages, meta = _keys(namespace)
    raw = raw_client(redis_server.url)
    flags.enable("beta")
    assert raw.hget(meta, "nstages") == b"1:0"  # a flag-only commit: no stage
    Migration(flags, ROLLOUT).advance(by="ops")
    assert raw.hget(meta, "nstages") == b"2:1"
    Migration(flags, ROLLOUT).rollback_to(0, by="ops")  # a stage set to 0 is still held
    assert raw.hget(meta, "nstages") == b"3:1"
    # Writes by a store without a copy: the count holds (no loss seen), and grows.
    other = open_flags(open_store(redis_server.url, cache_path=None))
    other.enable("gamma", by="dev", reason="back")
    assert raw.hget(meta, "nstages") == b"4:1"
    Migration(other, SECOND).advance(by="ops")
    assert raw.hget(meta, "nstages") == b"5:2"
    assert store.migration_stage("second") == 1


@pytest.mark.parametrize("older", ["absent", "another version"])
def test_a_stage_count_of_an_older_library_is_not_checked(
    older: str,
    redis_server: RedisServer,
    open_store: StoreFactory,
    open_flags: OpenFlags,
    namespace: str,
) -> None:
    """Meta without ``nstages`` (written before it existed), or tagged with another
    version (an older library committed since, leaving it): unknown, no refusal."""
    holder = open_store(redis_server.url)
    Migration(open_flags(holder), ROLLOUT).advance(by="ops")
    holder.close()
    stages, meta = _keys(namespace)
    raw = raw_client(redis_server.url)
    if older == "absent":
        raw.hdel(meta, "nstages")
    else:
        raw.hset(meta, "nstages", "0:5")
    raw.delete(stages)
    fresh = open_store(redis_server.url, cache_path=None)
    open_flags(fresh).enable("gamma", by="dev", reason="launch")  # not refused (documented)
    assert raw.hget(meta, "version") == b"2"


def test_a_copy_catching_up_over_the_stage_loss_rebuilds_and_restores_it(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    """The stages hash evicted after a commit no copy holds (its writer gone): a node
    whose copy is one version behind catches up over the loss. Taken as read, no copy
    would hold the stages of Redis' version and every write would be refused for good;
    the copy replays the new migration events onto its own stages instead, and
    restores them."""
    holder = open_store(redis_server.url)
    Migration(open_flags(holder), ROLLOUT).advance(by="ops")
    copy_path = holder.cache_path
    holder.close()  # its copy at version 1, offline
    writer = open_store(redis_server.url, cache_path=None)
    Migration(open_flags(writer), SECOND).advance(by="ops")  # version 2
    writer.close()  # the only copy of version 2 (in memory) gone
    raw = raw_client(redis_server.url)
    stages, meta = _keys(namespace)
    raw.delete(stages)  # evicted; meta kept

    back = open_store(redis_server.url, cache_path=copy_path)
    back_flags = open_flags(back)
    assert wait_until(lambda: raw.hlen(stages) == 2)  # restored: version 2's stages
    assert back.migration_stage("rollout") == 1
    assert back.migration_stage("second") == 1
    open_flags(open_store(redis_server.url, cache_path=None)).enable("kill_switch", by="dev")
    assert raw.hget(meta, "nstages") == b"3:2"
    assert wait_until(lambda: back.status().version == 3)
    assert Migration(back_flags, SECOND).status().stage == 1
