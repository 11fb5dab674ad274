"""A restarted thread child registers its own thread again under the key its
crashed run held (OTP's "register in init"): the previous run's thread is dead
by the time its supervisor acts on its exit.

Before, the exit was reported from the thread while ``spawn_thread`` had not
yet recorded its end: the supervisor could restart the child, and the new run
call ``register()``, while the old thread still counted as alive, and the
register was refused (``AlreadyRegistered``: 3 restarts in 200). Every wait
here is bounded.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest

from foundation import MemoryRegistry, RegistryEvent
from foundation.errors import AlreadyRegistered
from foundation.liveness import Down, MonitorManager
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.supervision._support import Boom, run, until

WAIT = 10.0
KEY = "worker"


@pytest.fixture
def registry() -> Iterator[MemoryRegistry]:
    with MemoryRegistry() as reg:
        yield reg


class _Record:
    """What each run's register() did, and the registry's unregistered events."""

    def __init__(self, registry: MemoryRegistry) -> None:
        self.lock = threading.Lock()
        self.refused: list[tuple[int, AlreadyRegistered]] = []
        self.reasons: list[str | None] = []
        self.before_stop: list[str | None] = []
        registry.subscribe(self.on_event)

    def register(self, registry: MemoryRegistry, run: int) -> None:
        try:
            registry.register(KEY, threading.current_thread(), {"run": run})
        except AlreadyRegistered as exc:
            with self.lock:
                self.refused.append((run, exc))

    def on_event(self, event: RegistryEvent) -> None:
        if event.kind == "unregistered" and event.entry.key == KEY:
            with self.lock:
                self.reasons.append(event.reason)

    def told(self, previous_runs: int) -> bool:
        """Whether each previous run's registration was told unregistered,
        or some register() was refused (then ``check`` says which)."""
        with self.lock:
            return bool(self.refused) or len(self.reasons) >= previous_runs

    def keep(self) -> None:
        """Before the stop (which ends the last run's registration too)."""
        with self.lock:
            self.before_stop = list(self.reasons)

    def check_refused(self) -> None:
        """No run's register() was refused (each holder named if one was)."""
        with self.lock:
            refused = [(run, exc.entry.metadata, exc.entry.agent) for run, exc in self.refused]
        assert refused == [], f"(run, refused for holder, holder): {refused}"

    def check(self, previous_runs: int) -> None:
        self.check_refused()
        # Every previous run's registration ended as its thread did: "down"
        # (told by its monitor, or found dead by the next run's register).
        assert self.before_stop == ["down"] * previous_runs


def test_a_crashing_thread_child_registers_itself_again_on_every_restart(
    registry: MemoryRegistry,
) -> None:
    restarts = 500
    record = _Record(registry)
    runs = itertools.count()
    last_ready = threading.Event()

    def worker(ctx: ChildContext) -> None:
        n = next(runs)
        record.register(registry, n)
        ctx.ready()
        if n < restarts:
            raise Boom(f"run {n}")
        last_ready.set()
        ctx.stopping.wait()

    @run
    async def scenario() -> None:
        spec = ChildSpec(KEY, worker)
        async with Supervisor([spec], max_restarts=10 * restarts, max_seconds=60) as sup:
            await until(last_ready.is_set, 50.0)
            await until(lambda: record.told(restarts), WAIT)
            record.check_refused()
            await until(lambda: sup.which_children()[0].status == "running", WAIT)
            record.keep()

    scenario()
    record.check(restarts)


class _HeldUntil:
    """A thread child's return value whose finalizer, run on the child's
    thread as its function's frame goes (after the supervisor was told of the
    exit, before the thread's end), waits until the next run tried to register:
    the restart happens while the old thread is still there."""

    def __init__(self, tried: threading.Event, waited: list[bool]) -> None:
        self.tried = tried
        self.waited = waited

    def __del__(self) -> None:
        self.waited.append(self.tried.wait(WAIT))


def test_the_next_run_registers_while_the_previous_thread_is_still_unwinding(
    registry: MemoryRegistry,
) -> None:
    rounds = 5
    record = _Record(registry)
    runs = itertools.count()
    tried = [threading.Event() for _ in range(rounds)]
    waited: list[bool] = []
    last_ready = threading.Event()

    def worker(ctx: ChildContext) -> _HeldUntil | None:
        n = next(runs)
        record.register(registry, n)
        if n:
            tried[n - 1].set()  # the previous run's thread may end now
        ctx.ready()
        if n < rounds:
            return _HeldUntil(tried[n], waited)  # a permanent child: restarted
        last_ready.set()
        ctx.stopping.wait()
        return None

    @run
    async def scenario() -> None:
        async with Supervisor([ChildSpec(KEY, worker)], max_restarts=rounds) as sup:
            await until(last_ready.is_set, WAIT)
            await until(lambda: record.told(rounds), WAIT)
            record.check_refused()
            await until(lambda: len(waited) == rounds, WAIT)
            await until(lambda: sup.which_children()[0].status == "running", WAIT)
            record.keep()

    scenario()
    assert waited == [True] * rounds
    record.check(rounds)


def test_the_restart_does_not_wait_for_the_crashed_threads_death_listeners(
    registry: MemoryRegistry,
) -> None:
    # The old thread's first death listener (it runs on that thread, before
    # the registry's) waits until the next run tried to register: the
    # supervisor restarts the child without waiting for it, and the next run
    # finds the key's holder dead though the registry was not told yet.
    rounds = 5
    record = _Record(registry)
    runs = itertools.count()
    tried = [threading.Event() for _ in range(rounds)]
    waited: list[bool] = []
    last_ready = threading.Event()

    def worker(ctx: ChildContext, manager: MonitorManager) -> None:
        n = next(runs)
        if n < rounds:

            def on_down(down: Down, event: threading.Event = tried[n]) -> None:
                waited.append(event.wait(WAIT))

            manager.monitor(threading.current_thread(), on_down)
        record.register(registry, n)
        if n:
            tried[n - 1].set()
        ctx.ready()
        if n < rounds:
            raise Boom(f"run {n}")
        last_ready.set()
        ctx.stopping.wait()

    with MonitorManager(name="test-death-listener") as manager:

        @run
        async def scenario() -> None:
            spec = ChildSpec(KEY, worker, args=(manager,))
            async with Supervisor([spec], max_restarts=rounds) as sup:
                await until(last_ready.is_set, WAIT)
                await until(lambda: record.told(rounds), WAIT)
                record.check_refused()
                await until(lambda: len(waited) == rounds, WAIT)
                await until(lambda: sup.which_children()[0].status == "running", WAIT)
                record.keep()

        scenario()
    assert waited == [True] * rounds
    record.check(rounds)


def test_a_crashed_thread_childs_monitors_hear_the_crash(registry: MemoryRegistry) -> None:
    # Its function's exception is caught (and reported to the supervisor), so
    # its thread's monitors heard "normal"; now Down("exception"), with it, as
    # for any spawn_thread target that raised. A clean return stays "normal".
    downs: list[Down] = []
    registry.subscribe(
        lambda e: downs.append(e.down) if e.kind == "unregistered" and e.down else None
    )
    runs = itertools.count()
    second = threading.Event()

    def worker(ctx: ChildContext) -> None:
        n = next(runs)
        registry.register(KEY, threading.current_thread())
        ctx.ready()
        if n == 0:
            raise Boom("run 0")
        second.set()
        ctx.stopping.wait()

    @run
    async def scenario() -> None:
        async with Supervisor([ChildSpec(KEY, worker)], max_restarts=3):
            await until(second.is_set, WAIT)
            await until(lambda: len(downs) >= 1, WAIT)

    scenario()
    crash = downs[0]
    assert crash.reason == "exception", downs
    assert isinstance(crash.exception, Boom)
    assert str(crash.exception) == "run 0"
