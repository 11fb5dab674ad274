"""Unknown routes and methods under ``/api/`` and ``/ofrep/`` answer in the API's
error shape ``{"error", "message"}`` (README, "The JSON API"), from a real
uvicorn server; the page's own paths keep Starlette's plain answers."""

from __future__ import annotations

import httpx
import pytest

from tests.admin.conftest import World


def _client(world: World) -> httpx.Client:
    return httpx.Client(base_url=world.url, timeout=30)


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/api/nope", 404, "NotFound"),
        ("GET", "/api", 404, "NotFound"),
        ("GET", "/api/flags/beta/nope", 404, "NotFound"),
        ("POST", "/api/flags/beta/nope", 404, "NotFound"),
        ("DELETE", "/api/flags", 405, "MethodNotAllowed"),
        ("POST", "/api/flags", 405, "MethodNotAllowed"),
        ("GET", "/api/flags/beta/enable", 405, "MethodNotAllowed"),
        ("GET", "/ofrep/v1/evaluate/flags", 405, "MethodNotAllowed"),
        ("POST", "/ofrep/v1/nope", 404, "NotFound"),
    ],
)
def test_an_unknown_api_route_answers_the_error_shape(
    world: World, method: str, path: str, status: int, error: str
) -> None:
    with _client(world) as c:
        answer = c.request(method, path)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json"), answer.headers
    body = answer.json()
    assert body["error"] == error, body
    assert method in body["message"] or "route" in body["message"], body
    assert set(body) <= {"error", "message", "errorDetails"}, body
    if status == 405:
        assert answer.headers.get("allow"), answer.headers  # which method to use
        assert answer.headers["allow"] in body["message"], body
    if path.startswith("/ofrep/"):
        assert body["errorDetails"] == body["message"]  # what an OFREP client reads


def test_a_known_api_route_still_answers_as_before(world: World) -> None:
    with _client(world) as c:
        answer = c.get("/api/flags/nope")  # the route exists: the flag does not
    assert answer.status_code == 404
    assert answer.json()["error"] == "UnknownFlag"


def test_a_page_path_keeps_the_plain_answer(world: World) -> None:
    with _client(world) as c:
        answer = c.get("/no-such-page")
    assert answer.status_code == 404
    assert not answer.headers["content-type"].startswith("application/json")
