"""Registries inherited by a child forked while a parent thread was writing to
them: nothing in the child waits for a lock that thread held at the fork.

Before, the write lock of a ``MemoryRegistry`` (and the facade lock of a
``MigratingRegistry``, the listeners' lock of a ``ThreadLocalRegistry``) held
by a parent thread at the fork stayed held for ever in the child: its
``unregister()``, ``update_metadata()``, ``subscribe()`` or ``close()`` hung
(a fork in 5 to 20 % of forks made while a thread wrote in a loop), and the
delivery turn a parent thread held left every event the child queued
undelivered. Now an inherited ``MemoryRegistry`` and ``ThreadLocalRegistry``
are the child's own copies (``register()`` of the former is ``Closed``: its
manager is closed in the child), and an inherited ``MigratingRegistry`` is
closed whole, naming fork(). Real ``os.fork()`` and threads; a child that
does not answer within its deadline is killed and fails the test
(``in_child``, shared with ``test_fork_closes_inherited``).
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from foundation import FeatureFlags, Flag, MemoryRegistry, MigratingRegistry, ThreadLocalRegistry
from foundation.registry import Registry, RegistryEvent
from tests.test_fork_closes_inherited import assert_closed_by_fork, in_child, outcome, wait_for

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()"),
    # Python >= 3.12 warns on fork() in a threaded process: forking one is the point.
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

FORKS = 30  # forks per writer loop: without the fix, several children hung per run


@contextmanager
def writing(body: Callable[[int], object]) -> Iterator[None]:
    """A parent thread runs ``body(i)`` for i = 0, 1, ... until the block ends
    (it ran at least once by then: the forks below land among its writes)."""
    stop, started = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            for i in itertools.count():
                body(i)
                started.set()
                if stop.is_set():
                    return
        except BaseException as exc:  # reported by the test, below
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=loop, name="parent-writer")
    thread.start()
    try:
        assert started.wait(10)
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert not errors, errors


def memory_child(reg: MemoryRegistry) -> dict[str, Any]:
    """In the child: every call on the inherited copy returns (none hangs)."""
    heard: list[RegistryEvent] = []
    out = {"lookup": outcome(lambda: reg.lookup("f-1") is not None)}
    out["subscribe"] = outcome(lambda: callable(reg.subscribe(heard.append)))
    out["update_metadata"] = outcome(lambda: reg.update_metadata("f-1", {"by": "child"}))
    out["unregister"] = outcome(lambda: reg.unregister("f-0"))
    # The child's events reach its listener (the turn a parent thread held is free).
    wait_for(lambda: len(heard) >= 2, "the child's own events")
    out["heard"] = [(e.kind, e.entry.key) for e in heard]
    out["register"] = outcome(lambda: reg.register("child", cf.Future()))
    out["count"] = outcome(lambda: reg.count() >= 3)
    out["close"] = outcome(reg.close)
    out["closed lookup"] = outcome(lambda: reg.lookup("f-1"))
    return out


def assert_memory_child(out: dict[str, Any]) -> None:
    assert out["lookup"] == "returned True"
    assert out["subscribe"] == "returned True"
    assert out["update_metadata"] == "returned None"
    assert out["unregister"] == "returned True"
    assert out["heard"] == [["updated", "f-1"], ["unregistered", "f-0"]]
    assert_closed_by_fork({"register": out["register"]})  # the child's manager is closed
    assert out["count"] == "returned True"
    assert out["close"] == "returned None"
    assert out["closed lookup"] == "Closed: this MemoryRegistry is closed"


def new_memory_registry() -> tuple[MemoryRegistry, list[RegistryEvent]]:
    """A registry with five futures and a listener (so writers deliver events)."""
    reg = MemoryRegistry(indexed=("by",))
    for i in range(5):
        reg.register(f"f-{i}", cf.Future(), {"by": "parent"})
    heard: list[RegistryEvent] = []
    reg.subscribe(heard.append)
    return reg, heard


@contextmanager
def held_by_a_parent_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread of this process (as a writer holds it)
    for the duration of the block: a fork inside it happens with it held."""
    holding, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            holding.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        thread.join(10)


def test_a_memory_registry_a_parent_thread_writes_to_works_in_every_forked_child() -> None:
    reg, _ = new_memory_registry()

    def write(i: int) -> None:
        reg.register(("w", i), cf.Future())
        reg.update_metadata(("w", i), {"by": "writer"})
        reg.unregister(("w", i))

    with writing(write):
        for _ in range(FORKS):
            assert_memory_child(in_child(lambda: memory_child(reg)))
    # The parent's copy is untouched by the children.
    assert [reg.lookup(f"f-{i}") is not None for i in range(5)] == [True] * 5
    assert reg.lookup("f-1").metadata["by"] == "parent"  # type: ignore[union-attr]
    assert reg.count() == 5
    reg.close()


def test_a_write_lock_a_parent_thread_held_at_the_fork_is_free_in_the_child() -> None:
    """Deterministic: a parent thread holds the write lock (as a writer does) at the fork."""
    reg, _ = new_memory_registry()
    with held_by_a_parent_thread(reg._lock):
        assert_memory_child(in_child(lambda: memory_child(reg)))
    reg.unregister("f-0")  # the parent's lock works on
    assert reg.count() == 4
    reg.close()


def test_the_childs_events_are_heard_though_a_parent_thread_was_delivering_at_the_fork() -> None:
    """Deterministic: a parent thread is inside a listener (it holds the delivery
    turn) at the fork, with events queued behind it. The child hears its own
    events, and not those queued by the parent (the parent delivers them)."""
    reg, _ = new_memory_registry()
    inside, release = threading.Event(), threading.Event()

    def slow(event: RegistryEvent) -> None:
        if event.entry.key == "slow":
            inside.set()
            release.wait()

    unsubscribe = reg.subscribe(slow)
    thread = threading.Thread(target=lambda: reg.register("slow", cf.Future()))
    thread.start()
    try:
        assert inside.wait(10)
        reg.unregister("f-4")  # queued behind the parent's running listener
        assert reg._delivery.busy
        assert len(reg._delivery.pending) == 1
        assert_memory_child(in_child(lambda: memory_child(reg)))
    finally:
        release.set()
        thread.join(10)
        unsubscribe()
    reg.close()


def test_a_thread_local_registry_a_parent_thread_subscribes_to_works_in_every_forked_child() -> (
    None
):
    """Its one lock guards the listeners: a parent thread (un)subscribing in a loop."""
    reg = ThreadLocalRegistry()
    reg.register("mine", cf.Future())

    def churn(i: int) -> None:
        reg.subscribe(lambda event: None)()

    def child() -> dict[str, Any]:
        heard: list[RegistryEvent] = []
        out = {"subscribe": outcome(lambda: callable(reg.subscribe(heard.append)))}
        out["unregister"] = outcome(lambda: reg.unregister("mine"))  # the forking thread's
        out["heard"] = [e.kind for e in heard]
        out["close"] = outcome(reg.close)
        return out

    with writing(churn):
        for _ in range(FORKS):
            out = in_child(child)
            assert out == {
                "subscribe": "returned True",
                "unregister": "returned True",
                "heard": ["unregistered"],
                "close": "returned None",
            }
    assert reg.lookup("mine") is not None
    reg.close()


@pytest.fixture
def migrating() -> Iterator[tuple[MigratingRegistry, MemoryRegistry, FeatureFlags]]:
    flags = FeatureFlags([Flag("use_ets_agent_registry", default=True)])
    target = MemoryRegistry()
    reg = MigratingRegistry(ThreadLocalRegistry(), target, flags)
    reg.subscribe(lambda event: None)  # (its events are delivered: the queue is used)
    for i in range(3):
        reg.register(f"f-{i}", cf.Future())
    yield reg, target, flags
    reg.close()
    flags.close()


def migrating_child(reg: Registry, target: MemoryRegistry) -> dict[str, Any]:
    """In the child: the facade is closed (naming fork()); close() returns and
    closes the child's copy of the target."""
    closed = {
        "lookup": outcome(lambda: reg.lookup("f-1")),
        "count": outcome(reg.count),
        "register": outcome(lambda: reg.register("child", cf.Future())),
        "unregister": outcome(lambda: reg.unregister("f-0")),
        "update_metadata": outcome(lambda: reg.update_metadata("f-1", {"a": 1})),
        "subscribe": outcome(lambda: reg.subscribe(lambda event: None)),
    }
    return {
        "closed": closed,
        "close": outcome(reg.close),
        "target after close": outcome(lambda: target.lookup("f-1")),
    }


def assert_migrating_child(out: dict[str, Any]) -> None:
    assert_closed_by_fork(out["closed"])
    assert out["close"] == "returned None"
    assert out["target after close"] == "Closed: this MemoryRegistry is closed"


def test_a_migrating_registry_a_parent_thread_writes_to_is_closed_in_every_forked_child(
    migrating: tuple[MigratingRegistry, MemoryRegistry, FeatureFlags],
) -> None:
    reg, target, _ = migrating

    def write(i: int) -> None:
        reg.register(("w", i), cf.Future())
        reg.unregister(("w", i))

    with writing(write):
        for _ in range(FORKS):
            assert_migrating_child(in_child(lambda: migrating_child(reg, target)))
    assert reg.lookup("f-0") is not None  # the parent's facade works on
    assert target.count() == 3


def test_a_facade_lock_a_parent_thread_held_at_the_fork_is_free_in_the_child(
    migrating: tuple[MigratingRegistry, MemoryRegistry, FeatureFlags],
) -> None:
    """Deterministic: a parent thread holds the facade lock (as a writer does) at the fork."""
    reg, target, _ = migrating
    with held_by_a_parent_thread(reg._lock):
        assert_migrating_child(in_child(lambda: migrating_child(reg, target)))
    assert reg.unregister("f-2")  # the parent's lock works on
