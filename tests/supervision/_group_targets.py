"""Multiprocessing children that leave a grandchild (picklable, module level)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

# A grandchild that ignores SIGTERM and would run for ten minutes.
_GRANDCHILD = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "while True:\n"
    "    time.sleep(1)\n"  # sleep-ok: a process that runs until killed
)


def _spawn(pidfile: str) -> None:
    grandchild = subprocess.Popen([sys.executable, "-c", _GRANDCHILD])
    tmp = Path(pidfile + ".tmp")
    tmp.write_text(str(grandchild.pid))
    tmp.rename(pidfile)  # whole, at once: a reader never sees half a pid


def parent_until_stopped(ctx: Any, pidfile: str) -> None:
    """Start a grandchild, become ready, run until stopped (SIGTERM ends it)."""
    _spawn(pidfile)
    ctx.ready()
    threading.Event().wait()


def parent_that_exits(ctx: Any, pidfile: str) -> None:
    """Start a grandchild, become ready, end normally (the grandchild runs on)."""
    _spawn(pidfile)
    ctx.ready()


def _fork_grandchild(pidfile: str) -> None:
    """Fork a grandchild that ignores SIGTERM (it inherits every fd, the end of
    the pipe multiprocessing watches for this child's exit included); its pid
    goes to ``pidfile``."""
    import os
    import signal
    import time

    pid = os.fork()
    if pid == 0:  # the grandchild
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)  # sleep-ok: a process that runs until killed
    tmp = Path(pidfile + ".tmp")
    tmp.write_text(str(pid))
    tmp.rename(pidfile)


def parent_that_forks(ctx: Any, pidfile: str) -> None:
    """Fork a grandchild (``_fork_grandchild``), become ready, run until stopped."""
    _fork_grandchild(pidfile)
    ctx.ready()
    threading.Event().wait()


def parent_that_forks_and_exits(ctx: Any, pidfile: str) -> None:
    """Fork a grandchild (``_fork_grandchild``), become ready, exit 2."""
    _fork_grandchild(pidfile)
    ctx.ready()
    raise SystemExit(2)
