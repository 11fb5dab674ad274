"""Stress: backend events delivered late, by another thread, while the flag flips.

A ``MemoryRegistry`` writer that finds another thread delivering leaves its
events to that thread and returns: a mirror call's events (and an
authoritative call's) may reach the facade after the call returned. The
facade recognises them by the tag its backend call gave them, so a
mirror event is never forwarded and an authoritative one always is, whatever
the flag says by then: each facade write yields exactly its events.

Here a noise thread keeps writing to the backends directly, and a slow
listener of theirs keeps deliveries long, so that most facade and mirror
events are delivered late by the noise thread; a flipper moves the flag on
and off meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from foundation import MemoryRegistry, Registry, RegistryEvent
from tests.migrating.support import FLAG, legacy_backend, make, wait_until

WRITERS = 2
WRITES = 150  # per writer: register, update, unregister of a fresh key
WAIT = 30.0


@pytest.mark.parametrize("legacy", [legacy_backend, MemoryRegistry], ids=["thread-local", "memory"])
def test_late_backend_events_are_forwarded_once_and_mirror_events_never(
    legacy: Callable[[], Registry],
) -> None:
    target = MemoryRegistry()
    legacy_side = legacy()
    reg, flags = make(False, legacy=legacy_side, target=target)
    seen: list[tuple[str, Any, Any]] = []
    reg.subscribe(lambda e: seen.append((e.kind, e.entry.key, e.entry.agent)))
    late = [0]
    flushed: set[int] = set()
    stop = threading.Event()

    def slow_listener(backend: MemoryRegistry) -> Callable[[RegistryEvent], None]:
        def slow(event: RegistryEvent) -> None:
            # A slow listener of the backend itself (subscribed after the
            # facade): whoever delivers holds on, so the writers meanwhile
            # leave their events to it.
            key = event.entry.key
            if key == "flush":
                flushed.add(id(backend))
            elif (
                isinstance(key, str)
                and key.startswith("w")
                and threading.current_thread().name != f"writer-{key[1]}"
            ):
                late[0] += 1  # (one deliverer at a time per backend; a lost count is harmless)
            time.sleep(0.0002)  # sleep-ok: a slow listener, so that events are delivered late

        return slow

    backends = [b for b in (target, legacy_side) if isinstance(b, MemoryRegistry)]
    unsubscribe = [b.subscribe(slow_listener(b)) for b in backends]
    noise_agent: concurrent.futures.Future[None] = concurrent.futures.Future()

    def noise() -> None:
        n = 0
        while not stop.is_set():
            for backend in backends:
                backend.register(f"noise-{n % 4}", noise_agent, replace=True)
            n += 1

    def flipper() -> None:
        while not stop.is_set():
            flags.set(FLAG, not flags.enabled(FLAG))
            time.sleep(0.001)  # sleep-ok: pacing the flips

    expected: Counter[tuple[str, Any, Any]] = Counter()
    expected_lock = threading.Lock()
    errors: list[BaseException] = []
    agents: list[concurrent.futures.Future[None]] = []

    def writer(w: int) -> None:
        try:
            for i in range(WRITES):
                key = f"w{w}-{i}"
                agent: concurrent.futures.Future[None] = concurrent.futures.Future()
                agents.append(agent)
                reg.register(key, agent, {"i": i})
                reg.update_metadata(key, {"i": -i})
                removed = reg.unregister(key)
                with expected_lock:
                    expected[("registered", key, agent)] += 1
                    expected[("updated", key, agent)] += 1
                    expected[("unregistered", key, agent)] += int(removed)
        except BaseException as exc:  # reported below
            errors.append(exc)

    helpers = [
        threading.Thread(target=noise, name="noise"),
        threading.Thread(target=flipper, name="flipper"),
    ]
    writers = [
        threading.Thread(target=writer, args=(w,), name=f"writer-{w}") for w in range(WRITERS)
    ]
    try:
        for t in helpers + writers:
            t.start()
        for t in writers:
            t.join(WAIT)
        stop.set()
        for t in helpers:
            t.join(WAIT)
        assert not errors, errors
        assert not any(t.is_alive() for t in helpers + writers)
        # A last write with the target authoritative: its event is queued after
        # every earlier one, so once it arrives every late event has arrived.
        flags.set(FLAG, True)
        sentinel: concurrent.futures.Future[None] = concurrent.futures.Future()
        reg.register("sentinel", sentinel)
        assert wait_until(lambda: ("registered", "sentinel", sentinel) in seen, WAIT)
        for backend in backends:  # and every backend's queue is through to the facade
            backend.register("flush", noise_agent)
        assert wait_until(lambda: len(flushed) == len(backends), WAIT)
        got = Counter(e for e in seen if isinstance(e[1], str) and e[1].startswith("w"))
        duplicated = {e: n for e, n in got.items() if n > expected[e]}
        lost = {e: n for e, n in expected.items() if got[e] < n}
        assert not duplicated, f"forwarded more than once (or a mirror's): {duplicated}"
        assert not lost, f"never forwarded: {lost}"
        assert late[0] > 0, "no event was delivered late: the test proved nothing"
    finally:
        stop.set()
        for undo in unsubscribe:
            undo()
        noise_agent.set_result(None)
        for agent in agents:
            agent.set_result(None)
        reg.close()
        flags.close()
        target.close()
        legacy_side.close()
