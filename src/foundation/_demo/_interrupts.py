"""Ctrl-C at a safe point: a block that must not be cut in half runs to its end first."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from foundation._cli._signals import Terminated, raising_handler

__all__ = ["ctrl_c_deferred"]


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """In the main thread: a SIGINT (or SIGTERM, when ``foundation`` made it raise
    ``Terminated``) during the block raises ``KeyboardInterrupt`` (``Terminated``)
    at its end. A signal ignored or handled by someone else is left alone."""
    if not _in_main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[signal.Signals, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler is raising_handler(signum):
            previous[signum] = handler
            signal.signal(signum, lambda s, _frame: caught.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        raise KeyboardInterrupt if caught[0] == signal.SIGINT else Terminated


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
