"""What a running child receives: the readiness handshake and the stop signal."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio  # only annotations here: `import foundation` stays cheap

__all__ = ["READY_FD_ENV", "ChildContext", "ProcessContext", "notify_ready"]

#: Environment variable naming the readiness file descriptor of an argv process.
READY_FD_ENV = "FOUNDATION_READY_FD"


class ChildContext:
    """Handed to every task and thread child as its first argument.

    ``ready()`` completes the start handshake (thread-safe, idempotent): the
    supervisor starts the next child only after it. ``stopping`` is set when
    the supervisor asks the child to stop: a thread must watch it (threads
    cannot be killed), a task is also cancelled. ``attempt`` is 0 for the first
    start and counts restarts after that. ``ignore()`` is OTP's ``ignore``
    start result: the child declines to run (see :meth:`ignore`).

    Example:
        >>> import asyncio
        >>> from foundation.supervision import ChildSpec, Supervisor
        >>> def poller(ctx):
        ...     ctx.ready()
        ...     while not ctx.stopping.wait(0.01):
        ...         pass  # one unit of work per turn
        >>> async def main():
        ...     async with Supervisor([ChildSpec("poller", poller)]) as sup:
        ...         return sup.which_children()[0].status
        >>> asyncio.run(main())
        'running'
    """

    __slots__ = (
        "_lock",
        "_readied",
        "_signal",
        "attempt",
        "id",
        "ignored",
        "stopping",
        "supervisor",
    )

    def __init__(self, id: str, supervisor: str, attempt: int, signal: Callable[[], None]) -> None:
        self.id = id
        self.supervisor = supervisor
        self.attempt = attempt
        self.stopping = threading.Event()
        self.ignored = False
        self._readied = False
        self._lock = threading.Lock()
        self._signal = signal

    def ready(self) -> None:
        """Tell the supervisor this child is ready (safe from any thread).

        Raises:
            RuntimeError: ``ignore()`` was called first.
        """
        with self._lock:  # Race: ready() and ignore() from two threads; one wins.
            if self.ignored:
                raise RuntimeError(f"child {self.id!r} already called ignore()")
            self._readied = True
        self._signal()

    def ignore(self) -> None:
        """Decline to run: OTP's ``ignore`` start result (call it, then return).

        Called instead of ``ready()``: the start succeeds without a running
        child. A static supervisor keeps the spec, shown ``"stopped"`` (OTP:
        pid ``undefined``; ``restart_child`` tries again; a temporary child's
        spec is dropped); a dynamic supervisor does not add the child. Only
        task and thread children can ignore (and only with explicit readiness,
        the default); the supervisor stops a child that goes on running after
        ``ignore()`` as it stops any child.

        Raises:
            RuntimeError: ``ready()`` was called first.
        """
        with self._lock:
            if self._readied:
                raise RuntimeError(f"child {self.id!r} already called ready()")
            self.ignored = True
        self._signal()

    def should_stop(self) -> bool:
        """True once the supervisor has asked this child to stop."""
        return self.stopping.is_set()

    def __repr__(self) -> str:
        return f"<ChildContext {self.supervisor}/{self.id} attempt={self.attempt}>"


class ProcessContext:
    """Handed to a ``multiprocessing`` child (in the child process) as its first
    argument; ``ready()`` completes the start handshake across the process
    boundary. The supervisor stops such a child with SIGTERM, then SIGKILL.

    Example:
        >>> ctx = ProcessContext("worker", None)
        >>> ctx.ready()  # a no-op when the spec does not wait for readiness
    """

    __slots__ = ("_conn", "id")

    def __init__(self, id: str, conn: Any) -> None:
        self.id = id
        self._conn = conn

    def ready(self) -> None:
        """Tell the supervisor, in the parent process, that this child is ready."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.send(True)
            finally:
                conn.close()


def notify_ready() -> bool:
    """Complete the readiness handshake from inside an argv process child.

    Writes one byte to the descriptor named by ``$FOUNDATION_READY_FD`` and
    closes it (the analogue of systemd's ``sd_notify("READY=1")``); returns
    False when the variable is not set (not started by a supervisor waiting
    for readiness). A child that does not import Foundation does the same with
    ``os.write(int(os.environ["FOUNDATION_READY_FD"]), b"1")``.

    Example:
        >>> notify_ready()  # not under a supervisor here
        False
    """
    value = os.environ.pop(READY_FD_ENV, None)
    if value is None:
        return False
    fd = int(value)
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
    return True


def _process_entry(
    target: Callable[..., Any], id: str, conn: Any, args: tuple[Any, ...], kwargs: Any
) -> None:
    """Body of a multiprocessing child: build its context and run the target."""
    target(ProcessContext(id, conn), *args, **dict(kwargs))


def _loop_signal(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> Callable[[], None]:
    """A thread-safe, idempotent callable that resolves ``fut`` on ``loop``."""

    def resolve() -> None:
        if not fut.done():
            fut.set_result(None)

    def signal() -> None:
        # RuntimeError: the loop is closed, so nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve)

    return signal
