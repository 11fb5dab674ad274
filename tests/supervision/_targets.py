"""Module-level children for multiprocessing (picklable, cheap to import)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


def serve(ctx: Any) -> None:
    """Become ready, then run until SIGTERM."""
    ctx.ready()
    threading.Event().wait()


def crash_after_ready(ctx: Any, code: int) -> None:
    ctx.ready()
    sys.exit(code)


def exit_before_ready(ctx: Any) -> None:
    sys.exit(3)


def stubborn(ctx: Any) -> None:
    """Ignore SIGTERM: only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.ready()
    threading.Event().wait()
