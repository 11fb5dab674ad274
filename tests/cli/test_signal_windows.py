"""SIGINT and SIGTERM in the two windows where they used to go wrong: before the
argument parse has named the command, and during a demo part's cleanup.

Each signal is sent while the process is held at a known point, never after a
sleep: the process writes its stdout into a pipe the test has filled (a 4 KiB
pipe: the write blocks until the test reads), so it cannot move past that
write until the test drains the pipe. ``/proc/PID/syscall`` shows the blocked
``write(1, ...)``; the demo's thread count shows which part of it the process
has reached.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from foundation.cli import _command_words, _parser
from tests._processes import kill_session
from tests.cli._support import cli_env, default_sigint
from tests.cli.test_demo_run import session_processes
from tests.redis_support import RedisServer

WORD: dict[int, str] = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
CODE: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}


class HeldStdout:
    """A pipe for a child's stdout that the test fills: the child's next write
    blocks until ``drain`` reads it (and the filler) away."""

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, 4096)  # one page: quick to fill
        self.text = b""  # what was read (the child's output and the filler)
        self._reader: threading.Thread | None = None

    def fill(self) -> None:
        """Top the pipe up to full (what the child wrote meanwhile stays in it)."""
        # A file description of our own, non-blocking: the child shares ours.
        filler = os.open(f"/proc/self/fd/{self.write_end}", os.O_WRONLY | os.O_NONBLOCK)
        try:
            while True:
                os.write(filler, b"#")
        except BlockingIOError:
            pass  # full
        finally:
            os.close(filler)

    def read_until(
        self, line: bytes, process: subprocess.Popen[bytes], timeout: float = 90
    ) -> None:
        """Read (the child writing freely) until ``line`` ends a line; no further."""
        deadline = time.monotonic() + timeout
        while (b"\n" + line + b"\n") not in b"\n" + self.text:
            assert time.monotonic() < deadline, self.text[-2000:]
            assert process.poll() is None, self.text[-2000:]
            if not select.select([self.read_end], [], [], 0.5)[0]:
                continue  # nothing yet: check the deadline and the process again
            chunk = os.read(self.read_end, 1)  # byte by byte: nothing read past the line
            assert chunk, self.text[-2000:]
            self.text += chunk

    def drain(self) -> None:
        """Read everything from now on, in a thread (the child writes freely again)."""
        os.close(self.write_end)  # the child's copy is then the only writer: EOF at its exit

        def read() -> None:
            while chunk := os.read(self.read_end, 65536):
                self.text += chunk

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.write_end)
        if self._reader is not None:
            self._reader.join(10)
        with contextlib.suppress(OSError):
            os.close(self.read_end)


@contextlib.contextmanager
def _foundation(
    *args: str, cwd: Path, stdout: HeldStdout, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m foundation.cli ARGS`` in a session of its own, its stdout the held
    pipe (unbuffered: each print is a write); killed with its session at the end."""
    process = subprocess.Popen(
        [sys.executable, "-m", "foundation.cli", *args],
        cwd=cwd,
        stdout=stdout.write_end,
        stderr=subprocess.PIPE,
        env=cli_env(PYTHONUNBUFFERED="1") if env is None else env,
        start_new_session=True,
        preexec_fn=default_sigint,  # noqa: PLW1509
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)
        kill_session(process.pid)
        stdout.close()
        assert process.stderr is not None
        process.stderr.close()


def _poll(process: subprocess.Popen[bytes], what: str, ready: Callable[[], bool]) -> None:
    """Poll ``ready`` (with a deadline) while ``process`` runs."""
    deadline = time.monotonic() + 90
    while not ready():
        assert process.poll() is None, f"ended before {what}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.002)  # sleep-ok: the poll interval of a loop with a deadline


def _writing_stdout(pid: int) -> bool:
    """Whether ``pid`` is blocked in ``write(1, ...)`` (x86-64 and arm64 numbers)."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        return fields[:2] in (["1", "0x1"], ["64", "0x1"])
    return False


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("Threads:", 1)[1].split()[0])


def _ended(process: subprocess.Popen[bytes], code: int, line: str) -> None:
    """``process`` exited ``code`` with the one line ``line`` on stderr, nothing left running."""
    assert process.stderr is not None
    got = process.wait(90)
    err = process.stderr.read().decode()
    assert (got, err) == (code, line + "\n"), (got, err)
    assert not session_processes(process.pid)


# ------------------------------------------------------------- before the parse

SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])


@SIGNALS
@pytest.mark.parametrize(
    ("args", "command"),
    [
        (("flags", "--help"), "foundation flags"),
        (("--json", "agents", "--help"), "foundation agents"),
        (
            ("--store", "sqlite:///x.db", "migration", "--plan", "p", "status", "-h"),
            "foundation migration status",
        ),
        (("--help",), "foundation"),
    ],
    ids=["flags", "agents", "migration-status", "none"],
)
def test_a_signal_before_the_parse_names_the_command_from_the_arguments(
    tmp_path: Path, args: tuple[str, ...], command: str, signum: int
) -> None:
    # Was: "foundation: interrupted" (or "terminated") whatever the command, for a
    # signal before the parse had named it. Held here inside the parse: its
    # --help blocked on the full pipe.
    stdout = HeldStdout()
    stdout.fill()
    with _foundation(*args, cwd=tmp_path, stdout=stdout) as process:
        _poll(process, "blocked writing its help", lambda: _writing_stdout(process.pid))
        process.send_signal(signum)
        _ended(process, CODE[signum], f"{command}: {WORD[signum]}")


def test_the_words_read_from_the_arguments_are_the_parsers() -> None:
    # Every command and action the parser knows reads as the parse names it, with
    # options before and between them; the options that take a value there (before
    # the command, or between a command and its action) are those whose value the
    # reading skips.
    from foundation.cli import _VALUED

    parser = _parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert isinstance(commands, dict)
    valued = _valued(parser)
    for command, sub in commands.items():
        groups = [a for a in sub._actions if a.dest == "action"]
        if groups:  # options between the command and its action
            valued |= _valued(sub)
        for action in list(groups[0].choices or ()) if groups else [None]:
            words = [command] if action is None else [command, action]
            for before, between in [
                ([], []),
                (["--json", "--store", "sqlite:///a"], ["--redis=redis://h", "--namespace", "n"]),
                (["--sto", "flags", "--debug"], ["--plan", "agents"]),
            ]:
                argv = [*before, command, *between, *words[1:]]
                assert _command_words(argv) == words, argv
    assert valued == set(_VALUED)
    assert _command_words(["--json"]) == []
    assert _command_words(["nonsense", "list"]) == []
    assert _command_words(["--", "flags", "list"]) == ["flags", "list"]
    assert _command_words(["flags", "x=1"]) == ["flags"]


def _valued(parser: argparse.ArgumentParser) -> set[str]:
    """The long options of ``parser`` (not of its subparsers) that take a value."""
    return {
        name
        for action in parser._actions
        if action.option_strings and action.nargs != 0 and action.dest != "help"
        for name in action.option_strings
        if name != "--version"
    }


# ------------------------------------------------------------- a demo part's cleanup


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGINT, signal.SIGTERM),
        (signal.SIGTERM, signal.SIGINT),
        (signal.SIGINT, signal.SIGINT),
    ],
    ids=["TERM-TERM", "INT-TERM", "TERM-INT", "INT-INT"],
)
def test_a_signal_during_part_4s_cleanup_waits_for_its_end(
    tmp_path: Path, fresh_redis: RedisServer, first: int, second: int
) -> None:
    # Was: a signal landing in part 4's cleanup cut it short: the demo's keys
    # stayed in the user's Redis. The first signal stops part 4 (its 100 agents
    # registered, its table held by the full pipe); the second lands once the
    # cleanup has released the agents, while it announces the keys' removal (held
    # by the pipe again). It waits for the cleanup's end: the keys are gone, the
    # command ends on the first signal. Only a second Ctrl-C cuts the cleanup
    # short (docs/cli.md), and the demo says what stays.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = cli_env(PYTHONUNBUFFERED="1", TMPDIR=str(tmp))
    stdout = HeldStdout()
    args = ("demo", "--plain", "--agents", "2", "--seconds", "0.2", "--redis", fresh_redis.url)
    with _foundation(*args, cwd=tmp_path, stdout=stdout, env=env) as process:
        stdout.read_until(b"== 4. Two nodes on Redis ==", process)
        stdout.fill()  # its next print blocks: the table at the part's end
        # Both: the thread count alone (the nodes' threads count too) reached 100
        # with agents still to register, and the signal then landed there.
        _poll(
            process,
            "100 agents, the table held",
            lambda: _threads(process.pid) >= 100 and _writing_stdout(process.pid),
        )
        process.send_signal(first)
        _poll(process, "agents released", lambda: _threads(process.pid) < 50)
        process.send_signal(second)
        stdout.drain()
        _ended(process, CODE[first], f"foundation demo: {WORD[first]}")
    output = stdout.text.decode()
    # The table was held by the full pipe: the first signal landed in part 4.
    assert "Node A -> node B" not in output, output[-3000:]
    keys = fresh_redis.command("KEYS", "*")
    if first == second == signal.SIGINT:
        assert keys, "cut short by the second Ctrl-C: the keys stay"
        assert "stay in Redis: interrupted" in output, output[-3000:]
    else:
        assert keys == [], keys
        assert "removing the demo's keys" in output
        assert "stay in Redis" not in output, output[-3000:]
    assert not list(tmp.iterdir())


# The hold itself, as every part's cleanup uses it: real signals, raised in the
# main thread of a process of its own (raise_signal delivers before it returns).
_HOLD = """
import signal, sys
from foundation._cli._signals import Terminated, install_sigterm
from foundation._demo._interrupts import finishing

install_sigterm()
steps = []

def cleanup(*signums, cut=False):
    with finishing(cut_by_a_second_ctrl_c=cut):
        for signum in signums:
            signal.raise_signal(signum)
            steps.append(signum)

def case(name, first, *signums, cut=False):
    steps.clear()
    try:
        try:
            if first is not None:
                raise first
        finally:
            cleanup(*signums, cut=cut)
    except BaseException as exc:
        print(name, type(exc).__name__, len(steps), flush=True)
    else:
        print(name, None, len(steps), flush=True)

T, I = signal.SIGTERM, signal.SIGINT
case("at-the-end", None, T, I)
case("at-the-end-nothing", None)
case("unwinding-term", Terminated(), T, I)
case("unwinding-int", KeyboardInterrupt(), T)
case("unwinding-error", ValueError(), I)
case("second-ctrl-c", KeyboardInterrupt(), T, I, T, cut=True)
case("ctrl-c-after-term", Terminated(), I, T, cut=True)
signal.signal(T, lambda s, f: print("the program's handler", flush=True))
case("not-ours", None, T)
"""


def _script(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter (default hooks, SIGINT as a shell leaves
    it); it must exit 0 with nothing on stderr."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=default_sigint,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result
    return result


def test_a_cleanup_holds_signals_until_its_end(tmp_path: Path) -> None:
    # A signal during a cleanup waits for its end (every step of it runs); then
    # the first one is raised (over an error that unwinds), unless the cleanup
    # runs for a signal already (it goes on). A second Ctrl-C cuts a cleanup that
    # allows it short. A handler of someone else's is left alone.
    result = _script(_HOLD, tmp_path)
    assert result.stdout.splitlines() == [
        "at-the-end Terminated 2",
        "at-the-end-nothing None 0",
        "unwinding-term Terminated 2",
        "unwinding-int KeyboardInterrupt 1",
        "unwinding-error KeyboardInterrupt 1",
        "second-ctrl-c KeyboardInterrupt 1",
        "ctrl-c-after-term Terminated 2",
        "the program's handler",
        "not-ours None 1",
    ], result.stdout


# A real signal sent at one line of the handler swaps (placed with settrace):
# between the swap (or restore) of SIGINT and that of SIGTERM. Both go
# together: a signal there is held like any other, and both handlers are the
# raising ones again afterwards (before, a SIGTERM between the swaps raised out
# of the swap and left SIGINT held for good: every later Ctrl-C ignored).
_BETWEEN_SWAPS = """
import os, signal, sys
from foundation._cli._signals import Terminated, install_sigterm, raising_handler
from foundation._demo import _interrupts
signal.signal(signal.SIGINT, signal.default_int_handler)
install_sigterm()
for where in ("__enter__", "_restore"):
    code = getattr(_interrupts._Held, where).__code__
    sent = []
    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None
        def line(frame, event, arg):
            if event == "line" and frame.f_locals.get("signum") == signal.SIGTERM and not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGTERM)
            return line
        return line
    sys.settrace(tracer)
    try:
        with _interrupts.finishing():
            pass
        outcome = None
    except Terminated:
        outcome = "Terminated"
    sys.settrace(None)
    both = all(signal.getsignal(s) is raising_handler(s) for s in (signal.SIGINT, signal.SIGTERM))
    try:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
        ctrl_c = "ignored"
    except KeyboardInterrupt:
        ctrl_c = "raised"
    print(where, bool(sent), outcome, both, ctrl_c)
"""


def test_a_signal_between_the_two_handler_swaps_is_held_and_both_are_restored(
    tmp_path: Path,
) -> None:
    result = _script(_BETWEEN_SWAPS, tmp_path)
    assert result.stdout.splitlines() == [
        "__enter__ True Terminated True raised",
        "_restore True Terminated True raised",
    ], result.stdout


# ------------------------------------------------------------------ while foundation imports

# The console script's own entry point, with a signal sent to the process the
# moment the library's import reaches foundation.errors (an import hook of the
# test: the signal lands inside `import foundation`, before any handler of the
# command is installed). Before: SIGTERM killed the process silently, SIGINT
# printed Python's KeyboardInterrupt traceback.
_DURING_IMPORT = """
import os, signal, sys

class SignalDuringImport:
    def find_spec(self, name, path=None, target=None):
        if name == "foundation.errors":
            os.kill(os.getpid(), {signum})
        return None

sys.meta_path.insert(0, SignalDuringImport())
sys.argv = ["foundation", "version"]
import _foundation_cli
sys.exit(_foundation_cli.main())
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_the_console_script_imports_the_library_is_told_as_any_other(
    signum: int,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _DURING_IMPORT.format(signum=int(signum))],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert result.returncode == CODE[signum], result
    assert result.stderr == f"foundation version: {WORD[signum]}\n", result.stderr
    assert result.stdout == "", result.stdout  # the command never ran


def test_the_console_script_enters_through_the_signal_holding_launcher() -> None:
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="foundation")
    assert script.value == "_foundation_cli:main"
