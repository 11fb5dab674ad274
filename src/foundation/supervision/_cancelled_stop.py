"""A cancellation while an ``async with`` block's exit stops a supervisor's tree.

A Ctrl-C under ``asyncio.run`` (which cancels the main task) or an
``asyncio.timeout()`` expiring during the exit does not cut the stop in half:
the stop already under way (the supervisor's ``_stop_task``, not begun again:
no second SIGTERM, no new grace) goes on to its end, then the cancellation
goes on. A second cancellation while it waits ends the wait at once (so the
caller can always bound the exit), and so does the loop's end cancelling the
stop itself; both are reported with the children still running.

A stop nobody waits for that way (a direct ``await sup.stop()``, whose caller's
cancellation returns at once) is cut short by the loop's end cancelling its
task: the task reports that itself (``cut_short_unless_watched``), once.

Shared by ``async with Supervisor(...)`` and ``async with Application(...)``,
each reporting in its own words (the ``on_cancelled`` and ``on_cut_short``
callbacks).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

    from foundation.supervision._supervisor import Supervisor

__all__: list[str] = []


async def stop_past_cancel(
    sup: Supervisor,
    met: Callable[[asyncio.CancelledError], object],
    on_cancelled: Callable[[], object],
    on_cut_short: Callable[[], object],
) -> None:
    """Stop ``sup``; the first cancellation of the caller meanwhile (a Ctrl-C
    under ``asyncio.run``, an ``asyncio.timeout()``) lets the stop under way go
    on to its end (given to ``met``, for the caller to raise after)."""
    import asyncio

    asked = cancelling()
    try:
        await watched_stop(sup)
        return
    except asyncio.CancelledError as exc:
        met(exc)
        cancelled = exc
    stopping = sup._stop_task
    if stopping is None:  # (nothing ran)
        raise cancelled
    await _waited_past_cancel(stopping, asked, on_cancelled, partial(_cut_once, sup, on_cut_short))
    stopping.result()  # its outcome: ShutdownError, or the loop's end cut it


async def watched_stop(sup: Supervisor) -> None:
    """``sup.stop()``, its caller reporting a cut of it itself (its task then
    does not: see ``cut_short_unless_watched``). Until ``sup`` starts again."""
    sup._stop_watched = True  # before the stop's task exists, or while it runs
    await sup.stop()


def cut_short_unless_watched(sup: Supervisor) -> None:
    """``sup``'s own stop task was cancelled before its end (the loop's end:
    ``asyncio.run`` cancels every task left): WARNING
    ``supervisor_stop_cut_short`` naming the children still running, unless a
    caller reports it (``watched_stop``: an ``async with`` exit, an
    Application, a parent supervisor stopping it as part of its own stop) or
    it was reported already."""
    # Race: the waiter's report and the task's own. Both run on the loop's
    # thread, so neither interleaves with the other; the order is what
    # decides. A waiter marks the stop watched before its first await (before
    # the task can be cancelled, when it begins the stop), so the task, whose
    # done callback (its first: see Supervisor.stop) runs before any waiter
    # wakes for its end, leaves the report to the waiter, whose words it is
    # (app_stop_cut_short for an Application). A waiter arriving once the task has ended cut and
    # reported finds the report made (_cut_once): one record either way.
    if not sup._stop_watched:
        _cut_once(sup, sup._report_stop_cut_short)


def _cut_once(sup: Supervisor, on_cut_short: Callable[[], object]) -> None:
    """``on_cut_short()``, unless this stop's cut was reported already."""
    if sup._stop_cut_reported:
        return
    sup._stop_cut_reported = True
    on_cut_short()


async def _waited_past_cancel(
    stopping: asyncio.Task[None],
    asked: int,
    on_cancelled: Callable[[], object],
    on_cut_short: Callable[[], object],
) -> None:
    """After the caller's first cancellation: wait for ``stopping`` (the stop
    under way, not begun again) to its end. A further cancellation (one met
    already too) ends the wait, as the loop's end cutting ``stopping`` does:
    ``on_cut_short()`` (it names the children still running), the
    cancellation raised."""
    import asyncio

    if cancelling() > asked + 1:  # cancelled twice already
        on_cut_short()
        raise asyncio.CancelledError
    try:
        if not (stopping.done() or stopping.cancelling()):  # (else the loop's end cuts it)
            on_cancelled()
        await asyncio.wait({stopping})
    except (asyncio.CancelledError, KeyboardInterrupt):  # (a 2nd Ctrl-C may raise here)
        on_cut_short()
        raise
    if stopping.cancelled():  # the loop's end (asyncio.run) cancelled it too
        on_cut_short()


def raised_on_exit(
    error: BaseException | None,
    cancelled: asyncio.CancelledError | None,
    body: BaseException | None = None,
) -> BaseException | None:
    """What leaving the block raises once its stop is over (or cut short): a
    KeyboardInterrupt met meanwhile, else the caller's cancellation met
    meanwhile, else the stop's ``error`` (None: the block's own exception,
    ``body``, if any, goes on).

    The block's own cancellation (``body``: a Ctrl-C under ``asyncio.run``, an
    ``asyncio.timeout()``, a ``task.cancel()`` met in the block) goes on too,
    not the stop's ``error`` (a ``ShutdownError``: its abandoned child has its
    own WARNING), which becomes its ``__context__``: ``asyncio.run`` and
    ``asyncio.timeout()`` see their cancellation. Another exception of the
    block's is the ``error``'s context, as Python chains it."""
    import asyncio

    if isinstance(error, KeyboardInterrupt):
        return error
    if cancelled is not None:
        return cancelled
    if error is not None and isinstance(body, asyncio.CancelledError):
        return _chained(body, error)
    return error


def _chained(exc: BaseException, context: BaseException) -> BaseException:
    """``exc``, ``context`` its ``__context__``, as raising it while handling
    ``context`` does: a link from ``context``'s chain back to ``exc`` is cut
    (no cycle)."""
    seen: set[int] = set()
    link: BaseException | None = context
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if link.__context__ is exc:
            link.__context__ = None
        link = link.__context__
    exc.__context__ = context
    return exc


def cancelling() -> int:
    """The calling task's pending cancellation requests (``Task.cancelling()``)."""
    import asyncio

    task = asyncio.current_task()
    return 0 if task is None else task.cancelling()
