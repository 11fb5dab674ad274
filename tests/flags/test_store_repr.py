"""Flag stores' reprs name the store, as log lines show them.

Before the fix, the OpenFeature provider logged "migration plans not read from
<foundation.flags.RedisFlagStore object at 0x7f...>": RedisFlagStore had no
``__repr__`` (nor MemoryFlagStore). Now it shows its URL, passwords masked as
every message masks them, and its namespace.
"""

from __future__ import annotations

from pathlib import Path

from foundation.flags import MemoryFlagStore, RedisFlagStore, SQLiteFlagStore
from tests.redis_support import running_redis


def test_redis_store_repr_names_url_and_namespace_without_the_password(tmp_path: Path) -> None:
    with running_redis(password="s3cret-pw") as server:
        store = RedisFlagStore(server.url, namespace="shop", cache_path=tmp_path / "c.sqlite3")
        try:
            text = repr(store)
        finally:
            store.close()
    assert text == f"RedisFlagStore('redis://:***@127.0.0.1:{server.port}/0', namespace='shop')"
    assert "s3cret" not in text


def test_memory_and_sqlite_store_reprs(tmp_path: Path) -> None:
    memory = MemoryFlagStore(history_limit=50)
    assert repr(memory) == "MemoryFlagStore(history_limit=50)"
    memory.close()
    path = tmp_path / "flags.db"
    sqlite = SQLiteFlagStore(path)
    assert repr(sqlite) == f"SQLiteFlagStore({str(path)!r})"
    sqlite.close()
