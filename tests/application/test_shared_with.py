"""``with app:`` shared by threads and nested blocks: the last one out stops the tree.

Real threads and a real tree; every hand-over is an event or a barrier.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from foundation import Application
from foundation.application import AppConfig
from foundation.errors import SupervisorError
from foundation.supervision import ChildContext, ChildSpec
from tests.application._threads import DEADLINE, ThreadCall
from tests.supervision._support import wait_until


def _running(app: Application) -> bool:
    return app.supervisor.state == "running" and app.flags is not None


def _stopped(app: Application) -> bool:
    return app.supervisor.state == "stopped" and app.flags is None


def test_the_last_thread_to_leave_stops_the_application() -> None:
    # Was: the first thread out stopped the tree under the others.
    app = Application(AppConfig(), services=("flags",))
    inside = threading.Barrier(3)
    first_left = threading.Event()
    let_go = threading.Event()
    seen: dict[str, bool] = {}

    def leaves_first() -> None:
        with app:
            inside.wait(DEADLINE)
        first_left.set()

    def leaves_last() -> None:
        with app:
            inside.wait(DEADLINE)
            assert first_left.wait(DEADLINE)
            seen["running after the first left"] = _running(app)
            assert let_go.wait(DEADLINE)

    first, last = ThreadCall(leaves_first), ThreadCall(leaves_last)
    inside.wait(DEADLINE)  # both are inside
    first.result()
    assert _running(app)
    let_go.set()
    last.result()
    assert seen == {"running after the first left": True}
    assert _stopped(app)
    assert app.stopped_order == ["flags"]


def test_nested_blocks_on_one_thread_stop_at_the_outer_exit() -> None:
    app = Application(AppConfig(), services=("flags",))
    with app:
        with app as inner:
            assert inner is app
            flags = app.flags
        assert _running(app)  # was: the inner exit stopped it
        assert app.flags is flags  # the same run: nothing restarted
    assert _stopped(app)

    # ``with Application.start()``: the start is not an entry, its block is one.
    with Application.start(AppConfig(), services=("flags",)) as started:
        with started:
            pass
        assert _running(started)
    assert _stopped(started)


def test_stop_stops_at_once_and_the_blocks_it_ended_leave_a_new_run_alone() -> None:
    app = Application(AppConfig(), services=("flags",))
    inside = threading.Barrier(3)
    leave = threading.Event()

    def holder() -> None:
        with app:
            inside.wait(DEADLINE)
            assert leave.wait(DEADLINE)

    holders = [ThreadCall(holder), ThreadCall(holder)]
    inside.wait(DEADLINE)
    app.stop()  # explicit: at once, both blocks still inside
    assert _stopped(app)
    with app:  # a new run, entered on this thread
        assert _running(app)
        leave.set()
        for h in holders:
            h.result()  # they leave the ended run: was, the first stopped this one
        assert _running(app)
    assert _stopped(app)
    assert app.stopped_order == ["flags"]


@pytest.mark.parametrize("how", ["last_exit", "stop"])
def test_an_entry_during_a_stop_waits_for_it_then_starts_a_new_run(how: str) -> None:
    # Was: the entry found no tree and started the supervisor while it was
    # still stopping: SupervisorError "supervisor 'foundation' is stopping".
    stopping = threading.Event()
    finish_stop = threading.Event()
    runs: list[int] = []

    def worker(ctx: ChildContext) -> None:
        runs.append(ctx.attempt)
        ctx.ready()
        ctx.stopping.wait()
        if len(runs) == 1:  # the first run's stop lasts until released
            stopping.set()
            assert finish_stop.wait(DEADLINE)

    app = Application(AppConfig(), services=("flags",), workers=[ChildSpec("w", worker)])
    about_to_enter = threading.Event()
    seen: dict[str, object] = {}

    def enter_while_stopping() -> None:
        assert stopping.wait(DEADLINE)
        about_to_enter.set()
        with app:
            seen["running"] = _running(app)
            seen["runs"] = len(runs)

    app.__enter__()
    stopper = ThreadCall(
        lambda: app.__exit__(None, None, None) if how == "last_exit" else app.stop()
    )
    enterer = ThreadCall(enter_while_stopping)
    assert about_to_enter.wait(DEADLINE)
    # The stop lasts until the entry has either failed (as it did) or waits
    # in Application.__enter__ for it (as it should).
    wait_until(lambda: enterer.done() or enterer.blocked_in(app, "__enter__"), DEADLINE)
    finish_stop.set()
    stopper.result()
    enterer.result()
    assert seen == {"running": True, "runs": 2}
    assert _stopped(app)


def test_a_worker_holding_its_application_keeps_it_running_until_it_leaves() -> None:
    box: dict[str, Application] = {}
    entered = threading.Event()
    leave = threading.Event()
    outcome: list[str] = []

    def holder(ctx: ChildContext) -> None:
        ctx.ready()
        if ctx.attempt == 0:
            with box["app"]:  # the tree runs: this entry counts, it starts nothing
                entered.set()
                assert leave.wait(DEADLINE)
            outcome.append("left")  # the last one out: stopped in the background
        ctx.stopping.wait()

    app = Application(AppConfig(), services=("flags",), workers=[ChildSpec("h", holder)])
    box["app"] = app
    with app:
        assert entered.wait(DEADLINE)
    assert _running(app)  # the worker is still inside
    leave.set()
    app.wait(timeout=DEADLINE)
    assert _stopped(app)
    assert outcome == ["left"]
    assert app.stopped_order == ["flags"]


def test_a_worker_entering_and_leaving_while_the_tree_starts_does_not_stop_it() -> None:
    # Was: the worker waited for the start lock held by the start that waited
    # for the worker: the start failed once the worker's ready_timeout passed.
    box: dict[str, Application] = {}

    def visitor(ctx: ChildContext) -> None:
        with box["app"]:  # before ready: the start is still under way
            pass
        ctx.ready()
        ctx.stopping.wait()

    app = Application(
        AppConfig(),
        services=("flags",),
        workers=[ChildSpec("v", visitor, ready_timeout=DEADLINE / 4)],
    )
    box["app"] = app
    with app:
        assert _running(app)  # the starter's entry was counted before the worker's
    assert _stopped(app)


def test_a_worker_entering_while_the_tree_stops_is_refused() -> None:
    box: dict[str, Application] = {}
    errors: list[BaseException] = []

    def late(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        try:
            with box["app"]:
                pass
        except SupervisorError as exc:
            errors.append(exc)

    app = Application(AppConfig(), services=("flags",), workers=[ChildSpec("l", late)])
    box["app"] = app
    with app:
        pass
    assert _stopped(app)
    assert len(errors) == 1, errors
    assert "while it stops" in str(errors[0])
    assert app.stopped_order == ["flags"]


def test_stop_from_a_task_child_stops_the_tree_in_the_background() -> None:
    # Was: SupervisorError ("called from its own event loop") after taking the
    # tree from the application: it ran on, unreachable by stop(), and wait()
    # returned at once.
    box: dict[str, Any] = {}
    outcome: list[object] = []

    async def quitter(ctx: ChildContext) -> None:
        ctx.ready()
        while "app" not in box:  # the start has returned
            await asyncio.sleep(0.005)  # sleep-ok: polling, the loop must stay free
        try:
            box["app"].stop()  # returns at once
            outcome.append("returned")
        except BaseException as exc:  # asserted below
            outcome.append(exc)
        await asyncio.Event().wait()  # until cancelled by the stop

    app = Application(
        AppConfig(), services=("flags",), workers=[ChildSpec("q", quitter, kind="task")]
    )
    with app:
        box["app"] = app
        app.wait(timeout=DEADLINE)
        assert outcome == ["returned"]
        assert _stopped(app)
        assert app.stopped_order == ["flags"]


@pytest.mark.parametrize("kind", ["thread", "task"])
def test_wait_from_the_tree_itself_is_refused(kind: str) -> None:
    # Was: from a worker while the tree stopped, it waited for that worker's
    # own end; from a task child, it blocked the loop (wait(timeout) timed out).
    box: dict[str, Any] = {}
    refused: list[BaseException] = []

    def try_wait() -> None:
        try:
            box["app"].wait(timeout=5.0)  # bounds the old behaviour's hang
        except (SupervisorError, TimeoutError) as exc:
            refused.append(exc)

    def in_thread(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()
        try_wait()  # the tree is stopping

    async def in_task(ctx: ChildContext) -> None:
        ctx.ready()
        while "app" not in box:  # the start has returned
            await asyncio.sleep(0.005)  # sleep-ok: polling, the loop must stay free
        try_wait()  # the tree is running
        await asyncio.Event().wait()  # until cancelled by the stop

    child = ChildSpec("c", in_thread if kind == "thread" else in_task, kind=kind)
    app = Application(AppConfig(), services=("flags",), workers=[child])
    with app:
        box["app"] = app
        if kind == "task":
            wait_until(lambda: bool(refused), DEADLINE)
    assert [type(e) for e in refused] == [SupervisorError], refused
    assert "own tree" in str(refused[0])


def test_threads_entering_and_leaving_in_turns_always_find_it_running() -> None:
    # Every block sees a running tree, whichever thread started or stops it;
    # no entry fails against a stop under way (was: "is stopping", or a block
    # finding its services gone).
    app = Application(AppConfig(), services=("flags",))
    rounds, threads = 10, 4
    together = threading.Barrier(threads)
    seen: list[bool] = []
    lock = threading.Lock()

    def visitor() -> None:
        for _ in range(rounds):
            together.wait(DEADLINE)  # entries and exits of a round overlap
            with app:
                running = _running(app)
            with lock:
                seen.append(running)

    visitors = [ThreadCall(visitor) for _ in range(threads)]
    for v in visitors:
        v.result()
    assert seen == [True] * (rounds * threads)
    assert _stopped(app)


@pytest.mark.parametrize("helper_does", ["stop", "leave"])
def test_a_thread_the_stop_waits_for_may_stop_or_leave_without_waiting_for_it(
    helper_does: str,
) -> None:
    # A worker joins a helper thread (not a child of the tree) when it is
    # stopped; that helper, seeing the shutdown, calls app.stop() or leaves
    # its own `with app:`. The stop under way in the main thread waits for the
    # worker, the worker for the helper: the helper must not wait for that stop
    # (before, it waited on the start lock until the worker's shutdown_timeout
    # abandoned it, and the main thread's stop raised ShutdownError).
    app_box: list[Application] = []
    entered, helper_done = threading.Event(), threading.Event()

    def worker(ctx: ChildContext) -> None:
        app = app_box[0]

        def helper() -> None:
            if helper_does == "leave":
                with app:
                    entered.set()
                    ctx.stopping.wait()
            else:
                ctx.stopping.wait()
                app.stop()
            helper_done.set()

        thread = threading.Thread(target=helper, name="worker-helper", daemon=True)
        thread.start()
        ctx.ready()
        ctx.stopping.wait()
        thread.join()

    spec = ChildSpec("w", worker, kind="thread", shutdown_timeout=DEADLINE / 2)
    app = Application(AppConfig(), services=("flags",), workers=[spec])
    app_box.append(app)
    with app:
        wait_until(lambda: _running(app), DEADLINE)
        if helper_does == "leave":
            assert entered.wait(DEADLINE)
            app.stop()  # the helper's block is still inside: stop() stops at once
    app.stop()  # idempotent
    assert helper_done.is_set()
    assert _stopped(app)
