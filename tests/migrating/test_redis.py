"""Memory -> Redis through the same MigratingRegistry: bulk backfill, flips, deaths, refusals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from foundation import MemoryRegistry, RedisRegistry
from foundation.errors import InvalidKey
from tests.migrating.support import FLAG, Agents, Worker, make, wait_until
from tests.redis_support import RedisServer


@pytest.fixture
def redis_target(redis_server: RedisServer) -> Iterator[RedisRegistry]:
    registry = RedisRegistry(redis_server.url, namespace=f"migrating-{uuid.uuid4().hex[:12]}")
    yield registry
    registry.close()


def test_memory_to_redis_backfills_and_flips_without_losing_anything(
    redis_target: RedisRegistry, agents: Agents, worker: Worker
) -> None:
    legacy = MemoryRegistry(indexed=("role",))
    a, b = agents.new(), agents.new()
    legacy.register("a", a, {"role": "io"})
    legacy.register(("job", 2), b, {"role": "cpu"})
    reg, flags = make(False, legacy=legacy, target=redis_target)
    try:
        # The shared source was copied in bulk at construction.
        assert redis_target.lookup("a").agent is a
        assert redis_target.lookup(("job", 2)).metadata == {"role": "cpu"}
        flags.set(FLAG, True)
        c = agents.new()
        worker.run(lambda: reg.register("c", c, {"role": "io"}))  # flag on: Redis answers
        assert {e.key for e in reg.find_by_attribute("role", "io")} == {"a", "c"}
        assert legacy.lookup("c").agent is c  # mirrored into the shared legacy store
        agents.kill(a)
        assert wait_until(lambda: reg.lookup("a") is None)
        flags.set(FLAG, False)
        assert reg.lookup("a") is None
        assert reg.lookup("c").agent is c
        assert reg.unregister(("job", 2)) is True  # flag off: mirrored to Redis
        flags.set(FLAG, True)
        assert redis_target.lookup(("job", 2)) is None
        assert {e.key: e.agent for e in reg.list_all()} == {"c": c}
        assert reg.divergences() == []
        assert legacy.stats().monitors == legacy.stats().entries == 1
    finally:
        reg.close()
        flags.close()


def test_a_key_redis_cannot_store_is_refused_by_both_sides_before_any_write(
    redis_target: RedisRegistry, agents: Agents
) -> None:
    # One key rule on every backend (docs/keys-and-metadata.md): a key Redis could
    # not store is refused by the memory side too, so it can never diverge.
    reg, flags = make(False, legacy=MemoryRegistry(), target=redis_target)
    try:
        with pytest.raises(InvalidKey):
            reg.register(object(), agents.new())
        assert reg.divergences() == []
        assert reg.list_all() == []
        assert redis_target.list_all() == []
    finally:
        reg.close()
        flags.close()
