"""The admin page shows a TLS failure of Redis as text, and says the history is bounded.

Headless Debian ``chromium`` driven by Playwright (skipped, saying why, only when
the browser is not installed, outside CI), over the service of ``test_degraded_status``
(its own interpreter, a ``RedisFlagStore`` with the default ``history_limit``)
and a real TLS redis-server whose certificate the test lets expire and renews.
The clients' CA file sits in a directory named ``<b>injected...``: the error
the page shows carries that path, and must show it as text, never as markup.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation._demo._redis_server import ServerTls
from foundation.admin._status import ERROR_LIMIT
from foundation.flags._store import DEFAULT_HISTORY_LIMIT
from tests.admin._browser import browser, playwright_api
from tests.admin.test_degraded_status import Service
from tests.admin.test_tls_status import VERIFY, TlsRedis, both_failed, good
from tests.redis._tls import Pki, make_pki

__all__ = ["browser"]  # the fixture (tests/admin/_browser.py)

MARKUP = "<b>injected"
EXPIRED = f"{VERIFY} (certificate has expired)"


@pytest.fixture
def html_pki() -> Iterator[Pki]:
    """Certificates in ``/tmp/<b>injected…/`` (short: the path stays in the error)."""
    d = Path(tempfile.mkdtemp(prefix=MARKUP, dir="/tmp"))
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_the_page_shows_an_expired_certificate_as_text(
    browser: Any, html_pki: Pki, tmp_path: Path
) -> None:
    expect = playwright_api.expect
    expect.set_options(timeout=30_000)
    # The path as written in a config file, unquoted: "<" and ">" reach the error.
    server = TlsRedis(good(html_pki), f"?ssl_ca_certs={html_pki.ca}")
    server.start()
    svc = Service(server, "registry", False)
    artifacts = Path(os.environ.get("FOUNDATION_ADMIN_ARTIFACTS") or tmp_path / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        svc.wait_status("the first states", lambda s: not s["degraded"])
        page.goto(svc.url)
        banner = page.locator("#degraded")
        expect(page.locator("#live")).to_have_text("live")
        expect(banner).to_be_hidden()
        page.fill("#token", "ana-secret")
        page.click("#login")
        expect(page.locator("#operator")).to_have_text("ana")

        # The audit trail says the store keeps a bounded history.
        kept = page.locator("#history-retention")
        expect(kept).to_be_visible()
        expect(kept).to_have_text(
            f"Bounded history: the store keeps the last {DEFAULT_HISTORY_LIMIT:,} records "
            "of all flags (older records are trimmed)."
        )

        # The certificate expires (the server restarts with it): the banner appears.
        server.tls = ServerTls(html_pki.expired_cert, html_pki.expired_key, html_pki.ca)
        server.restart()
        status = svc.wait_status("the TLS failure in /api/status", both_failed(EXPIRED))
        expect(banner).to_be_visible()
        registry = banner.locator('[data-component="registry"]')
        store = banner.locator('[data-component="flag store"]')
        expect(registry).to_contain_text("registry disconnected since")
        expect(store).to_contain_text("flag store stale since")
        for line in (registry, store):
            err = line.locator(".err")
            expect(err).to_contain_text("last error: Redis at rediss://127.0.0.1:")
            expect(err).to_contain_text(EXPIRED)
            expect(err).to_contain_text("renew it")
            expect(err).to_contain_text(f"ssl_ca_certs=/tmp/{MARKUP}")  # shown as text
            shown = err.text_content() or ""
            assert len(shown) <= len("last error: ") + ERROR_LIMIT, shown
        # No markup of the error became an element (a <b> holding "injected").
        assert banner.locator("b", has_text="injected").count() == 0
        assert page.evaluate("document.querySelectorAll('#degraded .err *').length") == 0
        for part in (status["registry"], status["flag_store"]):
            assert MARKUP in part["last_error"]  # the JSON carries it as is
            assert len(part["last_error"]) <= ERROR_LIMIT
        page.screenshot(path=str(artifacts / "tls-banner.png"), full_page=True)

        # Renewed: the banner goes by itself.
        server.tls = good(html_pki)
        server.restart()
        expect(banner).to_be_hidden()
        assert errors == []
        page.close()
        svc.finish()
    finally:
        svc.kill()
        server.stop()
    print(f"\nTLS banner screenshot: {artifacts / 'tls-banner.png'}")
