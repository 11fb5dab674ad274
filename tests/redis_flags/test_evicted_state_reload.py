"""A state hash evicted at the copy's own version is a loss, never an answer.

Redis (``allkeys-*`` policy, or a manual ``DEL``) drops ``{ns}:flags:state``
while ``{ns}:flags:meta`` stays at the node copy's version and epoch. The
listener restores it from the copy and delivers a reload; were the reload's
read (an empty HGETALL at the copy's version) taken as Redis' answer, every
flag would read its default: a kill switch (default True) turned off would
serve True until the next resync, with the store saying connected.
"""

from __future__ import annotations

import threading
import time

from tests.redis_flags._support import raw_client, wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer

RESYNC = 0.2


def test_a_kill_switch_never_reads_its_default_while_its_state_hash_is_evicted(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    store = open_store(redis_server.url, resync_interval=RESYNC)
    flags = open_flags(store)
    flags.disable("kill_switch", by="ops", reason="incident")
    assert wait_until(lambda: store.synced and store.status().version == 1)
    assert flags.enabled("kill_switch") is False

    raw = raw_client(redis_server.url)
    key = f"{{{namespace}}}:flags:state"
    served: list[object] = []
    reads = 0
    stop = threading.Event()

    def poll() -> None:
        nonlocal reads
        while not stop.is_set():
            value = flags.enabled("kill_switch")
            reads += 1
            if value is not False:
                served.append(value)

    poller = threading.Thread(target=poll, name="test-poller")
    poller.start()
    try:
        restores = store.status().restores
        # Evicted again and again, past several resyncs (each restores it from
        # the copy and reloads): at least 3 restores and 3 resync intervals.
        start = time.monotonic()
        deadline = start + 30
        while time.monotonic() < deadline and (
            time.monotonic() - start < 3 * RESYNC or store.status().restores < restores + 3
        ):
            raw.delete(key)
            time.sleep(0.0005)  # sleep-ok: eviction pressure, not synchronisation
        assert store.status().restores >= restores + 3
    finally:
        stop.set()
        poller.join(10)
    assert reads > 0
    assert served == []
    # Restored from the copy: Redis holds the kill switch again, off.
    assert wait_until(lambda: raw.hget(key, "kill_switch") is not None)
    assert flags.enabled("kill_switch") is False
