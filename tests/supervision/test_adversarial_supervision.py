"""Adversarial review of supervision (issue 11, items 4, 7, 8): bad arguments are
refused at the call, not at the first start, stop or restart; a long crash loop
under backoff never breaks the supervisor itself; the synchronous handle never
deadlocks when called from its own event loop."""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from foundation import MemoryRegistry
from foundation.supervision import (
    Backoff,
    ChildContext,
    ChildSpec,
    DynamicSupervisor,
    Supervisor,
)


async def _serve(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()


def _blocking(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


# ----------------------------------------------------------------------- Backoff


def test_backoff_delay_stays_capped_past_the_float_range() -> None:
    # factor ** (n - 1) overflows a float at n = 310 (factor 10) or 1025 (factor 2).
    assert Backoff(initial=0.1, factor=10.0, max_delay=5.0).delay(400) == 5.0
    assert Backoff().delay(2000) == Backoff().max_delay


def test_backoff_refuses_non_numbers_with_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="Backoff initial must be a number"):
        Backoff(initial="0.1")  # type: ignore[arg-type]


def test_a_crash_loop_under_backoff_outlives_the_float_range() -> None:
    crashes = 0

    async def crash(ctx: ChildContext) -> None:
        nonlocal crashes
        crashes += 1
        ctx.ready()
        raise RuntimeError("boom")

    async def main() -> None:
        sup = Supervisor(
            [ChildSpec("c", crash)],
            backoff=Backoff(initial=0.0, factor=10.0, max_delay=0.0),
            max_restarts=100_000,
            max_seconds=3600,
            min_uptime=3600,  # never healthy: the consecutive count keeps growing
        )
        await sup.start()
        try:
            deadline = time.monotonic() + 60
            while crashes < 330 and sup.state == "running" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)  # sleep-ok: a poll with a deadline; yields the loop
            assert sup.failure is None, sup.failure
            assert sup.state == "running"
            assert crashes >= 330
        finally:
            await sup.stop()

    asyncio.run(main())


# --------------------------------------------------------------------- ChildSpec


@pytest.mark.parametrize("field", ["shutdown_timeout", "ready_timeout"])
def test_a_timeout_past_the_float_range_is_refused_at_the_spec(field: str) -> None:
    # Accepted before, it failed only when the first timer was built (OverflowError).
    with pytest.raises(ValueError, match="too large"):
        ChildSpec("a", _serve, **{field: 10**400})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["shutdown_timeout", "ready_timeout"])
def test_a_timeout_that_is_not_a_number_is_a_clear_type_error(field: str) -> None:
    with pytest.raises(TypeError, match=f"{field} must be a number, not str"):
        ChildSpec("a", _serve, **{field: "5"})  # type: ignore[arg-type]


def test_a_plain_function_is_refused_as_a_task_child() -> None:
    # It would run on the event loop itself: the whole supervisor hung at start().
    with pytest.raises(TypeError, match="async def"):
        ChildSpec("a", _blocking, kind="task")
    with pytest.raises(TypeError, match="async def"):
        ChildSpec("a", functools.partial(_blocking), kind="task")


def test_what_may_still_be_a_task_child() -> None:
    assert ChildSpec("a", _serve, kind="task").kind == "task"
    assert ChildSpec("b", functools.partial(_serve), kind="task").kind == "task"
    # A lambda may return the coroutine (it is not refused; it is called on the loop).
    factory = lambda ctx: _serve(ctx)  # noqa: E731, PLW0108
    assert ChildSpec("c", factory, kind="task").kind == "task"


def test_an_async_function_is_refused_as_a_thread_child() -> None:
    with pytest.raises(TypeError, match="kind='task'"):
        ChildSpec("a", _serve, kind="thread")


# -------------------------------------------------------------------- Supervisor


def test_supervisor_refuses_odd_periods_at_the_call() -> None:
    with pytest.raises(ValueError, match="max_seconds is too large"):
        Supervisor([], max_seconds=10**400)
    with pytest.raises(TypeError, match="max_seconds must be a number"):
        Supervisor([], max_seconds="5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="min_uptime must be a number"):
        Supervisor([], min_uptime="1")  # type: ignore[arg-type]


def test_supervisor_refuses_a_registry_that_is_not_one() -> None:
    # Accepted before; the first start failed with AttributeError('_async_call').
    with pytest.raises(TypeError, match="registry must be a Registry"):
        Supervisor([ChildSpec("a", _serve)], registry=object())  # type: ignore[arg-type]
    registry = MemoryRegistry()
    try:
        Supervisor([ChildSpec("a", _serve)], registry=registry)  # a real one is fine
    finally:
        registry.close()


@pytest.mark.parametrize("value", [1.5, "2", True])
def test_dynamic_supervisor_max_children_must_be_an_int(value: object) -> None:
    with pytest.raises(ValueError, match="max_children must be an int"):
        DynamicSupervisor(max_children=value)  # type: ignore[arg-type]


# ------------------------------------------------------------- SupervisorThread


def test_handle_wait_timeout_says_what_timed_out() -> None:
    sup = Supervisor([ChildSpec("w", _blocking)], name="adv-wait")
    with sup.run_in_thread() as handle, pytest.raises(TimeoutError, match="'adv-wait' still"):
        handle.wait(0.01)


_OWN_LOOP = """
import asyncio, sys, threading
from foundation.errors import SupervisorError
from foundation.supervision import ChildSpec, Supervisor

holder, answers, done = [], [], threading.Event()

async def probe(ctx):
    ctx.ready()
    for call in (lambda h: h.which_children(), lambda h: h.stop()):
        try:
            call(holder[0])
            answers.append("returned")
        except SupervisorError as exc:
            answers.append("SupervisorError: " + str(exc))
        except BaseException as exc:
            answers.append("other: " + type(exc).__name__)
    done.set()
    await asyncio.Event().wait()

handle = Supervisor(name="own-loop").run_in_thread()
holder.append(handle)
handle.start_child(ChildSpec("probe", probe))
if not done.wait(20):
    print("HUNG", flush=True)
    sys.exit(3)
handle.stop()
for answer in answers:
    print(answer)
"""


def test_the_handle_called_from_its_own_loop_refuses_instead_of_hanging() -> None:
    # Without the check, the task child blocks the loop waiting for the loop: for ever.
    # In a subprocess, so that a regression shows up as a failure, not a hung run.
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_OWN_LOOP)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert all(line.startswith("SupervisorError: ") for line in lines), lines
    assert "own event loop" in lines[0]


def test_the_handle_still_answers_from_other_threads() -> None:
    with Supervisor([ChildSpec("w", _blocking)]).run_in_thread() as handle:
        seen: list[int] = []
        t = threading.Thread(target=lambda: seen.append(handle.count_children().active))
        t.start()
        t.join(30)
        assert seen == [1]


# ------------------------------------------------------------------------ run()


def test_run_refuses_what_it_cannot_run_before_starting_a_loop() -> None:
    from foundation.supervision import run

    with pytest.raises(TypeError, match="needs a Supervisor or a factory"):
        run(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop_timeout is too large"):
        run(Supervisor(), stop_timeout=10**400)
    with pytest.raises(TypeError, match="stop_timeout must be a number"):
        run(Supervisor(), stop_timeout="1")  # type: ignore[arg-type]
