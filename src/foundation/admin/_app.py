"""The admin ASGI application: ``create_app`` and its route table (the JSON API,
server-sent events, /metrics, OFREP and the page)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import Route

from foundation.admin._auth import parse_tokens
from foundation.admin._http import _endpoint, _http_error
from foundation.admin._routes_agents import dead_agents, list_agents, show_agent, supervision
from foundation.admin._routes_flags import (
    _flag_write,
    evaluate_flag,
    history,
    list_flags,
    show_flag,
)
from foundation.admin._routes_migration import _migration_write, show_migration
from foundation.admin._routes_service import events, healthz, metrics_endpoint, status, whoami
from foundation.admin._state import AdminState, RegistryLike
from foundation.flags import FeatureFlags, Migration

__all__ = ["create_app"]


def create_app(
    *,
    flags: FeatureFlags | None = None,
    migration: Migration | None = None,
    registry: RegistryLike | None = None,
    supervisors: Iterable[Any] = (),
    token: str | Iterable[str] | Mapping[str, str] | None = None,
    read_only: bool = False,
    public_reads: bool = False,
    metrics: Any = None,
) -> Starlette:
    """See ``foundation.admin`` (the package docs hold the whole contract)."""
    from foundation.admin._ofrep import ofrep_routes
    from foundation.admin._page import page_routes

    state = AdminState(
        flags=flags,
        migration=migration,
        registry=registry,
        supervisors=supervisors,
        operators=parse_tokens(token),
        read_only=read_only,
        public_reads=public_reads,
        metrics=metrics,
    )

    def r(path: str, fn: Callable[..., Awaitable[Any]], *, write: bool = False) -> Route:
        return Route(path, _endpoint(fn, write=write), methods=["POST" if write else "GET"])

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        r("/metrics", metrics_endpoint),
        r("/api/whoami", whoami),
        r("/api/status", status),
        r("/api/flags", list_flags),
        r("/api/flags/{name}", show_flag),
        r("/api/flags/{name}/evaluate", evaluate_flag),
        *(
            r(f"/api/flags/{{name}}/{action}", _flag_write(action), write=True)
            for action in (
                "enable",
                "disable",
                "clear",
                "percentage",
                "allow",
                "deny",
                "assign",
                "split",
            )
        ),
        r("/api/history", history),
        r("/api/migration", show_migration),
        *(
            r(f"/api/migration/{action}", _migration_write(action), write=True)
            for action in ("advance", "rollback", "emergency")
        ),
        r("/api/agents", list_agents),
        r("/api/agents/dead", dead_agents),
        r("/api/agents/{key:path}", show_agent),
        r("/api/supervision", supervision),
        r("/api/events", events),
        *ofrep_routes(),
        *page_routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    app.state.admin = state
    return app
