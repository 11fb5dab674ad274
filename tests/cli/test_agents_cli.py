"""``foundation agents ...`` as a subprocess against a real redis-server, with a real
``RedisRegistry`` node in another process (``tests.redis.node_main``) registering agents."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli._support import cli_env, ok_json, one_line_error, run_cli, start_cli
from tests.redis_support import RedisServer

ROOT = Path(__file__).resolve().parents[2]


class Node:
    """A RedisRegistry node in its own process, driven over JSON lines."""

    def __init__(self, url: str, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.redis.node_main", url, namespace],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.name = self._read()["ready"]

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the node process died"
        return json.loads(line)

    def do(self, **cmd: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = self._read()
        assert reply.get("ok"), reply
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.do(op="exit")
            self.proc.wait(timeout=30)
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def namespace() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def node(redis_server: RedisServer, namespace: str) -> Iterator[Node]:
    n = Node(redis_server.url, namespace)
    yield n
    n.close()


def _where(redis_server: RedisServer, namespace: str) -> tuple[str, ...]:
    return ("--redis", redis_server.url, "--namespace", namespace)


def test_list_show_count(
    redis_server: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    node.do(op="register", key=["job", 1], meta={"role": "io", "cpu": 4})
    node.do(op="register", key="w2", meta={"role": "cpu", "cpu": 1})
    node.do(op="register", key="w3", meta={"role": "cpu", "cpu": 8})
    where = _where(redis_server, namespace)

    entries = ok_json(run_cli("agents", "list", *where, cwd=tmp_path))
    assert sorted(json.dumps(e["key"]) for e in entries) == ['"w2"', '"w3"', '["job", 1]']
    assert {e["node"] for e in entries} == {node.name}
    assert {e["kind"] for e in entries} == {"thread"}

    cpu = ok_json(run_cli("agents", "list", "--where", "cpu", "gte", "4", *where, cwd=tmp_path))
    assert sorted(json.dumps(e["key"]) for e in cpu) == ['"w3"', '["job", 1]']
    both = ok_json(
        run_cli(
            "agents",
            "list",
            "--where",
            "cpu",
            "gte",
            "4",
            "--where",
            "role",
            "eq",
            "cpu",
            *where,
            cwd=tmp_path,
        )
    )
    assert [e["key"] for e in both] == ["w3"]
    limited = ok_json(run_cli("agents", "list", "--limit", "2", *where, cwd=tmp_path))
    assert len(limited) == 2
    listed = ok_json(
        run_cli("agents", "list", "--where", "role", "in", '["io","x"]', *where, cwd=tmp_path)
    )
    assert [e["key"] for e in listed] == [["job", 1]]

    shown = ok_json(run_cli("agents", "show", '["job",1]', *where, cwd=tmp_path))
    assert shown["metadata"] == {"role": "io", "cpu": 4}
    assert ok_json(run_cli("agents", "show", "w2", *where, cwd=tmp_path))["key"] == "w2"
    line = one_line_error(run_cli("agents", "show", "nope", *where, cwd=tmp_path))
    assert line.startswith("NotRegistered: ")

    counted = ok_json(run_cli("agents", "count", *where, cwd=tmp_path))
    assert counted == {"count": 3, "by_kind": {"thread": 3}, "by_node": {node.name: 3}}

    text = run_cli("agents", "list", "--text", *where, cwd=tmp_path)
    assert text.returncode == 0
    assert '["job", 1]' in text.stdout
    assert "w3" in text.stdout

    line = one_line_error(  # bad input judged before acting: a usage error
        run_cli("agents", "list", "--where", "cpu", "bigger", "1", *where, cwd=tmp_path),
        exit_code=2,
    )
    assert line.startswith("InvalidCriteria: ")


def test_settings_and_errors(redis_server: RedisServer, namespace: str, tmp_path: Path) -> None:
    line = one_line_error(run_cli("agents", "count", cwd=tmp_path))
    assert line.startswith("InvalidConfig: no registry Redis given")
    env = cli_env(FOUNDATION_REDIS=redis_server.url, FOUNDATION_NAMESPACE=namespace)
    assert ok_json(run_cli("agents", "count", cwd=tmp_path, env=env))["count"] == 0
    (tmp_path / "foundation.toml").write_text(
        f'[cli]\nredis = "{redis_server.url}"\nnamespace = "{namespace}"\n'
    )
    assert ok_json(run_cli("agents", "count", cwd=tmp_path))["count"] == 0
    line = one_line_error(
        run_cli("agents", "count", "--redis", "redis://127.0.0.1:1/0", cwd=tmp_path), 69
    )
    assert line.startswith("BackendUnavailable: ")


def _start_watch(*args: str, cwd: Path) -> subprocess.Popen[str]:
    proc = start_cli("agents", "watch", *args, cwd=cwd)
    assert proc.stderr is not None
    ready = proc.stderr.readline()  # printed once it is subscribed: later changes are seen
    assert ready.startswith("watching "), ready
    return proc


def test_watch_sees_another_process_register_and_die(
    redis_server: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    watch = _start_watch("--count", "2", *_where(redis_server, namespace), cwd=tmp_path)
    node.do(op="register", key="worker", meta={"role": "io"})
    node.do(op="kill_agent", key="worker")  # the agent's thread ends: the node reports it down
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["event"], e["reason"], e["key"], e["node"]) for e in events] == [
        ("registered", None, "worker", node.name),
        ("unregistered", "down", "worker", node.name),
    ]
    assert events[1]["down"]["reason"] == "normal"
    assert events[0]["metadata"] == {"role": "io"}


def test_watch_unregister_then_sigterm(
    redis_server: RedisServer, namespace: str, node: Node, tmp_path: Path
) -> None:
    watch = _start_watch(*_where(redis_server, namespace), cwd=tmp_path)
    node.do(op="register", key="w", meta={})
    node.do(op="unregister", key="w")
    assert watch.stdout is not None
    first = json.loads(watch.stdout.readline())
    second = json.loads(watch.stdout.readline())
    assert (first["event"], second["event"], second["reason"]) == (
        "registered",
        "unregistered",
        "unregistered",
    )
    watch.send_signal(signal.SIGTERM)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err  # SIGTERM: the orderly end of what runs until stopped
    assert out == ""
    assert err.splitlines() == ["foundation agents watch: terminated"], err
