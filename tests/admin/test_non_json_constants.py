"""``NaN``, ``Infinity`` and ``-Infinity`` are no JSON (RFC 8259), though Python's
``json.loads`` takes them: every JSON the admin server reads from a request
(``foundation._json_input.loads``) refuses them as text that is not JSON.

- OFREP: 400 ``PARSE_ERROR`` on both endpoints (it used to evaluate the body);
- an admin write: 422 ``InvalidBody`` and nothing written (it used to write);
- ``?where=PATH:OP:VALUE``: the value is the bare word, a string (as any text
  that is not JSON), so ``role:eq:NaN`` finds the metadata string ``"NaN"``;
- ``GET /api/agents/NaN``: the text names the string key ``"NaN"`` (404 when
  not registered, no longer 422 ``InvalidKey`` for a float key).

Real HTTP against a real ``AdminServer`` (the admin test world).
"""

from __future__ import annotations

import httpx
import pytest

from foundation import spawn_thread
from tests.admin._world import ANA
from tests.admin.conftest import World

BODIES = [
    b'{"context":{"targetingKey":"u","x":NaN}}',
    b'{"context":{"x":Infinity}}',
    b'{"context":{"targetingKey":NaN}}',
    b'{"context":{"targetingKey":"u","x":[1,-Infinity]}}',
    b"NaN",
]
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("body", BODIES, ids=[b.decode() for b in BODIES])
def test_ofrep_refuses_non_json_constants_as_parse_error(world: World, body: bytes) -> None:
    with httpx.Client(base_url=world.url, timeout=30, headers=ANA) as c:
        r = c.post("ofrep/v1/evaluate/flags/dark_mode", content=body, headers=JSON)
        assert r.status_code == 400, r.text
        assert r.json() == {
            "key": "dark_mode",
            "errorCode": "PARSE_ERROR",
            "errorDetails": "the body is not valid JSON",
        }
        r = c.post("ofrep/v1/evaluate/flags", content=body, headers=JSON)
        assert r.status_code == 400, r.text
        assert r.json() == {
            "errorCode": "PARSE_ERROR",
            "errorDetails": "the body is not valid JSON",
        }
        # The same context as JSON is evaluated.
        r = c.post("ofrep/v1/evaluate/flags/dark_mode", json={"context": {"x": 1}})
        assert (r.status_code, r.json()["value"]) == (200, True)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_an_admin_write_with_a_non_json_constant_writes_nothing(
    world: World, constant: str
) -> None:
    body = f'{{"reason": "try", "note": {constant}}}'.encode()
    with httpx.Client(base_url=world.url, timeout=30, headers=ANA) as c:
        r = c.post("api/flags/search_v2/enable", content=body, headers=JSON)
        assert r.status_code == 422, r.text
        assert r.json() == {"error": "InvalidBody", "message": "the body is not valid JSON"}
    assert not world.flags.enabled("search_v2")
    assert world.flags.history() == []


def test_where_and_agent_keys_read_non_json_constants_as_text(world: World) -> None:
    world.registry.register("nan-role", spawn_thread(world.stop.wait), {"role": "NaN"})
    with httpx.Client(base_url=world.url, timeout=30) as c:
        r = c.get("api/agents", params={"where": "role:eq:NaN"})
        assert r.status_code == 200, r.text
        assert [a["key"] for a in r.json()["agents"]] == ["nan-role"]
        r = c.get("api/agents/NaN")
        assert (r.status_code, r.json()["error"]) == (404, "NotRegistered"), r.text
        world.registry.register("NaN", spawn_thread(world.stop.wait))
        r = c.get("api/agents/NaN")
        assert (r.status_code, r.json()["key"]) == (200, "NaN"), r.text
