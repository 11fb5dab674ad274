"""The admin page's words for a stale ``SQLiteFlagStore`` (its file deleted while in use).

Such a store has no node copy and keeps no kill switch: every write fails
(``FlagError``), kill switches included, until it is reopened. The page said
what it says of a ``RedisFlagStore`` serving its node copy: "writes other than
kill switches fail", and its ``stale`` badges "this node serves its copy".
Headless Debian ``chromium`` driven by Playwright (skipped, saying why, only when
the browser is not installed), over a real ``AdminServer`` and a real file.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation.admin import AdminServer
from foundation.flags import FeatureFlags, Flag, SQLiteFlagStore
from tests.admin._browser import browser, playwright_api

__all__ = ["browser"]  # the fixture (tests/admin/_browser.py)

TOKEN = "ana-secret"
STALE_FILE = "every write fails, kill switches included, until the store is reopened"


@pytest.fixture
def stale_server(tmp_path: Path) -> Iterator[tuple[AdminServer, SQLiteFlagStore]]:
    """An admin server over a SQLite store whose file was then deleted (a tmp reaper)."""
    path = tmp_path / "flags.db"
    store = SQLiteFlagStore(path, poll_interval=0.05)
    flags = FeatureFlags([Flag("beta", default=True)], store=store)
    server = AdminServer(flags=flags, token={"ana": TOKEN}, bind="127.0.0.1:0")
    server.start()
    try:
        for name in os.listdir(tmp_path):  # the file, its -wal and -shm
            (tmp_path / name).unlink()
        deadline = time.monotonic() + 30
        while not store.stale:  # the watcher notices within poll_interval
            assert time.monotonic() < deadline, "the store never went stale"
            time.sleep(0.01)  # sleep-ok: polling the watcher's verdict with a deadline
        yield server, store
    finally:
        server.close()
        flags.close()
        store.close()


def _request(server: AdminServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_a_stale_sqlite_store_says_every_write_fails(
    browser: Any, stale_server: tuple[AdminServer, SQLiteFlagStore]
) -> None:
    server, store = stale_server
    code, status = _request(server, "GET", "/api/status")
    assert code == 200, status
    block = status["flag_store"]
    assert (block["state"], block["reopen_needed"], block["degraded"]) == ("stale", True, True)
    # What the words below claim: the kill switch fails too, nothing changes.
    code, refused = _request(
        server, "POST", "/api/flags/beta/disable", {"confirm": "beta", "reason": "incident"}
    )
    assert code >= 400, refused
    assert store.stale

    expect = playwright_api.expect
    expect.set_options(timeout=30_000)
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(server.url)
        page.fill("#token", TOKEN)
        page.click("#login")
        expect(page.locator("#operator")).to_have_text("ana")
        line = page.locator('#degraded [data-component="flag store"]')
        expect(line).to_contain_text("flag store stale")
        expect(line).to_contain_text(STALE_FILE)
        expect(line).not_to_contain_text("writes other than kill switches fail")
        expect(line).not_to_contain_text("node's copy")
        badge = page.locator('#flags tr[data-flag="beta"] .badge.sync')
        expect(badge).to_have_text("stale")
        expect(badge).to_have_attribute(
            "title",
            "the store's file was deleted or replaced while in use: this process reads the "
            "old file, which other processes no longer see; every write fails, kill "
            "switches included, until the store is reopened (restart the process)",
        )
        assert errors == []
    finally:
        page.close()
