"""Admin writes refuse a body field they do not take (422 ``InvalidBody`` naming
it, nothing written); an empty body is ``{}``: fine for a write that needs no
field, a 422 naming the missing field for one that needs it.

Was: ``{"reasn": "typo"}`` to ``/clear`` answered 200 and the audit record had
no reason. Real HTTP against a real ``AdminServer`` over a SQLite store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.admin._world import ANA
from tests.admin.conftest import World, close_world, make_world

JSON = {**ANA, "Content-Type": "application/json"}

# (path, a body the write takes, the field a typo would be sent as)
WRITES: list[tuple[str, dict[str, Any]]] = [
    ("api/flags/search_v2/enable", {"reason": "r"}),
    ("api/flags/search_v2/clear", {"reason": "r"}),
    ("api/flags/search_v2/percentage", {"percentage": 10, "reason": "r"}),
    ("api/flags/search_v2/allow", {"actor": "a", "reason": "r"}),
    ("api/flags/search_v2/deny", {"actor": "a", "reason": "r"}),
    ("api/flags/search_v2/disable", {"confirm": "search_v2", "reason": "r"}),
    ("api/flags/theme/assign", {"actor": "a", "variant": "dark", "reason": "r"}),
    ("api/flags/theme/split", {"split": {"dark": 100}, "reason": "r"}),
    ("api/migration/advance", {"reason": "r"}),
    ("api/migration/rollback", {"stage": 0, "reason": "r"}),
    ("api/migration/emergency", {"confirm": "1", "reason": "r"}),
]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = make_world(tmp_path)
    try:
        yield w
    finally:
        close_world(w)


@pytest.mark.parametrize(("path", "body"), WRITES, ids=[w[0] for w in WRITES])
def test_an_unknown_field_is_refused_and_nothing_is_written(
    world: World, path: str, body: dict[str, Any]
) -> None:
    world.migration.advance(by="ops")  # stage 1: a rollback has a stage to go to
    before = world.flags.history()
    stage = world.migration.status().stage
    with httpx.Client(base_url=world.url, timeout=30) as c:
        for extra in ({"reasn": "typo"}, {"Reason": "x"}, {"percentage ": 5}):
            r = c.post(path, json={**body, **extra}, headers=JSON)
            assert (r.status_code, r.json()["error"]) == (422, "InvalidBody"), r.text
            (field,) = extra
            assert f"unknown field {field!r}" in r.json()["message"]
        r = c.post(path, json={**body, "reasn": "typo"}, headers=JSON)
        assert "did you mean 'reason'?" in r.json()["message"]
    assert world.flags.history() == before
    assert world.migration.status().stage == stage
    with httpx.Client(base_url=world.url, timeout=30) as c:
        r = c.post(path, json=body, headers=JSON)  # the same write without the typo
        assert r.status_code == 200, r.text


def test_the_typo_from_the_finding_no_longer_loses_the_reason(world: World) -> None:
    world.flags.enable("new_checkout", by="ana")  # a clear that changes something
    with httpx.Client(base_url=world.url, timeout=30) as c:
        r = c.post("api/flags/new_checkout/clear", json={"reasn": "typo"}, headers=JSON)
        assert r.status_code == 422
        r = c.post("api/flags/new_checkout/clear", json={"reason": "typo"}, headers=JSON)
        assert r.status_code == 200
    assert world.flags.history("new_checkout")[-1].reason == "typo"


def test_an_empty_body_is_an_empty_object(world: World) -> None:
    with httpx.Client(base_url=world.url, timeout=30) as c:
        for path in ("api/flags/search_v2/enable", "api/flags/search_v2/clear"):
            r = c.post(path, content=b"", headers=JSON)  # needs no field: done
            assert r.status_code == 200, (path, r.text)
        r = c.post("api/flags/search_v2/percentage", content=b"", headers=JSON)
        assert (r.status_code, r.json()["error"]) == (422, "InvalidBody")
        assert "'percentage'" in r.json()["message"]
        r = c.post("api/flags/search_v2/disable", content=b"", headers=JSON)
        assert (r.status_code, r.json()["error"]) == (422, "ConfirmationRequired")
        # Not JSON (whitespace is no JSON text): 422, nothing written.
        r = c.post("api/flags/search_v2/enable", content=b" ", headers=JSON)
        assert (r.status_code, r.json()["error"]) == (422, "InvalidBody")
