"""Children that misbehave in production, run the way production runs.

Each scenario is a plain interpreter with the default hooks (no pytest inside,
see ``tests/faults/_subprocess.py``): a task child that swallows its
cancellation or blocks the event loop, a thread child that stops its own
tree, a task child raising ``SystemExit``/``KeyboardInterrupt``, argv
children that leave grandchildren behind. A hang is caught by the scenario's
deadline (``timeout=``), never by a sleep; no test asserts a timing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.faults._subprocess import PRELUDE, run_scenario

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0  # seconds: a scenario still running by then has hung

# Shared by the scenarios: pids of processes they start, and "is it gone".
PROCS = """
import asyncio, os, signal, subprocess, tempfile
from pathlib import Path
from tests._processes import kill_if_same, pid_in

def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"   # a zombie (reparented, not reaped yet) is gone too

def read_pid(path):
    wait_for(lambda: path.exists() and path.read_text().strip(), f"pid in {path}")
    return int(path.read_text())
"""


def _scenario(script: str, **kwargs: object) -> str:
    kwargs.setdefault("timeout", DEADLINE)
    return run_scenario(PROCS + textwrap.dedent(script), **kwargs).stderr  # type: ignore[arg-type]


# --------------------------------------------------------------------- task children


def test_the_runner_exits_when_a_task_child_swallows_its_cancellation() -> None:
    # Before: run() logged "exit status 0" and then hung for ever in
    # asyncio.run's unbounded wait for the leftover task.
    err = _scenario(
        """
        from foundation.supervision import ChildSpec, Supervisor, run

        async def stubborn(ctx):
            ctx.ready()
            while True:
                try:
                    await asyncio.sleep(3600)  # sleep-ok: a child that serves until cancelled
                except asyncio.CancelledError:
                    pass            # swallowed, every time

        up = lambda sup: os.kill(os.getpid(), signal.SIGTERM)
        status = run(Supervisor([ChildSpec("stub", stubborn, shutdown_timeout=0.2)],
                                name="app"), on_started=up)
        assert status == 0, status
        print("OK")
        """
    )
    assert "did not stop within its shutdown timeout" in err, err
    assert "app/stub; abandoned" in err, err
    assert "was destroyed but it is pending" not in err, err


def test_a_shutdown_error_for_a_task_names_a_task_not_a_thread() -> None:
    # Before: "abandoned (threads cannot be killed; ...)" for a task child; and
    # asyncio's "Task was destroyed but it is pending!" ERROR at loop close.
    result = run_scenario(
        PROCS
        + textwrap.dedent(
            """
            from foundation.errors import ShutdownError
            from foundation.supervision import ChildSpec, Supervisor

            async def stubborn(ctx):
                ctx.ready()
                while True:
                    try:
                        await asyncio.sleep(3600)  # sleep-ok: a child that serves until cancelled
                    except asyncio.CancelledError:
                        pass

            handle = Supervisor([ChildSpec("stub", stubborn, shutdown_timeout=0.2)],
                                name="app").run_in_thread()
            try:
                handle.stop()
            except ShutdownError as exc:
                print("ERROR", exc)
            assert library_threads() == [], library_threads()
            print("OK")
            """
        ),
        timeout=DEADLINE,
    )
    [line] = result.lines("ERROR")
    assert "could not stop ['stub']" in line, line
    assert "task that swallows its cancellation" in line, line
    assert "thread" not in line, line
    assert "app/stub; abandoned" in result.stderr, result.stderr
    assert "was destroyed but it is pending" not in result.stderr, result.stderr


def test_a_task_child_raising_system_exit_or_keyboard_interrupt_is_a_crash_under_run() -> None:
    # Before: SystemExit() left run() and the program exited 0 at once, the
    # rest of the tree never stopped in order; KeyboardInterrupt likewise.
    err = _scenario(
        """
        from foundation.supervision import ChildSpec, Supervisor, run

        async def flaky(ctx):
            ctx.ready()
            await asyncio.sleep(0)
            if ctx.attempt == 0:
                raise SystemExit()
            if ctx.attempt == 1:
                raise KeyboardInterrupt()
            print("attempt", ctx.attempt, flush=True)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.Event().wait()

        async def steady(ctx):
            ctx.ready()
            try:
                await asyncio.Event().wait()
            finally:
                print("steady stopped", flush=True)

        status = run(Supervisor([ChildSpec("steady", steady), ChildSpec("flaky", flaky)],
                                name="app", max_restarts=5))
        assert status == 0, status
        print("OK")
        """
    )
    assert "Child flaky of supervisor app (task) crashed: SystemExit()" in err, err
    assert "Child flaky of supervisor app (task) crashed: KeyboardInterrupt()" in err, err
    assert "supervisor app stopped after SIGTERM; exit status 0" in err, err


def test_a_task_child_raising_system_exit_before_ready_fails_the_start_with_status_1() -> None:
    err = _scenario(
        """
        from foundation.supervision import ChildSpec, Supervisor, run

        async def quits_early(ctx):
            raise SystemExit(0)

        status = run(Supervisor([ChildSpec("early", quits_early)], name="app"))
        assert status == 1, status
        print("OK")
        """
    )
    assert "supervisor app failed to start" in err, err
    # The crash report carries the child's own traceback (chained), not only ours.
    assert "in quits_early" in err, err


def test_a_task_child_blocking_the_loop_in_its_cleanup_is_reported_late_not_abandoned() -> None:
    # The loop is blocked, so the shutdown timeout cannot fire on time. Before:
    # the stop was logged as a plain shutdown, nothing named the blocking
    # child; and depending on which of its exit and its timer the loop saw
    # first, it was even reported abandoned (ShutdownError) though it ended.
    err = _scenario(
        """
        import time
        from foundation.supervision import ChildSpec, Supervisor

        async def blocker(ctx):
            ctx.ready()
            try:
                await asyncio.Event().wait()
            finally:
                time.sleep(0.3)  # sleep-ok: the defect under test, a blocking call on the loop

        handle = Supervisor([ChildSpec("b", blocker, shutdown_timeout=0.05)],
                            name="app").run_in_thread()
        handle.stop()             # no ShutdownError: it did stop
        print("OK")
        """
    )
    assert "Child b of supervisor app (task) stopped" in err, err
    assert "past its shutdown timeout of 0.05s: it blocked the event loop" in err, err
    assert "abandoned" not in err, err


# --------------------------------------------------------------------- the runner's signals


def test_a_third_signal_ends_the_runner_while_a_child_blocks_the_event_loop(
    tmp_path: Path,
) -> None:
    # A child blocking the loop (time.sleep in a coroutine) keeps the runner
    # from acting on any signal. Before: every further SIGTERM was queued
    # behind the block, so only SIGKILL ended the program. Now the second
    # puts the previous handlers back at once and the third kills it.
    script = tmp_path / "prog.py"
    script.write_text(
        PRELUDE
        + textwrap.dedent(
            """
            import asyncio, time
            from foundation.supervision import ChildSpec, Supervisor, run

            async def blocker(ctx):
                ctx.ready()
                try:
                    await asyncio.Event().wait()
                finally:
                    print("blocking", flush=True)
                    time.sleep(600)  # sleep-ok: the defect under test, it blocks the loop

            run(Supervisor([ChildSpec("b", blocker, shutdown_timeout=0.2)], name="app"),
                on_started=lambda sup: print("up", flush=True))
            print("returned", flush=True)
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "w") as stderr:  # a file: never a full pipe that blocks it
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            env=env,
        )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "blocking"
        deadline = time.monotonic() + DEADLINE
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGTERM)  # the operator, pressing on
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)  # polling with a deadline
        assert proc.poll() == -signal.SIGTERM, "the runner ignored every further SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    # The runner said it acts on the first SIGTERM; stderr holds log records only
    # (a traceback or a thread's death under the repeated signals would be raw
    # lines), none of them an error.
    err = stderr_path.read_text()
    lines = [line for line in err.splitlines() if line.strip()]
    assert "received SIGTERM: stopping supervisor app in order" in err, err
    assert all(line.startswith("LOG") for line in lines), err
    assert not [line for line in lines if line.startswith(("LOG ERROR", "LOG CRITICAL"))], err


# --------------------------------------------------------------------- thread children


def test_a_thread_child_stopping_its_own_supervisor_does_not_wait_for_itself() -> None:
    # Before: stop() from the child waited for the stop, which waited for the
    # child: a deadlock (for ever with shutdown_timeout=None; else the child
    # was reported abandoned and ShutdownError raised in it).
    err = _scenario(
        """
        from foundation.supervision import ChildSpec, Supervisor

        box = {}
        returned = threading.Event()

        def quitter(ctx):
            ctx.ready()
            wait_for(lambda: "handle" in box, "the handle")
            box["handle"].stop()          # returns at once: the stop runs on
            returned.set()
            ctx.stopping.wait()

        handle = Supervisor([ChildSpec("q", quitter, kind="thread", shutdown_timeout=None)],
                            name="app").run_in_thread()
        box["handle"] = handle
        wait_for(returned.is_set, "stop() to return in the child")
        wait_for(lambda: handle.closed and handle.supervisor.state == "stopped", "the stop")
        wait_for(lambda: not [t for t in threading.enumerate() if t.name != "MainThread"],
                 "every thread to end")
        print("OK")
        """
    )
    assert "abandoned" not in err, err
    assert "Supervisor app stopped: shutdown" in err, err


def test_a_worker_stopping_its_application_does_not_wait_for_itself() -> None:
    err = _scenario(
        """
        from foundation import Application
        from foundation.supervision import ChildSpec

        box = {}

        def quitter(ctx):
            ctx.ready()
            wait_for(lambda: "app" in box, "the app")
            box["app"].stop()
            ctx.stopping.wait()

        app = Application.start(
            services=("flags", "monitors", "registry"),
            workers=[ChildSpec("q", quitter, kind="thread", shutdown_timeout=None)],
        )
        box["app"] = app
        wait_for(lambda: app.supervisor.state == "stopped", "the stop")
        wait_for(lambda: not [t for t in threading.enumerate() if t.name != "MainThread"],
                 "every thread to end")
        assert app.stopped_order == ["registry", "monitors", "flags"], app.stopped_order
        app.stop()                        # idempotent
        print("OK")
        """
    )
    assert "Application foundation stopped" in err, err
    assert "failed to stop" not in err, err
    assert "abandoned" not in err, err


# --------------------------------------------------------------------- OS-process children


def test_stopping_an_argv_child_stops_its_grandchildren_too(tmp_path: Path) -> None:
    # Before: SIGTERM/SIGKILL went to the child's pid only; its own child
    # (here one that ignores SIGTERM) was reparented and ran on: leaked.
    _scenario(
        f"""
        from foundation.supervision import ChildSpec, Supervisor

        pidfile = Path({str(tmp_path / "grandchild.pid")!r})
        PARENT = (
            "import subprocess, sys, time\\n"
            "gc = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "time.sleep(600)'])\\n"  # sleep-ok: a grandchild that ignores SIGTERM
            "open(sys.argv[1], 'w').write(str(gc.pid))\\n"
            "time.sleep(600)\\n"  # sleep-ok: the child lives until stopped
        )
        spec = ChildSpec("p", [sys.executable, "-c", PARENT, str(pidfile)], shutdown_timeout=5)
        handle = Supervisor([spec], name="app").run_in_thread()
        grandchild = read_pid(pidfile)
        leftover = pid_in(pidfile)  # its identity, to kill it only (not its pid's next owner)
        try:
            assert alive(grandchild)
            handle.stop()
            wait_for(lambda: not alive(grandchild), "the grandchild to be stopped too")
        finally:
            kill_if_same(leftover)
        print("OK")
        """
    )


def test_an_argv_child_that_forks_and_exits_leaves_no_process_behind(tmp_path: Path) -> None:
    # Before: `sh -c "sleep 600 &"` ended normally and its sleep ran on,
    # one more leaked process at every restart.
    _scenario(
        f"""
        from foundation.supervision import ChildSpec, Supervisor

        pidfile = Path({str(tmp_path / "bg.pid")!r})
        spec = ChildSpec("p", ["sh", "-c", f"sleep 600 & echo $! > {{pidfile}}; exit 0"],
                         restart="transient")
        handle = Supervisor([spec], name="app").run_in_thread()
        background = read_pid(pidfile)
        leftover = pid_in(pidfile)  # its identity, to kill it only (not its pid's next owner)
        try:
            wait_for(lambda: handle.which_child("p").status == "stopped", "the child's exit")
            wait_for(lambda: not alive(background), "its background job to be swept")
        finally:
            kill_if_same(leftover)
            handle.stop()
        print("OK")
        """
    )
