"""The routes about the admin service itself: whoami, status, healthz, the
event stream (SSE) and ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from foundation.admin._auth import _authorise
from foundation.admin._http import JSONAnswer
from foundation.admin._state import AdminState

__all__ = ["events", "healthz", "metrics_endpoint", "status", "whoami"]

HEARTBEAT = 15.0
"""Seconds between SSE keep-alive comments."""


async def whoami(request: Request, state: AdminState) -> Any:
    header = request.headers.get("authorization", "")
    operator = None
    if header:
        operator = _authorise(request, state, write=False)
    return {
        "operator": operator,
        # False: this server has no token to check (one sent is ignored), writes are off.
        "token_configured": state.operators.configured,
        "read_only": state.read_only,
        "writes": state.operators.configured and not state.read_only,
        "flags": state.flags is not None,
        "migration": state.migration is not None,
        "registry": state.registry is not None,
        "supervision": bool(state.supervisors),
        "degraded": (await run_in_threadpool(state.status.report))["degraded"],
    }


async def status(request: Request, state: AdminState) -> Any:
    """``GET /api/status``: per component, its state, since when and last error."""
    return await run_in_threadpool(state.status.report)


async def healthz(request: Request) -> Response:
    # Liveness only: a Redis outage degrades the service (it serves from its
    # mirror and node copy) but restarting the process would not help, so this
    # never reports it. /api/status and the /metrics gauges do.
    return JSONAnswer({"ok": True})


async def events(request: Request, state: AdminState) -> Any:
    queue = state.hub.attach()

    async def stream() -> AsyncIterator[str]:
        try:
            yield "event: hello\ndata: {}\n\n"
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), HEARTBEAT)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                yield item
        finally:
            state.hub.detach(queue)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def metrics_endpoint(request: Request, state: AdminState) -> Any:
    from foundation.admin._metrics import exposition

    body, content_type = await run_in_threadpool(exposition, state)
    return Response(body, media_type=content_type)
