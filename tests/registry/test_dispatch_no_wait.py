"""MemoryRegistry writers never wait for another thread's delivery of events.

A writer whose events are queued while another thread is delivering leaves
them to that thread and returns. Before, it waited for that delivery: a
listener waiting for another thread's write to the same registry deadlocked,
and a slow listener (a death listener on a monitor thread) stalled every
writer. Every wait here is bounded; a failure is a wait that ran out.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

from foundation import MemoryRegistry, RegistryEvent, spawn_thread
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.contract.agents import wait_until

WAIT = 10.0


@pytest.fixture
def registry() -> Iterator[MemoryRegistry]:
    with MemoryRegistry() as reg:
        yield reg


def test_a_death_listener_restarting_a_self_registering_agent_does_not_deadlock(
    registry: MemoryRegistry,
) -> None:
    # The 3 a.m. case: a death listener (on the monitor thread that saw the
    # death) restarts the agent through its supervisor and waits for the
    # restart; the new agent registers itself from its own thread during
    # start-up (OTP's "register in init"), before it reports ready.
    quit_now = [threading.Event() for _ in range(3)]
    runs = itertools.count()

    def worker(ctx: ChildContext) -> None:
        run = next(runs)  # (ctx.attempt counts automatic restarts only)
        registry.register("worker", threading.current_thread(), {"run": run})
        ctx.ready()
        while not quit_now[run].wait(0.05) and not ctx.stopping.is_set():
            pass  # one turn of work

    spec = ChildSpec("worker", worker, restart="transient")  # a normal exit is not restarted
    restarted = threading.Event()
    outcome: list[object] = []

    with Supervisor([spec]).run_in_thread() as handle:
        assert wait_until(lambda: registry.lookup("worker") is not None, WAIT)

        def on_death(event: RegistryEvent) -> None:
            if event.kind != "unregistered" or event.reason != "down":
                return
            # restart_child returns once the new run is ready, i.e. registered;
            # run on a helper so that this listener's wait is bounded.
            done = threading.Event()

            def restart() -> None:
                try:
                    # The supervisor may not have seen the exit yet: stop it
                    # first (at once for a thread that has ended), then restart.
                    handle.terminate_child("worker")
                    outcome.append(handle.restart_child("worker"))
                except Exception as exc:  # reported by the assertion below
                    outcome.append(exc)
                finally:
                    done.set()

            threading.Thread(target=restart, name="restarter", daemon=True).start()
            if done.wait(WAIT) and not isinstance(outcome[0], Exception):
                restarted.set()

        registry.subscribe(on_death)
        quit_now[0].set()  # the agent ends; the monitor reports it; the listener restarts it
        assert restarted.wait(2 * WAIT), f"the restart waited for the listener: {outcome}"
        entry = registry.lookup("worker")
        assert entry is not None
        assert entry.metadata["run"] == 1
        quit_now[1].set()
        handle.stop()


def test_a_listener_may_wait_for_another_threads_write(
    registry: MemoryRegistry, stop: threading.Event
) -> None:
    written = threading.Event()
    waited: list[bool] = []

    def listener(event: RegistryEvent) -> None:
        if event.kind == "registered" and event.entry.key == "first":
            other = threading.Thread(
                target=lambda: (
                    registry.register("second", spawn_thread(stop.wait)),
                    written.set(),
                ),
                name="other-writer",
            )
            other.start()
            waited.append(written.wait(WAIT))
            other.join(WAIT)

    seen: list[object] = []
    registry.subscribe(listener)
    registry.subscribe(lambda e: seen.append(e.entry.key))
    registry.register("first", spawn_thread(stop.wait))
    assert waited == [True], "the other thread's write waited for this listener"
    # Its event is delivered too, in write order, once the listener returned
    # (by a courier: the first writer delivers only the events of its turn).
    assert wait_until(lambda: seen == ["first", "second"], WAIT), seen


def test_a_slow_death_listener_does_not_stall_writers(
    registry: MemoryRegistry, stop: threading.Event
) -> None:
    inside, release = threading.Event(), threading.Event()
    delivered: list[tuple[str, object]] = []

    def slow(event: RegistryEvent) -> None:
        if event.reason == "down":
            inside.set()
            release.wait(WAIT)  # a slow death listener, on the monitor thread
        delivered.append((event.kind, event.entry.key))

    registry.subscribe(slow)
    short = threading.Event()
    registry.register("victim", spawn_thread(short.wait))
    done = threading.Event()

    def writers() -> None:
        for i in range(50):
            registry.register(("w", i), spawn_thread(stop.wait))
            registry.update_metadata(("w", i), {"n": i})
            registry.unregister(("w", i))
        done.set()

    writing = threading.Thread(target=writers, name="writers")
    try:
        short.set()  # the victim ends: its monitor thread delivers the death, and blocks
        assert inside.wait(WAIT)
        writing.start()
        assert done.wait(WAIT), "the writers waited for the slow listener"
    finally:
        release.set()
        if writing.ident is not None:
            writing.join(WAIT)
    # Nothing was lost: every write's events were delivered, in write order,
    # after the slow one (by the thread that was delivering it).
    assert wait_until(lambda: ("unregistered", ("w", 49)) in delivered, WAIT)
    assert delivered[0] == ("registered", "victim")
    assert delivered[1] == ("unregistered", "victim")
    kinds = [(kind, key) for kind, key in delivered if isinstance(key, tuple)]
    assert kinds == [
        (kind, ("w", i)) for i in range(50) for kind in ("registered", "updated", "unregistered")
    ]
