"""SIGINT and SIGTERM for the ``foundation`` command: one rule for every command.

SIGINT (Ctrl-C) raises ``KeyboardInterrupt`` in the main thread, as Python
does; ``install_sigterm`` makes SIGTERM raise :class:`Terminated` the same
way. Either unwinds the command through its ``finally`` blocks (what it
started is stopped, its connections closed, its temporary files removed),
then ``foundation.cli.main`` prints one line and exits 130 (SIGINT) or
``Terminated.exit_code`` (SIGTERM): 143, or 0 when the command runs until
stopped (``admin``, ``agents watch``, ``demo --admin`` once serving), for
which SIGTERM is the normal end (what a service manager sends to stop it).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Terminated",
    "install_sigterm",
    "raising_handler",
    "restore_sigterm",
]

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (a ``BaseException``, as ``KeyboardInterrupt``,
    so that ``except Exception`` does not stop it).

    ``exit_code``: 143; a command that runs until stopped sets 0 (its orderly end).
    """

    def __init__(self, exit_code: int = EXIT_TERMINATED) -> None:
        super().__init__("terminated (SIGTERM)")
        self.exit_code = exit_code


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def raising_handler(signum: int) -> object:
    """The handler that turns ``signum`` into an exception (None for another signal)."""
    if signum == signal.SIGINT:
        return signal.default_int_handler
    if signum == signal.SIGTERM:
        return _raise_terminated
    return None


def install_sigterm() -> object | None:
    """Make SIGTERM raise :class:`Terminated`; return the previous handler (None if
    left alone: not the main thread, or SIGTERM ignored or handled by someone else)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:  # ignored (SIG_IGN) or the embedding program's
        return None
    signal.signal(signal.SIGTERM, _raise_terminated)
    return previous


def restore_sigterm() -> None:
    """Put SIGTERM's default back if :func:`install_sigterm`'s handler is in place
    (it only ever replaces the default)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
