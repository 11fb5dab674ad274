"""Stray errors on a scenario process's stderr: the one check every subprocess harness uses.

A scenario runs in a plain interpreter with its default hooks (the fault
scenarios of ``tests/faults/_subprocess.run_scenario``, the chaos suite), so
whatever goes wrong unobserved ends up printed on stderr: a dead thread
("Exception in thread"), an unraisable ("Exception ignored in"), an uncaught
error ("Traceback (most recent call last)"), asyncio's report of a lost error
("Task exception was never retrieved", "Exception in callback", ...), a broken
log handler ("--- Logging error ---"). ``stray_errors`` finds them.

Log records are told apart from raw output because the scenario's log handler
marks every line of a record (``parse`` says which lines are, and of which
logger). Records of ``foundation`` loggers are the library's documented
reports and never count; a record of another logger counts when it is an
ERROR/CRITICAL or carries one of the signs (asyncio logs its reports that way).
A scenario that provokes a report on purpose names it with ``Expected``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

__all__ = ["DEATH_SIGNS", "Expected", "LineParser", "stray_errors"]

# What a dead thread, a raw error, a lost asyncio error or a broken report leaves on stderr.
DEATH_SIGNS: Final = (
    "Traceback (most recent call last)",
    "Exception in thread",
    "Exception ignored",
    "--- Logging error ---",
    "Fatal Python error",
    "Task exception was never retrieved",
    "Future exception was never retrieved",
    "Exception in callback",
    "Task was destroyed but it is pending",
)

# A line of a log record -> (its logger's name, the record's level name if the
# line is a record's first line, else ""); None for a line that is no part of a
# record. A line after the first may name no logger (""): it is the record's.
LineParser = Callable[[str], "tuple[str, str] | None"]

_ERROR_LEVELS: Final = ("ERROR", "CRITICAL")


@dataclass(frozen=True)
class Expected:
    """A report the scenario provokes on purpose, so it is not a stray error.

    It matches a report whose first line contains ``header`` and, unless
    ``error`` is None, whose exception line names the type ``error`` (the type
    name, or its qualified name's ending).
    """

    header: str
    error: str | None

    def matches(self, block: list[str]) -> bool:
        if self.header not in block[0]:
            return False
        if self.error is None:
            return True
        return block[-1].split(":", 1)[0].endswith(self.error)


def _is_foundation(name: str) -> bool:
    return name == "foundation" or name.startswith("foundation.")


def _loggers(lines: list[str], parse: LineParser) -> Iterator[tuple[str, str]]:
    """Each line with the name of the logger whose record it is part of ("" if none)."""
    current = ""
    for line in lines:
        parsed = parse(line)
        if parsed is None:
            current = ""
        elif parsed[0]:
            current = parsed[0]
        yield line, current


def stray_errors(stderr: str, parse: LineParser, expected: Iterable[Expected] = ()) -> list[str]:
    """Each report on ``stderr`` of a dead thread or a raw error, outside ``foundation`` records.

    ``parse`` recognises the lines of log records; a report matching one of
    ``expected`` is not returned.
    """
    allowed = tuple(expected)
    return [
        "\n".join(block[:60])
        for block in _reports(stderr, parse)
        if not any(e.matches(block) for e in allowed)
    ]


def _reports(stderr: str, parse: LineParser) -> Iterator[list[str]]:
    """The lines of each stray report: a raw one, or a record of another logger that counts."""
    # The library's records go first: a raw report is then one run of lines even
    # where another thread's record was written in the middle of it.
    lines = [
        line for line, name in _loggers(stderr.splitlines(), parse) if not _is_foundation(name)
    ]
    i = 0
    while i < len(lines):
        if parse(lines[i]) is not None:
            block, i, counts = _record_block(lines, i, parse)
            if counts:
                yield block
        elif any(sign in lines[i] for sign in DEATH_SIGNS):
            block, i = _traceback_block(lines, i)
            yield block
        else:
            i += 1


def _record_block(lines: list[str], start: int, parse: LineParser) -> tuple[list[str], int, bool]:
    """The record at ``lines[start]`` (its first line and the lines that carry on
    from it), the next index, and whether it counts: an error record, or one
    carrying a sign."""
    first = parse(lines[start])
    assert first is not None
    name, level = first
    end = start + 1
    while end < len(lines):
        parsed = parse(lines[end])
        if parsed is None or parsed[1] or parsed[0] not in ("", name):
            break
        end += 1
    block = lines[start:end]
    signed = any(sign in line for line in block for sign in DEATH_SIGNS)
    return block, end, level in _ERROR_LEVELS or signed


def _traceback_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The report starting at ``lines[start]``, up to its exception line; and the next index."""
    block = [lines[start]]
    i = start + 1
    while i < len(lines) and len(block) < 60:
        text = lines[i]
        block.append(text)
        i += 1
        # The exception line: the first unindented line that is not a traceback
        # header or a chained-exception separator.
        if text and not text.startswith(
            (" ", "Traceback", "During handling", "The above", "Exception in thread")
        ):
            break
    return block, i
