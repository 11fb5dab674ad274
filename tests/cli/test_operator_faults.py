"""The ``foundation`` command against a misbehaving Redis, as an operator runs it at 3 a.m.

Every command is a real subprocess (``python -m foundation.cli``, default
hooks) against a real redis-server of this module's own, with one fault each:
frozen (SIGSTOP), a wrong password, an ACL user without write rights, out of
memory, read-only (a demoted master) and restarted empty. What
``test_exit_codes`` and ``test_flags_outage`` already run (a refused
connection for every command; a frozen Redis for ``flags list``/``enable``,
``migration status``, ``agents list``; reads on a read-only or full Redis;
``enable``/``percentage`` on a read-only one) is not repeated here.

Each run must end by itself (``run_cli``'s timeout fails a hang), with the
documented exit code and one line on stderr naming the problem and the
Redis address (never the password), no traceback.
"""

from __future__ import annotations

import contextlib
import io
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation import RedisRegistry, spawn_thread
from foundation._cli._flags import _warn_if_stale
from foundation.flags import (
    DEFAULT_FLAGS,
    FeatureFlags,
    Flag,
    Migration,
    MigrationPlan,
    RedisFlagStore,
    open_store,
)
from tests.cli._support import Running, cli_env, ok_json, one_line_error, run_cli
from tests.redis_support import RedisServer, free_port

UNAVAILABLE = 69
BOUND = 60.0  # run_cli's timeout: a command still running then has hung


def seed(server: RedisServer) -> None:
    """Namespace ``ops``: flags ``beta`` (on) and ``gamma``, the default plan at
    stage 0, and a registry namespace a node has used (closed: no agents)."""
    store = open_store(f"{server.url}?namespace=ops", create=True)
    flags = FeatureFlags([Flag("beta"), Flag("gamma"), *DEFAULT_FLAGS], store=store)
    Migration(flags, MigrationPlan.default())
    flags.enable("beta", by="ana")
    flags.close()
    store.close()
    RedisRegistry(server.url, namespace="ops").close()


COMMANDS = {
    "flags list": ("flags", "list", "--store", "{store}"),
    "flags show": ("flags", "show", "beta", "--store", "{store}"),
    "flags history": ("flags", "history", "beta", "--store", "{store}"),
    "flags value": ("flags", "value", "beta", "--store", "{store}"),
    "flags eval": ("flags", "eval", "beta", "--store", "{store}"),
    "flags enable": ("flags", "enable", "gamma", "--store", "{store}"),
    "flags disable": ("flags", "disable", "beta", "--store", "{store}"),
    "flags percentage": ("flags", "percentage", "gamma", "10", "--store", "{store}"),
    "migration status": ("migration", "status", "--store", "{store}"),
    "migration advance": ("migration", "advance", "--store", "{store}"),
    "migration emergency": ("migration", "emergency", "3am", "--store", "{store}"),
    "agents list": ("agents", "list", "--redis", "{redis}", "--namespace", "ops"),
    "agents show": ("agents", "show", "a", "--redis", "{redis}", "--namespace", "ops"),
    "agents count": ("agents", "count", "--redis", "{redis}", "--namespace", "ops"),
    "agents watch": ("agents", "watch", "--redis", "{redis}", "--namespace", "ops"),
    "demo --redis": ("demo", "--plain", "--redis", "{redis}", "--agents", "2"),
}
READS = ["flags list", "flags show", "flags history", "flags value", "flags eval"]
READS += ["migration status", "agents list", "agents count"]
WRITES = ["flags enable", "flags disable", "flags percentage", "migration advance"]
WRITES += ["migration emergency"]


def _run(name: str, url: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = [a.format(store=f"{url}?namespace=ops", redis=url) for a in COMMANDS[name]]
    return run_cli(*args, cwd=cwd, env=env, timeout=BOUND)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """No node copy to answer from: every answer comes from Redis, or fails."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return cli_env(FOUNDATION_CACHE_DIR=str(cache))


def unavailable(name: str, url: str, port: int, cwd: Path, env: dict[str, str]) -> str:
    """The one line of a run that exits 69, checked to name the Redis address."""
    line = one_line_error(_run(name, url, cwd, env), UNAVAILABLE)
    assert line.startswith("BackendUnavailable: Redis at redis://"), line
    assert f"127.0.0.1:{port}/0" in line, line
    return line


# ------------------------------------------------------------------ frozen (SIGSTOP)


@pytest.fixture(scope="module")
def frozen() -> Iterator[RedisServer]:
    with RedisServer() as server:
        seed(server)
        server.freeze()
        yield server
        server.thaw()


FROZEN_NOT_YET_RUN = [
    "flags show",
    "flags history",
    "flags value",
    "flags eval",
    "flags disable",
    "flags percentage",
    "migration advance",
    "migration emergency",
    "agents show",
    "agents count",
    "agents watch",
    "demo --redis",
]


@pytest.mark.parametrize("name", FROZEN_NOT_YET_RUN)
def test_a_frozen_redis_ends_every_command_with_69(
    name: str, frozen: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    # agents watch and the demo run until stopped once started: a frozen Redis
    # at their start ends them too, after the op timeout.
    line = unavailable(name, frozen.url, frozen.port, tmp_path, env)
    assert "no answer in time" in line, line


# ------------------------------------------------------------------ wrong password


@pytest.fixture(scope="module")
def guarded() -> Iterator[RedisServer]:
    with RedisServer(password="right-secret") as server:
        seed(server)
        yield server


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_wrong_password_is_69_naming_the_address_not_the_password(
    name: str, guarded: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    url = guarded.url.replace("right-secret", "wrong-secret")
    line = unavailable(name, url, guarded.port, tmp_path, env)
    assert "refused the credentials" in line, line
    assert "secret" not in line, line  # redis://:***@127.0.0.1:PORT/0


@pytest.mark.parametrize("before", [("--json",), ("--debug",), ("--store", "x.db")])
def test_common_options_before_demo_are_refused_by_name(
    before: tuple[str, ...], guarded: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    # The demo parses its own options, after its word. Before: argparse's
    # REMAINDER refused them after a common one ("unrecognized arguments:
    # --plain --redis ..."), naming the wrong arguments; dropping the common one
    # silently would run a demo other than the one asked for (no --store).
    url = guarded.url.replace("right-secret", "wrong-secret")
    result = run_cli(*before, "demo", "--plain", "--redis", url, cwd=tmp_path, env=env)
    assert result.returncode == 2, result
    assert result.stderr.strip() == (
        "foundation demo: the demo takes its own options after the word demo "
        f"(foundation demo --help); {' '.join(before)} before it does not apply to it"
    ), result.stderr
    assert result.stdout == "", result.stdout


def test_double_dash_before_demo_only_ends_the_options(tmp_path: Path, env: dict[str, str]) -> None:
    # "--" is not an option: the demo runs (here: its help), as "demo --help" would.
    result = run_cli("--", "demo", "--help", cwd=tmp_path, env=env)
    assert result.returncode == 0, result
    assert result.stdout.startswith("usage: foundation demo"), result.stdout


# ------------------------------------------------------------------ ACL: no write rights


@pytest.fixture(scope="module")
def reader() -> Iterator[tuple[RedisServer, str]]:
    """A server with an ACL user ``viewer`` that may read (and run the read
    scripts) but not write: an operator's read-only account."""
    with RedisServer(password="admin-secret") as server:
        seed(server)
        server.command(
            "ACL", "SETUSER", "viewer", "on", ">viewer-pw", "~*", "&*",
            "+@read", "+@connection", "+client", "+evalsha", "+eval", "+script",
        )  # fmt: skip
        yield server, server.url.replace(":admin-secret@", "viewer:viewer-pw@")


@pytest.mark.parametrize("name", READS)
def test_an_acl_user_without_write_rights_reads(
    name: str, reader: tuple[RedisServer, str], tmp_path: Path, env: dict[str, str]
) -> None:
    _server, url = reader
    ok_json(_run(name, url, tmp_path, env))


@pytest.mark.parametrize("name", [*WRITES, "demo --redis"])
def test_an_acl_user_without_write_rights_gets_69_naming_the_refusal(
    name: str, reader: tuple[RedisServer, str], tmp_path: Path, env: dict[str, str]
) -> None:
    server, url = reader
    line = unavailable(name, url, server.port, tmp_path, env)
    assert "NOPERM" in line, line
    assert "permission" in line, line
    assert "viewer-pw" not in line, line


# ------------------------------------------------------------------ out of memory


@pytest.fixture(scope="module")
def full() -> Iterator[RedisServer]:
    with RedisServer() as server:
        seed(server)
        server.oom_on()
        yield server
        server.oom_off()


@pytest.mark.parametrize("name", [*WRITES, "demo --redis"])
def test_out_of_memory_refuses_a_write_with_69(
    name: str, full: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    line = unavailable(name, full.url, full.port, tmp_path, env)
    assert "OOM" in line, line
    assert "out of memory" in line, line


@pytest.mark.parametrize("name", ["agents list", "agents count", "migration status"])
def test_out_of_memory_still_answers_reads(
    name: str, full: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    ok_json(_run(name, full.url, tmp_path, env))


# ------------------------------------------------------------------ read-only (demoted)


@pytest.fixture(scope="module")
def demoted() -> Iterator[RedisServer]:
    with RedisServer() as server:
        seed(server)
        server.make_read_only()
        yield server
        server.make_writable()


@pytest.mark.parametrize("name", ["flags disable", "migration advance", "migration emergency"])
def test_a_read_only_redis_refuses_the_kill_switch_and_steps_with_69(
    name: str, demoted: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    line = unavailable(name, demoted.url, demoted.port, tmp_path, env)
    assert "READONLY" in line, line
    assert "read-only replica" in line, line
    if name in ("flags disable", "migration emergency"):
        assert "admin page" in line, line  # where a kill switch can be kept instead


# ------------------------------------------------------------------ writes paused


@pytest.fixture
def paused(fresh_redis: RedisServer) -> Iterator[RedisServer]:
    """``CLIENT PAUSE ... WRITE``, what Redis does during a ``FAILOVER``: reads
    are answered, every write waits (here longer than any bound below)."""
    seed(fresh_redis)
    fresh_redis.command("CLIENT", "PAUSE", "300000", "WRITE")
    yield fresh_redis
    fresh_redis.command("CLIENT", "UNPAUSE")


def test_reads_answer_and_the_rest_is_69_while_writes_are_paused(
    paused: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    # The registry's snapshot is a Lua script, which Redis pauses unless it is
    # flagged no-writes: it is, on Redis >= 7 (this server), so the agents
    # commands answer. (Redis 6.2 knows no flag: there they meet the pause.)
    for name in ("flags list", "agents list", "agents count"):
        ok_json(_run(name, paused.url, tmp_path, env))
    # The demo registers agents: it meets the pause, one line after the op
    # timeout, as frozen.
    line = unavailable("demo --redis", paused.url, paused.port, tmp_path, env)
    assert "no answer in time" in line, line


# CLIENT PAUSE WRITE (as a FAILOVER does): reads answer, EXEC waits. redis-py
# reports EXEC's timeout while WATCHing as WatchError; read back, the commit did
# not land, and a retry would wait again (up to 1000 timeouts, the whole pause).
def test_a_flag_write_is_69_while_writes_are_paused(
    paused: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    args = [a.format(store=f"{paused.url}?namespace=ops") for a in COMMANDS["flags disable"]]
    result = run_cli(*args, cwd=tmp_path, env=env, timeout=20)  # 10 op timeouts
    line = one_line_error(result, UNAVAILABLE)
    assert line.startswith("BackendUnavailable: Redis at redis://"), line


# ------------------------------------------------------------------ restarted empty


def test_after_redis_restarted_empty_the_flag_commands_say_no_flag_data(
    fresh_redis: RedisServer, tmp_path: Path, env: dict[str, str]
) -> None:
    # No node copy on this machine and no service yet to restore the flags:
    # the documented "a Redis namespace with no flag data is an error" (exit 1),
    # one line naming the namespace and the address; the registry is just empty.
    seed(fresh_redis)
    fresh_redis.restart()
    for name in ("flags list", "flags disable", "migration status"):
        line = one_line_error(_run(name, fresh_redis.url, tmp_path, env), 1)
        assert line.startswith("InvalidConfig: no flag store in namespace 'ops'"), line
        assert f"127.0.0.1:{fresh_redis.port}/0" in line, line
    assert ok_json(_run("agents count", fresh_redis.url, tmp_path, env))["count"] == 0


# ------------------------------------------------------------------ foundation admin's start


@pytest.mark.parametrize("fault", ["killed", "frozen", "wrong password"])
@pytest.mark.parametrize("where", ["--store", "--redis"])
def test_admin_does_not_start_on_a_redis_it_cannot_use(
    fault: str, where: str, tmp_path: Path, env: dict[str, str]
) -> None:
    with RedisServer(password="pw-ok" if fault == "wrong password" else None) as server:
        seed(server)
        url = server.url
        if fault == "killed":
            server.kill()
        elif fault == "frozen":
            server.freeze()
        else:
            url = url.replace("pw-ok", "pw-bad")
        target = f"{url}?namespace=ops" if where == "--store" else url
        bind = f"127.0.0.1:{free_port()}"
        result = run_cli("admin", where, target, "--bind", bind, cwd=tmp_path, env=env)
        if server.frozen:
            server.thaw()
    line = one_line_error(result, UNAVAILABLE)
    assert line.startswith("BackendUnavailable: Redis at redis://"), line
    assert f"127.0.0.1:{server.port}/0" in line, line
    assert "pw-" not in line, line


# ------------------------------------------------------------------ agents watch, mid-run


def _rotate_password(server: RedisServer, password: str) -> None:
    """Change ``requirepass`` and cut every client: they must log in again."""
    server.command("CONFIG", "SET", "requirepass", password)
    server.password = password
    server.command("CLIENT", "KILL", "TYPE", "normal")


@pytest.mark.parametrize("fault", ["frozen", "password rotated"])
def test_agents_watch_says_it_lost_redis_and_carries_on(fault: str, tmp_path: Path) -> None:
    with RedisServer(password="first") as server:
        stop = threading.Event()
        node = RedisRegistry(server.url, namespace="ops", op_timeout=1.0)
        node.register("a", spawn_thread(stop.wait), {"role": "io"})
        watch = Running("--json", "agents", "watch", "--redis", server.url, "--namespace", "ops",
                        cwd=tmp_path)  # fmt: skip
        try:
            watch.wait_for("watching 'ops' (1 agents)")
            if fault == "frozen":
                server.freeze()
            else:
                _rotate_password(server, "second")
            down = watch.wait_for("disconnected")
            # One line per change of state: after the password change, the cause
            # it names is the cut connection or the refused login (the reconnect),
            # whichever the observer met first.
            why = (
                ("no answer in time",)
                if fault == "frozen"
                else ("refused the credentials", "Connection closed by server")
            )
            assert down.startswith("registry 'ops' disconnected (Redis at redis://"), down
            assert f"127.0.0.1:{server.port}/0" in down, down
            assert any(cause in down for cause in why), down
            assert "first" not in down, down
            assert "second" not in down, down
            if fault == "frozen":
                server.thaw()
            else:
                _rotate_password(server, "first")
            watch.wait_for("connected again")
            watch.send(signal.SIGTERM)  #: the normal end of a command that runs until stopped
            assert watch.finish() == 0, (watch.stdout, watch.stderr)
        finally:
            if server.frozen:
                server.thaw()
            watch.close()
            stop.set()
            node.close()
    # The ready line, one line per change of the connection, the SIGTERM line:
    # nothing else (no traceback, no library log line).
    assert watch.stderr[0].startswith("watching 'ops'"), watch.stderr
    assert watch.stderr[-1] == "foundation agents watch: terminated", watch.stderr
    assert all(line.startswith("registry 'ops' ") for line in watch.stderr[1:-1]), watch.stderr


# ------------------------------------------------------------------ the stale warning


def test_the_stale_warning_of_a_store_without_a_node_copy_says_so(
    fresh_redis: RedisServer,
) -> None:
    """A CLI store has no node copy on a machine without a service: when its
    change feed fails just after it read Redis (here an ACL user without
    XREAD), the warning said "node copy None"; it says what it answers from."""
    seed(fresh_redis)
    fresh_redis.command("ACL", "SETUSER", "default", "-xread")
    store = RedisFlagStore(fresh_redis.url, namespace="ops", timeout=0.5, cache_path=None)
    try:
        deadline = time.monotonic() + 30
        while not store.stale and time.monotonic() < deadline:  # the listener meets NOPERM
            time.sleep(0.01)  # sleep-ok: the poll interval of a loop with a deadline
        assert store.stale, store.status()
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            _warn_if_stale(store)
    finally:
        store.close()
        fresh_redis.command("ACL", "SETUSER", "default", "+xread")
    line = err.getvalue().strip()
    assert "None" not in line, line
    assert line.startswith("warning: the flag store lost Redis just after reading it; "), line
    assert " at version " in line, line
    assert "NOPERM" in line, line
