"""The resync check's look for keys Redis lost (``_lost_keys``) never mistakes a
commit for an eviction.

It compares Redis (read first) with the node copy at the same version: fewer
flag states in Redis than in the copy means Redis lost its state hash. Race:
this node's own commit of a new flag state lands, and is confirmed into the
copy, between the check's read of the copy's version and its read of the
copy's states. Redis was read at version V, the copy's version read V, the
copy's states read at V+1 (one more): a "lost" state hash on a healthy server,
so a needless resync (a "reload" delivered to every subscriber, an INFO line).
The interleaving is forced: the copy's ``states()``, called by that check on
the listener thread, first runs a real commit of a new flag to completion.
"""

from __future__ import annotations

import sys
import threading

from foundation.flags import FlagChange
from tests.redis_flags._support import wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer


def test_a_commit_confirmed_during_the_lost_keys_check_is_no_lost_key(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags
) -> None:
    store = open_store(redis_server.url, resync_interval=0.2)
    flags = open_flags(store)
    # Subscribed before the first commit: one after would be owed a "reload" (it
    # may hold a load from before a commit the store already delivered).
    reloads: list[list[FlagChange]] = []
    store.subscribe(lambda changes: reloads.append(changes) if not changes else None)
    flags.enable("beta", by="ana")
    assert wait_until(lambda: store.synced and store.status().version == 1)

    cache = store._cache  # the node copy
    real_states = cache.states
    checks: list[int] = []  # the listener's resync checks that read the copy's states
    committed = threading.Event()

    def states() -> dict[str, str]:
        if (
            threading.current_thread() is store._thread
            and sys._getframe(1).f_code.co_name == "_lost_keys"
            and sys._getframe(2).f_code.co_name == "_redis_went_back"
        ):
            checks.append(1)
            if len(checks) == 1:
                # This node commits a new flag state now: Redis and the copy move on.
                writer = threading.Thread(target=lambda: flags.enable("gamma", by="ana"))
                writer.start()
                writer.join(20)
                committed.set()
        return real_states()

    before = store.status()
    cache.states = states  # type: ignore[method-assign]
    try:
        # The check after the forced commit: the listener has done whatever the
        # first one decided (a resync runs before the next check).
        assert wait_until(lambda: len(checks) >= 2, timeout=20)
    finally:
        del cache.states
    assert committed.is_set()
    after = store.status()
    assert after.version == 2
    assert flags.enabled("gamma")
    assert after.resyncs == before.resyncs, (before, after)
    assert after.restores == before.restores == 0
    assert reloads == []
