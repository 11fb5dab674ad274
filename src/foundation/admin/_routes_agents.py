"""The registry and supervision routes: live agents, one agent, the recently
dead, and the supervision trees."""

from __future__ import annotations

import asyncio
import collections
import heapq
import json
from collections.abc import Callable, Hashable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from foundation import _json_input as json_input
from foundation.admin._errors import ApiError
from foundation.admin._http import _limit, _need_registry
from foundation.admin._json import _kind, entry_dict, key_text
from foundation.admin._state import DEAD_RING, AdminState
from foundation.errors import Closed, NotRegistered, bounded_repr
from foundation.registry import Entry

__all__ = [
    "AGENTS_PAGE",
    "MAX_AGENTS_PAGE",
    "dead_agents",
    "list_agents",
    "show_agent",
    "supervision",
]


def _parse_where(raw: str) -> tuple[str, str, Any]:
    path, sep1, rest = raw.partition(":")
    op, sep2, text = rest.partition(":")
    if not (sep1 and sep2 and path and op):
        raise ApiError(422, "InvalidCriteria", f"where is PATH:OP:VALUE, not {raw!r}")
    try:
        value = json_input.loads(text)
    except json_input.TooDeep:
        raise ApiError(
            422, "InvalidCriteria", f"the value of where {bounded_repr(raw)} is nested too deeply"
        ) from None
    except ValueError:
        value = text  # a bare word is a string
    if isinstance(value, list):
        value = tuple(value)
    return path, op, value


def _row_matches(row: dict[str, Any], search: str) -> bool:
    """Whether lower-case ``search`` occurs in an agent row's key, metadata or node."""
    return (
        search in str(row["key_text"]).lower()
        or search in json.dumps(row["metadata"]).lower()
        or search in str(row["node"]).lower()
    )


AGENTS_PAGE = 500
"""Rows of ``/api/agents`` without ``?limit=``."""
MAX_AGENTS_PAGE = 5000
"""The largest ``?limit=`` of ``/api/agents`` (a larger one is a 422 ``InvalidLimit``):
a page is built, rendered and sent whole; ``?after=`` reads the rest."""

_Order = tuple[str, str]


def _order(entry: Entry) -> _Order:
    """Where an entry sorts in ``/api/agents``: its key as shown, then the key's
    ``repr`` (the string ``"7"`` and the number ``7`` both show as ``7``)."""
    return key_text(entry), repr(entry.key)


def _cursor_text(order: _Order) -> str:
    """The ``next`` of a page: the last row's place, for ``?after=``."""
    return json.dumps(list(order), separators=(",", ":"))  # ASCII: safe in any URL


def _after(request: Request) -> _Order | None:
    """``?after=``: the ``next`` of the previous page (422 ``InvalidCursor`` otherwise)."""
    raw = request.query_params.get("after")
    if raw is None or raw == "":
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        value = None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)):
        raise ApiError(
            422, "InvalidCursor", f"after is the next of a previous page, not {bounded_repr(raw)}"
        )
    return value[0], value[1]


def _page(
    chosen: list[Entry], search: str, after: _Order | None, limit: int
) -> tuple[list[dict[str, Any]], int, str | None]:
    """The rows of one page, how many entries match in all, and the next page's cursor.

    Race: entries come and go between two pages. The cursor is a place in the
    order, not a position: an entry there on both reads is listed once, never
    skipped; one that came or went meanwhile shows or not by where it sorts.
    """
    if search:  # the row is what a search looks in: built for every candidate
        matching = [(_order(e), e) for e in chosen if _row_matches(entry_dict(e), search)]
    else:
        # Rows only for the page: with 200k entries, building and sorting a row
        # per entry took seconds per request (the metadata's JSON of each).
        matching = [(_order(e), e) for e in chosen]
    later = (pair for pair in matching if after is None or pair[0] > after)
    top = heapq.nsmallest(limit + 1, later, key=lambda pair: pair[0])
    more = len(top) > limit
    top = top[:limit]
    cursor = _cursor_text(top[-1][0]) if more else None
    return [entry_dict(e) for _, e in top], len(matching), cursor


def _agents(request: Request, state: AdminState) -> dict[str, Any]:
    registry = _need_registry(state)
    criteria = [_parse_where(w) for w in request.query_params.getlist("where")]
    search = (request.query_params.get("q") or "").lower()
    limit = _limit(request, AGENTS_PAGE, MAX_AGENTS_PAGE)
    after = _after(request)
    everyone = registry.list_all()
    chosen = registry.query(criteria) if criteria else everyone
    page, matched, cursor = _page(chosen, search, after, limit)
    by_kind: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for e in everyone:
        by_kind[_kind(e.agent)] += 1
        by_node[e.node] += 1
    return {
        "agents": page,
        "matched": matched,
        "next": cursor,
        "total": len(everyone),
        "by_kind": dict(by_kind),
        "by_node": dict(by_node),
    }


async def list_agents(request: Request, state: AdminState) -> Any:
    return await run_in_threadpool(_agents, request, state)


async def show_agent(request: Request, state: AdminState) -> Any:
    registry = _need_registry(state)
    text = request.path_params["key"]

    def find() -> Entry | None:
        entry = registry.lookup(text)
        if entry is None:
            try:
                parsed = json_input.loads(text)
            except ValueError:  # not JSON, or nested too deeply (TooDeep): no such key
                return None
            if isinstance(parsed, list):
                parsed = tuple(parsed)
            if parsed != text and isinstance(parsed, Hashable):  # '"dead"' names key "dead"
                entry = registry.lookup(parsed)
        return entry

    entry = await run_in_threadpool(find)
    if entry is None:
        raise NotRegistered(text)
    return entry_dict(entry)


async def dead_agents(request: Request, state: AdminState) -> Any:
    _need_registry(state)
    limit = _limit(request, DEAD_RING)
    return {"dead": list(reversed(state.hub.dead))[:limit]}


# ------------------------------------------------------------------- supervision


def _children_elsewhere(sup: Any) -> list[Any]:
    """``which_children()`` of a SupervisorThread, or of a Supervisor on another loop."""
    if hasattr(sup, "thread"):  # SupervisorThread: thread-safe already
        try:
            return list(sup.which_children())
        except Closed:  # a stopped handle: its loop is gone, the supervisor shows how it ended
            return list(sup.supervisor.which_children())
    task = sup.task
    if task is None:
        return []

    async def ask() -> list[Any]:
        return list(sup.which_children())

    coro = ask()
    try:
        fut = asyncio.run_coroutine_threadsafe(coro, task.get_loop())
    except RuntimeError:  # its loop is closed: the run has ended and nothing changes it now
        coro.close()
        return list(sup.which_children())
    try:
        return fut.result(5.0)
    except TimeoutError:
        fut.cancel()
        raise ApiError(
            503,
            "Unavailable",
            f"supervisor {bounded_repr(sup.name)}: its event loop did not answer",
        ) from None


def _children_here(sup: Any) -> list[Any]:
    return list(sup.which_children())


def _tree(sup: Any, children: Callable[[Any], list[Any]]) -> dict[str, Any]:
    inner = getattr(sup, "supervisor", sup)
    node: dict[str, Any] = {
        "name": inner.name,
        "state": inner.state,
        "strategy": inner.strategy,
        "children": [],
    }
    for child in children(sup):
        row: dict[str, Any] = {
            "id": child.id,
            "kind": child.kind,
            "restart": child.restart,
            "status": child.status,
            "restarts": child.restarts,
            "registered": child.registered,
        }
        if child.kind == "supervisor" and child.handle is not None:
            row["supervisor"] = _tree(child.handle, children)
        node["children"].append(row)
    return node


async def supervision(request: Request, state: AdminState) -> Any:
    loop = asyncio.get_running_loop()
    out = []
    for sup in state.supervisors:
        task = getattr(sup, "task", None)
        if task is not None and task.get_loop() is loop:
            # Mounted in the supervisor's own loop: ask directly (blocking on it would deadlock).
            out.append(_tree(sup, _children_here))
        else:
            out.append(await run_in_threadpool(_tree, sup, _children_elsewhere))
    return {"supervisors": out}
