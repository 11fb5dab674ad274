"""Log records a test reads: one capturing handler for the whole suite.

``captured(*loggers, level=)`` keeps the records of loggers (and of their
children) while a ``with`` block runs; ``keep_records`` keeps them for the rest
of the process, for a scenario script. A logger that would drop records below
its own level is lowered to ``level`` (``captured`` restores it). Records come
from any thread: ``list.append`` is atomic, and readers copy the list first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["Records", "captured", "keep_records"]


class Records(list[logging.LogRecord]):
    """Log records in the order they were emitted."""

    def named(self, name: str) -> list[logging.LogRecord]:
        """Those of logger ``name`` (not of its children)."""
        return [r for r in list(self) if r.name == name]

    def messages(self, *, name: str | None = None) -> list[str]:
        """Their messages; only those of logger ``name`` if given."""
        return [r.getMessage() for r in (list(self) if name is None else self.named(name))]

    def events(self) -> list[str]:
        """Their ``event`` fields (a library report's kind), "" where there is none."""
        return [getattr(r, "event", "") for r in list(self)]

    def of(self, event: str, child: str | None = None) -> list[logging.LogRecord]:
        """The reports of ``event`` (about ``child`` only, if given)."""
        return [
            r
            for r in list(self)
            if getattr(r, "event", None) == event
            and (child is None or getattr(r, "child", None) == child)
        ]


class _Keep(logging.Handler):
    def __init__(self, records: Records, level: int) -> None:
        super().__init__(level)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def keep_records(*names: str, level: int = logging.DEBUG) -> Records:
    """The records of loggers ``names`` (default ``foundation``) at ``level``
    or above, from now on, for good."""
    records = Records()
    for logger in _loggers(names):
        _attach(logger, records, level)
    return records


@contextlib.contextmanager
def captured(*names: str, level: int = logging.DEBUG) -> Iterator[Records]:
    """The records of loggers ``names`` (default ``foundation``) at ``level``
    or above, while inside; the loggers' levels are restored at the end."""
    records = Records()
    attached = [(lg, lg.level, _attach(lg, records, level)) for lg in _loggers(names)]
    try:
        yield records
    finally:
        for logger, old_level, handler in attached:
            logger.removeHandler(handler)
            logger.setLevel(old_level)


def _loggers(names: tuple[str, ...]) -> list[logging.Logger]:
    return [logging.getLogger(name) for name in names or ("foundation",)]


def _attach(logger: logging.Logger, records: Records, level: int) -> _Keep:
    handler = _Keep(records, level)
    if not logger.isEnabledFor(level):
        logger.setLevel(level)
    logger.addHandler(handler)
    return handler
