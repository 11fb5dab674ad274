"""A stop returns once the thread children it stopped have ended (``is_alive()`` False).

A thread child reports its exit from its own thread at the end of its
function; the thread then goes on a little (spawn_thread's watch, threading's
bookkeeping, then the destruction of its thread-local values) before
``is_alive()`` turns False. Each child here holds that last part up with a
thread-local value whose ``__del__`` waits for an event the test sets only
once the stop under test has returned, so a stop returning while the thread
is still alive is caught every time (without the wait for the thread, the
thread is always still alive then). The wait is bounded (``HOLD``): with the
wait for the thread, that bound is what lets the thread, and so the stop, end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from foundation.errors import ShutdownError, StartError
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.supervision._support import run, until

HOLD = 1.0  # seconds a held thread end waits for the test's event before it goes on


def held_child(
    release: threading.Event,
    unwinding: threading.Event,
    threads: list[threading.Thread],
    *,
    hold: float = HOLD,
    crash: bool = False,
) -> Callable[[ChildContext], None]:
    """A thread child whose thread, once its function has returned, waits at
    most ``hold`` seconds for ``release`` (``unwinding`` is set as it starts to)."""
    local = threading.local()  # outlives the child's function: destroyed at thread end

    class HoldsTheEnd:
        def __del__(self) -> None:
            unwinding.set()
            release.wait(hold)

    def child(ctx: ChildContext) -> None:
        threads.append(threading.current_thread())
        local.value = HoldsTheEnd()
        if crash:
            raise RuntimeError("fails before it is ready")
        ctx.ready()
        ctx.stopping.wait()

    return child


@run
async def test_stop_returns_once_its_thread_child_has_ended() -> None:
    stopped, unwinding, threads = threading.Event(), threading.Event(), []
    spec = ChildSpec("t", held_child(stopped, unwinding, threads), readiness="explicit")
    sup = Supervisor([spec], name="thread-end-stop")
    await sup.start()
    await sup.stop()
    alive = threads[0].is_alive()
    stopped.set()
    assert not alive
    assert unwinding.is_set()  # its end was held up indeed


@run
async def test_terminate_child_returns_once_the_thread_has_ended() -> None:
    stopped, unwinding, threads = threading.Event(), threading.Event(), []
    spec = ChildSpec("t", held_child(stopped, unwinding, threads), readiness="explicit")
    async with Supervisor([spec], name="thread-end-terminate") as sup:
        await sup.terminate_child("t")
        alive = threads[0].is_alive()
        stopped.set()
        assert not alive
        assert unwinding.is_set()
        assert sup.which_child("t").status == "stopped"


@run
async def test_a_failed_start_returns_once_the_thread_has_ended() -> None:
    stopped, unwinding, threads = threading.Event(), threading.Event(), []
    child = held_child(stopped, unwinding, threads, crash=True)
    async with Supervisor([], name="thread-end-start") as sup:
        try:
            with pytest.raises(StartError):
                await sup.start_child(ChildSpec("t", child, readiness="explicit"))
            alive = threads[0].is_alive()
        finally:
            stopped.set()
        assert not alive
        assert unwinding.is_set()


def test_a_tree_stopped_from_sync_code_leaves_no_thread_child_alive() -> None:
    # A thread child of a nested supervisor, the tree stopped through the
    # synchronous facade: the shape Application runs (its services).
    stopped, unwinding, threads = threading.Event(), threading.Event(), []
    spec = ChildSpec("t", held_child(stopped, unwinding, threads), readiness="explicit")
    inner = Supervisor([spec], name="thread-end-inner")
    outer = Supervisor([ChildSpec("inner", inner)], name="thread-end-outer")
    with outer.run_in_thread():
        pass
    alive = threads[0].is_alive()
    stopped.set()
    assert not alive
    assert unwinding.is_set()


@run
async def test_a_thread_whose_end_is_held_past_its_timeout_is_abandoned() -> None:
    # Its function returned, but its thread runs on past the shutdown timeout
    # (here: a thread-local destructor that blocks): the stop cannot say it
    # stopped it. It is abandoned, as a thread that ignores ctx.stopping is.
    release, unwinding, threads = threading.Event(), threading.Event(), []
    child = held_child(release, unwinding, threads, hold=60.0)
    spec = ChildSpec("t", child, readiness="explicit", shutdown_timeout=0.05)
    sup = Supervisor([spec], name="thread-end-abandoned")
    await sup.start()
    try:
        with pytest.raises(ShutdownError, match="abandoned"):
            await sup.stop()
        assert threads[0].is_alive()
        assert unwinding.is_set()
    finally:
        release.set()
    await until(lambda: not threads[0].is_alive())
