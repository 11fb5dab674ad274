"""Helpers for the flag tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from foundation.flags import DEFAULT_FLAGS, Flag

FLAGS = (
    Flag("beta", description="a beta feature"),
    Flag("dark_mode", default=True),
    Flag("new_checkout"),
    *DEFAULT_FLAGS,
)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.005)  # sleep-ok: polling with a deadline
