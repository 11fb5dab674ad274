"""Rule 6: flag-off mirrors to the target are queued and applied outside the facade lock.

A mirror call that waits on a slow target must not hold up other threads'
legacy writes, and queueing must not lose, reorder or resurrect anything: a
flip, a flag-on write or ``finish()`` applies the queued mirrors first. The
target here is a real ``MemoryRegistry`` whose ``register`` of one chosen key
waits at a gate, so "a mirror is in flight" is a known state, not a timing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import pytest

from foundation import MemoryRegistry, ThreadLocalRegistry
from foundation.registry import Registry
from tests._frames import thread_frame
from tests.migrating.support import FLAG, Agents, make, wait_until


class GatedTarget(MemoryRegistry):
    """A real MemoryRegistry whose ``register`` of ``gate_key`` waits at a gate."""

    def __init__(self, gate_key: Hashable) -> None:
        super().__init__()
        self.gate_key = gate_key
        self.entered = threading.Event()
        self.gate = threading.Event()

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        if key == self.gate_key:
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        super().register(key, agent, metadata, replace=replace)


class Call:
    """Run ``fn`` in a thread; ``result()`` waits for it (re-raising its error)."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._fn = fn
        self._out: list[tuple[bool, Any]] = []
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._out.append((True, self._fn()))
        except BaseException as exc:
            self._out.append((False, exc))

    def done(self) -> bool:
        return bool(self._out)

    def result(self) -> Any:
        self.thread.join(30)
        assert self._out, f"{self.thread.name} never finished"
        ok, value = self._out[0]
        if not ok:
            raise value
        return value

    def waiting_in(self, function: str) -> bool:
        """The thread is inside ``function`` right now (its current stack)."""
        frame = thread_frame(self.thread.ident)
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
        return False


@pytest.fixture(params=["thread_local", "memory"])
def legacy(request: pytest.FixtureRequest) -> Registry:
    return ThreadLocalRegistry() if request.param == "thread_local" else MemoryRegistry()


def test_writes_queue_behind_a_mirror_in_flight_and_land_in_order(
    legacy: Registry, agents: Agents
) -> None:
    target = GatedTarget("gate")
    reg, flags = make(False, legacy=legacy, target=target)
    try:
        g = Call(lambda: reg.register("gate", agents.new()), "holder")
        assert target.entered.wait(10)
        x1, x2, y = agents.new(), agents.new(), agents.new()
        # All of these return while the holder's mirror is in flight (they would
        # deadlock on the gate otherwise: nobody opens it before they return).
        reg.register("x", x1, {"v": 1})
        reg.update_metadata("x", {"v": 2})
        assert reg.unregister("x") is True
        reg.register("x", x2, {"v": 3})
        reg.update_metadata("x", {"v": 4})
        reg.register("y", y)
        assert reg.unregister("y") is True
        assert not g.done()
        assert target.lookup("x") is None
        target.gate.set()
        g.result()
        assert reg.divergences() == []
        assert target.lookup("x").agent is x2
        assert target.lookup("x").metadata == {"v": 4}
        assert target.lookup("y") is None
        flags.set(FLAG, True)
        assert {e.key for e in reg.list_all()} == {"gate", "x"}
        assert target.stats().monitors == target.stats().entries == 2
    finally:
        target.gate.set()
        reg.close()
        flags.close()


def test_a_read_after_a_flip_waits_for_mirrors_queued_before_it(
    legacy: Registry, agents: Agents
) -> None:
    target = GatedTarget("gate")
    reg, flags = make(False, legacy=legacy, target=target)
    try:
        g = Call(lambda: reg.register("gate", agents.new()), "holder")
        assert target.entered.wait(10)
        b = agents.new()
        reg.register("b", b, {"n": 1})  # legacy now; its mirror is queued
        flags.set(FLAG, True)  # the target answers from now on
        r = Call(lambda: reg.lookup("b"), "reader")
        # The reader must not answer from a target that lacks "b": it helps pump.
        assert wait_until(lambda: r.waiting_in("_pump") or r.done(), 10)
        assert not r.done(), f"answered before the queued mirror landed: {r.result()}"
        target.gate.set()
        assert r.result().agent is b
        g.result()
        assert reg.lookup("b").metadata == {"n": 1}
    finally:
        target.gate.set()
        reg.close()
        flags.close()


def test_a_flag_on_write_waits_for_mirrors_queued_before_it(agents: Agents) -> None:
    # A shared legacy: the flag-on unregister must act on the key the earlier
    # flag-off register put in both sides, whatever the order threads ran in.
    target = GatedTarget("gate")
    reg, flags = make(False, legacy=MemoryRegistry(), target=target)
    try:
        g = Call(lambda: reg.register("gate", agents.new()), "holder")
        assert target.entered.wait(10)
        reg.register("k", agents.new())
        flags.set(FLAG, True)
        u = Call(lambda: reg.unregister("k"), "unregisterer")
        assert wait_until(lambda: u.waiting_in("_pump") or u.done(), 10)
        assert not u.done(), f"the flag-on write ran before the queued mirror: {u.result()}"
        target.gate.set()
        assert u.result() is True  # the authoritative answer saw the earlier write
        g.result()
        assert target.lookup("k") is None
        assert reg.legacy.lookup("k") is None
        assert reg.divergences() == []
        reg.finish()
        assert {e.key for e in reg.list_all()} == {"gate"}
    finally:
        target.gate.set()
        reg.close()
        flags.close()


def test_finish_applies_queued_mirrors_first(agents: Agents) -> None:
    target = GatedTarget("gate")
    reg, flags = make(False, legacy=MemoryRegistry(), target=target)
    try:
        g = Call(lambda: reg.register("gate", agents.new()), "holder")
        assert target.entered.wait(10)
        k = agents.new()
        reg.register("k", k, {"n": 7})
        flags.set(FLAG, True)
        f = Call(reg.finish, "finisher")
        assert wait_until(lambda: f.waiting_in("_pump") or f.done(), 10)
        assert not f.done(), "finish() ran before the queued mirror"
        target.gate.set()
        f.result()
        g.result()
        assert reg.finished
        assert reg.lookup("k").agent is k
        assert reg.lookup("k").metadata == {"n": 7}
    finally:
        target.gate.set()
        reg.close()
        flags.close()
