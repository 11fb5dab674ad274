"""``foundation demo`` run as a user runs it, then stopped with Ctrl-C in each part.

The real console script runs in a subprocess of its own session, so that every
process the demo started (and any it left behind) can be found afterwards by
the session id. Ctrl-C is SIGINT sent to the demo once its stdout shows the
part's heading; whatever part it lands in, the demo must stop everything it
started and exit 130 with one line on stderr. A later error (Redis gone by
part 4) must end the same way: one line, exit 69 (backend unavailable), never
a traceback.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests._processes import kill_session
from tests.cli._support import cli_env, default_sigint
from tests.redis_support import running_redis


def foundation_command() -> list[str]:
    """The installed ``foundation`` console script (else ``python -m foundation.cli``)."""
    script = shutil.which("foundation", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "foundation.cli"]


@dataclass
class DemoRun:
    """A running ``foundation demo``: its output collected by two reader threads."""

    process: subprocess.Popen[str]
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    seen: threading.Event = field(default_factory=threading.Event)
    wanted: str = ""
    readers: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, *args: str, cwd: Path, wanted: str = "") -> DemoRun:
        """Start ``foundation demo ARGS``; ``seen`` is set at a line starting with ``wanted``."""
        process = subprocess.Popen(
            [*foundation_command(), "demo", *args],
            cwd=cwd,
            env=cli_env(PYTHONUNBUFFERED="1"),  # each line as it is printed
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            preexec_fn=default_sigint,  # noqa: PLW1509  (the test process has no other threads yet)
        )
        run = cls(process, wanted=wanted)
        run.readers = [
            threading.Thread(target=run._read_stdout, daemon=True),
            threading.Thread(target=run._read_stderr, daemon=True),
        ]
        for reader in run.readers:
            reader.start()
        return run

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)
            if self.wanted and line.startswith(self.wanted):
                self.seen.set()
        self.seen.set()  # the end of the output: nothing more will come

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self.stderr.extend(self.process.stderr)

    def finish(self, timeout: float) -> int | None:
        """Wait for the exit (None if still running at ``timeout``), then for the output."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self.readers:
            reader.join(5)  # a process left behind may still hold the pipes
        return code

    def leftovers(self) -> list[str]:
        """The live processes still in the demo's session (its own pid is the session id)."""
        return session_processes(self.process.pid)

    def kill_all(self) -> None:
        """Kill the demo and what is left in its session (after a failed check); close the pipes."""
        if self.process.poll() is None:  # (once reaped, its pid may be someone else's)
            self.process.kill()
        self.process.wait(10)
        kill_session(self.process.pid)  # (a pid is not reused while it names a live session)
        for reader in self.readers:
            reader.join(5)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def session_processes(session: int) -> list[str]:
    """``"PID COMMAND"`` of every live (not zombie) process of ``session``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{entry.name} {comm}")
    return found


INTERRUPTED = "foundation demo: interrupted"


def _threads(pid: int) -> int:
    """How many threads process ``pid`` runs now (0 once it ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(status.split("Threads:", 1)[1].split()[0])


def _interrupt(
    tmp_path: Path, heading: str, *args: str, threads: int = 0
) -> tuple[int | None, DemoRun, list[str]]:
    """Start the demo; once ``heading`` is printed (and the demo runs ``threads``
    threads), send SIGINT; return (exit code, run, leftovers)."""
    run = DemoRun.start("--plain", *args, cwd=tmp_path, wanted=heading)
    try:
        assert run.seen.wait(60), f"no {heading!r} in:\n{''.join(run.stdout)}"
        deadline = time.monotonic() + 60
        while _threads(run.process.pid) < threads:  # poll: no line marks the traffic
            assert time.monotonic() < deadline, f"never {threads} threads"
            assert run.process.poll() is None, "".join(run.stdout)
            time.sleep(0.01)  # sleep-ok: the poll interval of a loop with a deadline
        run.process.send_signal(signal.SIGINT)
        code = run.finish(timeout=60)  # before the fix: alive, 25,000 threads later
        leftovers = run.leftovers()
    finally:
        run.kill_all()  # whatever a failed check left running
    return code, run, leftovers


def _assert_stopped_cleanly(code: int | None, run: DemoRun, leftovers: list[str]) -> None:
    out, err = "".join(run.stdout), "".join(run.stderr)
    assert code == 130, f"exit {code}\n{out[-2000:]}\n{err[-3000:]}"
    assert [line.rstrip("\n") for line in run.stderr] == [INTERRUPTED], err[-3000:]
    assert not leftovers, f"still running after the demo ended: {leftovers}"


@pytest.mark.parametrize(
    ("heading", "args", "threads"),
    [
        # Part 1 registers 900 agents (300 OS processes) for a second or more.
        ("registering agents", ("--agents", "300", "--seconds", "1"), 0),
        # Part 2: 3 traffic threads for 20 s, each keeping about 20 agent
        # threads registered: 30 threads means the traffic is under way.
        ("== 2. ", ("--agents", "2", "--seconds", "20", "--workers", "3"), 30),
    ],
    ids=["part-1-agents", "part-2-rollout"],
)
def test_ctrl_c_stops_the_part_it_lands_in_and_exits_130(
    tmp_path: Path, heading: str, args: tuple[str, ...], threads: int
) -> None:
    code, run, leftovers = _interrupt(tmp_path, heading, *args, threads=threads)
    _assert_stopped_cleanly(code, run, leftovers)
    assert not any(line.startswith("== 3. ") for line in run.stdout)  # it stopped there


def test_ctrl_c_in_the_short_supervision_part_exits_130(tmp_path: Path) -> None:
    # Part 3 lasts a fraction of a second: the SIGINT sent at its heading may
    # land after it (in the summary, still 130) or, rarely, after the demo
    # ended (0). Each attempt must be clean; one must have stopped in part 3.
    for _attempt in range(5):
        code, run, leftovers = _interrupt(tmp_path, "== 3. ", "--agents", "1", "--seconds", "0.2")
        if code == 0 and not leftovers and not run.stderr:
            continue  # the demo ended before the signal: this attempt says nothing
        _assert_stopped_cleanly(code, run, leftovers)
        if not any(line.startswith("== Library logs") for line in run.stdout):
            return  # stopped inside part 3
    pytest.fail("SIGINT never landed inside part 3 in 5 attempts")


def test_an_error_in_a_later_part_is_one_line_and_exit_69(tmp_path: Path) -> None:
    # --redis is checked up front; the server is gone by part 4.
    with running_redis() as server:
        run = DemoRun.start(
            "--plain", "--agents", "2", "--seconds", "0.5", "--redis", server.url,
            cwd=tmp_path, wanted="== 1. ",
        )  # fmt: skip
        try:
            assert run.seen.wait(60), "".join(run.stdout) + "".join(run.stderr)
            server.kill()
            code = run.finish(timeout=120)
            leftovers = run.leftovers()
        finally:
            run.kill_all()
    err = "".join(run.stderr)
    assert code == 69, f"exit {code}\n{''.join(run.stdout)[-2000:]}\n{err[-3000:]}"
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("BackendUnavailable: "), err
    assert any(line.startswith("== 4. ") for line in run.stdout)
    assert not leftovers, leftovers
