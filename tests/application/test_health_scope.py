"""``AppHealth`` counts the restarts of its application's own tree only.

Was: every ``supervisor.child_restarted`` event of the process counted, so an
unrelated supervisor that kept crashing (another library's, a test's) tripped
the application's ``max_restarts_per_minute`` and rolled its migration back.
Real supervisors and real crashes; every hand-over is an event or a deadline.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from foundation import Application, telemetry
from foundation.application import AppConfig, AppHealth
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.supervision._support import Boom, run, until, wait_until

DEADLINE = 60.0  # seconds: a scenario still running by then has hung
CRASHES = 3  # each crash of a crasher is one restart


def _crasher(crashes: int) -> Callable[[ChildContext], None]:
    """A thread child that crashes after each of its first ``crashes`` starts."""

    def crasher(ctx: ChildContext) -> None:
        ctx.ready()  # a crash after ready is a restart, not a failed start
        if ctx.attempt < crashes:
            raise Boom(f"crash {ctx.attempt}")
        ctx.stopping.wait()

    return crasher


def _crashing_spec(crashes: int = CRASHES) -> ChildSpec:
    return ChildSpec("crasher", _crasher(crashes), kind="thread")


class _Restarts:
    """The restarts seen in the supervisors of one name (a telemetry listener)."""

    def __init__(self, supervisor: str) -> None:
        self.supervisor = supervisor
        self.count = 0
        self._seen = threading.Semaphore(0)

    def __call__(self, _name: str, data: Mapping[str, Any]) -> None:
        if data["supervisor"] == self.supervisor:
            self.count += 1  # one emitting thread per supervisor
            self._seen.release()

    def wait_for(self, count: int) -> None:
        for _ in range(count):
            assert self._seen.acquire(timeout=DEADLINE), "a restart never came"


@contextmanager
def _restarts_of(supervisor: str) -> Iterator[_Restarts]:
    restarts = _Restarts(supervisor)
    detach = telemetry.attach("supervisor.child_restarted", restarts)
    try:
        yield restarts
    finally:
        detach()


def _config() -> AppConfig:
    # One restart a minute is the limit; the watcher's own checks are far off
    # (the test calls check_health itself, so nothing depends on timing).
    return AppConfig(max_restarts_per_minute=1, health_interval=3600)


def test_an_unrelated_crashing_supervisor_does_not_trip_the_application() -> None:
    with Application.start(_config()) as app:
        assert app.migration is not None
        assert app.health is not None
        app.migration.advance(by="test", reason="stage 1 before the crashes")
        # The same name as the application's own supervisor: told apart all the same.
        other = Supervisor([_crashing_spec()], name=app.name, max_restarts=10)
        # Attached after the application's AppHealth: listeners run in attach
        # order, so once this one has seen a restart, AppHealth has seen it.
        with _restarts_of(app.name) as seen, other.run_in_thread(name="unrelated-supervisor"):
            seen.wait_for(CRASHES)
            sample = app.health.sample()
            report = app.migration.check_health()
        assert sample.restarts_per_minute == 0.0  # was 3.0
        assert report.breaches == ()  # was "restarts per minute 3 > 1"
        assert report.rolled_back_from is None
        assert app.migration.status().stage == 1


def _nested(crashes: int) -> Supervisor:
    return Supervisor([_crashing_spec(crashes)], name="inner")


@pytest.mark.parametrize(
    "worker",
    [
        pytest.param(lambda: _crashing_spec(2), id="a worker"),
        pytest.param(
            lambda: ChildSpec("inner", lambda: _nested(2), kind="supervisor"),
            id="a worker of a supervisor nested in the workers",
        ),
    ],
)
def test_a_crashing_worker_of_the_application_still_trips_it(
    worker: Callable[[], ChildSpec],
) -> None:
    with Application.start(_config(), workers=[worker()]) as app:
        assert app.migration is not None
        assert app.health is not None
        health = app.health
        # Its two restarts: the workers start after the migration monitor, so
        # the application's AppHealth was listening before the first crash.
        wait_until(lambda: health.sample().restarts_per_minute == 2.0, DEADLINE)
        app.migration.advance(by="test", reason="stage 1 to roll back")
        report = app.migration.check_health()
        assert report.breaches == ("restarts per minute 2 > 1",)
        assert (report.rolled_back_from, report.rolled_back_to) == (1, 0)
        assert app.migration.status().stage == 0


@run
async def test_under_async_with_a_supervisor_on_the_same_loop_is_told_apart() -> None:
    # ``async with app:`` runs the tree on the caller's loop, which an unrelated
    # supervisor may share: the loop alone does not tell them apart.
    app = Application(_config(), workers=[ChildSpec("serve", _crasher(0), kind="thread")])
    async with app:
        health = app.health
        assert health is not None
        other = Supervisor([_crashing_spec()], name="neighbour", max_restarts=10)
        with _restarts_of("neighbour") as seen:
            async with other:
                await until(lambda: seen.count >= CRASHES, DEADLINE)
                sample = health.sample()
        assert sample.restarts_per_minute == 0.0  # was 3.0


def test_an_app_health_of_no_tree_counts_every_supervisor() -> None:
    # Documented: without supervisor=, the restarts of the whole process.
    health = AppHealth()
    try:
        other = Supervisor([_crashing_spec()], name="anywhere", max_restarts=10)
        with _restarts_of("anywhere") as seen, other.run_in_thread():
            seen.wait_for(CRASHES)
            assert health.sample().restarts_per_minute >= CRASHES
    finally:
        health.close()


def test_a_restart_reported_off_the_trees_loop_is_not_counted() -> None:
    # The event arrives in whatever thread emits it: one emitted off the tree's
    # loop (no loop, or a loop of its own) is another tree's, whatever it says.
    with Application.start(_config()) as app:
        assert app.health is not None
        event = {"supervisor": app.name, "child": "flags", "handle": None, "restarts": 1}

        async def emit_on_a_loop() -> None:
            telemetry.emit("supervisor.child_restarted", event)

        emitter = threading.Thread(
            target=telemetry.emit, args=("supervisor.child_restarted", event)
        )
        emitter.start()
        emitter.join(DEADLINE)
        asyncio.run(emit_on_a_loop())
        assert app.health.sample().restarts_per_minute == 0.0  # was 2.0
