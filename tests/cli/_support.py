"""Run the ``foundation`` command as a real subprocess (``sys.executable -m foundation.cli``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

SETTINGS_ENV = ("FOUNDATION_STORE", "FOUNDATION_REDIS", "FOUNDATION_NAMESPACE")
_CRASH_SITE = Path(__file__).resolve().parent / "_crash_site"


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without CLI settings (a test passes its own), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS_ENV}
    # A crash of the interpreter itself (one CLI child once died of SIGSEGV, with
    # nothing on stderr) prints the crashing thread's stack: evidence for the next
    # look. Every thread's stack stopped after 100 threads, before the crashing
    # one (demo part 4 runs a hundred): _crash_site's sitecustomize prints it alone.
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_CRASH_SITE), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``foundation ARGS`` in ``cwd`` with stdout a pipe (so JSON by default)."""
    return subprocess.run(
        [sys.executable, "-m", "foundation.cli", *args],
        cwd=cwd,
        env=cli_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(*args: str, cwd: Path, stdout: Any = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start ``foundation ARGS`` in ``cwd``: stdout a pipe unless given (JSON then
    by default), stderr a pipe; the caller ends and reaps it."""
    return subprocess.Popen(
        [sys.executable, "-m", "foundation.cli", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful run printed (asserting exit 0 and a clean stderr)."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int = 1) -> str:
    """The one-line ``ErrorClass: message`` a failed run printed (nothing on stdout)."""
    assert result.returncode == exit_code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``foundation demo --plain ARGS`` as a user runs it (the installed script,
    else ``python -m foundation.cli``), in a subprocess."""
    import shutil

    script = shutil.which("foundation", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "foundation.cli"]
    return subprocess.run(
        [*command, "demo", "--plain", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Running:
    """A ``foundation`` command running in a session of its own, as a user starts
    it (SIGINT at its default: a terminal's Ctrl-C reaches it), its stdout and
    stderr read line by line on two threads.

    ``wait_for`` waits for a line (a readiness line) with a deadline;
    ``leftovers()`` lists what still runs in its session once it ended.
    ``ignored``: signals it starts with ignored (``nohup``, ``trap '' TERM``);
    ``script``: a program of the test's own run instead (``python -c``, with
    ``args`` as its ``sys.argv[1:]``), one embedding ``foundation.cli.main``.
    """

    def __init__(
        self,
        *args: str,
        cwd: Path,
        env: dict[str, str] | None = None,
        ignored: tuple[int, ...] = (),
        script: str | None = None,
    ) -> None:
        import signal
        import threading

        def preexec() -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            for signum in ignored:
                signal.signal(signum, signal.SIG_IGN)

        program = ["-m", "foundation.cli"] if script is None else ["-c", script]
        self.process = subprocess.Popen(
            [sys.executable, *program, *args],
            cwd=cwd,
            env=cli_env(PYTHONUNBUFFERED="1") if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            # A background job of a non-interactive shell starts with SIGINT ignored.
            preexec_fn=preexec,  # noqa: PLW1509
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._open = 2
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True)
            for pipe, lines in (
                (self.process.stdout, self.stdout),
                (self.process.stderr, self.stderr),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: Any, lines: list[str]) -> None:
        for line in pipe:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._open -= 1
            self._changed.notify_all()

    def wait_for(self, match: str, timeout: float = 90) -> str:
        """The first line (of stdout or stderr) containing ``match``."""

        def found() -> str | None:
            return next((x for x in [*self.stdout, *self.stderr] if match in x), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or not self._open, timeout)
            line = found()
        assert line is not None, (
            f"no line with {match!r}; stdout {self.stdout[-20:]}, stderr {self.stderr[-20:]}"
        )
        return line

    def send(self, signum: int) -> None:
        assert self.process.poll() is None, (self.stdout[-20:], self.stderr[-20:])
        os.kill(self.process.pid, signum)

    def finish(self, timeout: float = 90) -> int | None:
        """The exit code (None if still running after ``timeout``), the output read."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(10)  # a process left behind may still hold the pipes
        return code

    def leftovers(self) -> list[str]:
        """Live processes still in the command's session (its pid is the session id)."""
        from tests.cli.test_demo_run import session_processes

        return session_processes(self.process.pid)

    def close(self) -> None:
        """Kill the command and whatever is left in its session; close the pipes."""
        from tests._processes import kill_session

        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        kill_session(self.process.pid)
        for reader in self._readers:
            reader.join(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds an established TCP connection to 127.0.0.1:``port``."""
    from tests.redis_support import _socket_inodes

    inodes = _socket_inodes(pid)
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if int(remote.split(":")[1], 16) == port and state == "01" and inode in inodes:
                return True
    return False


def wait_connected(run: Running, port: int, timeout: float = 60) -> None:
    """Poll (with a deadline) until ``run`` has connected to ``port``."""
    import time

    deadline = time.monotonic() + timeout
    while not connected_to(run.process.pid, port):
        assert run.process.poll() is None, (run.stdout, run.stderr)
        assert time.monotonic() < deadline, f"never connected to port {port}"
        time.sleep(0.005)  # sleep-ok: the poll interval of a loop with a deadline


def default_sigint() -> None:
    """``preexec_fn`` of a CLI child that must get Ctrl-C as a user's terminal
    sends it: a background job of a non-interactive shell starts with SIGINT
    ignored, and Python keeps it so."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
