"""MigratingRegistry: ``subscribe()`` listeners run holding no lock of the facade.

A listener may hand work to another thread and wait for it, where that
thread calls the facade (``register``, ``unregister``, ``update_metadata``,
``lookup``); and a slow listener must not stall other threads' writes of
other keys. Covered: death events seen by a backend's monitor (flag on with
a private or a shared legacy, flag off with a shared legacy, after
``finish()``), events a backend delivers in the thread of a legacy retry
pass (rule 7) or of a target mirror pump (rule 6). The backends are real
``MemoryRegistry`` / ``ThreadLocalRegistry`` stores (the shared legacy one
reports a ``status()`` the test switches, as ``RedisRegistry.status()`` does
in an outage, and gates one call on one key); agents are real threads.
Under concurrent writers and deaths, every event reaches the listeners once,
each key's in the order of its writes.
Every wait is bounded: a deadlock fails the test instead of hanging it
(threads left blocked are daemons). Listeners that raise, and a listener
calling the facade back while another write is in flight, run in a
subprocess (``test_listener_faults.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from foundation import (
    FeatureFlags,
    MemoryRegistry,
    MigratingRegistry,
    ThreadLocalRegistry,
    spawn_thread,
)
from foundation.registry import Registry, RegistryEvent
from tests.migrating.support import FLAG, FLAGS

DEADLINE = 10.0  # seconds: far beyond what the calls need; reached only by a deadlock
MODES = ["on-private", "on-shared", "off-shared", "finished"]
# Where both backends monitor an agent, so its death may be told by the one
# whose other events are not the ones the writes made (see the order test).
_DEATH_FROM_EITHER = ("on-shared", "off-shared")


class Switchable(MemoryRegistry):
    """A real ``MemoryRegistry`` whose ``status()`` says ``state``, and whose
    ``register`` of ``gate_key`` reports ``entered`` and waits for ``release``."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "connected"
        self.gate_key: Hashable = None
        self.entered = threading.Event()
        self.release = threading.Event()

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(state=self.state)

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        if self.gate_key is not None and key == self.gate_key:
            self.entered.set()
            assert self.release.wait(DEADLINE), "the gate was never released"
        super().register(key, agent, metadata, replace=replace)


class Live:
    """Real agents (``spawn_thread`` threads) that end when told; ending one
    never waits for it (its death is delivered on its own thread)."""

    def __init__(self) -> None:
        self._stops: list[threading.Event] = []
        self._by_agent: dict[int, threading.Event] = {}

    def new(self) -> threading.Thread:
        stop = threading.Event()
        agent = spawn_thread(stop.wait, name="listener-locks-agent")
        self._stops.append(stop)
        self._by_agent[id(agent)] = stop
        return agent

    def end(self, agent: threading.Thread) -> None:
        self._by_agent[id(agent)].set()

    def close(self) -> None:
        for stop in self._stops:
            stop.set()


class Thread:
    """A daemon thread whose exception is kept (a deadlocked one never ends)."""

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def finished(self, timeout: float = DEADLINE) -> bool:
        """Joined within ``timeout`` (its error, if any, is raised)."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            return False
        if self.error is not None:
            raise self.error
        return True


@pytest.fixture
def live() -> Iterator[Live]:
    pool = Live()
    yield pool
    pool.close()


def _make(mode: str) -> tuple[MigratingRegistry, FeatureFlags, Registry, Registry]:
    legacy: Registry = ThreadLocalRegistry() if mode == "on-private" else Switchable()
    target = Switchable()
    flags = FeatureFlags(FLAGS)
    flags.set(FLAG, mode != "off-shared")
    reg = MigratingRegistry(legacy, target, flags)
    if mode == "finished":
        reg.finish()
    return reg, flags, legacy, target


def _died(key: Hashable) -> Callable[[RegistryEvent], bool]:
    return lambda e: e.kind == "unregistered" and e.reason == "down" and e.entry.key == key


def _other_writes(reg: MigratingRegistry, live: Live, tag: str) -> Callable[[], None]:
    """Writes and reads of keys of their own (run by another thread)."""

    def run() -> None:
        agent = live.new()
        for i in range(5):
            key = (tag, i)
            reg.register(key, agent, {"i": i})
            found = reg.lookup(key)
            assert found is not None
            assert found.agent is agent, found
            reg.update_metadata(key, {"i": -i})
            assert reg.unregister(key) is True

    return run


@pytest.mark.parametrize("mode", MODES)
def test_a_death_listener_may_wait_for_a_thread_that_calls_the_facade(
    mode: str, live: Live
) -> None:
    reg, flags, _, _ = _make(mode)
    waited: list[bool] = []
    seen: list[tuple[str, Hashable, str | None]] = []
    helper_agent = live.new()

    def listener(event: RegistryEvent) -> None:
        seen.append((event.kind, event.entry.key, event.reason))
        if _died("victim")(event):
            # Hands the follow-up to another thread and waits for it (bounded).
            helper = Thread(_other_writes(reg, live, "helper"), "helper")
            done = helper.finished()
            if done:
                reg.register("replacement", helper_agent)
            waited.append(done)

    try:
        victim = live.new()
        reg.register("victim", victim)
        reg.subscribe(listener)
        live.end(victim)
        assert _wait_for(lambda: waited, 3 * DEADLINE), "the death was never delivered"
        assert waited == [True], "the helper thread's facade calls waited for the listener"
        found = reg.lookup("replacement")
        assert found is not None
        assert found.agent is helper_agent
        assert _wait_for(lambda: ("registered", "replacement", None) in seen), seen
        assert seen.count(("unregistered", "victim", "down")) == 1, seen
    finally:
        reg.close()
        flags.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_death_listener_does_not_stall_other_writers(mode: str, live: Live) -> None:
    reg, flags, _, _ = _make(mode)
    entered, release = threading.Event(), threading.Event()
    seen: list[tuple[str, Hashable, str | None]] = []

    def listener(event: RegistryEvent) -> None:
        seen.append((event.kind, event.entry.key, event.reason))
        if _died("victim")(event):
            entered.set()
            release.wait(3 * DEADLINE)  # slow: until the test lets it go (bounded)

    try:
        victim = live.new()
        reg.register("victim", victim)
        reg.subscribe(listener)
        live.end(victim)
        assert entered.wait(DEADLINE), "the death was never delivered"
        writer = Thread(_other_writes(reg, live, "writer"), "writer")
        done = writer.finished()
        assert done, "another thread's writes waited for a slow listener"
        assert not release.is_set()
        release.set()
        # Its events are delivered once the slow listener returns, once each, in order.
        assert _wait_for(lambda: len(seen) >= 1 + 3 * 5), seen
        for i in range(5):
            key = ("writer", i)
            assert [s for s in seen if s[1] == key] == [
                ("registered", key, None),
                ("updated", key, None),
                ("unregistered", key, "unregistered"),
            ], seen
        assert len(seen) == 1 + 3 * 5, seen
    finally:
        release.set()
        reg.close()
        flags.close()


def _wait_for(predicate: Callable[[], object], timeout: float = DEADLINE) -> bool:
    """Poll ``predicate`` with a deadline (a 2 ms poll interval)."""
    done = threading.Event()
    timer = threading.Timer(timeout, done.set)
    timer.start()
    try:
        while not predicate():
            if done.wait(0.002):  # a poll interval, not a synchronisation
                return bool(predicate())
        return True
    finally:
        timer.cancel()


def _pass_in_flight(
    live: Live,
) -> tuple[MigratingRegistry, FeatureFlags, Switchable, Switchable, threading.Thread]:
    """A shared legacy, flag off after a flip back, with the retry of a flag-on
    register of "L" (refused while the legacy side was down) asked for."""
    legacy, target = Switchable(), Switchable()
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    reg = MigratingRegistry(legacy, target, flags)
    legacy.state = "disconnected"
    agent = live.new()
    reg.register("L", agent, {"v": 1})
    assert [d.key for d in reg.divergences()] == ["L"]
    flags.disable(FLAG)
    legacy.state = "connected"
    return reg, flags, legacy, target, agent


@pytest.mark.parametrize("slow", [False, True], ids=["waits-for-a-thread", "slow"])
def test_an_event_delivered_in_a_legacy_pass_reaches_listeners_after_the_pass(
    slow: bool, live: Live
) -> None:
    # Another component writes the shared legacy store directly; the store
    # delivers that write's event in the thread of the pass in flight (its
    # own dispatch loop), where the facade forwards it (the legacy side
    # answers). The listener must run once the pass lock is released.
    reg, flags, legacy, _, _ = _pass_in_flight(live)
    other = live.new()
    waited: list[bool] = []
    entered, release = threading.Event(), threading.Event()

    def direct(event: RegistryEvent) -> None:  # a direct listener of the legacy store
        if event.kind == "registered" and event.entry.key == "L":  # the pass's register
            legacy.register("side", other)

    def listener(event: RegistryEvent) -> None:
        if event.entry.key != "side":
            return
        if slow:
            entered.set()
            release.wait(3 * DEADLINE)
            return
        helper = Thread(_other_writes(reg, live, "helper"), "helper")
        waited.append(helper.finished())

    unsubscribe = legacy.subscribe(direct)
    try:
        reg.subscribe(listener)
        reader = Thread(lambda: reg.lookup("L"), "legacy-reader")  # runs the pass
        if slow:
            assert entered.wait(DEADLINE), "the event never reached the listener"
            writer = Thread(_other_writes(reg, live, "writer"), "writer")
            assert writer.finished(), "a flag-off write waited for a slow listener"
            release.set()
        assert reader.finished(3 * DEADLINE)
        if not slow:
            assert _wait_for(lambda: waited, 3 * DEADLINE), "the listener never ran"
            assert waited == [True], "the helper's facade calls waited for the listener"
        found = reg.lookup("L")
        assert found is not None
        assert reg.readiness() == [], reg.readiness()
    finally:
        release.set()
        unsubscribe()
        reg.close()
        flags.close()


@pytest.mark.parametrize("finish", [False, True], ids=["flag-on", "during-finish"])
def test_an_event_delivered_in_a_target_pump_reaches_listeners_after_the_pump(
    finish: bool, live: Live
) -> None:
    # A flag-off write's target mirror is in flight (gated) when the flag
    # turns on (and finish() is called, waiting for that mirror); another
    # component writes the target directly when the mirror lands, and the
    # target delivers that event in the pump's thread. The listener hands
    # work to a thread doing flag-on writes and waits for it.
    legacy, target = ThreadLocalRegistry(), Switchable()
    flags = FeatureFlags(FLAGS)
    reg = MigratingRegistry(legacy, target, flags)
    other = live.new()
    waited: list[bool] = []

    def direct(event: RegistryEvent) -> None:  # a direct listener of the target
        if event.kind == "registered" and event.entry.key == "M":  # the mirror
            target.register("side", other)

    def listener(event: RegistryEvent) -> None:
        if event.entry.key == "side" and event.kind == "registered":
            helper = Thread(_other_writes(reg, live, "helper"), "helper")
            waited.append(helper.finished())

    unsubscribe = target.subscribe(direct)
    try:
        reg.subscribe(listener)
        target.gate_key = "M"
        writer = Thread(lambda: reg.register("M", live.new()), "flag-off-writer")
        assert target.entered.wait(DEADLINE), "the mirror never reached the target"
        flags.enable(FLAG)  # the target answers from now on
        finisher = Thread(reg.finish, "finish") if finish else None
        target.release.set()
        assert writer.finished(3 * DEADLINE)
        assert _wait_for(lambda: waited, 3 * DEADLINE), "the listener never ran"
        assert waited == [True], "the helper's facade calls waited for the listener"
        if finisher is not None:
            assert finisher.finished(3 * DEADLINE)
            assert reg.finished
        assert reg.lookup("M") is not None
    finally:
        target.release.set()
        unsubscribe()
        reg.close()
        flags.close()


@pytest.mark.parametrize("mode", MODES)
def test_events_are_delivered_once_each_in_per_key_order_under_concurrency(
    mode: str, live: Live
) -> None:
    # Writers in four threads and deaths seen by monitors race; a listener
    # that calls the facade back (lookup) and a recorder see each event once,
    # and each key's events in the order its writes happened.
    reg, flags, _, _ = _make(mode)
    seen: list[tuple[str, Hashable, str | None]] = []

    def listener(event: RegistryEvent) -> None:
        reg.lookup(event.entry.key)  # calls the facade back, from whichever thread
        seen.append((event.kind, event.entry.key, event.reason))

    def writes(tag: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(20):
                key = (tag, i)
                agent = live.new()
                reg.register(key, agent, {"i": i})
                reg.update_metadata(key, {"i": -i})
                if i % 2:
                    assert reg.unregister(key) is True
                else:
                    live.end(agent)  # a death its monitor sees (delivered by a courier)

        return run

    try:
        reg.subscribe(listener)
        writers = [Thread(writes(t), f"writer-{t}") for t in range(4)]
        for w in writers:
            assert w.finished(3 * DEADLINE)
        total = 4 * 20 * 3
        assert _wait_for(lambda: len(seen) >= total, 3 * DEADLINE), len(seen)
        for t in range(4):
            for i in range(20):
                key = (t, i)
                last = ("unregistered", key, "unregistered" if i % 2 else "down")
                got = [s for s in seen if s[1] == key]
                want = [("registered", key, None), ("updated", key, None), last]
                if i % 2 == 0 and mode in _DEATH_FROM_EITHER and got != want:
                    # The known limit (docs/contract.md, MigratingRegistry): a shared legacy
                    # monitors the agent too, and its death report, told first,
                    # can overtake the other backend's "updated" still queued
                    # there (measured 6 of 36 runs under load, before and after
                    # this session's changes). Each event still comes once.
                    want = [("registered", key, None), last, ("updated", key, None)]
                assert got == want, (key, seen)
        assert len(seen) == total
    finally:
        reg.close()
        flags.close()
