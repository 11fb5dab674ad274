"""A node never serves a flag state its node copy does not hold (restore race).

Found by ``bench_chaos``' flags row: node B's listener delivered node A's last
changes (B's ``FeatureFlags`` reloaded them straight from Redis) and Redis was
killed before B's listener refreshed B's copy. Redis came back empty, B
restored it FIRST from its older copy and reloaded: the last changes reverted
on B until A restored its newer copy over B's. Here the interleaving is forced:
a subscriber of B (called on B's listener thread, right after ``FeatureFlags``
reloaded) empties Redis before the listener can refresh the copy, and B is the
only node left to restore.
"""

from __future__ import annotations

import threading
from pathlib import Path

from foundation.flags import FlagChange, FlagState
from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer


def test_a_restore_never_takes_back_what_the_node_already_served(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, tmp_path: Path
) -> None:
    writer = open_store(redis_server.url, cache_path=None)
    reader = open_store(
        redis_server.url, cache_path=tmp_path / "reader.sqlite3", resync_interval=0.2
    )
    node_a, node_b = open_flags(writer), open_flags(reader)
    node_a.enable("beta", by="ana")
    assert wait_until(lambda: reader.status().version == 1)  # B's copy: beta on

    seen_on_b: list[FlagChange] = []
    node_b.subscribe(seen_on_b.append)
    writer_gone = threading.Event()
    emptied = threading.Event()
    raw = raw_client(redis_server.url)
    keys = [f"{{{reader.namespace}}}:flags:{k}" for k in ("meta", "state", "history", "stages")]

    def redis_restarts_empty(changes: list[FlagChange]) -> None:
        # Called on B's listener thread after node_b (subscribed first) reloaded
        # A's second change, before the listener refreshes B's copy.
        if changes and not emptied.is_set() and writer_gone.wait(10):
            raw.delete(*keys)
            emptied.set()

    reader.subscribe(redis_restarts_empty)
    try:
        node_a.enable("gamma", by="ana")
        # A leaves with its copy (in memory): B is the only node that can restore.
        node_a.close()
        writer.close()
        writer_gone.set()
        assert wait_until(emptied.is_set)
        assert wait_until(lambda: reader.status().restores == 1 and reader.synced)
    finally:
        raw.close()
    # B served gamma on (its reload above); nothing may take it back, neither
    # the copy served while Redis was empty nor B's own restore.
    assert any(c.flag == "gamma" and c.new.switch for c in seen_on_b)
    assert [c for c in seen_on_b if not c.new.switch] == []
    assert node_b.enabled("gamma")
    assert reader.load_states()["gamma"] == FlagState(True)
    assert reader.status().version == 2
    assert [c.flag for c in reader.history()] == ["beta", "gamma"]
