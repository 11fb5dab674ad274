"""The admin API refuses a blank emergency reason as it refuses "" (422
InvalidBody), and a negative rollback stage as it refuses "0" (422 InvalidBody)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.admin._world import ANA
from tests.admin.conftest import World


def _post(world: World, path: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=world.url, headers=ANA, timeout=30) as c:
        return c.post(path, json=body)


@pytest.mark.parametrize("reason", ["", "   ", "\n", "\t \r\n"])
def test_a_blank_emergency_reason_is_refused(world: World, reason: str) -> None:
    world.migration.advance(by="ana")
    r = _post(world, "api/migration/emergency", {"confirm": "1", "reason": reason})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "InvalidBody"
    assert "'reason' is a non-empty string" in r.json()["message"]
    assert world.migration.status().stage == 1
    assert [e.action for e in world.migration.history()] == ["advance"]


@pytest.mark.parametrize("stage", [-1, -2, "0", 0.0, False])
def test_a_rollback_stage_that_is_not_an_integer_from_0_is_invalid_body(
    world: World, stage: object
) -> None:
    world.migration.advance(by="ana")
    r = _post(world, "api/migration/rollback", {"stage": stage})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "InvalidBody"
    assert "'stage' is an integer >= 0" in r.json()["message"]
    assert world.migration.status().stage == 1
