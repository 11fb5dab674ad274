"""Request plumbing: the endpoint wrapper (authorise, parse, answer), the
request's body and query helpers, and every failure as a JSON answer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from foundation import _json_input as json_input
from foundation.admin._auth import _authorise
from foundation.admin._errors import ApiError
from foundation.admin._json import _lone_surrogate, render_json
from foundation.admin._state import AdminState, RegistryLike
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FoundationError,
    MigrationError,
    NotRegistered,
    UnknownFlag,
    bounded_repr,
)
from foundation.flags import FeatureFlags, Migration
from foundation.flags._config import nearest

__all__ = ["MAX_BODY_BYTES", "JSONAnswer", "read_body"]

log = logging.getLogger("foundation.admin")

_TOO_DEEP = "the body is nested too deeply"

MAX_BODY_BYTES: Final = 1024 * 1024
"""The largest request body the admin API and OFREP read: 1 MiB.

The largest legitimate body is a flag write (an actor, a reason, a split) or an
OFREP evaluation context: a few kB. 1 MiB leaves room for a context carrying
many attributes, while one request can no longer make the server buffer (and
parse) any amount of memory it is sent.
"""


class JSONAnswer(JSONResponse):
    """A ``JSONResponse`` rendered by ``render_json`` (any string renders).

    Example:
        >>> JSONAnswer({"a": "\\udc80"}, status_code=422).body
        b'{"a":"\\\\udc80"}'
    """

    def render(self, content: Any) -> bytes:
        return render_json(content)


Handler = Callable[[Request, AdminState], Awaitable[Response]]


def _error(exc: BaseException) -> JSONAnswer:
    headers: Mapping[str, str] = {}
    if isinstance(exc, ApiError):
        status, name, message, headers = exc.status, exc.name, exc.message, exc.headers
    else:
        name, message = type(exc).__name__, str(exc)
        if isinstance(exc, UnknownFlag | NotRegistered):
            status = 404
        elif isinstance(exc, MigrationError):
            status = 409
        elif isinstance(exc, BackendUnavailable | Closed):
            status = 503
        elif isinstance(exc, FoundationError) and isinstance(exc, ValueError | TypeError):
            # Invalid*: the request's fault. A bare ValueError (a UnicodeEncodeError while
            # rendering, say) is the server's own: a logged 500, never a silent 422.
            status = 422
        else:
            status = 500
    return JSONAnswer({"error": name, "message": message}, status_code=status, headers=headers)


_JSON_PREFIXES = ("/api/", "/ofrep/")
_HTTP_ERRORS = {404: "NotFound", 405: "MethodNotAllowed"}


def _route_path(request: Request) -> str:
    """The path within this app (without the prefix it is mounted under)."""
    path: str = request.scope.get("path", "")
    root: str = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route, a method the route does not take)
    under ``/api/`` and ``/ofrep/`` in the API's error shape; plain text elsewhere."""
    assert isinstance(exc, HTTPException)
    path = _route_path(request)
    headers = dict(exc.headers or {})  # Allow: on a 405
    if not (path + "/").startswith(_JSON_PREFIXES):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=headers)
    name = _HTTP_ERRORS.get(exc.status_code, f"HTTP{exc.status_code}")
    if exc.status_code == 404:
        message = f"no such API route: {request.method} {bounded_repr(path)}"
    elif exc.status_code == 405:
        allowed = headers.get("allow") or headers.get("Allow") or "another method"
        message = f"{request.method} is not allowed on {bounded_repr(path)} (use {allowed})"
    else:
        message = str(exc.detail)
    body: dict[str, Any] = {"error": name, "message": message}
    if path.startswith("/ofrep/"):
        body["errorDetails"] = message  # OFREP clients read errorDetails
    return JSONAnswer(body, status_code=exc.status_code, headers=headers)


def _endpoint(
    fn: Callable[..., Awaitable[Any]], *, write: bool = False
) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        state: AdminState = request.app.state.admin
        try:
            operator = _authorise(request, state, write=write)
            if write:
                body = await _body(request)
                result = await fn(request, state, operator, body)
            else:
                result = await fn(request, state)
            # Rendered inside the try: a value JSON cannot hold is a JSON 500, not a bare one.
            return result if isinstance(result, Response) else JSONAnswer(result)
        except Exception as exc:
            response = _error(exc)
            if response.status_code == 500:
                log.exception("admin: %s %s failed", request.method, request.url.path)
            return response

    return handle


def _declared_length(request: Request) -> int:
    """The body's ``Content-Length`` (0 when absent: a chunked body is counted as read)."""
    try:
        return int(request.headers.get("content-length") or 0)
    except ValueError:  # the HTTP parser refuses it first; the count while reading still holds
        return 0


def _too_large() -> ApiError:
    return ApiError(
        413,
        "BodyTooLarge",
        f"the request body is larger than {MAX_BODY_BYTES} bytes (1 MiB), the server's limit",
    )


async def read_body(request: Request) -> bytes:
    """The request's body, refused past ``MAX_BODY_BYTES`` without reading it all.

    The one body reader of the admin API and OFREP. A ``Content-Length`` above
    the limit is refused before a byte is read; a chunked body as soon as it
    passes the limit (the server discards the rest of it).

    Raises:
        ApiError: 413 ``BodyTooLarge``; 400 ``ClientDisconnect`` when the client
            left before its body ended (logged at DEBUG only: a client-side event,
            and no one reads that answer).
    """
    if _declared_length(request) > MAX_BODY_BYTES:
        raise _too_large()
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large()
            chunks.append(chunk)
    except ClientDisconnect:
        log.debug(
            "admin: the client of %s %s disconnected before the end of its body",
            request.method,
            bounded_repr(request.url.path),
        )
        raise ApiError(
            400, "ClientDisconnect", "the client disconnected before the end of its body"
        ) from None
    return b"".join(chunks)


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request)
    if not raw:
        return {}
    try:
        body = json_input.loads(raw)
    except json_input.TooDeep:
        raise ApiError(422, "InvalidBody", _TOO_DEEP) from None
    except ValueError:
        raise ApiError(422, "InvalidBody", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(422, "InvalidBody", "the body is a JSON object")
    if "by" in body:
        raise ApiError(422, "InvalidBody", "`by` is the authenticated operator; do not send it")
    # Refused before anything is written: a lone surrogate (valid JSON, "\\ud800") cannot
    # be encoded as UTF-8, so stored it would poison every later read of it elsewhere.
    where = _lone_surrogate(body)  # (no deeper than json_input.MAX_DEPTH: no RecursionError)
    if where is not None:
        raise ApiError(
            422, "InvalidBody", f"{where} in the body holds a lone surrogate (not valid Unicode)"
        )
    return body


def _only(body: Mapping[str, Any], fields: frozenset[str]) -> None:
    """422 ``InvalidBody`` naming the first field of ``body`` not in ``fields``: a typo
    (``"reasn"``) would else be dropped in silence, the write made without it."""
    unknown = next((k for k in body if k not in fields), None)
    if unknown is None:
        return
    near = nearest(unknown, sorted(fields)) if len(unknown) <= 200 else None
    hint = f" (did you mean {near!r}?)" if near else ""
    takes = ", ".join(repr(f) for f in sorted(fields)) or "no field"
    raise ApiError(
        422,
        "InvalidBody",
        f"unknown field {bounded_repr(unknown)} in the body{hint}; this write takes {takes}",
    )


def _text(body: Mapping[str, Any], field: str, *, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise ApiError(422, "InvalidBody", f"the body needs {field!r}")
        return None
    # A required text that is blank ("   ", "\n") says nothing: refused as "" is.
    if not isinstance(value, str) or (required and not value.strip()):
        raise ApiError(422, "InvalidBody", f"{field!r} is a non-empty string")
    return value


def _need_flags(state: AdminState) -> FeatureFlags:
    if state.flags is None:
        raise ApiError(404, "NotConfigured", "this admin server has no flags")
    return state.flags


def _need_migration(state: AdminState) -> Migration:
    if state.migration is None:
        raise ApiError(404, "NotConfigured", "this admin server has no migration plan")
    return state.migration


def _need_registry(state: AdminState) -> RegistryLike:
    if state.registry is None:
        raise ApiError(404, "NotConfigured", "this admin server has no registry")
    return state.registry


def _limit(request: Request, default: int, maximum: int | None = None) -> int:
    """``?limit=N``: ``default`` when absent; 422 ``InvalidLimit`` unless a whole
    number from 1 (to ``maximum``, when given)."""
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:  # also past int()'s 4300 digits
        limit = 0
    if limit < 1 or (maximum is not None and limit > maximum):
        upto = "" if maximum is None else f" and <= {maximum}"
        raise ApiError(
            422, "InvalidLimit", f"limit is an integer >= 1{upto}, not {bounded_repr(raw)}"
        )
    return limit
