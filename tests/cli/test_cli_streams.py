"""``foundation`` as a stream in a pipeline and in front of a person: a reader of
stdout that goes away (``| head -1``), Ctrl-C, ``agents show`` text, a
namespace no registry used, and the outage line of ``agents watch``.

Real subprocesses (default hooks), a real redis-server, a real ``RedisRegistry``
node in another process (``tests.redis.node_main``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.cli._support import ok_json, run_cli, start_cli
from tests.cli.test_agents_cli import Node
from tests.cli.test_watch_outage import Lines
from tests.redis_support import RedisServer, replica_of_an_empty_master

BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE (README, exit codes)


@pytest.fixture
def namespace() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def node(redis_server: RedisServer, namespace: str) -> Iterator[Node]:
    n = Node(redis_server.url, namespace)
    yield n
    n.close()


def _closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone (``| head -0``)."""
    read, write = os.pipe()
    os.close(read)
    return write


def _start(*args: str, cwd: Path, stdout: int) -> subprocess.Popen[str]:
    proc = start_cli(*args, cwd=cwd, stdout=stdout)
    if stdout >= 0:
        os.close(stdout)  # the child holds its own copy
    return proc


# ------------------------------------------------------------------- broken pipe


def test_history_into_a_reader_that_left_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags([Flag("beta")], store=store)
        flags.enable("beta", by="ana")
        flags.close()
    proc = _start(
        "--text",
        "flags",
        "history",
        "--store",
        f"sqlite:///{path}",
        cwd=tmp_path,
        stdout=_closed_pipe(),
    )
    _, err = proc.communicate(timeout=60)
    assert err == "", err  # no BrokenPipeError line, no "Exception ignored" at exit
    assert proc.returncode == BROKEN_PIPE_EXIT


@pytest.mark.parametrize(
    "command",
    [("flags", "enable", "beta"), ("migration", "advance")],
    ids=["flags-enable", "migration-advance"],
)
def test_a_write_into_a_reader_that_left_says_the_write_was_done(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    # 141 alone reads as a failure: a wrapper running the command again would
    # apply it twice (a migration one stage too far). One line says it was done.
    from foundation import Migration, MigrationPlan

    path = tmp_path / "flags.db"
    with SQLiteFlagStore(path) as store:
        plan = MigrationPlan.default()
        flags = FeatureFlags([Flag("beta"), *(Flag(n) for n in plan.flags)], store=store)
        Migration(flags, plan)
        flags.close()
    proc = _start(
        "--json", *command, "--store", f"sqlite:///{path}", cwd=tmp_path, stdout=_closed_pipe()
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == BROKEN_PIPE_EXIT, err
    assert "the reader of stdout went away after the write, which was done" in err, err
    with SQLiteFlagStore(path) as store:
        flags = FeatureFlags(
            [Flag("beta"), *(Flag(n) for n in MigrationPlan.default().flags)], store=store
        )
        if command[0] == "flags":
            assert flags.enabled("beta")
        else:
            assert Migration.from_store(flags).status().stage == 1
        flags.close()


def test_watch_into_a_reader_that_left_ends_quietly(
    redis_server: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    where = ("--redis", redis_server.url, "--namespace", namespace)
    proc = _start("--json", "agents", "watch", *where, cwd=tmp_path, stdout=_closed_pipe())
    assert proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        err.wait_for("the ready line", "watching ")
        node.do(op="register", key="first", meta={})  # its event line meets the closed pipe
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.rest()
    proc.stderr.close()
    assert proc.returncode == BROKEN_PIPE_EXIT, lines
    assert len(lines) == 1, lines  # the ready line only: no BrokenPipeError


def test_ctrl_c_ends_watch_with_130(
    redis_server: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    where = ("--redis", redis_server.url, "--namespace", namespace)
    proc = _start("--json", "agents", "watch", *where, cwd=tmp_path, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        err.wait_for("the ready line", "watching ")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.rest()
    proc.stderr.close()
    assert proc.returncode == 130, lines
    assert lines[1:] == ["foundation agents watch: interrupted"], lines


# ------------------------------------------------------------- agents for people


def test_show_text_prints_json_and_a_readable_time(
    redis_server: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    where = ("--redis", redis_server.url, "--namespace", namespace)
    node.do(op="register", key=["job", 7], meta={"tags": ["a", "b"], "note": "x"})
    shown = run_cli("--text", "agents", "show", '["job", 7]', *where, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(": ", 1) for line in shown.stdout.splitlines())
    assert lines["key"] == '["job", 7]'
    assert json.loads(lines["metadata"]) == {"tags": ["a", "b"], "note": "x"}
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+s ago\)", lines["registered_at"]
    ), lines
    # What show printed goes back in as it is.
    again = ok_json(run_cli("agents", "show", lines["key"], *where, cwd=tmp_path))
    assert again["key"] == ["job", 7]


def test_a_namespace_no_registry_used_is_a_warning(
    redis_server: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    typo = namespace + "-typo"
    listed = run_cli(
        "agents", "list", "--redis", redis_server.url, "--namespace", typo, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    (line,) = listed.stderr.strip().splitlines()
    assert line.startswith(f"warning: no registry has used namespace {typo!r}"), line
    assert repr(namespace) in line, line  # the namespaces in use
    assert "--namespace" in line, line
    # A namespace a registry uses, with no agent right now: empty, and no warning.
    empty = run_cli(
        "agents", "list", "--redis", redis_server.url, "--namespace", namespace, cwd=tmp_path
    )
    assert json.loads(empty.stdout) == []
    assert empty.stderr == ""


def test_an_empty_namespace_on_a_replica_says_replica_not_typo(tmp_path: Path) -> None:
    # Was: a master demoted to a replica of an empty server (REPLICAOF) showed 0
    # agents with "no registry has used namespace ... (--namespace NS names
    # another)", sending the operator after a typo while nodes held live agents.
    with replica_of_an_empty_master() as (master, replica):
        counted = run_cli(
            "agents", "count", "--redis", replica.url, "--namespace", "ns", cwd=tmp_path
        )
        assert counted.returncode == 0, counted.stderr
        assert json.loads(counted.stdout)["count"] == 0
        (line,) = counted.stderr.strip().splitlines()
        assert f"is a read-only replica of 127.0.0.1:{master.port}" in line, line
        assert "no registry has used" not in line, line


def test_the_watch_outage_line_is_one_clean_sentence(
    fresh_redis: RedisServer, namespace: str, tmp_path: Path
) -> None:
    n = Node(fresh_redis.url, namespace)
    where = ("--redis", fresh_redis.url, "--namespace", namespace)
    proc = _start("--json", "agents", "watch", *where, cwd=tmp_path, stdout=subprocess.DEVNULL)
    assert proc.stderr is not None
    err = Lines(proc.stderr)
    try:
        err.wait_for("the ready line", "watching ")
        fresh_redis.kill()
        down = err.wait_for("the disconnected line", "disconnected")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        lines = err.rest()
        proc.stderr.close()
        n.proc.kill()  # its Redis is gone: no orderly exit
        n.proc.wait()
        assert n.proc.stdin is not None
        assert n.proc.stdout is not None
        n.proc.stdin.close()
        n.proc.stdout.close()
    assert down.startswith(f"registry {namespace!r} disconnected (Redis at "), down
    assert down.endswith("); showing the last state seen until Redis is back"), down
    assert ".;" not in down, down
    assert ". " not in down, down  # no inner full stop
    assert "failed while" not in down, down  # what the observer was doing inside
    # No library thread died in the watch (default hooks print them on stderr).
    assert not any("Traceback" in line or "Exception in thread" in line for line in lines), lines
    assert proc.returncode == 0, lines
