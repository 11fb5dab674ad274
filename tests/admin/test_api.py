"""The admin JSON API over HTTP: a real uvicorn server, SQLite store, registries, redis-server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from foundation import spawn_thread
from foundation.admin import AdminServer, create_app
from foundation.errors import InvalidConfig
from foundation.flags import FeatureFlags
from foundation.supervision import ChildContext, ChildSpec, Supervisor
from tests.admin._world import ANA, BO, DECLARED
from tests.admin.conftest import World, close_world, make_world
from tests.redis_support import RedisServer


def client(world: World | AdminServer, headers: dict[str, str] | None = None) -> httpx.Client:
    url = world.url
    return httpx.Client(base_url=url, headers=headers or {}, timeout=30)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # sleep-ok: polling an HTTP API with a deadline


@contextmanager
def event_stream(url: str, headers: dict[str, str]) -> Iterator[queue.Queue[tuple[str, Any]]]:
    """(event, data) pairs of GET /api/events, read on a thread."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    opened = threading.Event()
    c = httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30, read=None))

    def read() -> None:
        try:
            with c.stream("GET", "api/events") as r:
                assert r.status_code == 200
                name = None
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        events.put((name or "message", json.loads(line[6:])))
                        if name == "hello":
                            opened.set()
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.StreamClosed):
            pass  # the server closed the stream
        finally:
            opened.set()

    t = threading.Thread(target=read, daemon=True)
    t.start()
    assert opened.wait(20)
    try:
        yield events
    finally:
        c.close()


def next_event(
    events: queue.Queue[tuple[str, Any]], kind: str, match: Callable[[Any], bool]
) -> Any:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            name, data = events.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
        if name == kind and match(data):
            return data
    raise AssertionError(f"no {kind} event arrived")


def flag(c: httpx.Client, name: str) -> dict[str, Any]:
    r = c.get(f"api/flags/{name}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


# ---------------------------------------------------------------------------- flags


def test_flag_list_shows_every_declared_flag_with_its_state(world: World) -> None:
    with client(world, ANA) as c:
        body = c.get("api/flags").json()
    names = [f["name"] for f in body["flags"]]
    assert names == [f.name for f in DECLARED]
    dark = next(f for f in body["flags"] if f["name"] == "dark_mode")
    assert dark == {
        "name": "dark_mode",
        "kind": "boolean",
        "default": True,
        "description": "dark theme for everyone",
        "variants": None,
        "default_variant": None,
        "enabled": True,
        "value": True,
        "variant": "on",
        "switch": True,
        "percentage": None,
        "allow": [],
        "deny": [],
    }


def test_writes_are_applied_and_audited_with_the_operator_as_by(world: World) -> None:
    with client(world, ANA) as c, client(world, BO) as b:
        r = c.post("api/flags/new_checkout/percentage", json={"percentage": 25, "reason": "canary"})
        assert r.status_code == 200, r.text
        assert r.json()["percentage"] == 25.0
        assert r.json()["switch"] is True
        assert b.post(
            "api/flags/new_checkout/allow", json={"actor": "vip", "reason": "vip"}
        ).is_success
        assert c.post("api/flags/new_checkout/deny", json={"actor": "bot"}).is_success
        state = flag(c, "new_checkout")
        assert state["allow"] == ["vip"]
        assert state["deny"] == ["bot"]
        assert world.flags.enabled("new_checkout", "vip")
        assert not world.flags.enabled("new_checkout", "bot")
        history = c.get("api/history", params={"flag": "new_checkout"}).json()["changes"]
        assert [(h["by"], h["reason"]) for h in history] == [
            ("ana", None),
            ("bo", "vip"),
            ("ana", "canary"),
        ]
        assert [(h.by, h.reason) for h in world.flags.history("new_checkout")] == [
            ("ana", "canary"),
            ("bo", "vip"),
            ("ana", None),
        ]
        assert len(c.get("api/history", params={"limit": 1}).json()["changes"]) == 1
        assert c.post("api/flags/new_checkout/clear", json={"reason": "done"}).is_success
        assert flag(c, "new_checkout")["switch"] is False
        assert world.flags.history("new_checkout")[-1].by == "ana"


def test_disable_needs_the_flag_name_typed_as_confirmation(world: World) -> None:
    with client(world, ANA) as c:
        for body in ({"reason": "x"}, {"reason": "x", "confirm": "dark"}, {"confirm": "DARK_MODE"}):
            r = c.post("api/flags/dark_mode/disable", json=body)
            assert r.status_code == 422
            assert r.json()["error"] == "ConfirmationRequired"
        assert world.flags.enabled("dark_mode")
        assert world.flags.history("dark_mode") == []
        r = c.post(
            "api/flags/dark_mode/disable", json={"reason": "incident", "confirm": "dark_mode"}
        )
        assert r.status_code == 200
        assert r.json()["switch"] is False
        assert not world.flags.enabled("dark_mode")
        assert world.flags.history("dark_mode")[-1].reason == "incident"


def test_evaluate_says_what_an_actor_gets_and_why(world: World) -> None:
    world.flags.set_percentage("search_v2", 50)
    world.flags.deny("search_v2", "mallory")
    with client(world) as c:  # reads are open on loopback
        for actor in ("u1", "u2", "u3", "u4", "mallory"):
            r = c.get("api/flags/search_v2/evaluate", params={"actor": actor}).json()
            assert r["enabled"] is world.flags.enabled("search_v2", actor)
            assert r["actor"] == actor
        assert "deny" in c.get("api/flags/search_v2/evaluate?actor=mallory").json()["why"]
        plain = c.get("api/flags/search_v2/evaluate").json()
        assert plain["enabled"] is False
        assert plain["actor"] is None


def test_a_typed_flag_shows_kind_variants_split_and_assignments(world: World) -> None:
    with client(world, ANA) as c:
        theme = flag(c, "theme")
        assert theme == {
            "name": "theme",
            "kind": "string",
            "default": "light",
            "description": "page colours",
            "variants": {"light": "#ffffff", "dark": "#101418", "sepia": "#f4ecd8"},
            "default_variant": "light",
            "switch": True,
            "percentage": None,
            "allow": [],
            "deny": [],
            "assign": {},
            "split": None,
            "value": "#ffffff",
            "variant": "light",
        }
        r = c.post(
            "api/flags/theme/split", json={"split": {"dark": 25, "sepia": 75}, "reason": "ab"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["split"] == {"dark": 25.0, "sepia": 75.0}
        r = c.post("api/flags/theme/assign", json={"actor": "ana", "variant": "dark"})
        assert r.status_code == 200, r.text
        assert r.json()["assign"] == {"ana": "dark"}
        assert world.flags.variant("theme", "ana") == "dark"
        assert world.flags.state("theme").split is not None
        listed = next(f for f in c.get("api/flags").json()["flags"] if f["name"] == "theme")
        assert listed["assign"] == {"ana": "dark"}
        # variant null removes the assignment.
        r = c.post("api/flags/theme/assign", json={"actor": "ana", "variant": None})
        assert r.json()["assign"] == {}
        history = world.flags.history("theme")
        assert [(h.by, h.reason) for h in history] == [("ana", "ab"), ("ana", None), ("ana", None)]
        changes = c.get("api/history", params={"flag": "theme"}).json()["changes"]
        assert changes[-1]["new"]["split"] == {"dark": 25.0, "sepia": 75.0}
        assert changes[1]["new"]["assign"] == {"ana": "dark"}


def test_evaluate_a_typed_flag_says_which_variant_and_why(world: World) -> None:
    flags = world.flags
    flags.set_split("theme", {"dark": 50, "sepia": 50})
    flags.assign("theme", "vip", "light")
    flags.deny("theme", "bot")
    with client(world) as c:
        for actor in ("u1", "u2", "u3", "u4", "vip", "bot"):
            r = c.get("api/flags/theme/evaluate", params={"actor": actor}).json()
            e = flags.evaluate("theme", actor)
            assert (r["value"], r["variant"], r["reason"], r["kind"]) == (
                e.value,
                e.variant,
                e.reason,
                "string",
            )
            assert "enabled" not in r
        assert "assigned to 'light'" in c.get("api/flags/theme/evaluate?actor=vip").json()["why"]
        assert "deny" in c.get("api/flags/theme/evaluate?actor=bot").json()["why"]
        assert "split" in c.get("api/flags/theme/evaluate?actor=u1").json()["why"]
        plain = c.get("api/flags/theme/evaluate").json()
        assert (plain["variant"], plain["reason"]) == ("light", "DEFAULT")
        flags.disable("theme")
        off = c.get("api/flags/theme/evaluate?actor=vip").json()
        assert (off["value"], off["variant"], off["reason"]) == ("#ffffff", "light", "DISABLED")
        assert "switch is off" in off["why"]
        boolean = c.get("api/flags/dark_mode/evaluate?actor=u1").json()
        assert (boolean["enabled"], boolean["variant"], boolean["reason"]) == (True, "on", "STATIC")


def test_typed_writes_follow_the_write_rules(world: World) -> None:
    with client(world) as anon, client(world, ANA) as c:
        assert (
            anon.post("api/flags/theme/assign", json={"actor": "a", "variant": "dark"}).status_code
            == 401
        )
        assert anon.post("api/flags/theme/split", json={"split": {"dark": 100}}).status_code == 401
        r = c.post(
            "api/flags/theme/split",
            content=b'{"split": {"dark": 100}}',
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 415
        r = c.post("api/flags/theme/split", json={"split": {"dark": 100}, "by": "mallory"})
        assert r.status_code == 422
    assert world.flags.history("theme") == []


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("GET", "api/flags/new_chekout", None, 404, "UnknownFlag"),
        ("POST", "api/flags/nope/enable", {}, 404, "UnknownFlag"),
        ("POST", "api/flags/new_checkout/percentage", {"percentage": 150}, 422, "InvalidFlagValue"),
        (
            "POST",
            "api/flags/new_checkout/percentage",
            {"percentage": "half"},
            422,
            "InvalidFlagValue",
        ),
        ("POST", "api/flags/new_checkout/percentage", {}, 422, "InvalidBody"),
        ("POST", "api/flags/new_checkout/allow", {"reason": "no actor"}, 422, "InvalidBody"),
        ("POST", "api/flags/new_checkout/enable", {"by": "someone-else"}, 422, "InvalidBody"),
        ("POST", "api/migration/rollback", {"stage": "one"}, 422, "InvalidBody"),
        ("POST", "api/migration/rollback", {"stage": 0}, 409, "MigrationError"),
        ("GET", "api/agents/nobody", None, 404, "NotRegistered"),
        ("GET", "api/agents?where=role:like:x", None, 422, "InvalidCriteria"),
        ("GET", "api/agents?where=nocolon", None, 422, "InvalidCriteria"),
        ("GET", "api/history?limit=0", None, 422, "InvalidLimit"),
        (
            "POST",
            "api/flags/theme/assign",
            {"actor": "a", "variant": "drak"},
            422,
            "InvalidFlagValue",
        ),
        ("POST", "api/flags/theme/assign", {"actor": "a"}, 422, "InvalidBody"),
        ("POST", "api/flags/theme/assign", {"variant": "dark"}, 422, "InvalidBody"),
        ("POST", "api/flags/theme/assign", {"actor": "a", "variant": 3}, 422, "InvalidBody"),
        (
            "POST",
            "api/flags/dark_mode/assign",
            {"actor": "a", "variant": "on"},
            422,
            "InvalidFlagValue",
        ),
        ("POST", "api/flags/theme/split", {"split": {"dark": 60}}, 422, "InvalidFlagValue"),
        ("POST", "api/flags/theme/split", {"split": {"purple": 100}}, 422, "InvalidFlagValue"),
        ("POST", "api/flags/theme/split", {"split": {"dark": True}}, 422, "InvalidBody"),
        ("POST", "api/flags/theme/split", {"split": [100]}, 422, "InvalidBody"),
        ("POST", "api/flags/theme/split", {}, 422, "InvalidBody"),
        ("POST", "api/flags/dark_mode/split", {"split": {"on": 100}}, 422, "InvalidFlagValue"),
        ("POST", "api/flags/theme/percentage", {"percentage": 50}, 422, "InvalidFlagValue"),
        ("POST", "api/flags/theme/allow", {"actor": "a"}, 422, "InvalidFlagValue"),
        ("POST", "api/flags/nope/split", {"split": {"a": 100}}, 404, "UnknownFlag"),
    ],
)
def test_errors_are_typed_json_with_their_status(
    world: World, method: str, path: str, body: Any, status: int, error: str
) -> None:
    before = world.flags.history()
    with client(world, ANA) as c:
        r = c.request(method, path, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert r.json()["message"]
    assert world.flags.history() == before  # a failed call changes nothing


def test_unknown_flag_error_names_the_nearest_flag(world: World) -> None:
    with client(world, ANA) as c:
        r = c.post("api/flags/new_chekout/enable", json={})
    assert r.status_code == 404
    assert "new_checkout" in r.json()["message"]


# ---------------------------------------------------------------------------- auth


def test_writes_need_a_valid_bearer_token(world: World) -> None:
    with client(world) as anon, client(world, {"Authorization": "Bearer wrong"}) as bad:
        assert anon.post("api/flags/search_v2/enable", json={}).status_code == 401
        assert bad.post("api/flags/search_v2/enable", json={}).status_code == 401
        assert bad.get("api/flags").status_code == 401  # a bad token is refused on reads too
        r = anon.post(
            "api/flags/search_v2/enable",
            json={},
            headers={"Authorization": "Basic YW5hOmFuYS1zZWNyZXQ="},
        )
        assert r.status_code == 401
        assert r.json()["error"] == "Unauthorized"
    assert world.flags.history() == []
    assert not world.flags.enabled("search_v2")


def test_writes_must_be_json_so_a_cross_site_form_cannot_post(world: World) -> None:
    with client(world, ANA) as c:
        r = c.post(
            "api/flags/search_v2/enable",
            content=b"reason=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 415
        assert r.json()["error"] == "UnsupportedMediaType"
        r = c.post(
            "api/flags/search_v2/enable",
            content=b"[1]",
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 422
        assert c.get("api/flags/search_v2/enable").status_code == 405  # GET never writes
    assert not world.flags.enabled("search_v2")


def test_read_only_mode_refuses_every_write(tmp_path: Path) -> None:
    w = make_world(tmp_path, read_only=True)
    try:
        with client(w, ANA) as c:
            assert c.get("api/flags").status_code == 200
            for path, body in [
                ("api/flags/search_v2/enable", {}),
                ("api/migration/advance", {}),
                ("api/migration/emergency", {"reason": "x", "confirm": "0"}),
            ]:
                r = c.post(path, json=body)
                assert r.status_code == 403
                assert r.json()["error"] == "ReadOnly"
            assert c.get("api/whoami").json()["read_only"] is True
        assert w.flags.history() == []
        assert w.migration.status().stage == 0
    finally:
        close_world(w)


def test_without_a_token_configured_writes_are_off(tmp_path: Path) -> None:
    w = make_world(tmp_path, token=None)
    try:
        with client(w) as c:
            assert c.get("api/flags").status_code == 200
            r = c.post("api/flags/search_v2/enable", json={})
            assert r.status_code == 403
            assert "no operator token" in r.json()["message"]
    finally:
        close_world(w)


def test_off_loopback_it_refuses_to_start_without_a_token_and_guards_reads(
    tmp_path: Path,
) -> None:
    flags = FeatureFlags(DECLARED)
    try:
        with pytest.raises(InvalidConfig, match="non-loopback"):
            AdminServer(flags=flags, bind="0.0.0.0:0")
        with AdminServer(flags=flags, bind="0.0.0.0:0", token="s3") as server:
            port = server.url.rsplit(":", 1)[1]
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                assert c.get("api/flags").status_code == 401
                assert c.get("api/events").status_code == 401
                assert c.get("metrics").status_code == 401
                assert c.get("healthz").json() == {"ok": True}
                assert c.get("api/flags", headers={"Authorization": "Bearer s3"}).status_code == 200
    finally:
        flags.close()


def test_bind_errors_are_invalid_config() -> None:
    for bind in ("8800", "localhost:http", "127.0.0.1:70000"):
        with pytest.raises(InvalidConfig):
            AdminServer(bind=bind)


def test_the_listening_socket_says_tcp_so_asyncio_sets_nodelay_on_connections() -> None:
    """A proto-0 socket made every JSON answer wait ~40 ms (Nagle + delayed ACK)."""
    import asyncio
    import socket

    from foundation.admin._server import _bind

    listener = _bind("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP

        async def accept_one() -> int:
            accepted = asyncio.Event()
            nodelay: list[int] = []

            def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                sock = writer.get_extra_info("socket")
                nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                writer.close()
                accepted.set()

            server = await asyncio.start_server(on_connect, sock=listener)
            async with server:
                _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
                await asyncio.wait_for(accepted.wait(), 20)
                writer.close()
            return nodelay[0]

        assert asyncio.run(accept_one()) != 0
    finally:
        listener.close()


def test_whoami_names_the_operator(world: World) -> None:
    with client(world, BO) as c:
        me = c.get("api/whoami").json()
    assert me["operator"] == "bo"
    assert me["writes"] is True
    assert me["registry"] is True


# ----------------------------------------------------------------------- migration


def test_migration_advance_rollback_and_emergency_with_confirmation(world: World) -> None:
    with client(world, ANA) as c:
        m = c.get("api/migration").json()
        assert (m["stage"], m["total"], m["problems"]) == (0, 2, [])
        world.problems.append("canary error rate 4%")
        r = c.post("api/migration/advance", json={"reason": "go"})
        assert r.status_code == 409
        assert "canary error rate" in r.json()["message"]
        assert c.get("api/migration").json()["problems"] == ["canary error rate 4%"]
        world.problems.clear()
        assert c.post("api/migration/advance", json={"reason": "go"}).json()["stage"] == 1
        m = c.post("api/migration/advance", json={}).json()
        assert (m["stage"], m["stage_name"], m["flags"]) == (
            2,
            "monitoring",
            {"use_ets_agent_registry": True, "enable_migration_monitoring": True},
        )
        assert c.post("api/migration/advance", json={}).status_code == 409
        assert (
            c.post("api/migration/rollback", json={"stage": 1, "reason": "slow"}).json()["stage"]
            == 1
        )
        assert world.migration.status().stage == 1
        c.post("api/migration/advance", json={})
        for body in (
            {"reason": "fire"},
            {"reason": "fire", "confirm": "registry"},
            {"reason": "fire", "confirm": "1"},
        ):
            r = c.post("api/migration/emergency", json=body)
            assert r.status_code == 422
            assert r.json()["error"] == "ConfirmationRequired"
        assert world.migration.status().stage == 2
        r = c.post("api/migration/emergency", json={"confirm": "monitoring"})
        assert r.status_code == 422  # a reason is required
        m = c.post(
            "api/migration/emergency", json={"reason": "fire", "confirm": "monitoring"}
        ).json()
        assert m["stage"] == 0
        assert not any(m["flags"].values())
        assert [(e["action"], e["by"]) for e in m["history"]][:2] == [
            ("emergency_rollback", "ana"),
            ("advance", "ana"),
        ]
    assert [e.action for e in world.migration.history()] == [
        "advance",
        "advance",
        "rollback",
        "advance",
        "emergency_rollback",
    ]


# -------------------------------------------------------------------------- agents


def test_agents_list_filters_counts_and_lookup(world: World) -> None:
    with client(world) as c:
        body = c.get("api/agents").json()
        assert [a["key"] for a in body["agents"]] == ["worker-1", "worker-2"]
        assert body["by_kind"] == {"thread": 2}
        assert body["by_node"] == {"local": 2}
        cpu = c.get("api/agents", params={"where": "limits.cpu:gte:4"}).json()
        assert [a["key"] for a in cpu["agents"]] == ["worker-2"]
        assert cpu["total"] == 2
        both = c.get("api/agents", params=[("where", "limits.cpu:gte:1"), ("where", "role:eq:io")])
        assert [a["key"] for a in both.json()["agents"]] == ["worker-1"]
        inset = c.get("api/agents", params={"where": 'role:in:["io","cpu"]'}).json()
        assert inset["matched"] == 2
        assert [a["key"] for a in c.get("api/agents?q=WORKER-2").json()["agents"]] == ["worker-2"]
        assert c.get("api/agents?limit=1").json()["agents"][0]["key"] == "worker-1"
        one = c.get("api/agents/worker-1").json()
        assert one["metadata"] == {"role": "io", "limits": {"cpu": 2}}
        assert one["kind"] == "thread"
        # This process's own agents show the pid they live in, as another node's do
        # (was null for a local thread, task or future) and a task its name.
        assert (one["pid"], one["name"]) == (os.getpid(), "worker-1")
        world.registry.register("fut", concurrent.futures.Future())
        assert c.get("api/agents/fut").json()["pid"] == os.getpid()

        async def a_task_agent() -> dict[str, Any]:
            task = asyncio.create_task(asyncio.Event().wait(), name="crawler")
            world.registry.register("task", task)
            try:
                return dict(c.get("api/agents/task").json())  # the server has its own thread
            finally:
                world.registry.unregister("task")  # not among the recently dead below
                task.cancel()

        shown = asyncio.run(a_task_agent())
        assert (shown["kind"], shown["pid"], shown["name"]) == ("task", os.getpid(), "crawler")
        world.registry.register(("job", 7), spawn_thread(world.stop.wait))
        assert c.get("api/agents/" + '["job",7]').json()["key"] == ["job", 7]
        world.registry.register("dead", spawn_thread(world.stop.wait))  # shadowed by /dead
        assert c.get("api/agents/dead").json()["dead"] == []
        assert c.get('api/agents/"dead"').json()["key"] == "dead"


def test_a_killed_agent_leaves_the_list_and_shows_in_recently_dead(world: World) -> None:
    proc = world.sleeper()
    world.registry.register("victim", proc, {"role": "doomed"})
    with client(world) as c, event_stream(world.url, {}) as events:
        assert "victim" in [a["key"] for a in c.get("api/agents").json()["agents"]]
        proc.send_signal(signal.SIGKILL)
        gone = next_event(events, "agent", lambda d: d["entry"]["key"] == "victim")
        assert gone["kind"] == "unregistered"
        assert gone["reason"] == "down"
        assert gone["down"]["reason"] == "killed"
        assert gone["down"]["signal"] == signal.SIGKILL
        assert "victim" not in [a["key"] for a in c.get("api/agents").json()["agents"]]
        dead = c.get("api/agents/dead").json()["dead"]
        assert dead[0]["key"] == "victim"
        assert dead[0]["down"]["reason"] == "killed"
        assert dead[0]["metadata"] == {"role": "doomed"}
        assert dead[0]["kind"] == "process"


def test_agents_of_a_redis_namespace_through_an_observer(tmp_path: Path) -> None:
    from foundation.registry import RedisRegistry
    from foundation.registry._redis._observer import RedisObserver

    with RedisServer() as redis:
        node = RedisRegistry(redis.url, namespace="adm", node="node-a")
        observer = RedisObserver(redis.url, namespace="adm")
        stop = threading.Event()
        import subprocess
        import sys

        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        try:
            node.register("io-1", spawn_thread(stop.wait), {"role": "io"})
            node.register("proc-1", proc, {"role": "batch"})
            with AdminServer(registry=observer, bind="127.0.0.1:0") as server, client(server) as c:
                body = wait_for(
                    lambda: (b := c.get("api/agents").json())["total"] == 2 and b, "two agents"
                )
                assert body["by_node"] == {"node-a": 2}
                assert body["by_kind"] == {"thread": 1, "process": 1}
                only = c.get("api/agents", params={"where": "role:eq:batch"}).json()["agents"]
                assert [a["key"] for a in only] == ["proc-1"]
                assert only[0]["pid"] == proc.pid
                assert c.get("api/agents/io-1").json()["node"] == "node-a"
                with event_stream(server.url, {}) as events:
                    proc.kill()
                    gone = next_event(events, "agent", lambda d: d["entry"]["key"] == "proc-1")
                    assert gone["reason"] == "down"
                wait_for(lambda: c.get("api/agents").json()["total"] == 1, "proc-1 to leave")
                dead = c.get("api/agents/dead").json()["dead"]
                assert [d["key"] for d in dead] == ["proc-1"]
                assert dead[0]["down"]["reason"]
                assert b'foundation_admin_registry_entries{kind="thread",node="node-a"} 1.0' in (
                    c.get("metrics").content
                )
        finally:
            stop.set()
            proc.kill()
            proc.wait()
            assert proc.stdin is not None
            proc.stdin.close()
            observer.close()
            node.close()


# ---------------------------------------------------------------------- supervision


def test_supervision_tree_with_status_and_restart_counts() -> None:
    crashed = threading.Event()

    async def flaky(ctx: ChildContext) -> None:
        ctx.ready()
        if not crashed.is_set():
            crashed.set()
            raise RuntimeError("first run crashes")
        await asyncio_forever()

    async def steady(ctx: ChildContext) -> None:
        ctx.ready()
        await asyncio_forever()

    inner = Supervisor([ChildSpec("leaf", steady)], name="inner")
    sup = Supervisor(
        [ChildSpec("flaky", flaky), ChildSpec("steady", steady), ChildSpec("inner", inner)],
        name="root",
    )

    def restarted(c: httpx.Client) -> dict[str, Any] | None:
        tree = c.get("api/supervision").json()["supervisors"][0]
        return tree if tree["children"][0]["restarts"] == 1 else None

    with (
        sup.run_in_thread() as handle,
        AdminServer(supervisors=[handle], bind="127.0.0.1:0") as s,
        client(s) as c,
    ):
        tree = wait_for(lambda: restarted(c), "a restart")
    assert tree["name"] == "root"
    assert tree["strategy"] == "one_for_one"
    rows = {ch["id"]: ch for ch in tree["children"]}
    assert rows["flaky"]["status"] == "running"
    assert rows["steady"]["restarts"] == 0
    assert rows["inner"]["kind"] == "supervisor"
    assert rows["inner"]["supervisor"]["children"][0]["id"] == "leaf"


async def asyncio_forever() -> None:
    import asyncio

    await asyncio.Event().wait()


# --------------------------------------------------------------- events and metrics


def test_events_stream_flag_changes_from_another_process(world: World) -> None:
    with event_stream(world.url, ANA) as events:
        world.other_process("enable", "search_v2")
        change = next_event(events, "flag", lambda d: d["flag"] == "search_v2")
        assert change["by"] == "other-process"
        assert change["new"]["switch"] is True
        with client(world, ANA) as c:
            c.post("api/migration/advance", json={})
        next_event(events, "migration", lambda d: d["plan"] == "default")


def test_metrics_are_prometheus_text(world: World) -> None:
    from foundation.metrics import Metrics

    world.flags.set_percentage("new_checkout", 10)
    world.flags.set_split("theme", {"dark": 40, "sepia": 60})
    with client(world) as c:
        r = c.get("metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'foundation_admin_flag_enabled{flag="new_checkout"} 1.0' in text
    assert 'foundation_admin_flag_percentage{flag="new_checkout"} 10.0' in text
    assert 'foundation_admin_flag_split{flag="theme",variant="sepia"} 60.0' in text
    assert 'foundation_admin_migration_stage{plan="default"} 0.0' in text
    assert 'foundation_admin_registry_entries{kind="thread",node="local"} 2.0' in text
    metrics = Metrics()
    metrics.install()
    try:
        with (
            AdminServer(flags=world.flags, metrics=metrics, bind="127.0.0.1:0") as s,
            client(s) as c,
        ):
            assert "# TYPE foundation_flag_changes_total counter" in c.get("metrics").text
    finally:
        metrics.uninstall()


# ------------------------------------------------------------------------- the page


def test_page_is_served_with_a_strict_policy(world: World) -> None:
    with client(world) as c:
        page = c.get("")
        js = c.get("admin.js")
        css = c.get("admin.css")
    assert page.status_code == 200
    assert "<title>foundation admin</title>" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert js.headers["content-type"].startswith("text/javascript")
    assert "api/events" in js.text
    assert css.status_code == 200


def test_mounted_inside_an_application(world: World) -> None:
    admin = create_app(flags=world.flags, token="ops:pw")
    outer = Starlette(routes=[Mount("/ops/admin", admin)])
    import uvicorn

    from foundation.admin._server import _bind

    sock = _bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(outer, lifespan="off", ws="none", log_config=None, access_log=False)
    )
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with httpx.Client(base_url=base, timeout=30) as c:
            wait_for(lambda: _up(c), "the mounted server")
            page = c.get("/ops/admin/")
            assert '<meta name="admin-base" content="/ops/admin/">' in page.text
            assert c.get("/ops/admin/api/flags").status_code == 401  # reads guarded by default
            r = c.post(
                "/ops/admin/api/flags/search_v2/enable",
                json={"reason": "mounted"},
                headers={"Authorization": "Bearer pw"},
            )
            assert r.status_code == 200
        assert world.flags.history("search_v2")[-1].by == "ops"
    finally:
        admin.state.admin.close()
        server.should_exit = True
        t.join(20)
        sock.close()


def _up(c: httpx.Client) -> bool:
    try:
        return c.get("/ops/admin/healthz").status_code == 200
    except httpx.TransportError:
        return False


# --------------------------------------------------------------------------- serve()

_SERVE = """
import sys
from foundation.admin import serve
from foundation.flags import FeatureFlags
from tests.admin._world import DECLARED
flags = FeatureFlags(DECLARED)
serve(flags=flags, token="ana:pw", bind="127.0.0.1:0", on_ready=lambda url: print(url, flush=True))
flags.close()
print("STOPPED", flush=True)
"""


def test_serve_runs_in_the_foreground_until_sigterm() -> None:
    import subprocess
    import sys

    from tests.admin.conftest import REPO

    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("healthz").json() == {"ok": True}
            r = c.post(
                "api/flags/search_v2/enable", json={}, headers={"Authorization": "Bearer pw"}
            )
            assert r.json()["switch"] is True
        with event_stream(url, {}) as events:  # an open stream does not hold the shutdown
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=60)
            assert events.get(timeout=5)[0] == "hello"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.strip() == "STOPPED"
    assert "Traceback" not in err


def test_serve_refuses_a_non_loopback_bind_without_a_token() -> None:
    from foundation.admin import serve

    with pytest.raises(InvalidConfig, match="without a token"):
        serve(bind="0.0.0.0:0")
