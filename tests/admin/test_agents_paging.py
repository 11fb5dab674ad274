"""``GET /api/agents`` pages: a capped ``limit`` and an ``after`` cursor, over a real
uvicorn server and registry."""

from __future__ import annotations

from typing import Any

import httpx

from foundation import spawn_thread
from foundation.admin._routes_agents import MAX_AGENTS_PAGE
from tests.admin.conftest import World
from tests.admin.test_api import client


def _all_pages(c: httpx.Client, limit: int, **params: Any) -> list[list[Any]]:
    pages: list[list[Any]] = []
    after: str | None = None
    while True:
        query = {**params, "limit": limit, **({"after": after} if after else {})}
        r = c.get("api/agents", params=query)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([a["key"] for a in body["agents"]])
        after = body["next"]
        if after is None:
            return pages
        assert len(pages) < 100, "the cursor does not move"


def test_a_limit_above_the_maximum_is_refused(world: World) -> None:
    with client(world) as c:
        assert c.get("api/agents", params={"limit": MAX_AGENTS_PAGE}).status_code == 200
        r = c.get("api/agents", params={"limit": MAX_AGENTS_PAGE + 1})
        assert r.status_code == 422
        assert r.json()["error"] == "InvalidLimit"
        assert str(MAX_AGENTS_PAGE) in r.json()["message"]


def test_pages_follow_the_cursor_to_every_entry_once(world: World) -> None:
    # "7" and 7 both show as 7; ["job", 7] and the text '["job", 7]' alike.
    keys: list[Any] = [f"w{i:02d}" for i in range(12)] + ["7", 7, ("job", 7), '["job", 7]']
    for key in keys:
        world.registry.register(key, spawn_thread(world.stop.wait), {"role": "io"})
    with client(world) as c:
        whole = c.get("api/agents", params={"limit": 100}).json()
        assert whole["next"] is None
        everyone = [a["key"] for a in whole["agents"]]
        pages = _all_pages(c, 3)
        assert [k for page in pages for k in page] == everyone
        assert all(len(p) == 3 for p in pages[:-1])
        assert 1 <= len(pages[-1]) <= 3
        found = _all_pages(c, 2, q="w0")
        assert [k for page in found for k in page] == [f"w{i:02d}" for i in range(10)]
        io = c.get("api/agents", params={"where": "role:eq:io", "limit": 100}).json()
        assert io["matched"] >= len(keys)  # the world's own io worker too
        where = _all_pages(c, 5, where="role:eq:io")
        assert [k for page in where for k in page] == [a["key"] for a in io["agents"]]


def test_entries_that_come_and_go_between_pages(world: World) -> None:
    # "z...": after the world's own worker-1 and worker-2, which the first page shows.
    for i in range(6):
        world.registry.register(f"zk{i}", spawn_thread(world.stop.wait))
    with client(world) as c:
        first = c.get("api/agents", params={"limit": 5}).json()
        assert [a["key"] for a in first["agents"]] == [
            "worker-1",
            "worker-2",
            "zk0",
            "zk1",
            "zk2",
        ]
        world.registry.unregister("zk2")  # the last one shown leaves
        world.registry.unregister("zk3")  # one not shown yet leaves
        world.registry.register("zk0a", spawn_thread(world.stop.wait))  # before the cursor
        world.registry.register("zk4a", spawn_thread(world.stop.wait))  # after it
        rest = c.get("api/agents", params={"limit": 3, "after": first["next"]}).json()
        assert [a["key"] for a in rest["agents"]] == ["zk4", "zk4a", "zk5"]
        assert rest["next"] is None


def test_a_bad_cursor_is_refused(world: World) -> None:
    with client(world) as c:
        for raw in ("w1", "[1,2]", '["a"]', "[", '{"a":1}'):
            r = c.get("api/agents", params={"after": raw})
            assert r.status_code == 422, raw
            assert r.json()["error"] == "InvalidCursor"
