"""RedisRegistry.register_many with keys given more than once: round trips and events."""

from __future__ import annotations

from typing import Any

import redis

from foundation.liveness import spawn_thread
from foundation.registry import RegistryEvent
from tests.redis.conftest import MakeRegistry
from tests.redis.test_register_many import _count_executes
from tests.redis_support import RedisServer

# 100 items, each of 50 keys given twice in a row: k0, k0, k1, k1, ...
PAIRS = [f"k{j // 2}" for j in range(100)]


def _round_trips(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Any, replace: bool
) -> tuple[int, int, list[Any], list[tuple[Any, ...]]]:
    """(pipelines executed, EVALSHA calls, outcomes, events heard) of the PAIRS batch."""
    reg = make_registry(lease_ttl=600.0)  # no heartbeat (an EVALSHA) during the count
    reg.register_many([("warm", agents())])  # the script loaded (no NOSCRIPT counted)
    assert reg.unregister("warm")
    workers = [agents() for _ in PAIRS]
    seen: list[RegistryEvent] = []
    reg.subscribe(seen.append)
    executes = _count_executes(reg)
    with redis.Redis.from_url(redis_server.url) as raw:
        raw.config_resetstat()
        outcomes = reg.register_many(list(zip(PAIRS, workers, strict=True)), replace=replace)
        stats = raw.info("commandstats")
    agent_no = {id(w): n for n, w in enumerate(workers)}
    events = [(e.kind, e.reason, e.entry.key, agent_no[id(e.entry.agent)]) for e in seen]
    return executes[0], stats["cmdstat_evalsha"]["calls"], outcomes, events


def test_keys_given_twice_in_a_row_take_one_round_trip_without_replace(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Any
) -> None:
    # The second item of each key is refused by its first (as a second register
    # call would be): it needs no round of its own, nor do the items after it.
    executes, evalsha, outcomes, events = _round_trips(
        make_registry, redis_server, agents, replace=False
    )
    assert [type(o).__name__ for o in outcomes] == ["NoneType", "AlreadyRegistered"] * 50
    assert events == [("registered", None, f"k{n}", 2 * n) for n in range(50)]  # input order
    assert executes == 1  # was 50 (one per pair): the repeats are refused locally
    assert evalsha == 1


def test_keys_given_twice_in_a_row_with_replace_are_heard_in_input_order(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Any
) -> None:
    # Each second item replaces its first (heard): every later item must be
    # heard after it, and a round is heard once its round trip is back, so
    # this batch needs a round per run of distinct keys: k0 | k0 k1 | ... | k49.
    executes, evalsha, outcomes, events = _round_trips(
        make_registry, redis_server, agents, replace=True
    )
    assert outcomes == [None] * 100
    expected: list[tuple[Any, ...]] = []
    for n in range(50):
        expected += [
            ("registered", None, f"k{n}", 2 * n),
            ("unregistered", "replaced", f"k{n}", 2 * n),
            ("registered", None, f"k{n}", 2 * n + 1),
        ]
    assert events == expected
    assert executes == evalsha == 51


def test_a_batch_given_twice_takes_two_rounds(
    make_registry: MakeRegistry, redis_server: RedisServer, agents: Any
) -> None:
    reg = make_registry(lease_ttl=600.0)
    reg.register_many([("warm", agents())])
    assert reg.unregister("warm")
    workers = [agents() for _ in range(100)]
    keys = [f"k{j % 50}" for j in range(100)]  # k0..k49, k0..k49
    executes = _count_executes(reg)
    outcomes = reg.register_many(list(zip(keys, workers, strict=True)), replace=True)
    assert outcomes == [None] * 100
    assert executes[0] == 2
    assert [reg.lookup(f"k{n}").agent for n in range(50)] == workers[50:]


def test_an_earlier_item_of_a_dead_agent_takes_no_round(
    make_registry: MakeRegistry, agents: Any
) -> None:
    # The dead agent's item is NotAlive before any round trip: the key's next
    # item takes its place in the first round, so its event keeps its input
    # place (not after k3's, as a second round would hear it) and one round
    # trip does it all.
    reg = make_registry(lease_ttl=600.0)
    reg.register_many([("warm", agents())])
    assert reg.unregister("warm")
    dead = spawn_thread(lambda: None)
    dead.join()
    a, b, c = agents(), agents(), agents()
    seen: list[RegistryEvent] = []
    reg.subscribe(seen.append)
    executes = _count_executes(reg)
    outcomes = reg.register_many([("k1", dead), ("k2", a), ("k1", b), ("k3", c)])
    assert [type(o).__name__ for o in outcomes] == ["NotAlive", "NoneType", "NoneType", "NoneType"]
    assert [(e.kind, e.entry.key, e.entry.agent) for e in seen] == [
        ("registered", "k2", a),
        ("registered", "k1", b),
        ("registered", "k3", c),
    ]
    assert executes[0] == 1
