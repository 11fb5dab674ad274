"""Memory -> Redis through the same MigratingRegistry: bulk backfill, flips, deaths, refusals."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from foundation import MemoryRegistry, RedisRegistry, RegistryEvent
from foundation.errors import InvalidKey
from tests.migrating.support import FLAG, Agents, Worker, make, wait_until
from tests.redis_support import RedisServer

WAIT = 10.0


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


def test_a_mirror_event_a_redis_side_delivers_late_is_dropped_after_a_flip(
    redis_target: RedisRegistry,
) -> None:
    # A RedisRegistry delivers through a queue: a writer finding another thread
    # delivering leaves its events to it. Was: the facade took the Redis side
    # for one delivering each call's events in the calling thread, so its
    # mirror call's event, delivered late by that other thread after a flip,
    # was forwarded as the now authoritative side's own.
    legacy = redis_target
    reg, flags = make(True, legacy=legacy, target=MemoryRegistry())  # target answers
    holding, release = threading.Event(), threading.Event()

    def blocker(event: RegistryEvent) -> None:
        if event.entry.key == "hold":  # the delivery of "hold" holds on
            holding.set()
            release.wait(WAIT)

    undo = legacy.subscribe(blocker)
    agents = [Future[None]() for _ in range(3)]
    holder = threading.Thread(target=lambda: legacy.register("hold", agents[0]))
    seen: list[tuple[str, Any]] = []
    try:
        holder.start()
        assert holding.wait(WAIT)
        reg.register("k", agents[1])  # mirrored to the Redis side: its event waits
        reg.subscribe(lambda e: seen.append((e.kind, e.entry.key)))
        flags.set(FLAG, False)  # the Redis side answers from now on
        release.set()
        holder.join(WAIT)
        assert not holder.is_alive()
        reg.register("sentinel", agents[2])  # a kept event, queued after "k"'s
        assert wait_until(lambda: ("registered", "sentinel") in seen, WAIT)
        assert ("registered", "k") not in seen, seen
    finally:
        release.set()
        undo()
        reg.close()
        flags.close()
