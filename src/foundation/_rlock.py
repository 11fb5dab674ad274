"""How many levels of a ``threading.RLock`` this thread holds: the count a
Ctrl-C-safe acquire compares before and after, to give back what it took.

``RLock._recursion_count`` is CPython's own count (3.11.4 and later, 3.12+).
Older 3.11 releases lack it: the answer is then whether this thread holds the
lock at all (``_is_owned``, every CPython 3), so a re-entrant acquire cut by
a Ctrl-C (the lock already held, one more level taken) cannot tell and keeps
that level. A first acquire, the case a ``with`` block's unwinding waits on,
is told right either way.

>>> import threading
>>> lock = threading.RLock()
>>> levels = held_levels(lock)
>>> with lock:
...     levels() > 0
True
>>> levels()
0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["held_levels"]


def held_levels(lock: Any) -> Callable[[], int]:
    """A function giving how many levels of ``lock`` this thread holds (see the module)."""
    count = getattr(lock, "_recursion_count", None)
    if count is not None:
        return count  # type: ignore[no-any-return]
    owned = lock._is_owned

    def levels() -> int:
        return 1 if owned() else 0

    return levels
