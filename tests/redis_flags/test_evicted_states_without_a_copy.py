"""A write by a store with no copy of Redis' version never commits over lost flag states.

Redis (``allkeys-*`` policy, or a manual ``DEL``) drops ``{ns}:flags:state``
while ``{ns}:flags:meta`` stays. A store with a copy of that version restores it
before it writes; one without (a new process, ``cache_path=None``) has nothing
to compare with. Meta's ``nstates`` (``<version>:<count>``, written by every
commit and restore) tells it: fewer states than that is a loss, the write is
refused (BackendUnavailable, nothing written) until a node with a copy restores.
"""

from __future__ import annotations

import pytest

from foundation.errors import BackendUnavailable
from foundation.flags import FlagChange, FlagState
from foundation.flags._store import StoreTransaction
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer


def _keys(namespace: str) -> tuple[str, str]:
    return f"{{{namespace}}}:flags:state", f"{{{namespace}}}:flags:meta"


def test_a_write_without_a_copy_is_refused_over_an_evicted_state_hash(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    holder = open_store(redis_server.url)
    flags = open_flags(holder)
    flags.disable("kill_switch", by="ops", reason="incident")
    copy_path = holder.cache_path
    holder.close()  # the only copy of version 1, offline

    raw = raw_client(redis_server.url)
    state, meta = _keys(namespace)
    raw.delete(state)  # evicted; meta kept

    fresh = open_store(redis_server.url, cache_path=None)
    fresh_flags = open_flags(fresh)
    with pytest.raises(BackendUnavailable, match="lost flag states of version 1") as info:
        fresh_flags.enable("beta", by="dev", reason="launch")
    assert type(info.value) is BackendUnavailable  # the public type, not a private one
    assert "HDEL" in str(info.value)  # says how to accept the loss
    # Nothing written: Redis still at version 1, the loss left for a copy to restore.
    assert raw.hget(meta, "version") == b"1"
    assert raw.exists(state) == 0
    assert raw.xlen(f"{{{namespace}}}:flags:history") == 1

    # The copy's node comes back: it restores version 1, kill switch included.
    back = open_store(redis_server.url, cache_path=copy_path)
    back_flags = open_flags(back)
    assert wait_until(lambda: raw.hget(state, "kill_switch") is not None)
    assert back_flags.enabled("kill_switch") is False
    # Now the write goes through, on top of the restored states.
    fresh_flags.enable("beta", by="dev", reason="launch")
    assert wait_until(lambda: back.status().version == 2)
    assert back.load_states()["kill_switch"].switch is False
    assert fresh.load_states()["kill_switch"].switch is False
    assert raw.hget(meta, "nstates") == b"2:2"


def test_the_count_follows_deletes_and_migration_only_commits(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    store = open_store(redis_server.url)
    flags = open_flags(store)
    flags.enable("beta")
    flags.enable("gamma")
    _state, meta = _keys(namespace)
    raw = raw_client(redis_server.url)
    assert raw.hget(meta, "nstates") == b"2:2"

    def delete_gamma(txn: StoreTransaction) -> None:
        old = txn.get("gamma")
        assert old is not None
        txn.put("gamma", None, FlagChange("gamma", old, FlagState(False), "ops", "gone"))

    store.transaction(delete_gamma)
    assert raw.hget(meta, "nstates") == b"3:1"
    # A write by a store without a copy: the count holds, no loss seen.
    other = open_store(redis_server.url, cache_path=None)
    open_flags(other).enable("gamma", by="dev", reason="back")
    assert raw.hget(meta, "nstates") == b"4:2"


@pytest.mark.parametrize("older", ["absent", "another version"])
def test_a_count_of_an_older_library_is_not_checked(
    older: str,
    redis_server: RedisServer,
    open_store: StoreFactory,
    open_flags: OpenFlags,
    namespace: str,
) -> None:
    """Meta without ``nstates`` (written before it existed), or tagged with another
    version (an older library committed since, leaving it): unknown, no refusal."""
    holder = open_store(redis_server.url)
    open_flags(holder).disable("kill_switch", by="ops", reason="incident")
    holder.close()
    state, meta = _keys(namespace)
    raw = raw_client(redis_server.url)
    if older == "absent":
        raw.hdel(meta, "nstates")
    else:
        raw.hset(meta, "nstates", "0:5")
    raw.delete(state)
    fresh = open_store(redis_server.url, cache_path=None)
    open_flags(fresh).enable("beta", by="dev", reason="launch")  # not refused (documented)
    assert raw.hget(meta, "version") == b"2"


def test_a_copy_catching_up_over_the_loss_rebuilds_and_restores_it(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    """The state hash evicted after a commit no copy holds (its writer gone): a node whose
    copy is one version behind catches up over the loss. Taken as read, no copy would
    hold the states of Redis' version and every write would be refused for good; the
    copy replays the new entries onto its own states instead, and restores them."""
    holder = open_store(redis_server.url)
    open_flags(holder).disable("kill_switch", by="ops", reason="incident")
    copy_path = holder.cache_path
    holder.close()  # its copy at version 1, offline
    writer = open_store(redis_server.url, cache_path=None)
    open_flags(writer).enable("beta", by="dev", reason="launch")  # version 2
    writer.close()  # the only copy of version 2 (in memory) gone
    raw = raw_client(redis_server.url)
    state, meta = _keys(namespace)
    raw.delete(state)  # evicted; meta kept

    back = open_store(redis_server.url, cache_path=copy_path)
    back_flags = open_flags(back)
    assert wait_until(lambda: raw.hlen(state) == 2)  # restored: version 2's states
    assert back.load_states()["kill_switch"].switch is False
    assert back.load_states()["beta"].switch is True
    open_flags(open_store(redis_server.url, cache_path=None)).enable("gamma", by="dev")
    assert raw.hget(meta, "nstates") == b"3:3"
    assert wait_until(lambda: back.status().version == 3)
    assert back_flags.enabled("kill_switch") is False
