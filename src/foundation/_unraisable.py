"""Report an exception that must not propagate (a listener's, a callback's).

``report_unraisable(exc, where, obj)`` is how every component reports an error
it swallows so that it can carry on: a listener or ``on_down`` callback that
raised, a telemetry handler, a background loop's own defect. The rule is the
stdlib's (``concurrent.futures`` logs a failing done-callback and carries on):

1. **Always log**: one ERROR record on the logger ``foundation.<area>`` (by
   default the public package of the calling module, e.g.
   ``foundation.registry`` for ``foundation.registry._memory``), whose message
   names ``where`` and ``obj`` and which carries the traceback (``exc_info``).
   With no logging configured, Python's last-resort handler prints it to
   stderr, so a crash is never silent.
2. **Forward to ``sys.unraisablehook`` only when someone installed one**
   (``sys.unraisablehook is not sys.__unraisablehook__``): a test harness, an
   error tracker. It gets a real ``UnraisableHookArgs`` (the type CPython
   itself passes, so the default hook would accept it too), with ``err_msg``
   ``"Exception ignored in <where>"`` and ``object`` ``obj``. The default hook
   is not called: it would print the same traceback a second time, after the
   log record.
3. **Repeats are counted, not logged again**: the first
   :data:`REPEAT_BURST` (10) failures of a given ``(logger, where, obj,
   exception type)`` within :data:`REPEAT_WINDOW` (60) seconds are logged in
   full (the 10th says so); the repeats after them are counted, and the first
   failure after the window logs one ERROR line (no traceback) with the count
   and the latest error, then a new window (of counted repeats only) starts.
   A count nothing follows is never logged: the 10 tracebacks said it all but
   how often. ``obj`` is told by its code when it is a function or a bound
   method, so a lambda made anew for each call is one culprit; else by its
   ``repr``. At most 1,024 are tracked (the least recently windowed are
   forgotten first); the lock is only taken on a failure. A listener
   raising on every Redis round trip (hundreds a second) logs 10 tracebacks
   and then one line per window, not one traceback per call. A failure after
   a quiet window is news again: logged in full. An installed hook (rule 2)
   still gets every failure, and a ``KeyboardInterrupt`` or ``SystemExit`` is
   always logged in full.
4. **Never raise.** A failing logger (a raising filter) or hook is caught;
   whatever could not be reported through them goes to the interpreter's
   default hook, which writes to stderr (CPython does the same when a hook
   fails), and nothing reaches the producer.

``UnraisableHookArgs`` is not exposed in ``sys``. It is captured once, lazily
(the first time a report is forwarded), as the argument of a deliberately
triggered unraisable under a temporarily swapped hook; see
:func:`_hook_args_type` for the races this handles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import types
from collections.abc import Callable
from typing import Any

__all__ = ["REPEAT_BURST", "REPEAT_WINDOW", "report_unraisable"]

_Hook = Callable[[Any], object]
_MAX_REPR = 200

# Re-entrant: a collection run during the probe may finalize other objects on
# this thread, and an installed hook that reports through us must not deadlock.
_type_lock = threading.RLock()
_args_type: list[type[Any]] = []  # the captured type, once known (a box: set once)


class _Probe(Exception):
    """Raised by ``_Trigger.__del__`` to make CPython call the hook with its own type."""


class _Trigger:
    __slots__ = ("exc",)

    def __init__(self, exc: _Probe) -> None:
        self.exc = exc

    def __del__(self) -> None:
        raise self.exc


class _Capture:
    """A stand-in ``sys.unraisablehook`` while the type is captured.

    It keeps the argument of our own probe and passes every other one to the
    hook it replaced. It stays correct after it is uninstalled: code that
    read ``sys.unraisablehook`` during the swap and chains to it later still
    reaches the original hook.
    """

    __slots__ = ("captured", "original", "probe")

    def __init__(self, original: _Hook, probe: _Probe) -> None:
        self.original = original
        self.probe = probe
        self.captured: object | None = None

    def __call__(self, args: Any) -> None:
        if self.captured is None and getattr(args, "exc_value", None) is self.probe:
            self.captured = args
            return
        # Race: another thread's genuine unraisable arrived while our hook was
        # installed. It is not ours to swallow: hand it to the hook it was meant for.
        self.original(args)


def _hook_args_type() -> type[Any] | None:
    """The interpreter's ``UnraisableHookArgs`` type, captured once; None if it cannot be.

    Races handled here:

    * two threads capturing at once: ``_type_lock`` lets one probe; the other
      finds the cached type;
    * another thread's genuine unraisable during the swap: ``_Capture``
      forwards it to the original hook (only our probe, recognised by
      identity, is kept);
    * another thread installing its own hook during the swap: the swap is
      undone only if ``sys.unraisablehook`` is still ours, so theirs is kept
      (if it chains to the hook it replaced, that is ``_Capture``, which
      forwards); and if theirs replaced ours before the probe fired, the
      probe reaches theirs instead: we capture nothing this time (and try
      again on the next report) rather than guess.
    """
    if _args_type:
        return _args_type[0]
    with _type_lock:
        if _args_type:
            return _args_type[0]
        probe = _Probe("foundation: capturing the UnraisableHookArgs type; ignore")
        capture = _Capture(sys.unraisablehook, probe)
        sys.unraisablehook = capture
        try:
            _Trigger(probe)  # freed at once; __del__ raises; CPython calls the hook
        finally:
            if sys.unraisablehook is capture:
                sys.unraisablehook = capture.original
        if capture.captured is None:
            return None
        _args_type.append(type(capture.captured))
        return _args_type[0]


def _hook_args(exc: BaseException, where: str, obj: object) -> Any:
    """A real ``UnraisableHookArgs`` for ``exc``, or None if the type is unavailable."""
    args_type = _hook_args_type()
    if args_type is None:
        return None
    return args_type((type(exc), exc, exc.__traceback__, f"Exception ignored in {where}", obj))


def _safe_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:  # a broken __repr__ must not hide the error being reported
        return f"<{type(obj).__name__} object (repr failed)>"
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _logger_name(area: str | None) -> str:
    """``foundation.<area>``; by default, the public package of the caller's caller."""
    if area:
        return f"foundation.{area}"
    try:
        module = sys._getframe(2).f_globals.get("__name__", "")
    except ValueError:  # pragma: no cover - no such frame
        module = ""
    parts: list[str] = []
    for part in str(module).split("."):
        if part.startswith("_"):
            break
        parts.append(part)
    if len(parts) < 2 or parts[0] != "foundation":
        return "foundation"
    return ".".join(parts)


def _last_resort(exc: BaseException, where: str, obj: object) -> None:
    """Write ``exc`` to stderr through the interpreter's default hook (never raises)."""
    with contextlib.suppress(BaseException):
        args = _hook_args(exc, where, obj)
        if args is not None:
            sys.__unraisablehook__(args)
            return
    with contextlib.suppress(BaseException):  # no usable hook: one plain line
        print(f"Exception ignored in {where}: {_safe_repr(obj)}: {exc!r}", file=sys.__stderr__)


def _installed_hook() -> _Hook | None:
    """``sys.unraisablehook``, or the hook it stands for while a capture is in progress."""
    hook: _Hook | None = getattr(sys, "unraisablehook", None)
    if isinstance(hook, _Capture):
        # Another thread is capturing the type right now: go to the real hook.
        hook = hook.original
    return hook


def _report_broken_hook(name: str, hook: _Hook, where: str, hook_exc: BaseException) -> None:
    """Log that ``hook`` raised while reporting an error of ``where`` (never raises)."""
    try:
        logging.getLogger(name).error(
            "sys.unraisablehook %s failed while reporting an error of %s",
            _safe_repr(hook),
            where,
            exc_info=hook_exc,
        )
    except BaseException:
        _last_resort(hook_exc, "sys.unraisablehook", hook)


REPEAT_WINDOW = 60.0
"""Seconds during which repeats of a logged failure are only counted (rule 3)."""

REPEAT_BURST = 10
"""Failures of one culprit (and exception type) logged in full before repeats are counted."""

_MAX_REPEAT_KEYS = 1024  # failures tracked at once; the oldest are forgotten past it
# Re-entrant, as _type_lock: a collection run by an allocation below may finalize an
# object whose finalizer reports through us on this thread.
_repeats_lock = threading.RLock()
_Key = tuple[str, str, str, type[BaseException]]  # (logger, where, culprit, exception type)
# key -> [window start, full reports left in the window, repeats counted in it]
_repeats: dict[_Key, list[float]] = {}


def _reset_repeats() -> None:
    """In a forked child: a fresh lock (the parent's may have been held) and no counts."""
    global _repeats_lock
    _repeats_lock = threading.RLock()
    _repeats.clear()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reset_repeats)


def _culprit_key(obj: object, culprit: str) -> str:
    """What names a culprit across calls: a function's code, so that a lambda or a
    bound method made anew for each call (an ``on_down`` per monitor) is one
    culprit, not one key per call; else its ``repr``."""
    try:
        code = getattr(getattr(obj, "__func__", obj), "__code__", None)
    except Exception:  # a proxy whose referent is gone, a raising __getattr__
        return culprit
    if isinstance(code, types.CodeType):
        return f"{code.co_filename}:{code.co_firstlineno}:{code.co_qualname}"
    return culprit


def _repeats_to_report(key: _Key) -> tuple[str, int]:
    """How to log this failure: ``("full", 0)``, in full; ``("last", 0)``, in full, the
    last before repeats are counted; ``("counted", 0)``, not at all; ``("summary", n)``:
    the window is over, one line for the ``n`` failures since (this one included)."""
    now = time.monotonic()
    with _repeats_lock:
        entry = _repeats.get(key)
        if entry is not None and now - entry[0] < REPEAT_WINDOW:
            if entry[1] > 0:
                entry[1] -= 1
                return ("full", 0) if entry[1] else ("last", 0)
            entry[2] += 1
            return "counted", 0
        counted = 0 if entry is None else int(entry[2])
        # Moved to the end (evicted last: the oldest go first), or a new key.
        _repeats.pop(key, None)
        if len(_repeats) >= _MAX_REPEAT_KEYS:
            del _repeats[next(iter(_repeats))]  # bounded memory
        # After a window with repeats: summaries only. After a quiet one: news again.
        _repeats[key] = [now, 0, 0] if counted else [now, REPEAT_BURST - 1, 0]
        return ("summary", counted + 1) if counted else ("full", 0)


def _how_to_log(
    name: str, exc: BaseException, where: str, obj: object, culprit: str
) -> tuple[str, int]:
    """Rule 3 for this failure (see :func:`_repeats_to_report`); in full when it
    cannot tell (out of memory: never a reason to raise or to lose the report)."""
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: news each time
        return "full", 0
    try:
        return _repeats_to_report((name, where, _culprit_key(obj, culprit), type(exc)))
    except Exception:  # (a Ctrl-C landing here is the caller's: printed as a failed log)
        return "full", 0


def _burst_over() -> str:
    """The note on the last traceback of a burst: the silence after it is counted."""
    return (
        f" (failure {REPEAT_BURST} within {REPEAT_WINDOW:g} s: repeats are counted, not"
        f" logged, and their count is logged at the first failure after the {REPEAT_WINDOW:g} s)"
    )


def _log_report(name: str, exc: BaseException, where: str, obj: object) -> bool:
    """Log ``exc`` per rule 3 (in full, counted, or summarised); False if logging raised."""
    try:
        culprit = _safe_repr(obj)
        how, repeats = _how_to_log(name, exc, where, obj, culprit)
        if how == "summary":
            logging.getLogger(name).error(
                "exception ignored in %s: %s: %d more time(s) since the last report, "
                "latest %s (repeats are counted, not logged, for %g s)",
                where,
                culprit,
                repeats,
                _safe_repr(exc),
                REPEAT_WINDOW,
                stacklevel=3,
            )
        elif how != "counted":
            logging.getLogger(name).error(
                "exception ignored in %s: %s%s",
                where,
                culprit,
                _burst_over() if how == "last" else "",
                exc_info=exc,
                stacklevel=3,
            )
    except BaseException as log_exc:  # a broken handler or filter: never the producer's problem
        _last_resort(log_exc, f"logging an error of {where}", None)
        return False
    return True


def report_unraisable(
    exc: BaseException, where: str, obj: object = None, *, area: str | None = None
) -> None:
    """Log ``exc`` (with its traceback) and forward it to an installed unraisable hook.

    ``where`` names what failed ("MemoryRegistry listener"); ``obj`` is the
    culprit (the listener). ``area`` picks the logger ``foundation.<area>``
    (default: the calling module's public package). Never raises; see the
    module documentation for the rules.

    Example:
        >>> import logging, sys
        >>> records, hooked = [], []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record):
        ...         records.append(record)
        >>> log = logging.getLogger("foundation.example")
        >>> log.addHandler(Keep()); log.propagate = False
        >>> saved, sys.unraisablehook = sys.unraisablehook, hooked.append
        >>> report_unraisable(ValueError("boom"), "an example listener", print, area="example")
        >>> sys.unraisablehook = saved
        >>> records[0].name, records[0].levelname
        ('foundation.example', 'ERROR')
        >>> records[0].getMessage()
        'exception ignored in an example listener: <built-in function print>'
        >>> type(hooked[0]).__name__, hooked[0].err_msg, hooked[0].exc_value
        ('UnraisableHookArgs', 'Exception ignored in an example listener', ValueError('boom'))
    """
    name = _logger_name(area)
    logged = _log_report(name, exc, where, obj)
    hook = _installed_hook()
    if hook is None or hook is sys.__unraisablehook__:
        if not logged:
            _last_resort(exc, where, obj)  # the log record is missing: print it once
        return
    try:
        args = _hook_args(exc, where, obj)
        if args is not None:
            hook(args)
            return
    except BaseException as hook_exc:  # a broken hook must not break the producer either
        _report_broken_hook(name, hook, where, hook_exc)
        if not logged:  # neither the log record nor the hook got it: print it once
            _last_resort(exc, where, obj)
        return
    if not logged:  # the type could not be captured and the log record is missing
        _last_resort(exc, where, obj)
