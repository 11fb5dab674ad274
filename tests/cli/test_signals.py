"""SIGINT (Ctrl-C) and SIGTERM, sent to real ``foundation`` processes.

One rule for every command (docs/cli.md): what the command started is stopped
first (its processes, redis-server, supervisor, admin server, temporary
files), then one line ``foundation COMMAND: interrupted|terminated`` on stderr,
never a traceback; exit 130 for SIGINT, 143 for SIGTERM, except that SIGTERM
is the normal end (exit 0, the demo's own code) of what runs until stopped:
``admin``, ``agents watch``, ``demo --admin`` once serving. A signal during the
start (the command blocked on a frozen Redis) ends the same way.

Signals are sent once a readiness line is printed (or the process is seen
connected to Redis, or its agents' processes are seen running), never after
a sleep. Each command runs in a session of its own: whatever it leaves
running is found by the session id; its temporary files go to a TMPDIR of the
test's own.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore, open_store
from foundation.registry import RedisRegistry
from tests.cli._support import Running, cli_env, wait_connected
from tests.redis_support import RedisServer

WORD: dict[int, str] = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}
SIGNALS = pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
T = TypeVar("T")


@pytest.fixture
def tmpdir_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """The command's environment with TMPDIR a directory of this test's own."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return cli_env(PYTHONUNBUFFERED="1", TMPDIR=str(tmp)), tmp


@pytest.fixture
def sqlite_store(tmp_path: Path) -> str:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        FeatureFlags([Flag("beta")], store=store).close()
    return f"sqlite:///{path}"


def _signal_at(run: Running, ready: Callable[[], T], *signums: int) -> T:
    """Wait for ``ready()`` (a readiness line, a connection...), then send ``signums``
    to ``run``; kill ``run`` if either fails. Returns what ``ready`` returned."""
    try:
        got = ready()
        for signum in signums:
            run.send(signum)
    except BaseException:
        run.close()
        raise
    return got


def _ended(
    run: Running, code: int | tuple[int, ...], command: str, signum: int, *, before: int = 0
) -> int:
    """``run`` ended with ``code`` (or one of them) after ``before`` stderr lines and
    the one line ``foundation COMMAND: interrupted|terminated`` for ``signum``, never
    a traceback; nothing of it is left running. Returns the code."""
    try:
        got = run.finish()
        leftovers = run.leftovers()
    finally:
        run.close()
    codes = code if isinstance(code, tuple) else (code,)
    assert got in codes, (got, run.stdout[-20:], run.stderr)
    assert len(run.stderr) == before + 1, run.stderr
    assert not any("Traceback" in line for line in run.stderr), run.stderr
    assert not leftovers, f"still running after the command ended: {leftovers}"
    assert run.stderr[-1] == f"foundation {command}: {WORD[signum]}", run.stderr
    return got


def _poll(run: Running, what: str, ready: Callable[[], bool], interval: float = 0.01) -> None:
    """Poll ``ready`` (with a deadline) while ``run`` runs."""
    deadline = time.monotonic() + 60
    while not ready():
        assert time.monotonic() < deadline, f"never {what}: {run.leftovers()}"
        assert run.process.poll() is None, run.stderr
        time.sleep(interval)  # sleep-ok: the poll interval of a loop with a deadline


# ------------------------------------------------------------- demo --admin

DEMO_ADMIN = ("demo", "--plain", "--agents", "2", "--seconds", "0.2", "--admin", "127.0.0.1:0")


@SIGNALS
@pytest.mark.parametrize("at", ["serving", "starting"])
def test_demo_admin_stops_everything_on_a_signal(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path], signum: int, at: str
) -> None:
    # serving (sent once the page is served). Was: Ctrl-C exited 0 without a
    # word; SIGTERM killed it, its temporary directory (the SQLite store) left
    # behind. SIGINT: 130. SIGTERM ends the serving, which runs until stopped:
    # the demo's own code, 0 since every invariant held.
    # starting (sent at the summary's last line): the signal lands while the
    # admin demo sets up its store, supervisor and server (before the page is
    # served), or in the summary's last prints: 130, or 143 (not serving yet),
    # cleanly. On a loaded machine the page may be up before a SIGTERM lands:
    # then it is the normal end of a serving demo, 0 (docs/cli.md), as cleanly.
    env, tmp = tmpdir_env
    run = Running(*DEMO_ADMIN, cwd=tmp_path, env=env)
    if at == "serving":

        def ready() -> str:
            line = run.wait_for("admin page: http://")
            assert list(tmp.iterdir()), "the demo's store is not in TMPDIR"
            return line

        url = _signal_at(run, ready, signum).split()[2]
        _ended(run, 130 if signum == signal.SIGINT else 0, "demo", signum)
        assert any(line.endswith("invariants held") for line in run.stdout), run.stdout
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):  # the admin server is closed
            socket.create_connection((host, int(port)), timeout=10).close()
    else:
        _signal_at(run, lambda: run.wait_for("invariants held"), signum)
        code = _ended(run, 130 if signum == signal.SIGINT else (143, 0), "demo", signum)
        if code == 143:  # stopped before serving: the page never came up
            assert not any(line.startswith("admin page:") for line in run.stdout), run.stdout
    assert not list(tmp.iterdir()), list(tmp.iterdir())


# ------------------------------------------------------------- demo parts


def test_sigterm_in_a_demo_part_stops_its_processes_and_exits_143(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path]
) -> None:
    # Was: killed by SIGTERM at once, its 300 agent processes left running.
    env, _tmp = tmpdir_env
    run = Running("demo", "--plain", "--agents", "300", "--seconds", "1", cwd=tmp_path, env=env)

    def agents_running() -> None:
        run.wait_for("registering agents")
        # The process agents run `sleep`: 20 of them means the part is under way.
        _poll(run, "20 agents", lambda: sum(" sleep" in p for p in run.leftovers()) >= 20)

    _signal_at(run, agents_running, signal.SIGTERM)
    _ended(run, 143, "demo", signal.SIGTERM)


@pytest.mark.parametrize(
    ("signum", "at"),
    [
        (signal.SIGTERM, "fault: redis-server frozen"),
        (signal.SIGINT, "fault: redis-server frozen"),
        # Once its redis-server process runs: the signal lands while the start
        # waits for it to answer (most runs) or just after; it goes either way.
        (signal.SIGINT, "redis-server"),
    ],
    ids=["TERM-frozen", "INT-frozen", "INT-start"],
)
def test_chaos_stops_its_redis_server_on_a_signal(
    tmp_path: Path, tmpdir_env: tuple[dict[str, str], Path], signum: int, at: str
) -> None:
    # Was: SIGTERM left the redis-server running (frozen, SIGSTOPped) and both
    # temporary directories; a Ctrl-C in the server's start left its directory.
    env, tmp = tmpdir_env
    run = Running(
        "demo", "--plain", "--chaos", "--fault-seconds", "3", "--workers", "2",
        cwd=tmp_path, env=env,
    )  # fmt: skip

    def ready() -> None:
        if at == "redis-server":  # a process of that name runs in the command's session
            _poll(
                run, at, lambda: any(p.split(maxsplit=1)[1] == at for p in run.leftovers()), 0.001
            )
        else:
            run.wait_for(at)

    _signal_at(run, ready, signum)
    _ended(run, 130 if signum == signal.SIGINT else 143, "demo", signum)
    assert not list(tmp.iterdir()), list(tmp.iterdir())


# ------------------------------------------------------------- foundation admin


@SIGNALS
def test_admin_stops_on_a_signal_with_one_line(
    tmp_path: Path, redis_server: RedisServer, sqlite_store: str, signum: int
) -> None:
    # Was: Ctrl-C exited 0 without a word.
    namespace = f"sig-{uuid.uuid4().hex[:8]}"
    run = Running(
        "admin", "--store", sqlite_store, "--redis", redis_server.url, "--namespace", namespace,
        "--bind", "127.0.0.1:0", cwd=tmp_path,
    )  # fmt: skip
    _signal_at(run, lambda: run.wait_for("admin page: http://"), signum)
    _ended(run, 130 if signum == signal.SIGINT else 0, "admin", signum, before=1)


@pytest.fixture(scope="module")
def frozen_redis() -> Iterator[RedisServer]:
    """A redis-server holding a flag store and a registry namespace, then frozen
    (SIGSTOP): a command connects, then waits for an answer that never comes."""
    with RedisServer() as server:
        store = open_store(f"{server.url}?namespace=frozen", create=True)
        FeatureFlags([Flag("beta")], store=store).close()
        store.close()
        RedisRegistry(server.url, namespace="frozen").close()
        server.freeze()
        yield server
        server.thaw()


STARTS = {
    "admin": ("admin", "--redis", "{url}", "--namespace", "frozen", "--bind", "127.0.0.1:0"),
    "agents watch": ("agents", "watch", "--redis", "{url}", "--namespace", "frozen"),
    "flags list": ("flags", "list", "--store", "{url}?namespace=frozen"),
}


@SIGNALS
@pytest.mark.parametrize("command", list(STARTS))
def test_a_signal_during_the_start_ends_the_command_the_same_way(
    tmp_path: Path, frozen_redis: RedisServer, command: str, signum: int
) -> None:
    # Was: SIGTERM killed the command (no line, exit -15); SIGINT exited 130
    # without a word.
    args = [a.replace("{url}", frozen_redis.url) for a in STARTS[command]]
    run = Running(*args, cwd=tmp_path)
    # Sent once it is connected: blocked on the frozen server (op timeout).
    _signal_at(run, lambda: wait_connected(run, frozen_redis.port), signum)
    _ended(run, 130 if signum == signal.SIGINT else 143, command, signum)
    assert not any("admin page" in line for line in run.stderr)  # never served


def test_a_second_ctrl_c_cuts_the_admin_shutdown_short(tmp_path: Path, sqlite_store: str) -> None:
    # The first Ctrl-C closes the server; closing the registry then waits on a
    # frozen Redis (up to its op timeouts): the second one ends that wait, with
    # the same single line and no traceback.
    with RedisServer() as server:
        RedisRegistry(server.url, namespace="second").close()
        run = Running(
            "admin", "--store", sqlite_store, "--redis", server.url, "--namespace", "second",
            "--bind", "127.0.0.1:0", cwd=tmp_path,
        )  # fmt: skip
        try:
            url = run.wait_for("admin page: http://").split()[2]
            host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
            server.freeze()
            run.send(signal.SIGINT)
            _wait_refused(run, host, int(port))  # the server is closed: now in the close
            if run.process.poll() is None:
                run.send(signal.SIGINT)
            _ended(run, 130, "admin", signal.SIGINT, before=1)
        finally:
            run.close()
            server.thaw()


def _wait_refused(run: Running, host: str, port: int) -> None:
    """Poll (with a deadline) until nothing listens on ``host:port`` (or ``run`` ended)."""
    deadline = time.monotonic() + 60
    while run.process.poll() is None:
        try:
            socket.create_connection((host, port), timeout=5).close()
        except ConnectionRefusedError:
            return
        assert time.monotonic() < deadline, "the admin server never closed"
        time.sleep(0.01)  # sleep-ok: the poll interval of a loop with a deadline


# ------------------------------------------- signals the program keeps for itself


def _ignored_mask(pid: int) -> int:
    """The process's mask of ignored signals (``SigIgn`` in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(x for x in status if x.startswith("SigIgn:"))
    return int(line.split()[1], 16)


@SIGNALS
def test_admin_leaves_a_signal_it_started_with_ignored_alone(
    tmp_path: Path, sqlite_store: str, signum: int
) -> None:
    # Was: uvicorn took SIGINT and SIGTERM over while serving, whatever their
    # handler: `nohup foundation admin` stopped on SIGTERM, a background job
    # (SIGINT ignored) on SIGINT; docs/cli.md says an ignored signal stays so.
    other = signal.SIGTERM if signum == signal.SIGINT else signal.SIGINT
    run = Running(
        "admin", "--store", sqlite_store, "--bind", "127.0.0.1:0",
        cwd=tmp_path, ignored=(signum,),
    )  # fmt: skip

    def serving() -> None:
        run.wait_for("admin page: http://")  # serving: its handlers are in place
        assert _ignored_mask(run.process.pid) & (1 << (signum - 1)), "no longer ignored"

    # signum is discarded by the kernel (nothing to wait for); other ends it, as
    # it alone would.
    _signal_at(run, serving, signum, other)
    _ended(run, 130 if other == signal.SIGINT else 0, "admin", other, before=1)


# A program of its own that handles SIGTERM, then runs `foundation admin` in
# its main thread through foundation.cli.main.
_EMBEDDING = """
import signal, sys
from foundation.cli import main

def mine(signum, frame):
    print(f"the program's handler: {signum}", flush=True)

signal.signal(signal.SIGTERM, mine)
code = main(sys.argv[1:])
print(f"main returned {code}; handler kept: {signal.getsignal(signal.SIGTERM) is mine}", flush=True)
"""


def test_admin_embedded_leaves_the_programs_sigterm_handler_alone(
    tmp_path: Path, sqlite_store: str
) -> None:
    # Was: the program's SIGTERM handler was never called while the admin page
    # served: uvicorn's handler stopped the server instead (main returned 0).
    run = Running(
        "admin", "--store", sqlite_store, "--bind", "127.0.0.1:0",
        cwd=tmp_path, script=_EMBEDDING,
    )  # fmt: skip

    _signal_at(run, lambda: run.wait_for("admin page: http://"), signal.SIGTERM)

    def handled() -> None:
        run.wait_for("the program's handler: 15")
        assert run.process.poll() is None, run.stderr  # still serving

    _signal_at(run, handled, signal.SIGINT)
    _signal_at(run, lambda: run.wait_for("main returned"))
    _ended(run, 0, "admin", signal.SIGINT, before=1)
    assert run.stdout == [
        "the program's handler: 15",
        "main returned 130; handler kept: True",
    ], run.stdout
