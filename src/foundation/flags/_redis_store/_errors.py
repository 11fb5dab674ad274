"""The internal outcomes of one flag commit attempt (retry, behind, reply lost...)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from foundation.errors import BackendUnavailable
from foundation.flags._store import FlagChange, MigrationEvent

if TYPE_CHECKING:
    from foundation.flags._redis_store._txn import _Commit


class _Retry(Exception):
    """One attempt of ``RedisFlagStore.transaction`` is over: try again."""


class _FailedFast(BackendUnavailable):
    """A write refused at once: one timed out moments ago (``_fail_fast``)."""


class _PendingFirst(Exception):
    """A kill switch that would commit ahead of ``count`` kill switches of this node
    still pending: it is kept behind them instead (see ``RedisFlagStore.kill_switch``)."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


class _KeptInOrder(BackendUnavailable):
    """Why a kill switch is kept pending while Redis may answer: earlier kill
    switches of this node wait for the listener's resync, and it goes after them."""


class _StatesLost(BackendUnavailable):
    """A write refused: Redis holds fewer flag states (or migration stages) than the
    commit of its version left (evicted), and this store has no copy of that
    version to restore them from (see ``_check_states_kept``). Nothing was written."""


class _Behind(Exception):
    """Redis holds an older version than this node's copy, or lost keys of the copy's
    own version (evicted): restore before writing."""


class _LandedLate(Exception):
    """An earlier attempt's commit, read back as not there, landed since: it is the
    transaction's commit (``commit``, made by the run that returned ``result``)."""

    def __init__(self, commit: _Commit, result: Any) -> None:
        super().__init__(commit.version)
        self.commit, self.result = commit, result


class _ReplyLost(Exception):
    """EXEC was (maybe) sent and no reply came (``cause``): its outcome is unknown."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Unconfirmed(BackendUnavailable):
    """A commit sent to Redis that this node cannot confirm: it may or may not have
    landed (or Redis may have lost it since). ``changes`` and ``events`` are what it
    wrote: a kill switch kept for later takes their times (``_sent_times``), so its
    replay finds them in the history if they landed and writes nothing twice."""

    def __init__(
        self,
        message: str,
        changes: Iterable[FlagChange] = (),
        events: Iterable[MigrationEvent] = (),
    ) -> None:
        super().__init__(message)
        self.changes = tuple(changes)
        self.events = tuple(events)


@contextlib.contextmanager
def public_errors() -> Iterator[None]:
    """Around a store's public call: ``BackendUnavailable`` itself where one of the
    private subclasses above (``_FailedFast``, ``_KeptInOrder``, ``_StatesLost``,
    ``_Unconfirmed``) would reach the caller, with the same message, chained to
    the same cause (Redis' error, else the private one). Callers match on the public type and
    error trackers group by it: the same fault must not split by how it was
    noticed. The store's own callers (``kill_switch``, the replay) call the
    undecorated ``_transaction`` and still see which failure it was.
    """
    try:
        yield
    except BackendUnavailable as exc:
        if type(exc) is BackendUnavailable:
            raise
        public = BackendUnavailable(str(exc)).with_traceback(exc.__traceback__)
        raise public from exc.__cause__ or exc
