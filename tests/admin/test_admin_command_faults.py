"""``foundation admin`` (the command, a real subprocess) over a misbehaving Redis.

The command serves a Redis flag store and a registry namespace where a node
(in the test's process) keeps one live agent; the test's own redis-server
then freezes (SIGSTOP), turns read-only, runs out of memory, has its password
changed under the connected clients, or restarts empty. Throughout: every
request is answered (httpx's timeout fails a hang), reads come from the
caches with 200, writes are a 503 JSON ``BackendUnavailable`` naming the
Redis address (never the password), a kill switch is kept locally
(``"sync": "pending"``), OFREP still evaluates; once the fault is undone the
server recovers by itself (``/api/status`` no longer degraded, the kill
switch committed, writes work), and SIGTERM ends it with 0 and no traceback.
``tests/admin/test_degraded_status.py`` runs a refused connection (Redis
killed) against an in-process ``AdminServer``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from foundation import RedisRegistry, spawn_thread
from tests.cli._support import Running
from tests.cli.test_operator_faults import seed
from tests.redis_support import RedisServer, free_port

DEADLINE = 45.0
FAULTS = ["frozen", "read-only", "out of memory", "password changed", "restarted empty"]
READS = [
    "healthz",
    "api/whoami",
    "api/flags",
    "api/flags/beta",
    "api/flags/beta/evaluate?actor=x",
    "api/history",
    "api/migration",
    "api/agents",
    "api/agents/dead",
    "metrics",
]


def _apply(server: RedisServer, fault: str) -> None:
    if fault == "frozen":
        server.freeze()
    elif fault == "read-only":
        server.make_read_only()
    elif fault == "out of memory":
        server.oom_on()
    elif fault == "password changed":
        _password(server, "changed-secret")
    else:
        server.restart()


def _undo(server: RedisServer, fault: str) -> None:
    if fault == "frozen":
        server.thaw()
    elif fault == "read-only":
        server.make_writable()
    elif fault == "out of memory":
        server.oom_off()
    elif fault == "password changed":
        _password(server, "first-secret")


def _password(server: RedisServer, password: str) -> None:
    """Change ``requirepass`` and cut every client: each must log in again."""
    server.command("CONFIG", "SET", "requirepass", password)
    server.password = password
    server.command("CLIENT", "KILL", "TYPE", "normal")


# What /api/status says once the server has seen the fault (None: nothing to
# wait for: a full Redis answers reads; a restarted one is back at once).
SEEN: dict[str, Callable[[dict[str, Any]], bool] | None] = {
    "frozen": lambda s: s["registry"]["state"] == "disconnected" and s["flag_store"]["stale"],
    "read-only": lambda s: s["degraded"] and s["flag_store"]["read_only"],
    "out of memory": None,
    "password changed": lambda s: (
        s["registry"]["state"] == "disconnected"
        and s["flag_store"]["stale"]
        and "refused the credentials" in (s["flag_store"]["last_error"] or "")
    ),
    "restarted empty": None,
}


def _poll(client: httpx.Client, what: str, ok: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = client.get("api/status").json()
        if ok(status):
            return
        time.sleep(0.05)  # sleep-ok: polling an HTTP API with a deadline
    raise AssertionError(f"timed out waiting for {what}; last status: {status}")


def _recovered(status: dict[str, Any]) -> bool:
    return not status["degraded"] and status["flag_store"]["pending"] == 0


def _during(client: httpx.Client, fault: str, address: str) -> None:
    """What the server answers while the fault lasts."""
    for path in READS:
        r = client.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
    assert client.get("api/flags/beta").json()["switch"] is True  # from the cache
    r = client.post("ofrep/v1/evaluate/flags/beta", json={"context": {"targetingKey": "x"}})
    assert (r.status_code, r.json()["value"]) == (200, True), r.text
    r = client.post("ofrep/v1/evaluate/flags", json={"context": {}})
    assert r.status_code == 200, r.text
    if fault == "restarted empty":
        return  # Redis answers again at once: writes work (checked after)
    r = client.post("api/flags/gamma/enable", json={"reason": "during"})
    assert r.status_code == 503, r.text
    error = r.json()
    assert error["error"] == "BackendUnavailable", error
    assert address in error["message"], error
    assert "secret" not in error["message"], error
    r = client.post("api/flags/beta/disable", json={"confirm": "beta", "reason": "3am"})
    assert r.status_code == 200, r.text
    killed = r.json()
    assert (killed["switch"], killed["sync"]) == (False, "pending"), killed
    assert killed["store"]["pending_flags"] == ["beta"], killed


@pytest.mark.parametrize("fault", FAULTS)
def test_the_admin_command_answers_through_a_fault_and_recovers(fault: str, tmp_path: Path) -> None:
    with RedisServer(password="first-secret") as server:
        seed(server)
        stop = threading.Event()
        node = RedisRegistry(server.url, namespace="ops", op_timeout=1.0)
        node.register("a", spawn_thread(stop.wait), {"role": "io"})
        bind = f"127.0.0.1:{free_port()}"
        admin = Running(
            "admin", "--store", f"{server.url}?namespace=ops", "--redis", server.url,
            "--namespace", "ops", "--token", "ana:tok", "--bind", bind, cwd=tmp_path,
        )  # fmt: skip
        client = httpx.Client(
            base_url=f"http://{bind}/", headers={"Authorization": "Bearer tok"}, timeout=20.0
        )
        try:
            admin.wait_for("admin page: ")
            _poll(client, "the first states", _recovered)
            _apply(server, fault)
            seen = SEEN[fault]
            if seen is not None:
                _poll(client, f"the server to see Redis {fault}", seen)
            _during(client, fault, f"127.0.0.1:{server.port}/0")
            _undo(server, fault)
            _poll(client, "the recovery", _recovered)
            assert client.get("api/flags/beta").json()["switch"] is (fault == "restarted empty")
            r = client.post("api/flags/gamma/enable", json={"reason": "after"})
            assert r.status_code == 200, r.text
            assert r.json()["sync"] == "committed", r.json()
            # The node re-asserts its agent (restarted empty); the observer follows.
            _poll(client, "the agent listed", lambda _s: client.get("api/agents/a").is_success)
            admin.send(signal.SIGTERM)
            assert admin.finish() == 0, (admin.stdout, admin.stderr)
        finally:
            client.close()
            if server.frozen:
                server.thaw()
            admin.close()
            stop.set()
            node.close()
    for sign in ("Traceback", "Exception in thread", "Exception ignored"):
        assert not any(sign in line for line in admin.stderr), admin.stderr
    assert admin.stderr[-1] == "foundation admin: terminated", admin.stderr
