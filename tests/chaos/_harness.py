"""What every chaos scenario process shares (imported only in subprocesses).

A scenario process runs with the interpreter's default hooks: nothing here
touches ``sys.unraisablehook`` or ``threading.excepthook``. It only

- formats every log record so each of its lines starts with ``[log <logger>]``,
  which lets the pytest side tell a reported error (a record of a
  ``foundation.`` logger, traceback included) from a raw one on stderr;
- records every exception a public call raised (``Recorder.call``), so the
  pytest side can check that each one is a ``FoundationError``;
- names the library's background threads, to compare before and after a fault.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from foundation.errors import FoundationError

T = TypeVar("T")

RESULT_PREFIX = "CHAOS-RESULT "
LOG_PREFIX = "[log "
# Library threads: the "foundation-..." threads of registries, monitor managers and
# stores, and "supervisor:<name>" (a SupervisorThread's default name).
LIBRARY_THREAD_PREFIXES = ("foundation", "supervisor:")


class ChaosListenerError(Exception):
    """What a scenario's deliberately broken listener raises."""


def raising_listener(*_args: object) -> None:
    raise ChaosListenerError("chaos: this listener always raises")


class _PrefixFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"{LOG_PREFIX}{record.name}] "
        return "\n".join(prefix + line for line in text.splitlines())


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrefixFormatter("%(levelname)s %(threadName)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def library_threads() -> list[str]:
    """The long-lived library threads: event couriers ("foundation-*events")
    come and go by design, one per batch of events handed off (one that died
    of an exception is seen in stderr as "Exception in thread")."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.is_alive()
        and t.name.startswith(LIBRARY_THREAD_PREFIXES)
        and not t.name.endswith("events")
    )


class Recorder:
    """Runs public calls, recording every exception (class, message, foundation or not)."""

    def __init__(self) -> None:
        self.exceptions: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def call(
        self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> tuple[bool, T | None]:
        """``(True, result)``, or ``(False, None)`` with the exception recorded."""
        try:
            return True, fn(*args, **kwargs)
        except Exception as exc:
            self.record(what, exc)
            return False, None

    def record(self, what: str, exc: BaseException) -> None:
        cls = type(exc)
        with self._lock:
            self.exceptions.append(
                {
                    "call": what,
                    "type": f"{cls.__module__}.{cls.__qualname__}",
                    "foundation": isinstance(exc, FoundationError),
                    "message": str(exc)[:300],
                    "traceback": ""
                    if isinstance(exc, FoundationError)
                    else "".join(traceback.format_exception(exc))[-2000:],
                }
            )


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)  # sleep-ok: polling a condition with a deadline


def emit_result(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
