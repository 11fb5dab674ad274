"""Ctrl-C at a safe point: a block that must not be cut in half runs to its end first."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["ctrl_c_deferred"]


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """In the main thread: a Ctrl-C during the block raises ``KeyboardInterrupt`` at its end."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler or not _in_main_thread():
        yield  # Ctrl-C ignored or handled by someone else, or not ours to defer
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
