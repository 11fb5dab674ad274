"""MigratingRegistry: an event a backend delivers from a thread of its own
reaches the facade's listeners from another thread (a courier).

A backend may call its listeners holding a lock of its own that its writes
take too (``Locking``: a real ``MemoryRegistry`` that does so, as a
third-party store might). A death its monitor sees is delivered there, on
the dying agent's thread. A facade listener that waits for another thread's
facade write, which needs that lock, must not deadlock: the facade hands the
event to a courier thread and the backend's thread returns at once. Every
wait is bounded: a deadlock fails the test instead of hanging it (a thread
left blocked is a daemon).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import pytest

from foundation import FeatureFlags, MemoryRegistry, MigratingRegistry, spawn_thread
from foundation.registry import Registry, RegistryEvent
from tests.migrating.support import FLAG, FLAGS, wait_until

DEADLINE = 10.0  # seconds: far beyond what the calls need; reached only by a deadlock


class Locking(MemoryRegistry):
    """A ``MemoryRegistry`` that calls its listeners holding ``big``, a lock its
    ``register`` takes too (re-entrant: a write's own events are delivered
    under it, in the writing thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.big = threading.RLock()

    def subscribe(self, listener: Callable[[RegistryEvent], None]) -> Callable[[], None]:
        def under_lock(event: RegistryEvent) -> None:
            with self.big:
                listener(event)

        return super().subscribe(under_lock)

    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        with self.big:
            super().register(key, agent, metadata, replace=replace)


class Agent:
    """A real agent (a ``spawn_thread`` thread) that runs until ``end()``."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.thread = spawn_thread(self._stop.wait, name="backend-thread-events-agent")

    def end(self) -> None:
        self._stop.set()  # never waits for it: its death is delivered on its own thread


def _calls_in_another_thread(fn: Callable[[], object]) -> bool:
    """Run ``fn`` in another thread and wait for it (bounded); True if it
    returned in time (its exception, if any, is raised here)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="backend-thread-events-helper", daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        return False
    if errors:
        raise errors[0]
    return True


@pytest.mark.parametrize("side", ["target", "legacy"], ids=["flag-on-target", "flag-off-legacy"])
def test_a_death_listener_may_wait_for_a_write_that_needs_the_delivering_backends_lock(
    side: str,
) -> None:
    locking = Locking()
    other_side = MemoryRegistry()
    legacy: Registry = other_side if side == "target" else locking
    target: Registry = locking if side == "target" else other_side
    flags = FeatureFlags(FLAGS)
    flags.set(FLAG, side == "target")  # the locking side answers
    reg = MigratingRegistry(legacy, target, flags)
    victim, other = Agent(), Agent()
    waited: list[bool] = []

    def listener(event: RegistryEvent) -> None:
        if event.kind == "unregistered" and event.reason == "down":
            # A facade write by another thread, waited for: it takes the
            # locking backend's lock, held by the thread that delivered the death.
            waited.append(
                _calls_in_another_thread(lambda: reg.register("replacement", other.thread))
            )

    try:
        reg.register("victim", victim.thread)
        reg.subscribe(listener)
        victim.end()
        assert wait_until(lambda: bool(waited), 3 * DEADLINE), "the death was never delivered"
        assert waited == [True], "the listener ran holding the backend's lock"
        found = reg.lookup("replacement")
        assert found is not None
        assert found.agent is other.thread
    finally:
        victim.end()
        other.end()
        reg.close()
        flags.close()
