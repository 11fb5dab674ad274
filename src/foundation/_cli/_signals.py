"""SIGINT, SIGTERM and SIGHUP for the ``foundation`` command: one rule for every command.

SIGINT (Ctrl-C) raises ``KeyboardInterrupt`` in the main thread, as Python
does; :func:`install_terminating` makes SIGTERM and SIGHUP (the terminal
closed, the ssh session dropped) raise :class:`Terminated` the same way. Each
unwinds the command through its ``finally`` blocks (what it started is
stopped, its connections closed, its temporary files removed), then
``foundation.cli.main`` prints one line and exits 130 (SIGINT) or
``Terminated.exit_code``: 129 (SIGHUP) or 143 (SIGTERM); 0 for SIGTERM when
the command runs until stopped (``admin``, ``agents watch``, ``demo --admin``
once serving), for which SIGTERM is the normal end (what a service manager
sends to stop it). SIGHUP is no such end (the operator's terminal went away,
nobody asked the service to stop), so it exits 129 from every command: a
supervisor can tell "hung up" from "stopped". A signal the process started
with ignored (``nohup`` ignores SIGHUP) or handled by an embedding program is
left alone; the handlers are installed in the main thread only.

A writing command (``flags enable``..., ``migration advance``...) calls
:func:`hold_for_the_write` just before its write: from then to the command's
end, the three signals are held instead. A signal could otherwise land after
the store committed (while the command reads back its result, prints it or
closes the store) and end the command with 129/130/143, which says "nothing
done": a wrapper or an operator running it again would apply it twice (a
migration one stage too far). So 129, 130 and 143 always mean the write did
not start; once it has, the command ends as it would have without the signal
(its result and 0, or its error and 1/69), then says in one line that the
signal came too late (``foundation.cli.main``, through :func:`held_signals`
and :func:`release_held`).

>>> import signal
>>> from foundation._cli._signals import Terminated
>>> Terminated(signum=signal.SIGHUP).exit_code, Terminated().exit_code
(129, 143)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_HANGUP",
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "STOP_SIGNALS",
    "TERMINATING",
    "Terminated",
    "held_signals",
    "hold_for_the_write",
    "install_sigterm",
    "install_terminating",
    "raising_handler",
    "release_held",
    "restore_defaults",
    "write_began",
]

EXIT_HANGUP = 129  # 128 + SIGHUP
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM
_SIGHUP: tuple[int, ...] = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()  # not on Windows
TERMINATING: tuple[int, ...] = (signal.SIGTERM, *_SIGHUP)
"""The signals :func:`install_terminating` makes raise :class:`Terminated`."""
STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, *TERMINATING)
"""Every signal that stops a command by raising (held during a write)."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP (``signum``), raised in the main thread (a ``BaseException``,
    as ``KeyboardInterrupt``, so that ``except Exception`` does not stop it).

    ``exit_code``: 128 + ``signum`` (143, 129). A command that runs until stopped
    sets its orderly end (0) on it: that holds for SIGTERM only, the service
    manager's stop; after SIGHUP (the terminal gone) it stays 129.

    >>> import signal
    >>> hung_up = Terminated(signum=signal.SIGHUP)
    >>> hung_up.exit_code = 0  # as `agents watch` does on its way out
    >>> hung_up.exit_code, hung_up.word
    (129, 'hung up')
    """

    def __init__(self, exit_code: int | None = None, *, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self.word = "terminated" if signum == signal.SIGTERM else "hung up"
        super().__init__(f"{self.word} ({signal.Signals(signum).name})")
        self._exit_code = 128 + signum
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def exit_code(self) -> int:
        """The process's exit code (see the class)."""
        return self._exit_code

    @exit_code.setter
    def exit_code(self, code: int) -> None:
        if self.signum == signal.SIGTERM:  # a command's orderly end: SIGTERM's alone
            self._exit_code = code


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum=signum)


def raising_handler(signum: int) -> object:
    """The handler that turns ``signum`` into an exception (None for another signal)."""
    if signum == signal.SIGINT:
        return signal.default_int_handler
    if signum in TERMINATING:
        return _raise_terminated
    return None


def install_terminating(signums: tuple[int, ...] = TERMINATING) -> dict[int, object]:
    """Make SIGTERM and SIGHUP (or ``signums`` of them) raise :class:`Terminated`;
    return the previous handler of each one installed. One is left alone (not in
    the result) when ignored (``SIG_IGN``: ``nohup`` for SIGHUP) or handled by an
    embedding program; all of them off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    installed: dict[int, object] = {}
    for signum in signums:
        previous = signal.getsignal(signum)
        if previous is signal.SIG_DFL:  # not ignored (SIG_IGN), not the program's
            signal.signal(signum, _raise_terminated)
            installed[signum] = previous
    return installed


def install_sigterm() -> object | None:
    """:func:`install_terminating` for SIGTERM alone: the previous handler, or None
    if left alone (not the main thread, or SIGTERM ignored or handled by someone else)."""
    return install_terminating((signal.SIGTERM,)).get(signal.SIGTERM)


def restore_defaults(signums: tuple[int, ...] = TERMINATING) -> None:
    """Put the default back for each of ``signums`` whose :func:`install_terminating`
    handler is in place (it only ever replaces the default)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in signums:
        if signal.getsignal(signum) is _raise_terminated:
            signal.signal(signum, signal.SIG_DFL)


@contextlib.contextmanager
def _blocked() -> Iterator[None]:
    """The stop signals (SIGINT, SIGTERM, SIGHUP) kept pending by the kernel for a
    few calls (where the platform can), so that none lands between handler swaps
    that go together."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    # Race: a signal that arrived just before runs its handler as this call
    # returns: the mask to put back is read first, the block made inside the try.
    previous = mask(signal.SIG_BLOCK, ())
    try:
        mask(signal.SIG_BLOCK, STOP_SIGNALS)
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
    for signum in STOP_SIGNALS:
        hold = getattr(signal.getsignal(signum), "__self__", None)
        if isinstance(hold, _WriteHold):
            return hold
    return None


def hold_for_the_write() -> None:
    """Hold SIGINT, SIGTERM and SIGHUP from here to the command's end (in the main
    thread, where their handlers raise, as ``foundation.cli.main`` sets them; a
    signal ignored or handled by an embedding program is left alone).

    Call it just before the write: a signal landing before this call still
    raises, with nothing written. Once called, the write and everything after it
    (its result read back and printed, the store closed) run to their end; the
    write is bounded by the store's timeouts (SQLite's ``busy_timeout``, Redis's
    operation timeout), so the command still ends soon.
    """
    if threading.current_thread() is not threading.main_thread() or _the_hold() is not None:
        return
    hold = _WriteHold()
    # Race: the swaps go together (one alone would let a signal raise after the
    # write began), so the signals are blocked meanwhile; one that arrived just
    # before raises here, before the write: nothing written, 129, 130 or 143.
    with _blocked():
        for signum in STOP_SIGNALS:
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


def release_held(*, restore_defaults_of: tuple[int, ...] = ()) -> None:
    """End a write's hold: put back the handlers it replaced (the raising ones).

    ``restore_defaults_of``: put the default back instead for these of SIGTERM
    and SIGHUP (as :func:`restore_defaults`), in the same step. A handler set
    since (the console script's ``SIG_IGN`` at the command's end) is left in place.

    Race: done with the signals blocked, so none lands between the two swaps
    (the raising handler back, then the default): one pending then meets the
    handler it finds at the end.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    with _blocked():
        hold = _the_hold()
        if hold is not None:
            for signum, handler in hold.previous.items():
                if getattr(signal.getsignal(signum), "__self__", None) is hold:
                    signal.signal(signum, handler)
        restore_defaults(restore_defaults_of)
