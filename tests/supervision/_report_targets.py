"""Module-level process children for the report tests (picklable for "spawn")."""

from __future__ import annotations

import os
import signal
from typing import Any


def crash_with_value_error(ctx: Any) -> None:
    """Become ready, then raise: the process exits with code 1."""
    ctx.ready()
    raise ValueError("process boom")


def kill_self(ctx: Any) -> None:
    """Become ready, then die of SIGKILL."""
    ctx.ready()
    os.kill(os.getpid(), signal.SIGKILL)
