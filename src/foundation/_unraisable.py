"""Report an exception that must not propagate (a listener's, a callback's)."""

from __future__ import annotations

import sys

__all__ = ["report_unraisable"]


class _Unraisable:
    """The shape ``sys.unraisablehook`` expects."""

    def __init__(self, exc: BaseException, where: str, obj: object) -> None:
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = f"Exception ignored in {where}"
        self.object = obj


def report_unraisable(exc: BaseException, where: str, obj: object) -> None:
    """Send ``exc`` to ``sys.unraisablehook``: reported, never raised into the producer."""
    sys.unraisablehook(_Unraisable(exc, where, obj))  # type: ignore[arg-type]
