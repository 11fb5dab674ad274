"""Multiprocessing children for the interpreter-exit and Ctrl-C scenarios.

Picklable, module level. A spawned child imports this module while it
bootstraps, before the library's entry point runs: with
``$FOUNDATION_TEST_GATE`` set, that import (in a child, not in the parent
named by ``$FOUNDATION_TEST_GATE_PARENT``) announces itself and waits for the
test to open the gate, so the test can signal the child at that stage.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


def _gate() -> None:
    gate = os.environ.get("FOUNDATION_TEST_GATE")
    if not gate or str(os.getpid()) == os.environ.get("FOUNDATION_TEST_GATE_PARENT"):
        return
    Path(gate, "bootstrapping").touch()
    deadline = time.monotonic() + 30
    while not Path(gate, "open").exists() and time.monotonic() < deadline:
        time.sleep(0.005)  # sleep-ok: polling with a deadline


_gate()


def serve(ctx: Any) -> None:
    """Become ready, then run until SIGTERM."""
    ctx.ready()
    threading.Event().wait()


def _die_late(signum: int, frame: Any) -> None:
    time.sleep(1)  # sleep-ok: holds multiprocessing's exit handler in join() meanwhile
    os._exit(0)


def serve_die_late(ctx: Any) -> None:
    """As :func:`serve`, but SIGTERM ends it a second later."""
    signal.signal(signal.SIGTERM, _die_late)
    ctx.ready()
    threading.Event().wait()
