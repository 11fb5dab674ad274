"""A node copy whose file failed is reported: ``status().copy_in_memory``, the
admin status block, and ``degraded`` (flags still serve; durability does not).

The fall-back is entered through ``NodeCache._fall_back`` with the error a failing
disk gives; the real faults (disk full, locked, deleted, truncated) are run in
tests/faults/test_sqlite_faults.py.
"""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

from foundation import RedisFlagStore
from foundation.admin._status import store_status
from tests.redis_support import RedisServer


def test_a_copy_in_memory_is_reported_and_degraded(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    namespace = f"copy-{uuid.uuid4().hex[:8]}"
    with RedisFlagStore(
        redis_server.url, namespace=namespace, cache_path=tmp_path / "copy.sqlite3"
    ) as store:
        block = store_status(store)
        assert block["copy_in_memory"] is False
        assert block["degraded"] is False
        cache = store._cache
        with cache._lock:
            assert cache._fall_back(sqlite3.OperationalError("disk I/O error"))
        assert store.status().copy_in_memory is True
        block = store_status(store)
        assert block["copy_in_memory"] is True
        assert block["state"] == "connected"  # Redis is fine: flags serve as usual
        assert block["degraded"] is True
