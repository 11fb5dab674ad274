"""The admin ASGI application: JSON API, server-sent events, /metrics and the page."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from foundation.admin._status import FlagSync, StatusBoard, flag_sync, store_status
from foundation.errors import (
    BackendUnavailable,
    Closed,
    FoundationError,
    InvalidConfig,
    MigrationError,
    NotRegistered,
    UnknownFlag,
    bounded_repr,
)
from foundation.flags import FeatureFlags, FlagChange, FlagState, Migration
from foundation.flags._hashing import bucket
from foundation.registry import Entry, RegistryEvent

__all__ = ["AdminState", "JSONAnswer", "Operators", "create_app", "parse_tokens", "render_json"]

log = logging.getLogger("foundation.admin")

DEAD_RING = 200
"""How many recently dead agents ``GET /api/agents/dead`` remembers."""
QUEUE_SIZE = 1000
"""Events buffered per SSE client; a client that falls further behind gets ``resync``."""
HEARTBEAT = 15.0
"""Seconds between SSE keep-alive comments."""

_JSON = "application/json"


class RegistryLike(Protocol):
    """What the admin needs of a registry (a ``Registry`` or a ``RedisObserver``)."""

    def list_all(self) -> list[Entry]: ...
    def lookup(self, key: Hashable) -> Entry | None: ...
    def query(self, criteria: Any) -> list[Entry]: ...
    def count(self) -> int: ...
    def subscribe(self, listener: Callable[[RegistryEvent], None]) -> Callable[[], None]: ...


class ApiError(Exception):
    """An error answered as ``{"error": name, "message": message}`` with ``status``."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message


# ------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class Operators:
    """Bearer secrets and the operator each one names (``by`` of its writes)."""

    secrets: tuple[tuple[bytes, str], ...] = ()

    def __bool__(self) -> bool:
        raise TypeError("use Operators.configured, not truthiness")

    @property
    def configured(self) -> bool:
        return bool(self.secrets)

    def operator(self, secret: str) -> str | None:
        """The operator whose secret this is, else None (constant time per secret)."""
        given = secret.encode()
        found = None
        for known, name in self.secrets:  # no early exit: every secret is compared
            if hmac.compare_digest(known, given):
                found = name
        return found


def parse_tokens(token: str | Iterable[str] | Mapping[str, str] | None) -> Operators:
    """Operators from ``"secret"`` (named admin), ``"name:secret"``, a list, or ``{name: secret}``.

    Example:
        >>> ops = parse_tokens(["ana:s3cret-a", "bo:s3cret-b"])
        >>> ops.operator("s3cret-b"), ops.operator("nope")
        ('bo', None)
        >>> parse_tokens("just-a-secret").operator("just-a-secret")
        'admin'

    Raises:
        InvalidConfig: an empty secret or operator name, or a secret given twice.
    """
    if token is None:
        return Operators()
    seen: set[str] = set()
    out: list[tuple[bytes, str]] = []
    for name, secret in _token_pairs(token):
        if not name or not secret:
            raise InvalidConfig("a token needs a non-empty operator name and secret")
        if secret in seen:
            raise InvalidConfig(f"the secret of operator {name!r} is given twice")
        seen.add(secret)
        out.append((secret.encode(), name))
    return Operators(tuple(out))


def _token_pairs(token: str | Iterable[str] | Mapping[str, str]) -> list[tuple[str, str]]:
    """The (operator name, secret) pairs of a token, unchecked for emptiness or repeats."""
    if isinstance(token, Mapping):
        return _mapping_pairs(token)
    if not isinstance(token, str | Iterable):
        raise InvalidConfig(f"a token is a string, not {bounded_repr(token)}")
    pairs: list[tuple[str, str]] = []
    for item in [token] if isinstance(token, str) else list(token):
        if not isinstance(item, str):
            raise InvalidConfig(f"a token is a string, not {bounded_repr(item)}")
        name, sep, secret = item.partition(":")
        pairs.append((name, secret) if sep else ("admin", item))
    return pairs


def _mapping_pairs(token: Mapping[str, str]) -> list[tuple[str, str]]:
    """The (operator name, secret) pairs of a ``{name: secret}`` token, type-checked."""
    pairs: list[tuple[str, str]] = []
    for n, s in token.items():
        if not isinstance(n, str) or not isinstance(s, str):
            raise InvalidConfig(
                f"token maps operator names to secrets (strings), not {bounded_repr(n)} "
                f"to a {type(s).__name__}"
            )
        pairs.append((n, s))
    return pairs


# ------------------------------------------------------------------ serialisation


def render_json(payload: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """The one JSON rendering of every admin and OFREP answer (and SSE event).

    ASCII-only (``ensure_ascii``): any ``str`` renders, a lone surrogate too
    (as ``\\udXXX``, which JSON allows), so a value persisted by an older
    version can never make a read fail. ``NaN`` is refused, as by Starlette.

    Example:
        >>> render_json({"actor": "\\ud800", "café": 1})
        b'{"actor":"\\\\ud800","caf\\\\u00e9":1}'
    """
    return json.dumps(
        payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=default
    ).encode("ascii")


class JSONAnswer(JSONResponse):
    """A ``JSONResponse`` rendered by ``render_json`` (any string renders).

    Example:
        >>> JSONAnswer({"a": "\\udc80"}, status_code=422).body
        b'{"a":"\\\\udc80"}'
    """

    def render(self, content: Any) -> bytes:
        return render_json(content)


def _lone_surrogate(value: Any) -> str | None:
    """A short description of where ``value`` (decoded JSON) holds a lone surrogate, else None.

    Decoded JSON pairs ``\\ud83d\\ude00`` into one character, so any surrogate
    code point left in a ``str`` is a lone one (UTF-8 cannot encode it).
    """
    if isinstance(value, str):
        return "a string" if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        return _lone_surrogate_in_dict(value)
    if isinstance(value, list):
        for item in value:
            where = _lone_surrogate(item)
            if where is not None:
                return where
    return None


def _lone_surrogate_in_dict(value: dict[Any, Any]) -> str | None:
    """``_lone_surrogate`` for a decoded JSON object: its keys, then each value in order."""
    for k, v in value.items():
        if _SURROGATE.search(k):
            return "a key"
        where = _lone_surrogate(v)
        if where is not None:
            return f"{k!r}" if where == "a string" else where
    return None


_SURROGATE = re.compile("[\\ud800-\\udfff]")
_TOO_DEEP = "the body is nested too deeply"


def _plain_key(key: object) -> object:
    """A registry key as JSON: tuples as lists, frozensets as sorted lists."""
    if isinstance(key, tuple):
        return [_plain_key(k) for k in key]
    if isinstance(key, frozenset):
        return sorted((_plain_key(k) for k in key), key=repr)
    if key is None or isinstance(key, str | int | float | bool):
        return key
    return repr(key)


def _kind(agent: object) -> str:
    kind = getattr(agent, "kind", None)  # RemoteAgent
    if isinstance(kind, str):
        return kind
    from foundation.liveness._agents import kind_of

    return kind_of(agent) or type(agent).__name__


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON with ``str`` for anything JSON cannot hold."""
    return json.loads(json.dumps(value, default=str))


def entry_dict(entry: Entry) -> dict[str, Any]:
    agent = entry.agent
    pid = getattr(agent, "pid", None)
    name = getattr(agent, "name", None)
    return {
        "key": _plain_key(entry.key),
        "key_text": entry.key if isinstance(entry.key, str) else json.dumps(_plain_key(entry.key)),
        "node": entry.node,
        "kind": _kind(agent),
        "pid": pid if isinstance(pid, int) else None,
        "name": name if isinstance(name, str) else None,
        "metadata": _jsonable(dict(entry.metadata)),
        "registered_at": entry.registered_at,
    }


def _down_dict(event: RegistryEvent) -> dict[str, Any]:
    down = event.down
    if down is None:
        return {"reason": "down", "exception": None, "exit_code": None, "signal": None}
    return {
        "reason": down.reason,
        "exception": None if down.exception is None else repr(down.exception),
        "exit_code": down.exit_code,
        "signal": down.signal,
    }


def _dead_dict(event: RegistryEvent, at: float) -> dict[str, Any]:
    return {**entry_dict(event.entry), "down": _down_dict(event), "at": at}


def _change_dict(change: FlagChange) -> dict[str, Any]:
    """``to_dict`` plus ``no_op`` (see ``FlagChange.no_op``)."""
    return {**change.to_dict(), "no_op": change.no_op}


# ------------------------------------------------------------------------- events


class _Hub:
    """Fans events out to SSE clients and remembers the recently dead.

    Publishers run on any thread (flag and registry listeners); each client
    queue belongs to the event loop of its request, so items are handed over
    with ``call_soon_threadsafe``.
    """

    def __init__(self, dead_size: int) -> None:
        self._lock = threading.Lock()
        self._clients: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str | None]]] = set()
        self.dead: collections.deque[dict[str, Any]] = collections.deque(maxlen=dead_size)
        self.closed = False

    def publish(self, event: str, data: Mapping[str, Any]) -> None:
        item = f"event: {event}\ndata: {render_json(data, default=str).decode('ascii')}\n\n"
        with self._lock:
            clients = list(self._clients)
        for loop, queue in clients:
            # Race: the client's loop may have closed after we copied the set; it is gone.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._put, queue, item)

    @staticmethod
    def _put(queue: asyncio.Queue[str | None], item: str | None) -> None:
        if queue.full():
            # A slow client: drop its backlog and tell it to re-read everything.
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait("event: resync\ndata: {}\n\n")
        queue.put_nowait(item)

    def attach(self) -> asyncio.Queue[str | None]:
        queue: asyncio.Queue[str | None] = asyncio.Queue(QUEUE_SIZE)
        with self._lock:
            if self.closed:
                raise ApiError(503, "Closed", "the admin server is shutting down")
            self._clients.add((asyncio.get_running_loop(), queue))
        return queue

    def detach(self, queue: asyncio.Queue[str | None]) -> None:
        with self._lock:
            self._clients = {c for c in self._clients if c[1] is not queue}

    def close(self) -> None:
        """End every event stream (a ``None`` in each queue)."""
        with self._lock:
            self.closed = True
            clients = list(self._clients)
        for loop, queue in clients:
            with contextlib.suppress(RuntimeError):  # a closed loop ended its stream already
                loop.call_soon_threadsafe(self._put, queue, None)


# -------------------------------------------------------------------------- state


_REGISTRY_METHODS = ("list_all", "lookup", "query", "count", "subscribe")


def _is_registry(registry: object) -> bool:
    """Whether ``registry`` has every method the admin app calls on a registry."""
    return all(callable(getattr(registry, name, None)) for name in _REGISTRY_METHODS)


def _check_served(flags: object, migration: object, registry: object, supervisors: object) -> None:
    """TypeError unless each object given to AdminState is of a kind it can serve."""
    if flags is not None and not isinstance(flags, FeatureFlags):
        raise TypeError(f"flags must be a FeatureFlags or None, not {type(flags).__name__}")
    if migration is not None and not isinstance(migration, Migration):
        raise TypeError(f"migration must be a Migration or None, not {type(migration).__name__}")
    if registry is not None and not _is_registry(registry):
        raise TypeError(
            f"registry must be a registry (list_all, lookup, query, count, subscribe), "
            f"not {type(registry).__name__}"
        )
    if isinstance(supervisors, str) or not isinstance(supervisors, Iterable):
        raise TypeError(
            f"supervisors is a collection of supervisors, not {type(supervisors).__name__}"
        )


class AdminState:
    """What the app serves: the live objects, the operators, the event hub and
    the status board (``GET /api/status``, see ``foundation.admin._status``).

    ``close()`` stops the status thread, unsubscribes from the flags and the
    registry and ends every event stream; the objects themselves stay the
    caller's to close.
    """

    def __init__(
        self,
        *,
        flags: FeatureFlags | None,
        migration: Migration | None,
        registry: RegistryLike | None,
        supervisors: Iterable[Any],
        operators: Operators,
        read_only: bool,
        public_reads: bool,
        metrics: Any = None,
        dead_size: int = DEAD_RING,
    ) -> None:
        # Refused here, not at the first request or event that would use them.
        _check_served(flags, migration, registry, supervisors)
        if migration is not None and flags is None:
            flags = migration.flags
        self.flags = flags
        self.migration = migration
        self.registry = registry
        self.supervisors = tuple(supervisors)
        self.operators = operators
        self.read_only = read_only
        self.public_reads = public_reads
        self.metrics = metrics
        self.hub = _Hub(dead_size)
        self._unsubscribe: list[Callable[[], None]] = []
        if flags is not None:
            self._unsubscribe.append(flags.subscribe(self._on_flag))
        if registry is not None:
            since = time.time()
            self._unsubscribe.append(registry.subscribe(self._on_registry))
            self._take_recent_deaths(registry, since)
        # Last: it may start the status thread, which nothing would stop if a
        # subscription above raised.
        self.status = StatusBoard(
            registry=registry,
            store=None if flags is None else flags.store,
            publish=functools.partial(self.hub.publish, "status"),
        )

    def _take_recent_deaths(self, registry: RegistryLike, since: float) -> None:
        """Prepend the deaths the registry saw before ``since`` to the hub's dead ring."""
        # A RedisObserver remembers deaths seen before we subscribed: take those
        # (a death seen from now on reaches _on_registry instead).
        recently_dead = getattr(registry, "recently_dead", None)
        if callable(recently_dead):
            for death in reversed(recently_dead()):  # oldest first; we prepend
                if death.at < since and death.event.reason == "down":
                    self.hub.dead.appendleft(_dead_dict(death.event, death.at))

    def _on_flag(self, change: FlagChange) -> None:
        # A listener must not raise: it runs on the writer's or the store watcher's thread.
        try:
            self.hub.publish("flag", _change_dict(change))
            if self.migration is not None and change.flag in self.migration.plan.flags:
                # The stage is written in the same store transaction as these flags.
                self.hub.publish("migration", {"plan": self.migration.plan.name})
        except Exception:
            log.exception("admin: could not publish a flag change")

    def _on_registry(self, event: RegistryEvent) -> None:
        try:
            data: dict[str, Any] = {
                "kind": event.kind,
                "reason": event.reason,
                "entry": entry_dict(event.entry),
            }
            if event.reason == "down":
                data["down"] = _down_dict(event)
                self.hub.dead.append(_dead_dict(event, time.time()))
            self.hub.publish("agent", data)
        except Exception:
            log.exception("admin: could not publish a registry event")

    def close(self) -> None:
        self.status.close()
        for unsubscribe in self._unsubscribe:
            with contextlib.suppress(FoundationError):  # closed: nothing to unsubscribe from
                unsubscribe()
        self._unsubscribe.clear()
        self.hub.close()


# --------------------------------------------------------------------- plumbing

Handler = Callable[[Request, AdminState], Awaitable[Response]]


def _error(exc: BaseException) -> JSONAnswer:
    if isinstance(exc, ApiError):
        status, name, message = exc.status, exc.name, exc.message
    else:
        name, message = type(exc).__name__, str(exc)
        if isinstance(exc, UnknownFlag | NotRegistered):
            status = 404
        elif isinstance(exc, MigrationError):
            status = 409
        elif isinstance(exc, BackendUnavailable | Closed):
            status = 503
        elif isinstance(exc, ValueError | TypeError):  # Invalid* are ValueError/TypeError
            status = 422
        else:
            status = 500
    return JSONAnswer({"error": name, "message": message}, status_code=status)


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


def _authorise(request: Request, state: AdminState, *, write: bool) -> str | None:
    """The operator of this request (None: an anonymous read); ApiError if refused."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    operator = None
    if header:
        if scheme.lower() != "bearer" or not state.operators.configured:
            raise ApiError(401, "Unauthorized", "send Authorization: Bearer <token>")
        operator = state.operators.operator(secret.strip())
        if operator is None:
            raise ApiError(401, "Unauthorized", "unknown token")
    if write:
        _authorise_write(request, state, operator)
    elif operator is None and state.operators.configured and not state.public_reads:
        raise ApiError(401, "Unauthorized", "reads need Authorization: Bearer <token>")
    return operator


def _authorise_write(request: Request, state: AdminState, operator: str | None) -> None:
    """ApiError unless this server takes writes and this request may make one."""
    if state.read_only:
        raise ApiError(403, "ReadOnly", "the admin server runs in read-only mode")
    if not state.operators.configured:
        raise ApiError(403, "ReadOnly", "no operator token is configured: writes are off")
    if operator is None:
        raise ApiError(401, "Unauthorized", "a write needs Authorization: Bearer <token>")
    # CSRF: a browser never sends an Authorization header cross-site on its own,
    # and a JSON content type cannot be sent cross-site without a CORS preflight.
    if request.headers.get("content-type", "").split(";")[0].strip() != _JSON:
        raise ApiError(415, "UnsupportedMediaType", "writes take Content-Type: application/json")


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


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(422, "InvalidBody", "the body is not valid JSON") from None
    except RecursionError:
        raise ApiError(422, "InvalidBody", _TOO_DEEP) from None
    if not isinstance(body, dict):
        raise ApiError(422, "InvalidBody", "the body is a JSON object")
    if "by" in body:
        raise ApiError(422, "InvalidBody", "`by` is the authenticated operator; do not send it")
    # Refused before anything is written: a lone surrogate (valid JSON, "\\ud800") cannot
    # be encoded as UTF-8, so stored it would poison every later read of it elsewhere.
    try:
        where = _lone_surrogate(body)
    except RecursionError:
        raise ApiError(422, "InvalidBody", _TOO_DEEP) from None
    if where is not None:
        raise ApiError(
            422, "InvalidBody", f"{where} in the body holds a lone surrogate (not valid Unicode)"
        )
    return body


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


# ------------------------------------------------------------------------- flags


def _flag_dict(flags: FeatureFlags, name: str) -> dict[str, Any]:
    """A flag for the API: declaration, state and its answer without an actor.

    Both kinds carry ``kind``, ``variants`` and ``default_variant`` (None for a
    boolean flag), ``value`` and ``variant``; a boolean flag also ``enabled``, a
    typed one ``assign`` (actor -> variant) and ``split`` (variant -> percent, or None).
    """
    declared = flags.flag(name)
    # Race: state and answer are two lock-free reads; a write between them shows in
    # this one response only, and its change event makes the page read both again.
    state = flags.state(name)
    evaluation = flags.evaluate(name)
    typed = declared.kind != "boolean"
    variants = declared.variants
    out: dict[str, Any] = {
        "name": name,
        "kind": declared.kind,
        "default": declared.default,
        "description": declared.description,
        "variants": None if variants is None else _jsonable(dict(variants)),
        "default_variant": declared.default if typed else None,
        **state.to_dict(),
        "value": _jsonable(evaluation.value),
        "variant": evaluation.variant,
    }
    if typed:
        out["assign"] = dict(sorted(state.assign.items()))
        out["split"] = None if state.split is None else dict(state.split)
    else:
        out["enabled"] = evaluation.value
    return out


def _flags_answer(flags: FeatureFlags) -> dict[str, Any]:
    """Every flag, plus ``store``: where the store stands (``pending_flags`` included)."""
    # Race: the store is read first; a kill switch committed between that read and
    # the flags' shows as pending in this one answer (the next read says otherwise).
    store = store_status(flags.store)
    return {"flags": [_flag_dict(flags, n) for n in flags.names], "store": store}


def _written_flag(flags: FeatureFlags, name: str) -> dict[str, Any]:
    """A flag just written, plus ``sync`` (see ``flag_sync``) and the store's block."""
    sync: FlagSync = flag_sync(flags.store)
    return {**_flag_dict(flags, name), "sync": sync.of(name), "store": store_status(flags.store)}


async def list_flags(request: Request, state: AdminState) -> Any:
    return await run_in_threadpool(_flags_answer, _need_flags(state))


async def show_flag(request: Request, state: AdminState) -> Any:
    return _flag_dict(_need_flags(state), request.path_params["name"])


_WHY = {
    "DISABLED": "the switch is off: the default variant",
    "STATIC": "the switch is on: the default variant",
    "DEFAULT": "no actor and no variant at 100%: the default variant",
}


def _boolean_why(name: str, actor: str | None, s: FlagState, enabled: bool) -> str:
    """Explain a boolean flag's answer for one actor from the state read after it."""
    if not s.switch:
        return "the switch is off"
    if actor is None:
        return "no actor: on unless a percentage below 100 is set"
    if actor in s.deny:
        return "the actor is in the deny set"
    if actor in s.allow:
        return "the actor is in the allow set"
    if s.percentage is not None:
        return (
            f"rollout: bucket {bucket(name, actor):.4f} {'<' if enabled else '>='} {s.percentage}"
        )
    return "the switch is on"


async def evaluate_flag(request: Request, state: AdminState) -> Any:
    flags = _need_flags(state)
    name = request.path_params["name"]
    actor = request.query_params.get("actor") or None
    if flags.flag(name).kind != "boolean":
        return _evaluate_typed(flags, name, actor)
    # Race: the answer is one read (evaluate); the "why" reads the state again, so a
    # write landing between them can leave the explanation one change behind.
    evaluation = flags.evaluate(name, actor)
    enabled = bool(evaluation.value)
    why = _boolean_why(name, actor, flags.state(name), enabled)
    return {
        "flag": name,
        "actor": actor,
        "kind": "boolean",
        "enabled": enabled,
        "value": enabled,
        "variant": evaluation.variant,
        "reason": evaluation.reason,
        "why": why,
        "bucket": None if actor is None else bucket(name, actor),
    }


def _evaluate_typed(flags: FeatureFlags, name: str, actor: str | None) -> dict[str, Any]:
    evaluation = flags.evaluate(name, actor)
    s = flags.state(name)  # only to tell deny from assignment (same race as above)
    if evaluation.reason == "TARGETING_MATCH":
        if actor is not None and actor in s.deny:
            why = "the actor is in the deny set: the default variant"
        else:
            why = f"the actor is assigned to {evaluation.variant!r}"
    elif evaluation.reason == "SPLIT":
        why = (
            f"the actor's stable pick in the split: {evaluation.variant!r}"
            if actor is not None
            else f"no actor: {evaluation.variant!r} has 100% of the split"
        )
    else:
        why = _WHY.get(evaluation.reason, evaluation.reason)
    return {
        "flag": name,
        "actor": actor,
        "kind": evaluation.kind,
        "value": _jsonable(evaluation.value),
        "variant": evaluation.variant,
        "reason": evaluation.reason,
        "why": why,
    }


async def history(request: Request, state: AdminState) -> Any:
    flags = _need_flags(state)
    flag = request.query_params.get("flag") or None
    limit = _limit(request, 100)
    changes = await run_in_threadpool(flags.history, flag)
    return {
        "changes": [_change_dict(c) for c in reversed(changes[-limit:])],
        **history_retention(flags.store),
    }


_NO_LIMIT: Final = object()
"""``history_limit`` of a store without one."""


def history_retention(store: object) -> dict[str, Any]:
    """How much history ``store`` keeps: ``history_limit`` (an int, or None when
    it keeps every record or does not say) and ``retention``, the sentence the
    page shows over the audit trail (None when the store has no int or None
    ``history_limit``: a store that does not say).

    The built-in stores keep the last ``history_limit`` records of all flags
    together, so an old change of a quiet flag may be gone: an operator reading
    the audit trail must know.

        >>> from foundation.flags import MemoryFlagStore
        >>> history_retention(MemoryFlagStore(history_limit=500))["retention"]
        'the store keeps the last 500 records of all flags (older records are trimmed)'
    """
    limit = getattr(store, "history_limit", _NO_LIMIT)
    if limit is None:
        return {"history_limit": None, "retention": "the store keeps every record"}
    if not isinstance(limit, int) or isinstance(limit, bool):  # absent, or not a count
        return {"history_limit": None, "retention": None}
    return {
        "history_limit": limit,
        "retention": (
            f"the store keeps the last {limit:,} record{'s' if limit != 1 else ''} of all "
            "flags (older records are trimmed)"
        ),
    }


def _limit(request: Request, default: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError:  # also past int()'s 4300 digits
        limit = 0
    if limit < 1:
        raise ApiError(422, "InvalidLimit", f"limit is an integer >= 1, not {bounded_repr(raw)}")
    return limit


# A flag write's call, built from the request body (ApiError if the body does not fit):
# (flags, flag name, body, operator, reason) -> the call to run in the thread pool.
_FlagCall = Callable[[FeatureFlags, str, dict[str, Any], str, str | None], Callable[[], None]]


def _enable_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``enable``: nothing needed from the body."""
    return functools.partial(flags.enable, name, by=by, reason=reason)


def _disable_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``disable``: the body must confirm the flag name."""
    if body.get("confirm") != name:
        raise ApiError(
            422,
            "ConfirmationRequired",
            f'disabling needs "confirm": {name!r} (the flag name)',
        )
    return functools.partial(flags.disable, name, by=by, reason=reason)


def _clear_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``clear``: nothing needed from the body."""
    return functools.partial(flags.clear, name, by=by, reason=reason)


def _percentage_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``set_percentage``: the body's ``percentage``."""
    if "percentage" not in body:
        raise ApiError(422, "InvalidBody", "the body needs 'percentage'")
    return functools.partial(flags.set_percentage, name, body["percentage"], by=by, reason=reason)


def _assign_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``assign``: the body's ``actor`` and ``variant`` (null: unassign)."""
    actor = _text(body, "actor", required=True)
    assert actor is not None
    if "variant" not in body:
        raise ApiError(422, "InvalidBody", "the body needs 'variant' (null: unassign)")
    variant = _text(body, "variant")
    return functools.partial(flags.assign, name, actor, variant, by=by, reason=reason)


def _split_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``set_split``: the body's ``split``, an object of numbers."""
    shares = body.get("split")
    if not isinstance(shares, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in shares.values()
    ):
        raise ApiError(
            422, "InvalidBody", "'split' is an object {variant: percent}, summing to 100"
        )
    return functools.partial(flags.set_split, name, shares, by=by, reason=reason)


def _allow_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``allow``: the body's ``actor``."""
    actor = _text(body, "actor", required=True)
    assert actor is not None
    return functools.partial(flags.allow, name, actor, by=by, reason=reason)


def _deny_call(
    flags: FeatureFlags, name: str, body: dict[str, Any], by: str, reason: str | None
) -> Callable[[], None]:
    """``deny``: the body's ``actor``."""
    actor = _text(body, "actor", required=True)
    assert actor is not None
    return functools.partial(flags.deny, name, actor, by=by, reason=reason)


_FLAG_CALLS: dict[str, _FlagCall] = {
    "enable": _enable_call,
    "disable": _disable_call,
    "clear": _clear_call,
    "percentage": _percentage_call,
    "assign": _assign_call,
    "split": _split_call,
    "allow": _allow_call,
    "deny": _deny_call,
}


def _flag_write(action: str) -> Callable[..., Awaitable[Any]]:
    async def write(
        request: Request, state: AdminState, operator: str, body: dict[str, Any]
    ) -> Any:
        flags = _need_flags(state)
        name = request.path_params["name"]
        flags.flag(name)  # UnknownFlag before anything else
        reason = _text(body, "reason")
        call = _FLAG_CALLS[action](flags, name, body, operator, reason)
        await run_in_threadpool(call)
        # The store's word on this write: "pending" (a kill switch kept through an
        # outage, not yet in Redis: other nodes still serve the old state),
        # "committed", or "stale" (committed, but this node reads its node copy).
        return await run_in_threadpool(_written_flag, flags, name)

    return write


# --------------------------------------------------------------------- migration


def _migration_dict(migration: Migration) -> dict[str, Any]:
    status = migration.status()
    return {
        "plan": status.plan,
        "stage": status.stage,
        "stage_name": status.stage_name,
        "total": status.total,
        "stages": [
            {"number": s.number, "name": s.name, "flags": list(s.flags), "risk": s.risk}
            for s in migration.plan.stages
        ],
        "flags": dict(status.flags),
        "problems": migration.problems(),
        "history": [e.to_dict() for e in reversed(migration.history()[-50:])],
    }


async def show_migration(request: Request, state: AdminState) -> Any:
    return await run_in_threadpool(_migration_dict, _need_migration(state))


def _migration_write(action: str) -> Callable[..., Awaitable[Any]]:
    async def write(
        request: Request, state: AdminState, operator: str, body: dict[str, Any]
    ) -> Any:
        migration = _need_migration(state)
        reason = _text(body, "reason", required=action == "emergency")
        if action == "advance":
            await run_in_threadpool(lambda: migration.advance(by=operator, reason=reason))
        elif action == "rollback":
            stage = body.get("stage")
            if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
                raise ApiError(422, "InvalidBody", f"'stage' is an integer >= 0, not {stage!r}")
            await run_in_threadpool(
                lambda: migration.rollback_to(stage, by=operator, reason=reason)
            )
        else:

            def emergency() -> None:
                # Checked against the stage as it is now: a stage that moved since
                # the operator looked needs a fresh confirmation. (The rollback itself
                # works from any stage, so a move between this check and it is harmless.)
                status = migration.status()
                accepted = {str(status.stage)} | (
                    {status.stage_name} if status.stage_name else set()
                )
                confirm = body.get("confirm")
                if not isinstance(confirm, str) or confirm not in accepted:
                    raise ApiError(
                        422,
                        "ConfirmationRequired",
                        'an emergency rollback needs "confirm": the current stage '
                        f"({' or '.join(sorted(accepted))})",
                    )
                assert reason is not None
                migration.emergency_rollback(reason, by=operator)

            await run_in_threadpool(emergency)
        result = await run_in_threadpool(_migration_dict, migration)
        state.hub.publish("migration", {"plan": migration.plan.name})
        # An emergency rollback during an outage is a kill switch: the store's block
        # says whether it is still pending (its flags in "pending_flags").
        return {**result, "store": await run_in_threadpool(store_status, migration.flags.store)}

    return write


# ------------------------------------------------------------------------ agents


def _parse_where(raw: str) -> tuple[str, str, Any]:
    path, sep1, rest = raw.partition(":")
    op, sep2, text = rest.partition(":")
    if not (sep1 and sep2 and path and op):
        raise ApiError(422, "InvalidCriteria", f"where is PATH:OP:VALUE, not {raw!r}")
    try:
        value = json.loads(text)
    except ValueError:
        value = text  # a bare word is a string
    except RecursionError:
        raise ApiError(
            422, "InvalidCriteria", f"the value of where {bounded_repr(raw)} is nested too deeply"
        ) from None
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


def _agents(request: Request, state: AdminState) -> dict[str, Any]:
    registry = _need_registry(state)
    criteria = [_parse_where(w) for w in request.query_params.getlist("where")]
    search = (request.query_params.get("q") or "").lower()
    limit = _limit(request, 500)
    everyone = registry.list_all()
    chosen = registry.query(criteria) if criteria else everyone
    rows = [entry_dict(e) for e in chosen]
    if search:
        rows = [r for r in rows if _row_matches(r, search)]
    rows.sort(key=lambda r: str(r["key_text"]))
    by_kind: collections.Counter[str] = collections.Counter()
    by_node: collections.Counter[str] = collections.Counter()
    for e in everyone:
        by_kind[_kind(e.agent)] += 1
        by_node[e.node] += 1
    return {
        "agents": rows[:limit],
        "matched": len(rows),
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
                parsed = json.loads(text)
            except (ValueError, RecursionError):  # not JSON, or nested too deeply: no such key
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


# ----------------------------------------------------------------------- misc


async def whoami(request: Request, state: AdminState) -> Any:
    header = request.headers.get("authorization", "")
    operator = None
    if header:
        operator = _authorise(request, state, write=False)
    return {
        "operator": operator,
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


# ---------------------------------------------------------------------------- app


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
