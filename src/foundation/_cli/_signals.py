"""SIGINT and SIGTERM for the ``foundation`` command: one rule for every command.

SIGINT (Ctrl-C) raises ``KeyboardInterrupt`` in the main thread, as Python
does; ``install_sigterm`` makes SIGTERM raise :class:`Terminated` the same
way. Either unwinds the command through its ``finally`` blocks (what it
started is stopped, its connections closed, its temporary files removed),
then ``foundation.cli.main`` prints one line and exits 130 (SIGINT) or
``Terminated.exit_code`` (SIGTERM): 143, or 0 when the command runs until
stopped (``admin``, ``agents watch``, ``demo --admin`` once serving), for
which SIGTERM is the normal end (what a service manager sends to stop it).

A writing command (``flags enable``..., ``migration advance``...) calls
:func:`hold_for_the_write` just before its write: from then to the command's
end, both signals are held instead. A signal could otherwise land after the
store committed (while the command reads back its result, prints it or closes
the store) and end the command with 130/143, which says "nothing done": a
wrapper or an operator running it again would apply it twice (a migration one
stage too far). So 130 and 143 always mean the write did not start; once it
has, the command ends as it would have without the signal (its result and 0,
or its error and 1/69), then says in one line that the signal came too late
(``foundation.cli.main``, through :func:`held_signals` and
:func:`release_held`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Terminated",
    "held_signals",
    "hold_for_the_write",
    "install_sigterm",
    "raising_handler",
    "release_held",
    "restore_sigterm",
    "write_began",
]

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
_BOTH = (signal.SIGINT, signal.SIGTERM)


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


@contextlib.contextmanager
def _blocked() -> Iterator[None]:
    """SIGINT and SIGTERM kept pending by the kernel for a few calls (where the
    platform can), so that none lands between handler swaps that go together."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    # Race: a signal that arrived just before runs its handler as this call
    # returns: the mask to put back is read first, the block made inside the try.
    previous = mask(signal.SIG_BLOCK, ())
    try:
        mask(signal.SIG_BLOCK, _BOTH)
        yield
    finally:
        mask(signal.SIG_SETMASK, previous)


class _WriteHold:
    """The handlers a write's hold replaced, and the signals it held since.

    Its ``note`` method is the handler while it holds: the hold is found again
    from the handler in place (no state of this module's own)."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}
        self.caught: list[int] = []

    def note(self, signum: int, frame: FrameType | None) -> None:
        self.caught.append(signum)  # (a list append: safe in a handler)


def _the_hold() -> _WriteHold | None:
    for signum in _BOTH:
        hold = getattr(signal.getsignal(signum), "__self__", None)
        if isinstance(hold, _WriteHold):
            return hold
    return None


def hold_for_the_write() -> None:
    """Hold SIGINT and SIGTERM from here to the command's end (in the main thread,
    where their handlers raise, as ``foundation.cli.main`` sets them; a signal
    ignored or handled by an embedding program is left alone).

    Call it just before the write: a signal landing before this call still
    raises, with nothing written. Once called, the write and everything after it
    (its result read back and printed, the store closed) run to their end; the
    write is bounded by the store's timeouts (SQLite's ``busy_timeout``, Redis's
    operation timeout), so the command still ends soon.
    """
    if threading.current_thread() is not threading.main_thread() or _the_hold() is not None:
        return
    hold = _WriteHold()
    # Race: the two swaps go together (one alone would let a signal raise after
    # the write began), so both signals are blocked meanwhile; one that arrived
    # just before raises here, before the write: nothing written, 130 or 143.
    with _blocked():
        for signum in _BOTH:
            handler = signal.getsignal(signum)
            if handler is raising_handler(signum):
                hold.previous[signum] = handler
                signal.signal(signum, hold.note)


def write_began() -> bool:
    """Whether a write's hold is in place: the command's write began (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    return _the_hold() is not None


def held_signals() -> list[int]:
    """The signals held since :func:`hold_for_the_write`, first first (the hold stays)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    hold = _the_hold()
    return [] if hold is None else list(hold.caught)


def release_held(*, restore_sigterm_default: bool) -> None:
    """End a write's hold: put back the handlers it replaced (the raising ones).

    ``restore_sigterm_default``: put SIGTERM's default back instead (as
    :func:`restore_sigterm`), in the same step. A handler set since (the
    console script's ``SIG_IGN`` at the command's end) is left in place.

    Race: done with both signals blocked, so none lands between the two swaps
    (SIGTERM's raising handler back, then its default): one pending then meets
    the handler it finds at the end.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with _blocked():
        hold = _the_hold()
        if hold is not None:
            for signum, handler in hold.previous.items():
                if getattr(signal.getsignal(signum), "__self__", None) is hold:
                    signal.signal(signum, handler)
        if restore_sigterm_default:
            restore_sigterm()
