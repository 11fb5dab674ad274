"""Tests that need something a machine may lack: skipped outside CI, failed in CI.

A test that needs Chromium, root (to drop to another uid, to mount a small
disk) or the like calls ``cannot_run(reason)`` when it is missing. On a
developer's machine the test is skipped, saying why. In CI (the environment
variable ``CI`` is ``true``, as CI services set it and ``.ci/run`` does) it
fails with the same reason: a CI run must run every test, never pass because a
test skipped itself. The ``chromium`` target of the Makefile follows the same
rule (in CI, a Chromium it cannot install fails ``make test``).
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["cannot_run", "in_ci", "needs_root"]


def in_ci() -> bool:
    """True in a CI run: the environment variable ``CI`` is ``true``."""
    return os.environ.get("CI") == "true"


def cannot_run(reason: str) -> NoReturn:
    """End the current test that cannot run here: skip it, or in CI fail it."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a test that cannot run fails in CI)", pytrace=False)
    pytest.skip(reason)


def needs_root(why: str) -> None:
    """``cannot_run`` unless this process runs as root; ``why``: what root is for."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        cannot_run(f"needs root ({why})")
