"""The headless browser of the admin page tests: Debian's chromium through Playwright.

Playwright drives the system's chromium (``executable_path``), never a browser
it downloads. ``FOUNDATION_CHROMIUM`` names another Chromium binary. A test
module importing this is skipped, saying why, when Playwright is not installed;
its tests are skipped, saying why, when Chromium is not. In CI (``CI=true``)
neither is skipped: a missing Playwright fails the module's collection, a
missing Chromium fails each test (``tests/_ci.py``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests._ci import cannot_run, in_ci

__all__ = ["CHROMIUM", "browser", "playwright_api"]

CHROMIUM = os.environ.get("FOUNDATION_CHROMIUM") or "/usr/bin/chromium"

_NO_PLAYWRIGHT = "playwright is not installed (pip install -e '.[dev]')"

if in_ci():
    try:
        playwright_api = importlib.import_module("playwright.sync_api")
    except ImportError as exc:
        raise ImportError(f"{_NO_PLAYWRIGHT}; CI=true: the browser tests must run") from exc
else:
    playwright_api = pytest.importorskip("playwright.sync_api", reason=_NO_PLAYWRIGHT)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium per test module."""
    if not os.access(CHROMIUM, os.X_OK):
        cannot_run(
            f"no Chromium at {CHROMIUM}: Debian's chromium is not installed and could not be "
            "installed (`make test` runs `make chromium`, which installs it with apt-get)"
        )
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield b
        finally:
            b.close()
