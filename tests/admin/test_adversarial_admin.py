"""Adversarial review of the admin server (issue 11, items 4, 7, 8): odd query
strings, paths and bodies are 4xx with a bounded ``{"error", "message"}``, never
a 500; a closed ``AdminServer`` raises ``errors.Closed``; bad arguments are refused
at the call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest

from foundation import MemoryRegistry, spawn_thread
from foundation.admin import AdminServer, create_app
from foundation.errors import Closed, InvalidConfig
from foundation.flags import FeatureFlags, Flag, Migration, MigrationPlan, Stage
from foundation.supervision import ChildContext, ChildSpec, Supervisor

DEEP = "[" * 3000 + "]" * 3000
AUTH = {"Authorization": "Bearer sec", "Content-Type": "application/json"}


def _worker(ctx: ChildContext) -> None:
    ctx.ready()
    ctx.stopping.wait()


@dataclass
class Site:
    server: AdminServer
    client: httpx.Client


@pytest.fixture
def site() -> Iterator[Site]:
    flags = FeatureFlags([Flag("a")])
    migration = Migration(flags, MigrationPlan([Stage(1, "one", ["a"])]))
    registry = MemoryRegistry(indexed=("role",))
    stop = threading.Event()
    registry.register("k", spawn_thread(stop.wait), {"role": "w"})
    # A supervisor that ran on a loop that is closed now, and a stopped handle.
    ended = Supervisor([ChildSpec("w", _worker)], name="ended")
    ended.run_in_thread().stop()
    stopped = Supervisor([ChildSpec("w", _worker)], name="stopped-handle").run_in_thread()
    stopped.stop()
    server = AdminServer(
        flags=flags,
        migration=migration,
        registry=registry,
        supervisors=[ended, stopped],
        token="op:sec",
        bind="127.0.0.1:0",
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield Site(server, client)
    finally:
        server.close()
        stop.set()
        registry.close()
        flags.close()


def _error(response: httpx.Response, status: int, name: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert body["error"] == name, body
    message: str = body["message"]
    assert len(message) < 400, len(message)
    assert "Traceback" not in message
    return message


def test_deeply_nested_where_is_422_not_500(site: Site) -> None:
    r = site.client.get("/api/agents", params={"where": "role:eq:" + DEEP})
    assert "nested too deeply" in _error(r, 422, "InvalidCriteria")


def test_deeply_nested_agent_key_is_404_not_500(site: Site) -> None:
    r = site.client.get("/api/agents/" + quote(DEEP))
    _error(r, 404, "NotRegistered")


def test_a_missing_agent_reads_as_one_message(site: Site) -> None:
    # Was: key "no agent is registered under 'nosuch'" is not registered
    r = site.client.get("/api/agents/nosuch")
    assert _error(r, 404, "NotRegistered") == "key 'nosuch' is not registered"


def test_deeply_nested_body_is_422_not_500(site: Site) -> None:
    r = site.client.post("/api/flags/a/enable", content=DEEP, headers=AUTH)
    assert "nested too deeply" in _error(r, 422, "InvalidBody")


def test_deeply_nested_ofrep_body_is_a_parse_error_not_500(site: Site) -> None:
    r = site.client.post("/ofrep/v1/evaluate/flags/a", content=DEEP, headers=AUTH)
    assert r.status_code == 400, r.text[:300]
    assert r.json()["errorCode"] == "PARSE_ERROR"


@pytest.mark.parametrize("raw", ["a" * 20_000, "9" * 5_000, "-" + "9" * 400])
def test_a_bad_limit_is_422_with_a_bounded_message(site: Site, raw: str) -> None:
    for path in ("/api/history", "/api/agents", "/api/agents/dead"):
        _error(site.client.get(path, params={"limit": raw}), 422, "InvalidLimit")


# (0, the current stage as a JSON integer, now confirms: a boolean or float does not.)
@pytest.mark.parametrize("confirm", [[0], {"stage": 0}, False, 0.0, None])
def test_an_emergency_confirmation_of_the_wrong_type_is_refused_plainly(
    site: Site, confirm: object
) -> None:
    # A list or object was "TypeError: unhashable type: 'list'".
    r = site.client.post(
        "/api/migration/emergency", json={"reason": "x", "confirm": confirm}, headers=AUTH
    )
    _error(r, 422, "ConfirmationRequired")


def test_supervision_shows_ended_supervisors_instead_of_failing(site: Site) -> None:
    # A supervisor whose loop is closed was a 500 ("Event loop is closed"); a stopped
    # handle made the whole endpoint 503.
    r = site.client.get("/api/supervision")
    assert r.status_code == 200, r.text[:300]
    trees = {t["name"]: t for t in r.json()["supervisors"]}
    assert trees["ended"]["state"] == "stopped"
    assert trees["stopped-handle"]["state"] == "stopped"
    assert [c["status"] for c in trees["ended"]["children"]] == ["stopped"]


# --------------------------------------------------------------- AdminServer


def test_start_is_idempotent_while_serving_and_closed_after_close() -> None:
    flags = FeatureFlags([Flag("a")])
    server = AdminServer(flags=flags, bind="127.0.0.1:0")
    try:
        server.start()
        url = server.url
        with server.start() as same:  # was a second server thread, the first one leaked
            assert same is server
            assert same.url == url
            assert [t for t in threading.enumerate() if t.name == "foundation-admin"] == [
                server._thread
            ]
            assert httpx.get(url + "healthz", timeout=10).json() == {"ok": True}
        assert not [t for t in threading.enumerate() if t.name == "foundation-admin"]
        with pytest.raises(Closed):  # was a restart over a closed state
            server.start()
        server.close()  # idempotent
    finally:
        server.close()
        flags.close()


@pytest.mark.parametrize(
    "options",
    [{"bind": 8800}, {"bind": None}, {"token": 5}, {"token": {"ana": 5}}, {"token": {5: "s"}}],
)
def test_bad_server_options_are_invalid_config(options: dict[str, object]) -> None:
    with pytest.raises(InvalidConfig):
        AdminServer(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [{"flags": 5}, {"migration": "m"}, {"registry": object()}, {"supervisors": 5}],
)
def test_bad_live_objects_are_refused_by_create_app(options: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        create_app(**options)  # type: ignore[arg-type]
