"""The admin page shows a Redis outage: a banner, and a kill switch marked pending.

Headless Debian ``chromium`` driven by Playwright (skipped, saying why, only when
the browser is not installed, outside CI), over the service of ``test_degraded_status``
(its own interpreter) and a real redis-server the test kills and restarts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.admin._browser import browser, playwright_api
from tests.admin.test_degraded_status import Service, service_factory
from tests.redis_support import RedisServer

__all__ = ["browser", "service_factory"]  # the fixtures, shared with the other tests


def test_the_page_shows_the_outage_and_the_pending_kill_switch(
    browser: Any,
    fresh_redis: RedisServer,
    service_factory: Callable[[str, bool], Service],
    tmp_path: Path,
) -> None:
    expect = playwright_api.expect
    expect.set_options(timeout=30_000)
    svc = service_factory("registry", False)
    artifacts = Path(os.environ.get("FOUNDATION_ADMIN_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(svc.url)
        banner = page.locator("#degraded")
        row = page.locator('#flags tr[data-flag="checkout"]')
        expect(page.locator("#live")).to_have_text("live")
        expect(row.locator(".badge.on")).to_have_text("on")
        expect(banner).to_be_hidden()
        page.fill("#token", "ana-secret")
        page.click("#login")
        expect(page.locator("#operator")).to_have_text("ana")
        page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

        # Redis dies: the banner appears by itself (a status event), naming both parts.
        fresh_redis.kill()
        expect(banner).to_be_visible()
        expect(banner.locator('[data-component="registry"]')).to_contain_text(
            "registry disconnected since"
        )
        expect(banner.locator('[data-component="flag store"]')).to_contain_text("stale")
        expect(banner).to_contain_text("last error: Redis at")
        expect(row.locator(".badge.sync")).to_have_text("stale")

        # The kill switch: off here at once, and the page says it is only local so far.
        row.locator(".toggle").click()
        page.fill("#confirm-input", "checkout")
        page.fill("#confirm-reason", "incident")
        page.click("#confirm-ok")
        expect(row.locator(".badge.off")).to_have_text("off")
        expect(row.locator(".badge.sync")).to_have_text("pending")
        expect(page.locator("#message")).to_contain_text("pending")
        expect(page.locator("#message")).to_contain_text("other nodes still serve")
        expect(banner).to_contain_text("1 kill switch pending (checkout)")
        page.screenshot(path=str(artifacts / "degraded-banner.png"), full_page=True)

        # Redis is back: the kill switch is committed, the banner and the badges go.
        fresh_redis.start()
        expect(banner).to_be_hidden()
        expect(row.locator(".badge.sync")).to_have_count(0)
        expect(row.locator(".badge.off")).to_have_text("off")
        assert page.evaluate("window.__sameDocument") is True
        assert errors == []
    finally:
        page.close()
    svc.finish()
    print(f"\ndegraded banner screenshot: {artifacts / 'degraded-banner.png'}")
