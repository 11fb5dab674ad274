"""A flag write or read against a ``version`` in meta that is not a number
(written by something else) fails with a Foundation error (``FlagError``), not
the ``ValueError`` of parsing it; once meta is right again, writes work."""

from __future__ import annotations

import pytest
import redis

from foundation.errors import FlagError
from tests.redis_flags._support import wait_until
from tests.redis_flags.conftest import StoreFactory
from tests.redis_flags.test_redis_flag_store import OpenFlags
from tests.redis_support import RedisServer


def test_a_write_or_read_on_a_corrupt_meta_version_raises_flag_error(
    redis_server: RedisServer, open_store: StoreFactory, open_flags: OpenFlags, namespace: str
) -> None:
    store = open_store(redis_server.url)
    flags = open_flags(store)
    flags.enable("beta", by="ana")
    assert wait_until(lambda: store.synced and store.status().version == 1)
    meta = f"{{{namespace}}}:flags:meta"
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        raw.hset(meta, "version", "not-a-number")
        with pytest.raises(FlagError, match="corrupt version"):
            flags.enable("gamma", by="ana")
        with pytest.raises(FlagError, match="corrupt version"):
            store.load_states()
        raw.hset(meta, "version", "1")
    flags.enable("gamma", by="ana")
    assert flags.enabled("gamma")
    assert flags.enabled("beta")
