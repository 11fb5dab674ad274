"""The demo's view of the library's logs: tallied, then summarised.

The demo crashes workers on purpose, and the library reports every crash
through ``logging`` (crash reports are on by default). Printed one by one they
would bury the story, so while a part of the demo runs, ``foundation.*``
records are counted (with the first message of each logger and level) and
shown as a short table afterwards.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Iterator

from foundation._demo._console import Console

__all__ = ["LogTally", "library_logs", "show_library_logs"]


class LogTally(logging.Handler):
    """Counts the library's log records (crash reports, fault warnings) for the summary."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.sample: dict[tuple[str, str], str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, record.levelname)
        self.counts[key] += 1
        # Shortened for one line; brackets would read as console markup.
        first = (record.getMessage().splitlines() or [""])[0].replace("[", "(").replace("]", ")")
        self.sample.setdefault(key, first if len(first) <= 64 else first[:63] + "…")


@contextlib.contextmanager
def library_logs() -> Iterator[LogTally]:
    """While the block runs, tally ``foundation.*`` log records instead of printing them."""
    logger = logging.getLogger("foundation")
    tally = LogTally()
    saved = logger.propagate, logger.level
    logger.addHandler(tally)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield tally
    finally:
        logger.removeHandler(tally)
        logger.propagate, logger.level = saved


def show_library_logs(console: Console, tally: LogTally) -> None:
    """Print what the library logged: count, logger, level, first message."""
    console.say("What the library logged meanwhile (count, logger, level, first message):")
    for (name, level), n in sorted(tally.counts.items()):
        console.say(f"  {n:>4}  {name} {level}: {tally.sample[name, level]}")
