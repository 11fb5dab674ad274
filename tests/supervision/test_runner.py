"""The runner, ``foundation.supervision.run``: signals, ordered stop, exit status.

Signal scenarios run a real program (``sys.executable prog.py``) with task,
thread, argv and multiprocessing children that append their id to a file as
they stop; the test signals it and asserts from the file, the exit status,
stderr and the children's pids.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from foundation.errors import SupervisorError
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from foundation.supervision._runner import SignalHandlers, run
from tests.supervision._support import Boom, wait_until

ROOT = Path(__file__).resolve().parents[2]

# The program under test. {children} lists the specs; {options} run()'s keywords.
PROGRAM = """
import asyncio, logging, os, signal, sys, threading
from foundation.supervision import ChildSpec, Supervisor, notify_ready
from foundation.supervision._runner import run

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
DIR = sys.argv[1]

def stopped(id):
    with open(os.path.join(DIR, "stopped"), "a") as f:
        f.write(id + "\\n")

def record_pid(id):
    with open(os.path.join(DIR, id + ".pid"), "w") as f:
        f.write(str(os.getpid()))

async def task_child(ctx):
    ctx.ready()
    try:
        await asyncio.Event().wait()
    finally:
        stopped("task")

def thread_child(ctx):
    ctx.ready()
    ctx.stopping.wait()
    stopped("thread")

def stubborn_thread(ctx):
    ctx.ready()
    threading.Event().wait()   # never looks at ctx.stopping

def mp_child(ctx):
    record_pid("mp")
    signal.signal(signal.SIGTERM, lambda *_: (stopped("mp"), os._exit(0)))
    ctx.ready()
    threading.Event().wait()

ARGV = '''
import os, signal, sys, threading
from foundation.supervision import notify_ready
DIR, ID, TRAP = sys.argv[1], sys.argv[2], sys.argv[3]
with open(os.path.join(DIR, ID + ".pid"), "w") as f:
    f.write(str(os.getpid()))
def on_term(*_):
    if TRAP == "stubborn":
        return
    with open(os.path.join(DIR, "stopped"), "a") as f:
        f.write(ID + "\\\\n")
    os._exit(0)
signal.signal(signal.SIGTERM, on_term)
notify_ready()
while True:
    signal.pause()
'''

def argv_child(id, trap="graceful", shutdown_timeout=30.0):
    return ChildSpec(id, [sys.executable, "-c", ARGV, DIR, id, trap], readiness="explicit",
                     shutdown_timeout=shutdown_timeout, ready_timeout=60)

def started(sup):
    print("ready", flush=True)

if __name__ == "__main__":
    children = [{children}]
    status = run(Supervisor(children, name="prog"), on_started=started, {options})
    print("status", status, flush=True)
    raise SystemExit(status)
"""

EVERY_KIND = """
    argv_child("proc"),
    ChildSpec("mp", mp_child, kind="process", ready_timeout=60),
    ChildSpec("thread", thread_child, kind="thread"),
    ChildSpec("task", task_child),
"""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``, or None if it is gone (or a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def gone(pid: int, start_time: str | None) -> bool:
    """True once ``pid`` (started at ``start_time``) has ended, reused pid or not."""
    return _start_time(pid) != start_time


class Program:
    """A program running ``run()`` over the given children, in a directory of its own."""

    def __init__(self, tmp: Path, children: str, options: str = "") -> None:
        self.dir = tmp
        script = tmp / "prog.py"
        script.write_text(PROGRAM.replace("{children}", children).replace("{options}", options))
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready", self.finish()

    def pid_of(self, id: str) -> tuple[int, str | None]:
        pid = int((self.dir / f"{id}.pid").read_text())
        return pid, _start_time(pid)

    def stopped(self) -> list[str]:
        path = self.dir / "stopped"
        return path.read_text().split() if path.exists() else []

    def signal(self, signo: int) -> None:
        self.proc.send_signal(signo)

    def finish(self) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, out, err


@contextmanager
def program(tmp: Path, children: str, options: str = "") -> Iterator[Program]:
    prog = Program(tmp, children, options)
    try:
        yield prog
    finally:
        if prog.proc.poll() is None:
            prog.proc.kill()
            prog.proc.wait()


def assert_clean(err: str) -> None:
    for bad in ("Traceback", "Exception in thread", "was destroyed but it is pending"):
        assert bad not in err, err


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_kind_of_child_in_reverse_order_with_status_0(
    tmp_path: Path, signo: int
) -> None:
    with program(tmp_path, EVERY_KIND) as prog:
        procs = [prog.pid_of("proc"), prog.pid_of("mp")]
        prog.signal(signo)
        status, out, err = prog.finish()
    assert status == 0, err
    assert "status 0" in out
    assert prog.stopped() == ["task", "thread", "mp", "proc"]
    assert f"received {signal.Signals(signo).name}" in err
    assert_clean(err)
    for pid, started in procs:
        wait_until(lambda pid=pid, started=started: gone(pid, started))  # type: ignore[misc]


def test_a_second_signal_forces_the_stop_and_kills_a_child_that_ignores_sigterm(
    tmp_path: Path,
) -> None:
    children = """
    argv_child("stubborn", trap="stubborn", shutdown_timeout=120),
    ChildSpec("task", task_child),
    """
    with program(tmp_path, children) as prog:
        pid, started = prog.pid_of("stubborn")
        prog.signal(signal.SIGTERM)
        # The task is stopped first; then the stop waits on the stubborn process.
        wait_until(lambda: prog.stopped() == ["task"])
        prog.signal(signal.SIGTERM)
        status, out, err = prog.finish()
    assert status == 128 + signal.SIGTERM, err
    assert f"status {128 + signal.SIGTERM}" in out
    assert "forcing the stop of supervisor prog" in err
    assert "stubborn" in err
    assert_clean(err)
    wait_until(lambda: gone(pid, started))


def test_children_that_outlive_their_shutdown_timeout_are_reported_and_the_status_is_0(
    tmp_path: Path,
) -> None:
    children = """
    argv_child("stubborn", trap="stubborn", shutdown_timeout=0.3),
    ChildSpec("sticky", stubborn_thread, kind="thread", shutdown_timeout=0.3),
    """
    with program(tmp_path, children) as prog:
        pid, started = prog.pid_of("stubborn")
        prog.signal(signal.SIGTERM)
        status, out, err = prog.finish()
    assert status == 0, err
    assert "status 0" in out
    # The reports, one record each, from where the stop gave up waiting.
    assert "Child sticky of supervisor prog (thread) abandoned" in err
    assert (
        "Child stubborn of supervisor prog (process) did not stop within its shutdown "
        "timeout of 0.3s; action: killed"
    ) in err
    assert "could not stop ['sticky']" in err
    assert_clean(err)
    wait_until(lambda: gone(pid, started))


def test_stop_timeout_forces_a_stop_that_takes_too_long(tmp_path: Path) -> None:
    children = """
    argv_child("stubborn", trap="stubborn", shutdown_timeout=120),
    """
    with program(tmp_path, children, "stop_timeout=0.5") as prog:
        pid, started = prog.pid_of("stubborn")
        prog.signal(signal.SIGINT)
        status, _, err = prog.finish()
    assert status == 128 + signal.SIGINT, err
    assert "stop_timeout 0.5s" in err
    assert_clean(err)
    wait_until(lambda: gone(pid, started))


def test_a_signal_during_the_start_cancels_it_and_exits_0(tmp_path: Path) -> None:
    script = tmp_path / "slow.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from foundation.supervision import ChildSpec, Supervisor
            from foundation.supervision._runner import run

            async def never_ready(ctx):
                print("starting", flush=True)
                await asyncio.Event().wait()

            sup = Supervisor([ChildSpec("slow", never_ready, ready_timeout=None)])
            status = run(sup, on_started=lambda s: print("started", flush=True))
            print("status", status, sup.state, flush=True)
            raise SystemExit(status)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "starting"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "status 0 stopped" in out
    assert "started" not in out
    assert_clean(err)


# ---------------------------------------------------------------------- in-process (no signal)


async def _serve(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.Event().wait()


async def _crash(ctx: ChildContext) -> None:
    ctx.ready()
    await asyncio.sleep(0)
    raise Boom("crash")


def _stop_soon(sup: Supervisor) -> None:
    asyncio.get_running_loop().create_task(sup.stop())


def test_a_supervisor_that_ends_normally_exits_0() -> None:
    assert run(Supervisor([ChildSpec("w", _serve)]), on_started=_stop_soon) == 0


def test_a_supervisor_that_gives_up_exits_1() -> None:
    sup = Supervisor([ChildSpec("c", _crash)], max_restarts=0)
    assert run(sup) == 1
    assert sup.state == "failed"


def test_a_start_that_fails_exits_1() -> None:
    async def fail(ctx: ChildContext) -> None:
        raise Boom("no")

    assert run(Supervisor([ChildSpec("f", fail)])) == 1


def test_a_factory_is_called_on_the_runners_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    def factory() -> Supervisor:
        loops.append(asyncio.get_running_loop())
        return Supervisor([ChildSpec("w", _serve)])

    assert run(factory, on_started=_stop_soon) == 0
    assert len(loops) == 1


def test_a_factory_returning_something_else_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="Supervisor"):
        run(object)  # type: ignore[arg-type]


def test_the_previous_signal_handlers_are_restored() -> None:
    def mine(signum: int, frame: object) -> None:
        raise AssertionError("not expected to run")

    before_int = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, mine)
    try:
        assert run(Supervisor([ChildSpec("w", _serve)]), on_started=_stop_soon) == 0
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is before_int
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_run_refuses_a_thread_other_than_the_main_thread() -> None:
    caught: list[BaseException] = []

    def body() -> None:
        try:
            run(Supervisor([ChildSpec("w", _serve)]))
        except BaseException as exc:  # reported to the test below
            caught.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert len(caught) == 1
    assert isinstance(caught[0], SupervisorError)
    assert "main thread" in str(caught[0])


def test_run_refuses_a_running_event_loop() -> None:
    async def inside() -> None:
        with pytest.raises(SupervisorError, match="running loop"):
            run(Supervisor([ChildSpec("w", _serve)]))

    asyncio.run(inside())


def test_signal_handlers_restore_sig_dfl_and_deliver_on_the_loop() -> None:
    seen: list[tuple[int, bool]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()

        def on_signal(signum: int) -> None:
            seen.append((signum, asyncio.get_running_loop() is loop))
            arrived.set()

        with SignalHandlers([signal.SIGUSR2], on_signal, loop=loop):
            os.kill(os.getpid(), signal.SIGUSR2)
            await asyncio.wait_for(arrived.wait(), 10)

    asyncio.run(main())
    assert seen == [(signal.SIGUSR2, True)]
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL
