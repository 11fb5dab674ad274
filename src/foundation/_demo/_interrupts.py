"""Signals at safe points: a block that must not be cut in half runs to its end first.

``ctrl_c_deferred`` guards a start (a process being started); ``finishing``
guards a cleanup (what a part started, stopped and removed).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType, TracebackType
from typing import Any

from foundation._cli._signals import STOP_SIGNALS, Terminated, _blocked, raising_handler

__all__ = ["ctrl_c_deferred", "finishing"]


class _Held:
    """Hold SIGINT and SIGTERM (when their handlers raise, as ``foundation`` sets
    them) in the main thread for the block; a signal ignored or handled by someone
    else is left alone. ``cut_on_ctrl_c``: a SIGINT raises at once instead."""

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.cut_on_ctrl_c = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Held:
        if threading.current_thread() is not threading.main_thread():
            return self
        # Race: the two swaps go together (one done alone would hold a signal
        # for good, or let one through), so both signals are blocked meanwhile;
        # one that arrived just before runs its raising handler here: undone.
        with _blocked():
            try:
                for signum in STOP_SIGNALS:
                    handler = signal.getsignal(signum)
                    if handler is raising_handler(signum):
                        self._previous[signum] = handler
                        signal.signal(signum, self._hold)
            except BaseException:
                self._restore()
                raise
        return self

    def _hold(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.cut_on_ctrl_c:
            raise KeyboardInterrupt
        self.caught.append(signum)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with _blocked():
            self._restore()

    def _restore(self) -> None:
        """Put the raising handlers back, both: ``_hold`` no longer raises, so a
        signal that lands meanwhile is held (and acted on by ``raise_caught``)."""
        self.cut_on_ctrl_c = False
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def raise_caught(self) -> None:
        """Act on the first signal held, as its handler would have."""
        if self.caught:
            if self.caught[0] == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated(signum=self.caught[0])  # SIGTERM 143, SIGHUP 129


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """In the main thread: a SIGINT (or SIGTERM, when ``foundation`` made it raise
    ``Terminated``) during the block raises ``KeyboardInterrupt`` (``Terminated``)
    at its end. A signal ignored or handled by someone else is left alone."""
    with _Held() as held:
        yield
    held.raise_caught()


@contextlib.contextmanager
def finishing(*, cut_by_a_second_ctrl_c: bool = False) -> Iterator[None]:
    """A cleanup (in a ``finally``) that runs to its end: a SIGINT or SIGTERM during
    the block is held until then, and then raised (the first one). If the block
    runs for a signal already (a ``KeyboardInterrupt`` or ``Terminated`` unwinds),
    that one goes on instead: the command ends as for its first signal.

    ``cut_by_a_second_ctrl_c``: for a cleanup that may wait out operation timeouts
    (closes on a frozen Redis): while it unwinds a Ctrl-C, a second one raises at
    once (docs/cli.md: a second Ctrl-C cuts the shutdown short)."""
    unwinding = sys.exc_info()[1]  # in a finally: the exception it runs for, if any
    # Race: a signal that lands before the handlers below are swapped in (the few
    # calls of this function's start) still raises there and skips the cleanup: no
    # Python code can hold a signal before its own first call. The block itself,
    # which lasts from microseconds to seconds, is covered.
    with _Held() as held:
        held.cut_on_ctrl_c = cut_by_a_second_ctrl_c and isinstance(unwinding, KeyboardInterrupt)
        yield
    if not isinstance(unwinding, (KeyboardInterrupt, Terminated)):
        held.raise_caught()  # (over an error that unwinds: the operator's stop wins)
