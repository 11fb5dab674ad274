"""MigratingRegistry: calls racing a legacy retry pass in flight in another thread.

A telemetry listener (``registry.divergence``) calls ``lookup`` or
``register`` on the facade while another thread's legacy retry pass is in
flight (its legacy call held open by a gate). The pass needs the facade lock
to book its outcome; a listener run under that lock, waiting for the pass,
would deadlock both threads. Every thread is joined with a deadline, so a
deadlock fails the test instead of hanging it. And a flag-on write that
replaces a key while a retry of its older registration is in flight (and the
copy that retry means to replace dies meanwhile) keeps the newest copy on
the legacy side: the retry never overwrites it. The backends are real
``MemoryRegistry`` stores; the legacy one reports a ``status()`` that the
test switches (as ``RedisRegistry.status()`` does in an outage), and gates
one call on one key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, telemetry
from tests.migrating.support import FLAG, FLAGS, Agents

DEADLINE = 20.0  # seconds: far beyond what the calls need; reached only by a deadlock


class Gated(MemoryRegistry):
    """A real ``MemoryRegistry`` whose ``register`` of ``gate_key`` (for
    ``gate_agent``, if set) waits for ``release`` (reporting ``entered``), and
    whose ``status()`` says ``state``."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "connected"
        self.gate_key: Hashable = None
        self.gate_agent: Any = None
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
        gated = self.gate_agent is None or agent is self.gate_agent
        if self.gate_key is not None and key == self.gate_key and gated:
            self.entered.set()
            assert self.release.wait(DEADLINE), "the gate was never released"
        super().register(key, agent, metadata, replace=replace)


class Thread:
    """A daemon thread whose exception is kept (a deadlocked one never ends)."""

    def __init__(self, fn: Callable[[], object], name: str) -> None:
        self.error: BaseException | None = None
        self.result: object = None

        def run() -> None:
            try:
                self.result = fn()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), f"{self.thread.name} deadlocked (still blocked)"
        if self.error is not None:
            raise self.error


def _wait(predicate: Callable[[], bool], what: str) -> None:
    done = threading.Event()
    deadline = threading.Timer(DEADLINE, done.set)
    deadline.start()
    try:
        while not predicate():
            assert not done.wait(0.002), f"timed out waiting for {what}"  # a poll interval
    finally:
        deadline.cancel()


@pytest.fixture
def divergence_listener() -> Iterator[list[Callable[[Mapping[str, Any]], None]]]:
    """Callbacks run by a ``registry.divergence`` telemetry listener."""
    calls: list[Callable[[Mapping[str, Any]], None]] = []

    def listener(_name: str, data: Mapping[str, Any]) -> None:
        for call in list(calls):
            call(data)

    detach = telemetry.attach("registry.divergence", listener)
    yield calls
    detach()


@pytest.mark.parametrize(
    ("flag_on", "via"),
    [(False, "telemetry"), (True, "telemetry"), (True, "subscribe")],
    ids=["telemetry-flag-off-lookup", "telemetry-flag-on-register", "subscribe-flag-on-register"],
)
def test_a_listener_calling_back_during_a_pass_in_another_thread_does_not_deadlock(
    flag_on: bool,
    via: str,
    agents: Agents,
    divergence_listener: list[Callable[[Mapping[str, Any]], None]],
) -> None:
    legacy, target = Gated(), Gated()
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    reg = MigratingRegistry(legacy, target, flags)
    deadlocked = False
    try:
        # A flag-on register whose legacy mirror is refused while the legacy
        # side says it is down: a divergence, kept for a retry pass.
        legacy.state = "disconnected"
        reg.register("L", agents.new(), {"v": 1})
        assert [d.key for d in reg.divergences()] == ["L"]

        entered = threading.Event()
        answers: list[object] = []
        mine = agents.new()

        def call_back(data: Mapping[str, Any]) -> None:
            if data["key"] not in ("F", "T"):  # the writer's key only
                return
            entered.set()
            if flag_on:
                reg.register(("z", len(answers)), mine)
                answers.append(reg.lookup(("z", len(answers))))
            else:
                answers.append(reg.lookup("T"))

        if via == "telemetry":
            divergence_listener.append(call_back)
        else:  # the facade's own events: the writer's "registered" of "F"
            reg.subscribe(lambda event: call_back({"key": event.entry.key}))
        if flag_on:
            # Writer: a flag-on register whose legacy mirror meets a copy the
            # legacy side holds for someone else (a divergence).
            legacy.register("F", agents.new())
            write: Callable[[], object] = lambda: reg.register("F", agents.new())  # noqa: E731
        else:
            # Writer: a flag-off register whose queued target mirror meets an
            # entry the target holds for someone else (a divergence, booked
            # under the facade lock), held at the gate until the pass runs.
            target.register("T", agents.new())
            flags.disable(FLAG)  # asks for the legacy retry: applied once it is back
            target.gate_key = "T"
            write = lambda: reg.register("T", agents.new())  # noqa: E731
        writer = None
        if not flag_on:
            writer = Thread(write, "writer")
            assert target.entered.wait(DEADLINE), "the target mirror never started"

        # The pass: the legacy side is back; another thread runs the retry
        # (readiness() with the flag on, a legacy read after the flip back),
        # held in its legacy call at the gate, outside the facade lock.
        legacy.gate_key = "L"
        legacy.state = "connected"
        pass_thread = Thread(reg.readiness if flag_on else (lambda: reg.lookup("L")), "retry-pass")
        assert legacy.entered.wait(DEADLINE), "the retry pass never reached the legacy side"

        if writer is None:
            writer = Thread(write, "writer")
        else:
            target.release.set()  # the target refuses: the writer books a divergence
        # The listener runs (maybe already blocked in its call back), or the
        # writer is done: then let the pass book its outcome.
        _wait(lambda: entered.is_set() or not writer.thread.is_alive(), "the writer")
        legacy.release.set()
        try:
            writer.join()
            pass_thread.join()
        except AssertionError:
            deadlocked = True
            raise
        _wait(lambda: len(answers) >= 1, "the listener's call back to return")
        assert reg.lookup("L") is not None
        if flag_on:
            assert answers[0] is not None
            assert reg.lookup(("z", 0)) is not None
        else:
            assert answers[0] is not None  # the legacy side's "T" (the writer's)
    finally:
        target.release.set()
        legacy.release.set()
        if not deadlocked:  # a deadlocked facade cannot be closed: left to the daemon threads
            reg.close()
        flags.close()


def test_a_retry_in_flight_never_overwrites_a_newer_flag_on_copy(agents: Agents) -> None:
    legacy, target = Gated(), Gated()
    flags = FeatureFlags(FLAGS)
    flags.enable(FLAG)
    reg = MigratingRegistry(legacy, target, flags)
    a0, a1, a2 = agents.new(), agents.new(), agents.new()
    try:
        reg.register("k", a0, {"v": 0})  # mirrored: the legacy side holds a0
        legacy.state = "disconnected"
        reg.register("k", a1, {"v": 1}, replace=True)  # the legacy side misses it: kept
        assert [d.key for d in reg.divergences()] == ["k"]
        legacy.state = "connected"
        # The retry of a1 (replacing our older copy a0) is held in flight.
        legacy.gate_key, legacy.gate_agent = "k", a1
        retry = Thread(reg.readiness, "retry-pass")
        assert legacy.entered.wait(DEADLINE), "the retry never reached the legacy side"
        agents.kill(a0)  # the older copy's agent dies: the legacy side drops a0
        _wait(lambda: legacy.lookup("k") is None, "the legacy side to drop the dead a0")
        # The flag-on write replacing it, from another thread: once it is done
        # (or its legacy mirror is, if it then waits for the retry), the retry's
        # register of a1 goes on.
        writer = Thread(lambda: reg.register("k", a2, {"v": 2}, replace=True), "writer")

        def written() -> bool:
            held = legacy.lookup("k")
            return not writer.thread.is_alive() or (held is not None and held.agent is a2)

        _wait(written, "the flag-on write")
        legacy.release.set()
        writer.join()
        retry.join()
        assert reg.readiness() == [], reg.readiness()
        entry = legacy.lookup("k")
        assert entry is not None
        assert entry.agent is a2, f"the retry overwrote a2: {entry}"
        assert entry.metadata == {"v": 2}
        held = target.lookup("k")
        assert held is not None
        assert held.agent is a2
        flags.disable(FLAG)  # flip back: the newest registration, not the retried one
        found = reg.lookup("k")
        assert found is not None
        assert found.agent is a2, found
    finally:
        legacy.release.set()
        reg.close()
        flags.close()
