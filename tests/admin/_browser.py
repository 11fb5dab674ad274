"""The headless browser of the admin page tests: Debian's chromium through Playwright.

Playwright drives the system's chromium (``executable_path``), never a browser
it downloads. ``FOUNDATION_CHROMIUM`` names another Chromium binary. A test
module importing this is skipped, saying why, when Playwright is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = ["CHROMIUM", "browser", "playwright_api"]

CHROMIUM = os.environ.get("FOUNDATION_CHROMIUM") or "/usr/bin/chromium"

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per test module."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: Debian's chromium is not installed and could not be "
            "installed (`make test` runs `make chromium`, which installs it with apt-get)"
        )
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()
