"""Child kinds: OS processes (argv and multiprocessing), threads, tasks; shutdown timeouts."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from pathlib import Path

import pytest

from foundation.errors import ShutdownError, StartError
from foundation.supervision import ChildContext, ChildSpec, Supervisor, _runs
from tests.supervision import _targets
from tests.supervision._support import captured_events, run, until

PY = sys.executable

# Ready through the readiness fd, then wait for signals; SIGTERM is trapped,
# logged to stdout and otherwise ignored, so only SIGKILL ends it.
STUBBORN = """
import os, signal, sys
def on_term(signum, frame):
    sys.stdout.write("TERM\\n"); sys.stdout.flush()
signal.signal(signal.SIGTERM, on_term)
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"ready")
while True:
    signal.pause()
"""

SERVE = """
import os, signal
os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")
signal.pause()
"""


def exits(events: list[tuple[str, dict[str, object]]]) -> list[tuple[object, object]]:
    return [(d["child"], d["reason"]) for n, d in events if n == "supervisor.child_exited"]


@run
async def test_process_ignoring_sigterm_is_killed_after_its_shutdown_timeout(
    tmp_path: Path,
) -> None:
    out = (tmp_path / "stubborn.out").open("w")
    try:
        spec = ChildSpec(
            "stubborn",
            [PY, "-c", STUBBORN],
            readiness="explicit",
            shutdown_timeout=0.3,
            kwargs={"stdout": out},
        )
        with captured_events() as events:
            sup = Supervisor([spec])
            await sup.start()
            proc = sup.which_children()[0].handle
            await sup.stop()
    finally:
        out.close()
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "stubborn.out").read_text() == "TERM\n"
    [exited] = [d for n, d in events if n == "supervisor.child_exited"]
    assert exited["reason"] == "killed"
    assert exited["signal"] == signal.SIGKILL


@run
async def test_process_stops_on_sigterm_within_its_timeout() -> None:
    with captured_events() as events:
        async with Supervisor([ChildSpec("p", [PY, "-c", SERVE], readiness="explicit")]) as sup:
            proc = sup.which_children()[0].handle
            assert proc.poll() is None
    assert proc.returncode == -signal.SIGTERM
    assert exits(events) == [("p", "shutdown")]


@run
async def test_argv_process_is_ready_when_spawned_by_default() -> None:
    spec = ChildSpec("sleeper", [PY, "-c", "import signal; signal.pause()"])
    assert not spec.explicit_ready
    async with Supervisor([spec]) as sup:
        assert sup.count_children().active == 1


@run
async def test_process_exiting_before_ready_is_a_failed_start() -> None:
    spec = ChildSpec("early", [PY, "-c", "raise SystemExit(3)"], readiness="explicit")
    with pytest.raises(StartError, match="exit code 3") as info:
        await Supervisor([spec]).start()
    assert info.value.child == "early"


@pytest.mark.parametrize(("code", "restarted"), [(0, False), (4, True)])
def test_transient_process_is_restarted_only_after_a_non_zero_exit(
    code: int, restarted: bool
) -> None:
    @run
    async def scenario() -> None:
        script = SERVE.replace("signal.pause()", f"raise SystemExit({code})")
        spec = ChildSpec("job", [PY, "-c", script], readiness="explicit", restart="transient")
        with captured_events() as events:
            async with Supervisor([spec], max_restarts=1) as sup:
                await until(lambda: len(exits(events)) >= 1)
                if restarted:
                    await until(lambda: sup.which_children()[0].restarts == 1)
                    assert exits(events)[0] == ("job", "exit")
                else:
                    await until(lambda: sup.which_children()[0].status == "stopped")
                    assert exits(events) == [("job", "normal")]

    scenario()


@run
async def test_process_exit_is_seen_by_polling_without_pidfd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_runs, "_HAVE_PIDFD", False)
    script = SERVE.replace("signal.pause()", "raise SystemExit(5)")
    spec = ChildSpec("job", [PY, "-c", script], readiness="explicit", restart="transient")
    with captured_events() as events:
        async with Supervisor([spec], max_restarts=0) as sup:
            with pytest.raises(Exception, match="exit code 5"):
                await sup.wait()
    assert exits(events) == [("job", "exit")]


@run
async def test_multiprocessing_child_signals_ready_and_is_terminated() -> None:
    with captured_events() as events:
        async with Supervisor([ChildSpec("mp", _targets.serve, kind="process")]) as sup:
            proc = sup.which_children()[0].handle
            assert proc.is_alive()
    assert proc.exitcode == -signal.SIGTERM
    assert exits(events) == [("mp", "shutdown")]


@run
async def test_multiprocessing_child_crash_is_restarted_and_ignoring_sigterm_is_killed() -> None:
    specs = [
        ChildSpec("stubborn", _targets.stubborn, kind="process", shutdown_timeout=0.2),
        ChildSpec(
            "crasher",
            _targets.crash_after_ready,
            kind="process",
            args=(7,),
            restart="transient",
        ),
    ]
    with captured_events() as events:
        async with Supervisor(specs, max_restarts=1, max_seconds=60) as sup:
            await until(lambda: ("crasher", "exit") in exits(events))
            with pytest.raises(Exception, match="exit code 7"):
                await sup.wait()  # the restarted one crashed too: intensity exceeded
    assert exits(events)[-1] == ("stubborn", "killed")


@run
async def test_multiprocessing_child_exiting_before_ready_is_a_failed_start() -> None:
    with pytest.raises(StartError, match="exit code 3"):
        await Supervisor([ChildSpec("mp", _targets.exit_before_ready, kind="process")]).start()


@run
async def test_thread_that_ignores_stopping_is_abandoned_and_reported() -> None:
    release = threading.Event()
    crew_log: list[str] = []

    def deaf(ctx: ChildContext) -> None:
        ctx.ready()
        release.wait()

    async def polite(ctx: ChildContext) -> None:
        ctx.ready()
        try:
            await asyncio.Event().wait()
        finally:
            crew_log.append("polite stopped")

    specs = [ChildSpec("polite", polite), ChildSpec("deaf", deaf, shutdown_timeout=0.1)]
    sup = Supervisor(specs)
    with captured_events() as events:
        await sup.start()
        thread = sup.which_children()[1].handle
        with pytest.raises(ShutdownError, match="deaf"):
            await sup.stop()
    assert crew_log == ["polite stopped"]  # the rest was still stopped
    assert exits(events) == [("deaf", "abandoned"), ("polite", "shutdown")]
    assert thread.daemon
    assert thread.is_alive()
    release.set()
    thread.join(5)
    assert not thread.is_alive()


@run
async def test_task_swallowing_cancellation_is_abandoned_and_reported() -> None:
    release = asyncio.Event()

    async def stubborn(ctx: ChildContext) -> None:
        ctx.ready()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    sup = Supervisor([ChildSpec("stubborn", stubborn, shutdown_timeout=0.05)])
    await sup.start()
    task = sup.which_children()[0].handle
    with pytest.raises(ShutdownError, match="stubborn"):
        await sup.stop()
    assert not task.done()
    release.set()
    await task


@run
async def test_shutdown_is_in_reverse_order_across_kinds() -> None:
    async def task_child(ctx: ChildContext) -> None:
        ctx.ready()
        await asyncio.Event().wait()

    def thread_child(ctx: ChildContext) -> None:
        ctx.ready()
        ctx.stopping.wait()

    specs = [
        ChildSpec("task", task_child),
        ChildSpec("process", [PY, "-c", SERVE], readiness="explicit"),
        ChildSpec("thread", thread_child),
        ChildSpec("nested", Supervisor([ChildSpec("inner", task_child)])),
    ]
    with captured_events() as events:
        async with Supervisor(specs) as sup:
            kinds = [c.kind for c in sup.which_children()]
    assert kinds == ["task", "process", "thread", "supervisor"]
    assert exits(events) == [
        ("inner", "shutdown"),
        ("nested", "shutdown"),
        ("thread", "shutdown"),
        ("process", "shutdown"),
        ("task", "shutdown"),
    ]
