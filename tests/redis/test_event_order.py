"""RedisRegistry listeners hear the changes in the order the mirror applied them.

Two nodes on one real redis-server, several threads per node registering,
replacing, updating and unregistering the same few keys. Each node's listener
replays its events into a model of that node's mirror: an event must fit the
model at the moment it arrives (``registered`` on an empty key,
``unregistered`` and ``updated`` of the registration the key holds), and once
every write has reached both mirrors and every event is delivered, the model
equals ``list_all()``. Events queued outside the mirror lock (a writer's after
releasing it, while the tail applies a remote change to the same key, or
another writer's) reach listeners inverted: the replay fails.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from foundation import errors
from foundation.registry import Entry, RegistryEvent
from foundation.registry._redis import RedisRegistry
from tests.redis.conftest import MakeRegistry
from tests.redis.support import unique_namespace, wait_until

KEYS = [f"k{i}" for i in range(3)]
THREADS_PER_NODE = 3
OPS_PER_THREAD = 120


def _same(a: Entry, b: Entry) -> bool:
    """One registration (node, time, agent), as the registry itself compares them."""
    return (
        a.node == b.node
        and a.registered_at == b.registered_at
        and (a.agent is b.agent or a.agent == b.agent)
    )


def _shapes(entries: Iterable[Entry]) -> list[tuple[Any, ...]]:
    return sorted(((e.key, e.node, e.registered_at, dict(e.metadata)) for e in entries), key=repr)


class Replay:
    """A listener replaying events into a model of one node's mirror."""

    def __init__(self, slow: bool) -> None:
        self.model: dict[Hashable, Entry] = {}
        self.errors: list[str] = []
        self.count = 0
        self._slow = slow

    def __call__(self, event: RegistryEvent) -> None:
        # (Listeners of one registry are called one at a time: no lock needed.)
        self.count += 1
        key, held = event.entry.key, self.model.get(event.entry.key)
        if event.kind == "registered":
            if held is not None:
                self.errors.append(f"#{self.count} registered {key!r} over a live {held!r}")
            self.model[key] = event.entry
        else:
            if held is None or not _same(held, event.entry):
                self.errors.append(f"#{self.count} {event.kind} {event.entry!r}, model: {held!r}")
            if event.kind == "unregistered":
                self.model.pop(key, None)
            else:
                self.model[key] = event.entry
        if self._slow:
            # A listener that takes a moment: deliveries racing with each other
            # (and with the mirror) overlap instead of finishing in a blink.
            time.sleep(0.0002)  # sleep-ok: simulates listener work, not synchronisation


def _work(reg: RedisRegistry, agent: Any, seed: int, failures: list[BaseException]) -> None:
    rnd = random.Random(seed)
    try:
        for i in range(OPS_PER_THREAD):
            key = rnd.choice(KEYS)
            op = rnd.random()
            try:
                if op < 0.45:
                    reg.register(key, agent, {"by": seed, "i": i}, replace=rnd.random() < 0.6)
                elif op < 0.75:
                    reg.unregister(key)
                else:
                    reg.update_metadata(key, {"by": seed, "i": i, "u": True})
            except (errors.AlreadyRegistered, errors.NotRegistered):
                pass
    except BaseException as exc:
        failures.append(exc)


def _settled(regs: list[RedisRegistry], replays: list[Replay]) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            _shapes(r.list_all()) == _shapes(p.model.values())
            for r, p in zip(regs, replays, strict=True)
        )

    return check


def _run(make_registry: MakeRegistry, agents: Callable[[], Any], seed: int, slow: bool) -> None:
    ns = unique_namespace("order")  # empty: the listeners' models start empty
    regs = [make_registry(namespace=ns, node=f"{n}{seed}") for n in "ab"]
    replays = [Replay(slow) for _ in regs]
    for reg, replay in zip(regs, replays, strict=True):
        reg.subscribe(replay)
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=_work, args=(reg, agents(), seed * 100 + n * 10 + j, failures))
        for n, reg in enumerate(regs)
        for j in range(THREADS_PER_NODE)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a writer thread is stuck"
    assert not failures, failures
    last = max(r.status().written for r in regs)
    for reg in regs:
        assert reg.wait_for_version(last, timeout=20)
    settled = _settled(regs, replays)
    for replay in replays:
        assert not replay.errors, replay.errors[:10]
    assert wait_until(settled, timeout=20), [
        (_shapes(r.list_all()), _shapes(p.model.values()))
        for r, p in zip(regs, replays, strict=True)
    ]
    for replay in replays:
        assert not replay.errors, replay.errors[:10]
    assert all(p.count for p in replays)


def test_events_follow_the_mirror_order_under_concurrent_writers_on_two_nodes(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    for seed in range(3):
        _run(make_registry, agents, seed, slow=seed % 2 == 1)


def test_a_register_then_unregister_is_heard_in_that_order(
    make_registry: MakeRegistry, agents: Callable[[], Any]
) -> None:
    """A node's own register then unregister of one key, while the other node
    churns the same key: registered before unregistered, per registration."""
    a, b = make_registry(node="order-a"), make_registry(node="order-b")
    seen: list[tuple[str, str, float]] = []
    a.subscribe(lambda e: seen.append((e.kind, e.entry.node, e.entry.registered_at)))
    stop = threading.Event()
    agent_a, agent_b = agents(), agents()

    def churn() -> None:
        while not stop.is_set():
            try:
                b.register("x", agent_b, replace=True)
                b.unregister("x")
            except errors.FoundationError:
                pass

    churner = threading.Thread(target=churn)
    churner.start()
    mine = 0  # this node's registrations that went through
    try:
        for _ in range(200):
            try:
                a.register("x", agent_a, replace=True)
            except errors.AlreadyRegistered:
                continue
            mine += 1
            a.unregister("x")
    finally:
        stop.set()
        churner.join(timeout=30)
    assert b.wait_for_version(a.status().written)
    assert a.wait_for_version(b.status().written)
    assert wait_until(lambda: not a._delivery.pending and not a._delivery.busy)
    state: dict[tuple[str, float], str] = {}
    for kind, node, at in seen:
        prev = state.get((node, at))
        assert (prev, kind) in {(None, "registered"), ("registered", "unregistered")}, (
            f"{kind} of {node}@{at} after {prev}"
        )
        state[(node, at)] = kind
    # This node's registrations are heard, each registered then unregistered (by
    # its own unregister, or replaced by the other node). One the other node
    # replaced before this node's reply came back never reached the mirror, and
    # is not heard (_replies.died_meanwhile): at most `mine` of them.
    ours = [kind for (node, _), kind in state.items() if node == "order-a"]
    assert 0 < len(ours) <= mine, f"heard {len(ours)} of this node's {mine} registrations"
    assert set(ours) == {"unregistered"}, ours
    assert any(node == "order-b" for node, _ in state), "the other node's churn was not heard"
