"""Shared by the modules of the Redis flag store: loggers, meta fields, small checks."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from foundation._redis_conn import error_kind
from foundation.errors import FlagError
from foundation.flags._store import check_key

T = TypeVar("T")


log = logging.getLogger("foundation.flags")


listener_log = logging.getLogger("foundation.flags.redis")


_META = ("version", "epoch", "restored", "trimmed", "mtrimmed")
"""The meta fields read around a consistent read: ``restored`` is a token each
restore sets, so a FLUSHALL and a restore back to the same version still differ;
``trimmed`` / ``mtrimmed`` move with each trim of the history / the migrations
stream (which changes no version)."""


_MAX_ATTEMPTS = 1000  # optimistic retries before a transaction gives up (pathological contention)


def _check_name(name: object, what: str) -> None:
    check_key(name, what)  # the rule of every store: a non-empty, valid-Unicode str


def _check_version(raw: str | None, key: str) -> int:
    """Meta's ``version`` as read (None: no meta) as a number; ``FlagError`` when
    something else wrote it there: ``int()`` raised ``ValueError`` out of every
    public read and write (a public call raises only Foundation errors)."""
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise FlagError(f"corrupt version in {key}: {raw!r:.100}")
    return int(raw)


def _short_of(counted: object, version: object, held: int) -> int | None:
    """The count of meta's ``nstates`` / ``nstages`` (``counted``: ``"<version>:<count>"``)
    if it is tagged with ``version`` and exceeds ``held`` (what Redis holds): a loss.
    None otherwise, and for a count of another version (an older library's commit,
    which leaves it as it was) or none (written before it existed): unknown."""
    if counted is None or version is None:
        return None
    tagged, _, count = str(counted).partition(":")
    if tagged != str(version) or not (count.isascii() and count.isdigit()):
        return None
    return int(count) if held < int(count) else None


def _other_history(redis_tails: tuple[Any, Any], copy_tails: tuple[str | None, str | None]) -> bool:
    """Whether Redis' history or migrations stream ends in an entry (``XREVRANGE ...
    COUNT 1`` replies) other than the copy's last one, at the copy's version and
    epoch: not keys lost (an eviction only removes keys, and a trim keeps the last
    entry) but a fork, another history up to that version (a node that restored
    an older copy and wrote on it). The refresh tells it (see ``_pull``)."""
    return any(
        reply and str(reply[0][0]) != copy
        for reply, copy in zip(redis_tails, copy_tails, strict=True)
    )


def _read_only_error(exc: BaseException) -> bool:
    """Whether ``exc`` (a translated error) is a ``READONLY`` reply: a read-only replica."""
    cause = exc.__cause__
    return cause is not None and error_kind(cause) == "READONLY"
