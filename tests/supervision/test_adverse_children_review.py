"""Misbehaving children, reviewed adversarially: what the first fixes left open.

Each scenario is a real interpreter with the default hooks (see
``tests/faults/_subprocess.py``), or a real program signalled from here; a
hang is caught by a deadline, never by a sleep; no timing is asserted.
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

from tests._processes import kill_if_same, pid_in
from tests.faults._subprocess import PRELUDE

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 60.0


def _program(tmp_path: Path, body: str) -> subprocess.Popen[str]:
    script = tmp_path / "prog.py"
    # A background job of a non-interactive shell starts with SIGINT ignored, and
    # Python keeps it so: the program gets Ctrl-C as from a user's terminal.
    sigint = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
    script.write_text(sigint + PRELUDE + textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    return subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def _press_until_exit(proc: subprocess.Popen[str], signum: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signum)  # the operator, pressing Ctrl-C again and again
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)  # polling with a deadline


def test_the_third_ctrl_c_landing_in_a_task_child_ends_run_with_keyboard_interrupt(
    tmp_path: Path,
) -> None:
    # A task child busy on the loop (synchronous work, no await): the runner
    # cannot act on the first two SIGINTs; the third meets the previous
    # handler, Python's, which raises KeyboardInterrupt *in the child's code*.
    # Before: that was taken for the child's own crash (and the child
    # restarted) instead of the operator's interrupt the docs promise.
    proc = _program(
        tmp_path,
        """
        import asyncio, signal
        from foundation.supervision import ChildSpec, Supervisor, run

        def mine(signum, frame):
            pass
        signal.signal(signal.SIGTERM, mine)

        async def busy(ctx):
            ctx.ready()
            print("busy", flush=True)
            while True:
                time.sleep(0.01)  # sleep-ok: the child under test blocks the loop for good

        try:
            run(Supervisor([ChildSpec("busy", busy)], name="app", max_restarts=1000))
        except KeyboardInterrupt:
            restored = signal.getsignal(signal.SIGINT)
            # The test presses Ctrl-C until the program ends: on a loaded machine a
            # later press could land on the way out and end it by SIGINT (-2).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            assert restored is signal.default_int_handler, restored
            assert signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGTERM)
            print("interrupted", flush=True)
            raise SystemExit(130)
        print("returned", flush=True)
        """,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline().strip() == "busy"
        _press_until_exit(proc, signal.SIGINT)
        out, err = proc.communicate(timeout=DEADLINE)
        assert "interrupted" in out.split(), out + err
        assert proc.returncode == 130, (proc.returncode, out, err)
        assert "crashed: KeyboardInterrupt" not in err, err
        assert "restarted" not in err, err
        assert "Traceback" not in err, err  # nothing reported as a defect on the way out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_an_argv_child_that_left_its_process_group_is_still_stopped(tmp_path: Path) -> None:
    # The child leads a group of its own (process_group=0, the default) and
    # then moves to another group of the session (a shell with job control
    # does that). Before: SIGTERM and SIGKILL went to its former, now empty
    # group only (ESRCH, ignored): nothing reached it and stop() hung for ever.
    from tests.faults._subprocess import run_scenario

    pidfile = tmp_path / "child.pid"
    scenario = f"""
        import os, signal, sys
        from pathlib import Path
        from foundation.supervision import ChildSpec, Supervisor

        def alive(pid):
            try:
                state = Path(f"/proc/{{pid}}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                return False
            return state != "Z"

        pidfile = Path({str(pidfile)!r})
        MOVER = (
            "import os, sys, time\\n"
            "os.setpgid(0, os.getpgid(os.getppid()))\\n"
            "open(sys.argv[1], 'w').write(str(os.getpid()))\\n"
            "time.sleep(600)\\n"  # sleep-ok: the grandchild under test lives on
        )
        spec = ChildSpec("m", [sys.executable, "-c", MOVER, str(pidfile)], shutdown_timeout=1)
        handle = Supervisor([spec], name="app").run_in_thread()
        wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the child's pid")
        child = int(pidfile.read_text())
        handle.stop()
        wait_for(lambda: not alive(child), "the child to be stopped")
        print("OK")
    """
    try:
        run_scenario(textwrap.dedent(scenario), timeout=30)
    finally:  # the child, if it leaked (and not its pid's next owner)
        kill_if_same(pid_in(pidfile))


def test_stop_from_main_waits_for_the_stop_a_worker_started() -> None:
    # A worker stops its application (the stop runs in a thread of its own);
    # the main thread then leaves its `with app:` block, i.e. calls stop().
    # Before: that returned at once ("already stopping"), the program went on
    # to exit with the stop half done (the daemon stop thread cut at exit, the
    # services not stopped, the outcome never reported).
    from tests.faults._subprocess import run_scenario

    result = run_scenario(
        """
        import time
        from foundation import Application
        from foundation.supervision import ChildSpec

        box, asked = {}, threading.Event()

        def quitter(ctx):
            ctx.ready()
            wait_for(lambda: "app" in box, "the app")
            box["app"].stop()
            asked.set()
            ctx.stopping.wait()

        def slow(ctx):
            ctx.ready()
            ctx.stopping.wait()
            time.sleep(0.5)  # sleep-ok: a worker with real cleanup to do (not a synchronisation)
            print("slow cleaned up", flush=True)

        with Application.start(
            services=("flags",),
            workers=[ChildSpec("s", slow, kind="thread"),
                     ChildSpec("q", quitter, kind="thread", shutdown_timeout=None)],
        ) as app:
            box["app"] = app
            assert asked.wait(20)
        # Left the block: the stop is complete, whoever started it.
        assert app.supervisor.state == "stopped", app.supervisor.state
        print("main done", flush=True)
        print("OK")
        """,
        timeout=60,
    )
    lines = result.stdout.splitlines()
    assert lines.index("slow cleaned up") < lines.index("main done"), lines
    assert "Application foundation stopped" in result.stderr, result.stderr
