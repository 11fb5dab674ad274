"""A signal wakeup fd for a loop in the main thread (``signal.set_wakeup_fd``).

``asyncio.run`` installs its SIGINT handler with ``signal.signal`` and sets no
wakeup fd (CPython 3.11: the selector loop sets one only for
``loop.add_signal_handler``). Python's C handler then only flags the signal; the
Python handler runs in the main thread once it is back in the interpreter. When
the kernel hands a process-directed SIGINT to another thread (a thread child,
a service), or it lands between the interpreter's last check and
``epoll_wait``, the loop sleeps on in ``epoll_wait(-1)``: the first Ctrl-C does
nothing until something else wakes the loop (bpo-21895; 10/16 runs of
``async with app`` with a thread worker). With a wakeup fd the C handler also
writes a byte to it, the loop wakes, and the handler runs at once.

One socket pair for the process, never closed: a loop that closes before the
block that set it up ends (abandoned) leaves the wakeup fd on a socket that
still exists (its bytes are dropped once its buffer is full), never on a
closed or reused fd. Blocks overlapping on one loop share it (counted): the
last to end removes it. A forked child forgets it (the pair is the parent's).

Limits: a wakeup fd someone else set (``loop.add_signal_handler``'s) is left
alone, and when asyncio removes its last handler inside a block (it then sets
none) the block goes on without one; ``install``/``uninstall`` never probe
while the loop has asyncio signal handlers (a probe swaps the fd for an
instant: a signal then would not reach asyncio's own fd). Nothing here raises:
without a socket pair (out of fds) the block runs without a wakeup fd.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    import socket

_pair: tuple[socket.socket, socket.socket] | None = None
_loop: asyncio.AbstractEventLoop | None = None  # the loop reading _pair[0]
_users = 0  # the blocks of _loop counting on it
_KEPT: list[socket.socket] = []  # a forked child's inherited pair (see _forget_after_fork)


def _drain() -> None:
    assert _pair is not None
    with contextlib.suppress(OSError):  # BlockingIOError: drained
        while _pair[0].recv(4096):
            pass


def _asyncio_owns_the_fd(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` has signal handlers (``add_signal_handler``): then the
    wakeup fd is asyncio's, and not to be swapped even for an instant."""
    return bool(getattr(loop, "_signal_handlers", None))


def _new_pair() -> tuple[socket.socket, socket.socket] | None:
    import socket  # (deferred: `import foundation` imports no socket module)

    try:
        pair = socket.socketpair()
    except OSError:  # out of fds: no wakeup fd, as before (nothing raised)
        return None
    for end in pair:
        end.setblocking(False)
    import atexit

    atexit.register(_close_at_exit)  # (once: a pair is made once per process)
    return pair


def _close_at_exit() -> None:
    """At the interpreter's exit: the wakeup fd off our sockets, then closed
    (unclosed, they were a ResourceWarning under ``-X dev``)."""
    ends = [*_KEPT, *(_pair or ())]
    with contextlib.suppress(ValueError):  # (exit from another thread: left as is)
        current = signal.set_wakeup_fd(-1)
        if all(current != end.fileno() for end in ends):
            signal.set_wakeup_fd(current)  # someone else's: theirs
        for end in ends:
            end.close()


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Make ``loop`` (running in this thread) wake on any signal, if it is the
    main thread and no wakeup fd is set (or ours, for ``loop``). Whether this
    call counts on it: then :func:`uninstall` must follow. Never raises."""
    global _pair, _loop, _users
    if threading.current_thread() is not threading.main_thread():
        return False  # signals are handled in the main thread only
    if _loop is loop and not loop.is_closed():
        _users += 1  # an overlapping block on the same loop: shared
        return True
    if _asyncio_owns_the_fd(loop):
        return False
    if _pair is None:
        _pair = _new_pair()
        if _pair is None:
            return False
    ours = _pair[1].fileno()
    # Race: a signal landing between the two calls of a refusal below writes
    # to our socket, not the other owner's fd (an instant, and only for a
    # wakeup fd set by something other than this loop's asyncio handlers).
    current = signal.set_wakeup_fd(ours, warn_on_full_buffer=False)
    if current not in (-1, ours):  # someone else's: left as it was
        signal.set_wakeup_fd(current)
        return False
    try:
        loop.add_reader(_pair[0].fileno(), _drain)
    except (NotImplementedError, RuntimeError, OSError):  # no readers, or closed
        signal.set_wakeup_fd(-1)
        return False
    _loop, _users = loop, 1
    return True


def uninstall(loop: asyncio.AbstractEventLoop, installed: bool) -> None:
    """Undo :func:`install` (when it returned True) once the last block
    counting on it ends; leaves a wakeup fd that someone set since in place."""
    global _loop, _users
    if not installed or _pair is None or _loop is not loop:
        return
    _users -= 1
    if _users > 0:
        return
    _loop = None
    if not loop.is_closed():
        with contextlib.suppress(OSError, RuntimeError):
            loop.remove_reader(_pair[0].fileno())
    if _asyncio_owns_the_fd(loop):
        return  # asyncio replaced it meanwhile: its own, left alone
    current = signal.set_wakeup_fd(-1)
    if current != _pair[1].fileno():
        signal.set_wakeup_fd(current)  # (someone set theirs since)


def _forget_after_fork() -> None:
    """In a forked child: the pair is the parent's (its bytes would wake the
    parent's loop); the child's blocks make their own."""
    global _pair, _loop, _users
    pair, _pair, _loop, _users = _pair, None, None, 0
    if pair is None:
        return
    # Held, never closed nor collected here: the wakeup fd may still point at
    # it below (not the main thread), and a closed fd could be reused.
    _KEPT.extend(pair)
    with contextlib.suppress(ValueError):  # not the main thread: left as inherited
        current = signal.set_wakeup_fd(-1)
        if current != pair[1].fileno():
            signal.set_wakeup_fd(current)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
