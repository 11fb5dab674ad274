"""A multiprocessing child for the cancelled-stop scenarios (picklable, module level)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


def count_terms(ctx: Any, folder: str) -> None:
    """Become ready, then run until SIGTERM. Each SIGTERM is written to
    ``folder/terms`` (one line each, the first one creates it); the first
    ends the child once ``folder/release`` exists (within 60 s)."""
    terms = Path(folder, "terms")
    release = Path(folder, "release")
    first = threading.Event()

    def on_term(signum: int, frame: Any) -> None:
        with terms.open("a") as out:
            out.write("TERM\n")
        if first.is_set():
            return
        first.set()
        deadline = time.monotonic() + 60
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.005)  # sleep-ok: polling with a deadline
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    ctx.ready()
    threading.Event().wait()
