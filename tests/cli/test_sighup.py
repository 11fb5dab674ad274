"""SIGHUP (the terminal closed, the ssh session dropped), sent to real ``foundation``
processes: the same rule as SIGTERM (docs/cli.md, "Signals").

The command unwinds through its ``finally`` blocks (the admin server closed,
the store and the Redis connections closed, the demo's temporary directory
removed), then prints ``foundation COMMAND: hung up`` and exits 129, also for
the commands that run until stopped: SIGHUP is not the service manager's stop
(that is SIGTERM, exit 0). A writing command holds it once its write began; a
SIGHUP the command started with ignored (``nohup``) stays ignored.

Was: SIGHUP killed the process at once (exit -1, no line), skipping every
``finally``: the SQLite store's ``-wal`` file and the demo's TMPDIR left behind.
Signals are sent once a readiness line is printed (or the process is seen
connected to Redis), never after a sleep.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from foundation.registry import RedisRegistry
from tests.cli._support import Running, cli_env, wait_connected
from tests.cli.test_signal_during_a_write import (
    WRITES,
    _args,
    _own_record,
    _pipe_full,
    _records,
    _start,
    _store,
    _wait_until,
)
from tests.redis_support import RedisServer

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")

HUNG_UP = 129  # 128 + SIGHUP


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Path:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        FeatureFlags([Flag("beta")], store=store).close()
    return path


def _wal_gone(store: Path) -> bool:
    """Whether SQLite's ``-wal`` file is gone: removed by the last connection's
    close (a process killed mid-way leaves it behind)."""
    return not Path(f"{store}-wal").exists()


def _ended(run: Running, code: int, command: str, word: str, *, before: int) -> None:
    """``run`` ended with ``code`` after ``before`` stderr lines and the one line
    ``foundation COMMAND: WORD``, never a traceback; nothing of it left running."""
    try:
        got = run.finish()
        leftovers = run.leftovers()
    finally:
        run.close()
    assert got == code, (got, run.stdout[-20:], run.stderr)
    assert not any("Traceback" in line for line in run.stderr), run.stderr
    assert run.stderr[before:] == [f"foundation {command}: {word}"], run.stderr
    assert not leftovers, f"still running after the command ended: {leftovers}"


def _url(line: str) -> tuple[str, str, int]:
    url = line.split()[2]
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return url, host, int(port)


# ------------------------------------------ what runs until stopped: exit 129


def test_sighup_ends_agents_watch_with_129_once_unwound(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    namespace = f"hup-{uuid.uuid4().hex[:8]}"
    RedisRegistry(redis_server.url, namespace=namespace).close()
    run = Running(
        "agents", "watch", "--redis", redis_server.url, "--namespace", namespace, cwd=tmp_path
    )
    try:
        run.wait_for("watching")
        wait_connected(run, redis_server.port)
        run.send(signal.SIGHUP)
    except BaseException:
        run.close()
        raise
    _ended(run, HUNG_UP, "agents watch", "hung up", before=1)


def test_sighup_ends_admin_with_129_its_server_and_stores_closed(
    tmp_path: Path, redis_server: RedisServer, sqlite_store: Path
) -> None:
    namespace = f"hup-{uuid.uuid4().hex[:8]}"
    RedisRegistry(redis_server.url, namespace=namespace).close()
    run = Running(
        "admin", "--store", f"sqlite:///{sqlite_store}", "--redis", redis_server.url,
        "--namespace", namespace, "--bind", "127.0.0.1:0", cwd=tmp_path,
    )  # fmt: skip
    try:
        _, host, port = _url(run.wait_for("admin page: http://"))
        assert not _wal_gone(sqlite_store), "the store is not open in WAL mode"
        run.send(signal.SIGHUP)
    except BaseException:
        run.close()
        raise
    _ended(run, HUNG_UP, "admin", "hung up", before=1)
    assert _wal_gone(sqlite_store), "the flag store was never closed"
    with pytest.raises(ConnectionRefusedError):  # the admin server is closed
        socket.create_connection((host, port), timeout=10).close()


def test_sighup_ends_demo_admin_with_129_its_temporary_files_removed(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = cli_env(PYTHONUNBUFFERED="1", TMPDIR=str(tmp))
    run = Running(
        "demo", "--plain", "--agents", "2", "--seconds", "0.2", "--admin", "127.0.0.1:0",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    try:
        run.wait_for("admin page: http://")
        assert list(tmp.iterdir()), "the demo's store is not in TMPDIR"
        run.send(signal.SIGHUP)
    except BaseException:
        run.close()
        raise
    _ended(run, HUNG_UP, "demo", "hung up", before=0)
    assert not list(tmp.iterdir()), list(tmp.iterdir())


def test_a_real_terminal_hangup_ends_admin_with_129_and_its_store_closed(
    tmp_path: Path, sqlite_store: Path
) -> None:
    """``foundation admin`` in a terminal of its own (a pty: its controlling
    terminal, stdout and stderr), then the terminal closed: the kernel sends
    SIGHUP, and writing to the terminal fails from then on (EIO). The command
    still unwinds and exits 129 (its last line lost with the terminal)."""
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # after setsid (start_new_session)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "foundation.cli", "admin", "--store", f"sqlite:///{sqlite_store}",
         "--bind", "127.0.0.1:0"],
        cwd=tmp_path, env=cli_env(PYTHONUNBUFFERED="1"),
        stdin=slave, stdout=slave, stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_terminal,  # noqa: PLW1509
    )  # fmt: skip
    os.close(slave)
    try:
        seen = b""
        deadline = time.monotonic() + 90
        # The whole line, its newline included: a hangup before print's last
        # write would fail that write (EIO) instead, an error (exit 1).
        while re.search(rb"admin page: http://\S+\r?\n", seen) is None:
            assert time.monotonic() < deadline, seen
            assert proc.poll() is None, seen
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 4096)
        assert not _wal_gone(sqlite_store), "the store is not open in WAL mode"
    except BaseException:
        proc.kill()
        proc.wait(30)
        os.close(master)
        raise
    os.close(master)  # the terminal hangs up: SIGHUP to its controlling process
    try:
        code = proc.wait(90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert code == HUNG_UP, (code, seen)
    assert _wal_gone(sqlite_store), "the flag store was never closed"


# ------------------------------------------------- during a write: held


@pytest.mark.parametrize(
    ("name", "point"),
    [
        ("migration advance", "printing"),
        ("flags disable", "printing"),
        ("flags enable", "committed"),
    ],
)
def test_sighup_after_the_commit_is_told_too_late_and_the_write_stands(
    tmp_path: Path, name: str, point: str
) -> None:
    """As for SIGINT and SIGTERM (test_signal_during_a_write): 129 would say
    "nothing done", and a second run would apply the write twice."""
    path = _store(tmp_path, WRITES[name][0])
    before = _records(path)
    proc = _start(_args(name, path))
    try:
        _wait_until(lambda: _records(path) > before, "the command's commit")
        if point == "printing":  # blocked writing its result into the full pipe
            _wait_until(lambda: _pipe_full(proc), "the command to fill its stdout")
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, err.splitlines()) == (
        0,
        [f"foundation {name}: SIGHUP during its write, held: the command ran to its end (exit 0)"],
    ), err[-2000:]
    record = _own_record(name, json.loads(out))
    assert record["reason"] == "the test's own write"


# ------------------------------------------- nohup: SIGHUP ignored stays so


def _ignores_sighup(pid: int) -> bool:
    """Whether ``pid`` ignores SIGHUP (``SigIgn`` in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(x for x in status if x.startswith("SigIgn:"))
    return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))


def test_admin_started_under_nohup_keeps_serving_after_sighup(
    tmp_path: Path, sqlite_store: Path
) -> None:
    run = Running(
        "admin", "--store", f"sqlite:///{sqlite_store}", "--bind", "127.0.0.1:0",
        cwd=tmp_path, ignored=(signal.SIGHUP,),
    )  # fmt: skip
    try:
        url, _, _ = _url(run.wait_for("admin page: http://"))  # serving: handlers in place
        assert _ignores_sighup(run.process.pid), "SIGHUP no longer ignored"
        # Discarded by the kernel as it is sent: nothing to wait for.
        run.send(signal.SIGHUP)
        with urllib.request.urlopen(url, timeout=30) as page:  # still serving
            assert page.status == 200
        assert _ignores_sighup(run.process.pid)
        run.send(signal.SIGTERM)  # its normal end
    except BaseException:
        run.close()
        raise
    _ended(run, 0, "admin", "terminated", before=1)


def test_agents_watch_started_under_nohup_keeps_watching_after_sighup(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    namespace = f"hup-{uuid.uuid4().hex[:8]}"
    RedisRegistry(redis_server.url, namespace=namespace).close()
    run = Running(
        "agents", "watch", "--redis", redis_server.url, "--namespace", namespace,
        cwd=tmp_path, ignored=(signal.SIGHUP,),
    )  # fmt: skip
    try:
        run.wait_for("watching")
        assert _ignores_sighup(run.process.pid), "SIGHUP no longer ignored"
        run.send(signal.SIGHUP)  # discarded by the kernel as it is sent
        assert run.process.poll() is None
        wait_connected(run, redis_server.port)  # still watching
        assert _ignores_sighup(run.process.pid)
        run.send(signal.SIGTERM)  # its normal end: only that one ends it
    except BaseException:
        run.close()
        raise
    _ended(run, 0, "agents watch", "terminated", before=1)


def test_a_write_whose_terminal_is_gone_exits_141_not_failed(sqlite_store: Path) -> None:
    """The terminal closed (a dropped ssh session) before the write's result is
    printed: the write is done, so the command must not exit 1 ("failed", and
    a wrapper runs it again): it ends as when stdout's reader went away, 141.
    Was: printing failed with EIO and the command exited 1. (The terminal is
    closed before the command starts, and is not its controlling terminal: no
    SIGHUP, only the failed write, deterministically.)"""
    master, slave = os.openpty()
    os.close(master)  # writes to the slave now fail with EIO
    try:
        done = subprocess.run(
            [sys.executable, "-m", "foundation.cli", "flags", "enable", "beta", "--text",
             "--store", f"sqlite:///{sqlite_store}"],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
            env=cli_env(), timeout=120, start_new_session=True, check=False,
        )  # fmt: skip
    finally:
        os.close(slave)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 141, stderr
    assert "the reader of stdout went away after the write, which was done" in stderr, stderr
    with SQLiteFlagStore(sqlite_store) as store:
        flags = FeatureFlags([Flag("beta")], store=store)
        try:
            assert flags.enabled("beta")
        finally:
            flags.close()
