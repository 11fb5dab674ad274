"""The ``foundation`` console script's entry point, kept outside the package.

``import foundation`` takes a fraction of a second. A SIGINT or SIGTERM
landing then would have Python's default effect (a ``KeyboardInterrupt``
traceback, or a silent death), because the command's handlers are not
installed yet. This module imports nothing of Foundation's before it holds
both signals (``pthread_sigmask``): one landing meanwhile stays pending and is
delivered the moment ``foundation.cli.main`` has installed its handlers and
put the mask back, so it is told as at any other time: one line, exit 130 or
143. Only the interpreter's own start-up stays before it.
"""

from __future__ import annotations

import signal

__all__ = ["main"]

_HELD = frozenset(
    {signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])}
)


def main() -> int:
    """Run ``foundation`` with SIGINT and SIGTERM held until its handlers are in place
    (where the platform can hold them: Windows has no ``pthread_sigmask``)."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        from foundation.cli import main as run_unheld

        return run_unheld()
    held = mask(signal.SIG_BLOCK, _HELD)
    try:
        from foundation.cli import main as run
    except BaseException:
        mask(signal.SIG_SETMASK, held)  # as it was: nothing to tell
        raise
    return run(mask_to_restore=held)
