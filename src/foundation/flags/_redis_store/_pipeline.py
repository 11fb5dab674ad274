"""The WATCHing pipeline of a flag commit, and its one-round-trip reads."""

from __future__ import annotations

from typing import Any

_PIPELINE_CLASSES: dict[type, type] = {}


def _watch_pipeline(redis: Any, client: Any) -> Any:
    """``client.pipeline(transaction=True)``, except that a pipeline whose socket
    died (a timeout or an I/O error) while WATCHing never reconnects to undo it.

    Race: Redis freezing (or the network going dark) after ``WATCH`` was
    answered, before ``EXEC``: a read of ``fn`` (or of meta) times out while
    WATCHing. redis-py has already dropped that socket (and its WATCH with it),
    yet its ``reset()``, run by its own failure handler and again as the ``with``
    block ends, reconnects only to send ``UNWATCH``: on a frozen Redis one
    timeout more each, so the write waited three timeouts, not one (and
    ``_fail_fast``'s bound, one timeout for all queued writers, did not hold).
    A dropped socket has no WATCH left: skip the UNWATCH then. redis-py then
    reports that read's failure as ``WatchError("A TimeoutError occurred while
    watching ...")``: it leaves the block as the failure itself (a timeout
    arms ``_fail_fast``, a dead pooled socket gets ``_commit_failed``'s retry).
    (EXEC's own lost reply is ``_execute``'s, inside the block.)
    """
    pipe = client.pipeline(transaction=True)
    base = type(pipe)
    cls = _PIPELINE_CLASSES.get(base)
    if cls is None:
        lost_kinds = (redis.ConnectionError, redis.TimeoutError)

        class _WatchPipeline(base):  # type: ignore[misc,valid-type]
            watching: bool  # (redis-py's: set by WATCH, cleared by EXEC and reset)

            def reset(self) -> None:
                conn = self.connection
                if self.watching and conn is not None and getattr(conn, "_sock", 0) is None:
                    self.watching = False  # the socket is gone: no WATCH to undo
                super().reset()

            def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
                self.reset()
                if isinstance(exc, redis.WatchError):
                    lost = exc.__cause__ or exc.__context__
                    if isinstance(lost, lost_kinds):
                        raise lost from None

        cls = _PIPELINE_CLASSES[base] = _WatchPipeline
    # The pipeline redis-py built, given this behaviour: no dependency on its
    # constructor's arguments (the subclass has no state of its own).
    pipe.__class__ = cls
    return pipe


def _give_back(pipe: Any) -> None:
    """Reset ``pipe`` (a ``_watch_pipeline``, or None) unless its ``with`` block's
    exit did: UNWATCH if need be, and its connection back to the pool.

    Race: a Ctrl-C landing in that exit (``_WatchPipeline.__exit__`` is Python: a
    ``KeyboardInterrupt`` is raised at its first instruction, or as a call in it
    returns) before redis-py's ``reset()`` gave the connection back. Only a write
    that sent no EXEC depends on that exit (EXEC resets the pipeline itself): one
    whose body wrote nothing, or raised. The connection stayed checked out,
    WATCHing, until the pipeline was finalised: not while the interrupt's traceback
    (the interactive interpreter keeps the last one) holds the write's frames; each
    write meanwhile took another connection. One interrupt cannot cut both: the
    exit ran to its end (no connection left here), or this runs.
    """
    if pipe is not None and pipe.connection is not None:
        pipe.reset()


def _read_watched(pipe: Any, redis: Any, *commands: tuple[Any, ...]) -> list[Any]:
    """The replies to ``commands`` (reads), sent in ONE round trip on the connection
    ``pipe`` WATCHes on (redis-py sends each command of a WATCHing pipeline alone).

    No health check (its reconnect would drop the WATCH unseen). A reply that
    never came (a timeout, a dropped socket) leaves the socket out of step:
    it is closed, and its WATCH with it, so ``_watch_pipeline`` sends no UNWATCH
    and the failure leaves the block as itself, as a lone read's would. An error
    reply (WRONGTYPE, NOPERM) is raised once every reply is read.
    """
    conn = pipe.connection  # (WATCH took it from the pool)
    replies: list[Any] = []
    refused: Exception | None = None
    try:
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                refused = refused or exc
                replies.append(None)
    except BaseException:
        conn.disconnect()
        raise
    if refused is not None:
        raise refused
    return replies
