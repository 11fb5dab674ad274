"""A SIGINT or SIGTERM once a writing command's write has begun: the write and
the command run to their end, and the exit code is the command's.

130 and 143 tell a wrapper (``timeout``, a service manager) or an operator
that the command did not finish: they run it again. Given after the store
committed, a second ``migration advance`` moved the migration one stage too
far. Each test runs the installed console script, as an operator does, and
holds it at a point the test controls (its stdout or stderr a pipe nobody reads
yet, once the store holds the commit; another connection holding SQLite's write
lock), never by sleeping.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, SQLiteFlagStore, Stage
from tests.cli._support import cli_env, default_sigint

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals")

DECLARED = (
    Flag("beta"),
    Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red"),
    Flag("search_v2"),
    Flag("checkout_v2"),
)
# Longer than a pipe holds (64 KiB on Linux): an actor in every flag's state and
# a stage's name, so the command's JSON output carries it and the command
# blocks writing it until the test reads.
BIG = "x" * 70_000
PLAN = MigrationPlan(
    [Stage(1, BIG, ["search_v2"]), Stage(2, "checkout", ["checkout_v2"])], name="rollout"
)
REASON = "the test's own write"

# What each write needs first (so that it changes something), and the command.
WRITES: dict[str, tuple[Callable[[FeatureFlags, Migration], object], list[str]]] = {
    "flags enable": (lambda f, m: None, ["flags", "enable", "beta"]),
    "flags disable": (lambda f, m: f.enable("beta"), ["flags", "disable", "beta"]),
    "flags clear": (lambda f, m: f.enable("beta"), ["flags", "clear", "beta"]),
    "flags percentage": (lambda f, m: None, ["flags", "percentage", "beta", "50"]),
    "flags allow": (lambda f, m: None, ["flags", "allow", "beta", "ana"]),
    "flags deny": (lambda f, m: None, ["flags", "deny", "beta", "ana"]),
    "flags split": (lambda f, m: None, ["flags", "split", "color", "red=50", "blue=50"]),
    "flags assign": (lambda f, m: None, ["flags", "assign", "color", "qa", "blue"]),
    "flags unassign": (
        lambda f, m: f.assign("color", "qa", "blue"),
        ["flags", "unassign", "color", "qa"],
    ),
    "migration advance": (lambda f, m: None, ["migration", "advance"]),
    "migration rollback": (lambda f, m: m.advance(), ["migration", "rollback", "0"]),
    "migration emergency": (lambda f, m: m.advance(), ["migration", "emergency"]),
}


def _command() -> list[str]:
    """The installed ``foundation`` script (its signal-holding entry point), else
    the same entry point run by this interpreter."""
    script = shutil.which("foundation", path=str(Path(sys.executable).parent))
    if script is not None:
        return [script]
    return [sys.executable, "-c", "import sys; from _foundation_cli import main; sys.exit(main())"]


def _store(tmp_path: Path, prepare: Callable[[FeatureFlags, Migration], object]) -> Path:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store, FeatureFlags(DECLARED, store=store) as flags:
        for name in ("beta", "search_v2"):
            flags.deny(name, BIG)
        flags.assign("color", BIG, "red")
        prepare(flags, Migration(flags, PLAN))
    return path


def _args(name: str, path: Path) -> list[str]:
    words = WRITES[name][1]
    reason = [REASON] if name == "migration emergency" else ["--reason", REASON]
    return [*words, *reason, "--by", "ops", "--store", f"sqlite:///{path}"]


def _records(path: Path) -> int:
    """Flag changes and migration steps the file holds (read by a connection of its own)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        flags = db.execute("SELECT count(*) FROM flag_history").fetchone()[0]
        steps = db.execute("SELECT count(*) FROM migration_history").fetchone()[0]
    db.close()
    return int(flags) + int(steps)


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # sleep-ok: polling with a deadline


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*_command(), *args],
        # Unbuffered, as under many service managers: a held signal then cut
        # the result's write into the full pipe short (its end lost, exit 0).
        env=cli_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # noqa: PLW1509  (Ctrl-C reaches it, as from a terminal)
    )


def _own_record(name: str, out: dict[str, Any]) -> dict[str, Any]:
    """The change (flags) or step (migration) the command says it wrote."""
    record: dict[str, Any] = out["event"] if name.startswith("migration") else out["change"]
    return record


def _pipe_full(proc: subprocess.Popen[str]) -> bool:
    """Whether the command's stdout pipe is full: it is blocked writing its result."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    held = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, held)
    return int.from_bytes(held, sys.byteorder) >= fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


@pytest.mark.parametrize(
    ("name", "signum", "point"),
    [(name, signal.SIGTERM, "printing") for name in WRITES]
    + [(name, signal.SIGINT, "printing") for name in ("migration advance", "flags disable")]
    + [(name, signal.SIGTERM, "committed") for name in ("migration advance", "flags disable")],
)
def test_a_signal_after_the_commit_leaves_the_command_s_result_and_exit_0(
    tmp_path: Path, name: str, signum: int, point: str
) -> None:
    """``committed``: as soon as the file holds the commit (the command reads its
    result back, or prints it); ``printing``: once the command has filled the
    pipe with the start of its result (its write(2) then returns cut short)."""
    path = _store(tmp_path, WRITES[name][0])
    before = _records(path)
    proc = _start(_args(name, path))
    try:
        # Committed: the command then prints a result longer than the pipe holds,
        # and waits for the test to read it.
        _wait_until(lambda: _records(path) > before, "the command's commit")
        if point == "printing":
            _wait_until(lambda: _pipe_full(proc), "the command to fill its stdout")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    what = "SIGINT" if signum == signal.SIGINT else "SIGTERM"
    assert (proc.returncode, err.splitlines()) == (
        0,
        [f"foundation {name}: {what} during its write, held: the command ran to its end (exit 0)"],
    ), err[-2000:]
    record = _own_record(name, json.loads(out))
    assert (record["by"], record["reason"]) == ("ops", REASON)


def test_a_signal_at_any_point_exits_143_with_nothing_written_or_0_with_the_write(
    tmp_path: Path,
) -> None:
    """Signals at random points of ``migration advance`` and ``rollback``, half of
    them while another connection holds SQLite's write lock (the command waits
    for it, then the test lets go): exit 0 comes with the step recorded, any other
    end without it. (Which runs end which way is left to chance: only the pairing
    is asserted.)"""
    path = _store(tmp_path, lambda f, m: None)
    store = ["--store", f"sqlite:///{path}", "--by", "ops"]
    chance = random.Random(os.getpid())
    for i in range(12):
        before = _records(path)
        args = ["migration", "advance"] if i % 2 == 0 else ["migration", "rollback", "0"]
        holder = None
        if chance.random() < 0.5:
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
        proc = _start([*args, *store, "--reason", f"run {i}"])
        try:
            time.sleep(chance.uniform(0.0, 0.8))  # sleep-ok: picks where the signal lands
            proc.send_signal(chance.choice([signal.SIGTERM, signal.SIGINT]))
            if holder is not None:
                holder.execute("ROLLBACK")
            out, err = proc.communicate(timeout=60)
        finally:
            if holder is not None:
                holder.close()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        written = _records(path) > before
        if proc.returncode == 0:
            assert written, (i, out[-500:], err[-2000:])
            assert json.loads(out)["event"]["reason"] == f"run {i}"
        else:
            # 143/130 (its one line); the interpreter's own start (-15, -2, or 1
            # for a Ctrl-C while it imports `site`); or 1, a step refused (a
            # rollback at stage 0: the advance before it was stopped)
            assert proc.returncode in (1, 130, 143, -2, -15), (i, proc.returncode, err[-2000:])
            explained = "MigrationError: " in err or err.endswith("KeyboardInterrupt\n")
            assert proc.returncode != 1 or explained, (i, err[-2000:])
            assert not written, (i, proc.returncode, err[-2000:])
            assert out == "", (i, out[-500:])


# A first stage of many flags: the command's INFO lines of their changes (one
# each, bounded, about 100 bytes) hold more than a pipe (64 KiB on Linux).
WIDE = [f"wide_{n:04}" for n in range(1_500)]
WIDE_PLAN = MigrationPlan(
    [Stage(1, "wide", WIDE), Stage(2, "checkout", ["checkout_v2"])], name="rollout"
)


def test_the_json_event_is_the_command_s_own_step_while_another_writer_steps_in(
    tmp_path: Path,
) -> None:
    """Another writer's step committed between the command's commit and its output:
    the command still prints its own step (it read the plan's last one)."""
    path = tmp_path / "flags.db"
    declared = [Flag("checkout_v2"), *(Flag(name) for name in WIDE)]
    with SQLiteFlagStore(path) as store, FeatureFlags(declared, store=store) as flags:
        Migration(flags, WIDE_PLAN)
    before = _records(path)
    # --log-level info: its flag-change lines, after the commit, block the command
    # on stderr (WIDE) until the test reads them.
    where = ["--store", f"sqlite:///{path}"]
    proc = _start(
        ["migration", "advance", "--by", "ops", "--reason", REASON, "--log-level", "info", *where]
    )
    try:
        _wait_until(lambda: _records(path) > before, "the command's commit")
        with SQLiteFlagStore(path) as store, FeatureFlags.from_store(store) as flags:
            Migration.from_store(flags, "rollout").advance(by="ana", reason="the other step")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    data = json.loads(out)
    event = data["event"]
    assert (event["action"], event["from_stage"], event["to_stage"]) == ("advance", 0, 1)
    assert (event["by"], event["reason"]) == ("ops", REASON)
    assert data["status"]["stage"] == 2  # the status is read after: both steps
