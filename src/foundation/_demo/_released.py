"""The end of the demo's waiting threads: released, then waited for."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from foundation._cli._signals import Terminated

__all__ = ["release_and_join"]


def release_and_join(
    releases: Sequence[threading.Event],
    threads: Sequence[threading.Thread],
    *,
    timeout: float = 5.0,
) -> None:
    """Set every event of ``releases``, then wait (``timeout`` in all) for ``threads``
    to end: no thread of a part is left waking up once the part is over.

    Why: the command may exit right after a part (a Ctrl-C), and daemon threads
    waking while the interpreter finalises are a known way to crash CPython 3.11
    (a thread going for the GIL after its state was freed: SIGSEGV). A thread
    still parked on its event never wakes, so it is harmless.

    Each thread only waits for its event: the wait lasts milliseconds, so a
    signal landing meanwhile (a second Ctrl-C that cuts a cleanup short) is
    raised once every thread has ended, not in the middle.
    """
    deadline = time.monotonic() + timeout
    signalled: BaseException | None = None
    pending = list(releases)
    while pending:
        try:
            while pending:
                pending[-1].set()
                pending.pop()
        except (KeyboardInterrupt, Terminated) as exc:
            signalled = signalled or exc
    for thread in threads:
        while thread.is_alive() and (left := deadline - time.monotonic()) > 0:
            try:
                thread.join(left)
            except (KeyboardInterrupt, Terminated) as exc:
                signalled = signalled or exc
    if signalled is not None:
        raise signalled
