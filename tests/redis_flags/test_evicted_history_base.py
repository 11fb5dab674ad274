"""An evicted history base is a loss the history recovers from, never a lasting error.

Redis (``allkeys-*`` policy, or a manual ``DEL``) drops ``{ns}:flags:history:base``
(each flag's state after the last trimmed entry) while the trimmed stream stays.
The kept entries are deltas of it. Before: every ``history()`` (every process)
raised FlagError ("corrupt history entry"), and every later trim failed the same
way (the stream grew for good). Now the entries that cannot be rebuilt are left
out, as if trimmed (one WARNING); the next trim gives the base back the flags
whose entries it cut (their state), and marks those with entries kept: their
next commit writes a whole record, from which their history reads again.
"""

from __future__ import annotations

import logging

import pytest

from foundation.errors import FlagError
from foundation.flags import RedisFlagStore
from tests.redis_flags._support import raw_client
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer

LIMIT = 10


def test_history_survives_an_evicted_base_and_rebuilds_it(
    redis_server: RedisServer,
    open_store: StoreFactory,
    open_flags: OpenFlags,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = open_store(redis_server.url, history_limit=LIMIT)
    flags = open_flags(store)
    flags.disable("kill_switch", by="ops", reason="incident")
    for k in range(2 * LIMIT):
        flags.set_percentage("beta", k + 1, by="dev", reason=f"before {k}")
    raw = raw_client(redis_server.url)
    base, meta = f"{{{namespace}}}:flags:history:base", f"{{{namespace}}}:flags:meta"
    assert raw.hget(meta, "trimmed") is not None  # trimmed: the kept entries need the base
    raw.delete(base)  # evicted

    # Every process reads the history: the entries of beta cannot be rebuilt, and
    # are left out (before: FlagError, again and again).
    fresh = open_store(redis_server.url, cache_path=None)
    with caplog.at_level(logging.WARNING, logger="foundation.flags"):
        assert fresh.history("beta") == []
        assert fresh.history() == []
        assert store.history("beta") == []
    warned = [r.getMessage() for r in caplog.records if "history base" in r.getMessage()]
    assert len(warned) == 2, warned  # once per store and cut, then at DEBUG
    assert "lacks beta" in warned[0], warned

    # Writes go on; the next trim rebuilds the base (the kill switch's state, cut
    # long ago) and marks beta, whose next record is whole.
    for k in range(LIMIT):
        flags.set_percentage("beta", 50 + k, by="dev", reason=f"after {k}")
        flags.enable("gamma", by="dev", reason=f"gamma {k}")
        flags.disable("gamma", by="dev", reason=f"gamma {k}")
    assert raw.hget(meta, "unbased") is None  # beta's whole record written: unmarked
    assert raw.hexists(base, "kill_switch")
    reasons = [c.reason for c in fresh.history("beta")]
    assert reasons, reasons
    assert reasons == [f"after {k}" for k in range(10 - len(reasons), 10)]
    # Every kept entry reads again, from every process (the writer's copy too).
    assert len(fresh.history()) == raw.xlen(f"{{{namespace}}}:flags:history")
    assert [c.reason for c in store.history("beta")] == reasons
    later = open_store(redis_server.url, cache_path=None)
    assert [c.reason for c in later.history("beta")] == reasons
    assert later.load_states()["kill_switch"].switch is False


def test_an_unbased_delta_of_an_untrimmed_history_is_still_corrupt(
    redis_server: RedisServer, open_store: StoreFactory, namespace: str
) -> None:
    """No cut, no base: a delta whose flag has no earlier state is corrupt data."""
    raw = raw_client(redis_server.url)
    raw.hset(f"{{{namespace}}}:flags:meta", mapping={"version": "1", "epoch": "e"})
    raw.xadd(
        f"{{{namespace}}}:flags:history",
        {
            "change": '{"fmt": 2, "flag": "beta", "by": null, "reason": null, "at": 1.0,'
            ' "nd": {"s": true}}',
            "v": "1",
        },
    )
    store: RedisFlagStore = open_store(redis_server.url, cache_path=None)
    with pytest.raises(FlagError, match="corrupt history entry"):
        store.history()
