"""``sys._current_frames()`` without CPython 3.11's self-deadlock.

Before 3.12, ``sys._current_frames()`` holds the interpreter's thread-list lock
while it builds frame objects. An allocation there may start a garbage
collection; if that frees a ``threading.local``, its cleanup takes the same
lock, and the calling thread waits on itself for good: no pytest timeout can
fire (its signal handler never runs). Seen in CI, in a test polling where
another thread is blocked. The collector is off for the call.
"""

from __future__ import annotations

import gc
import sys
from types import FrameType


def thread_frame(ident: int | None) -> FrameType | None:
    """The innermost Python frame thread ``ident`` runs now (None: none, or no such thread)."""
    if ident is None:
        return None
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames().get(ident)
    finally:
        if enabled:
            gc.enable()
