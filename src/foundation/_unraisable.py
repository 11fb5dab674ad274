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
3. **Never raise.** A failing logger (a raising filter) or hook is caught;
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
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["report_unraisable"]

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
    try:
        logging.getLogger(name).error(
            "exception ignored in %s: %s", where, _safe_repr(obj), exc_info=exc, stacklevel=2
        )
        logged = True
    except BaseException as log_exc:  # a broken handler or filter: never the producer's problem
        logged = False
        _last_resort(log_exc, f"logging an error of {where}", None)
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
