"""Nothing leaks: no task, thread, process or file descriptor outlives a stop."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading

from foundation.supervision import ChildContext, ChildSpec, DynamicSupervisor, Supervisor
from tests.supervision import _targets
from tests.supervision._support import Crew, child_pids, open_fds, run, until, wait_until

SERVE = """
import os, signal
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
signal.pause()
"""


def thread_child(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


def tree(crew: Crew) -> Supervisor:
    dynamic = DynamicSupervisor(ChildSpec("dyn", crew.child), name="dynamic")
    return Supervisor(
        [
            crew.spec("task"),
            ChildSpec("thread", thread_child),
            ChildSpec("argv", [sys.executable, "-c", SERVE], readiness="explicit"),
            ChildSpec("mp", _targets.serve, kind="process"),
            ChildSpec("nested", Supervisor([crew.spec("inner")], strategy="one_for_all")),
            ChildSpec("dynamic", dynamic),
        ],
        strategy="one_for_one",
        max_restarts=20,
        name="leaky?",
    )


async def exercise(crew: Crew) -> None:
    """Start the tree, crash and restart things of every kind, stop it."""
    sup = tree(crew)
    async with sup:
        children = {c.id: c for c in sup.which_children()}
        dynamic = children["dynamic"].handle
        for n in range(3):
            await dynamic.start_child(f"dyn{n}")
        crew.crash("inner")
        crew.crash("task")
        children["argv"].handle.kill()
        children["mp"].handle.kill()
        await until(
            lambda: (
                sup.count_children().active == 6
                and all(
                    c.restarts == 1 for c in sup.which_children() if c.id in ("task", "argv", "mp")
                )
            )
        )
        await dynamic.terminate_child("dyn-1")
    # Every task we started has ended: only this test's own task is left.
    assert asyncio.all_tasks() == {asyncio.current_task()}


def snapshot() -> tuple[set[threading.Thread], set[int], set[int]]:
    gc.collect()
    return set(threading.enumerate()), open_fds(), child_pids()


def nothing_new(before: tuple[set[threading.Thread], set[int], set[int]]) -> bool:
    """No thread, fd or child process that was not there before (things that
    other tests left ending in the background may disappear meanwhile)."""
    after = snapshot()
    return all(not (now - then) for now, then in zip(after, before, strict=True))


def test_no_task_thread_process_or_fd_outlives_stop() -> None:
    # A first round creates the process-wide singletons (multiprocessing's
    # resource tracker, the liveness manager): they are not ours to stop.
    run(exercise)(Crew())
    before = snapshot()
    for _ in range(2):
        run(exercise)(Crew())
    wait_until(lambda: nothing_new(before))


def test_the_sync_facade_leaves_nothing_behind() -> None:
    crew = Crew()
    run(exercise)(crew)  # warm-up, as above
    before = snapshot()
    with tree(Crew()).run_in_thread(name="facade-leaks") as handle:
        assert handle.count_children().active == 6
    wait_until(lambda: nothing_new(before))
    assert handle.loop.is_closed()
