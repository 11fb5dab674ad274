"""``POST /api/migration/emergency`` takes ``"confirm"`` as the current stage's
number, a JSON integer (``1``) as well as a string (``"1"``), or its name: the
README table says "stage number or name", and ``/api/migration/rollback``
takes ``"stage": 1``. ``1`` was refused (422, a message asking for "1"), as
were ``1.0`` and ``true`` with the same puzzling message. A boolean and a
number with a fraction or exponent stay refused; the 422 message says what was
expected and what was received. Against the real server (``world``)."""

from __future__ import annotations

import httpx
import pytest

from tests.admin._world import ANA
from tests.admin.conftest import World

_EXPECTED = 'the current stage, 1 (a JSON integer) or "1" or "registry" (a string)'


def _emergency(world: World, body: dict[str, object]) -> httpx.Response:
    with httpx.Client(base_url=world.url, headers=ANA, timeout=30) as c:
        return c.post("api/migration/emergency", json=body)


def test_the_stage_number_as_a_json_integer_confirms(world: World) -> None:
    world.migration.advance(by="ana")
    r = _emergency(world, {"reason": "fire", "confirm": 1})
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == 0
    assert world.migration.status().stage == 0
    assert [e.action for e in world.migration.history()] == ["advance", "emergency_rollback"]


@pytest.mark.parametrize(
    ("confirm", "received"),
    [
        (True, "got true (a boolean)"),
        (1.0, "got 1.0 (a number with a fraction or an exponent)"),
        (2, "got 2 (an integer)"),
        (0, "got 0 (an integer)"),
        ("2", 'got "2" (a string)'),
        ([1], "got [1] (an array)"),
        ({"stage": 1}, 'got {"stage": 1} (an object)'),
        (None, "got null (null)"),
        ("x" * 500, 'got "' + "x" * 76 + "... (a string)"),
    ],
)
def test_a_refused_confirmation_says_what_was_expected_and_received(
    world: World, confirm: object, received: str
) -> None:
    world.migration.advance(by="ana")
    r = _emergency(world, {"reason": "fire", "confirm": confirm})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "ConfirmationRequired"
    message = r.json()["message"]
    assert message == f'an emergency rollback needs "confirm": {_EXPECTED}; {received}'
    assert world.migration.status().stage == 1
    assert [e.action for e in world.migration.history()] == ["advance"]


def test_a_missing_confirmation_says_so(world: World) -> None:
    world.migration.advance(by="ana")
    r = _emergency(world, {"reason": "fire"})
    assert r.status_code == 422, r.text
    assert r.json()["message"].endswith('; got nothing (no "confirm")')
    assert world.migration.status().stage == 1
