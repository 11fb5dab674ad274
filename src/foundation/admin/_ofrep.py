"""OFREP, the OpenFeature Remote Evaluation Protocol, served by the admin app.

``POST /ofrep/v1/evaluate/flags/{key}`` evaluates one flag and ``POST
/ofrep/v1/evaluate/flags`` every declared flag, for the evaluation context in
the body (``{"context": {"targetingKey": actor, ...}}``). Evaluation is
``FeatureFlags.evaluate(name, actor)`` and nothing else; the other context
attributes are accepted and ignored (Foundation targets actors, not
attributes). ``targetingKey`` follows ``FoundationProvider``: missing or
``""`` is no actor, a 64-bit integer is the actor ``str(n)``.

Mapping (decided from the OFREP OpenAPI document, ``codeDefaultFlag``):

- a flag whose switch is off answers ``{"key", "reason": "DISABLED",
  "variant", "metadata"}`` with **no** ``value``, which tells the provider
  to use the caller's code default (as ``FoundationProvider`` does in
  process); ``variant`` is the off variant (``"off"``, or the default
  variant), as ``FoundationProvider`` reports it;
- every other answer carries ``value``, ``variant`` and the reason
  ``STATIC``, ``TARGETING_MATCH``, ``SPLIT`` or ``DEFAULT`` of the evaluation;
- ``metadata`` is ``FoundationProvider``'s ``flag_metadata``: ``description``
  (when the flag has one) and, for a flag of a migration plan recorded in the
  store (every plan, not only a served migration's; read when the app is
  created, as the provider reads them when initialized, and again off the
  request path after the flags change and when a Redis store is back in sync,
  by the provider's helper, ``foundation.flags._plans``; the served
  migration's plan even when the store could not record or return it),
  ``migration_plan``, ``migration_stage`` and ``migration_stage_name``.

Errors: 404 ``FLAG_NOT_FOUND`` (every key, on a server without flags, whose
bulk answer is then ``{"flags": []}``); 400 ``PARSE_ERROR`` (no body, or one
that is not a JSON object; ``NaN`` and ``Infinity`` are no JSON) or
``INVALID_CONTEXT`` (``context`` present but not an object, ``null``
included; ``targetingKey`` neither a string nor a 64-bit integer, an actor
the flags refuse); ``{}`` is an empty context; 413 ``GENERAL`` in the 400 shape (a body
over ``MAX_BODY_BYTES``, 1 MiB, refused before it is read: the admin API's
one body reader, ``read_body``); 401 with ``{"errorDetails"}`` and
``WWW-Authenticate: Bearer realm="foundation"`` for a missing or unknown token
where one is needed (the admin API's read rule); 500 ``{"errorDetails"}``
when the flags are closed or failed (any unexpected error included). Every
answer is ASCII JSON (``render_json``), so any stored string renders. The
bulk answer carries a strong ``ETag`` (a digest of the body, so it changes
exactly when this context's answer does) and ``If-None-Match`` answers 304.
Every flag of a bulk answer is evaluated from one committed state of the flags
(``FeatureFlags._snapshot``): a reload mid-answer never shows half of a change
made in one transaction (a migration step), so the body, and its ETag, name a
state the store held.

Example:
    >>> [route.path for route in ofrep_routes()]
    ['/ofrep/v1/evaluate/flags', '/ofrep/v1/evaluate/flags/{key:path}']
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from foundation import _json_input as json_input
from foundation.admin._auth import _authorise
from foundation.admin._errors import ApiError
from foundation.admin._http import JSONAnswer, read_body
from foundation.admin._json import render_json
from foundation.admin._state import AdminState
from foundation.errors import FoundationError, InvalidFlagValue, UnknownFlag
from foundation.flags import Evaluation, FeatureFlags
from foundation.flags._metadata import MetadataValue, flag_metadata

__all__ = ["ofrep_routes"]

log = logging.getLogger("foundation.admin")

PREFIX = "/ofrep/v1/evaluate/flags"


class _Failure(Exception):
    """An OFREP error answer: ``status``, the JSON body and any headers (a 401's)."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(body.get("errorDetails", ""))
        self.status = status
        self.body = body
        self.headers = headers

    def response(self) -> JSONAnswer:
        return JSONAnswer(self.body, status_code=self.status, headers=self.headers)


def _flag_failure(key: str, code: str, details: str, status: int) -> _Failure:
    return _Failure(status, {"key": key, "errorCode": code, "errorDetails": details})


def _general(status: int, details: str) -> _Failure:
    return _Failure(status, {"errorDetails": details})


# ----------------------------------------------------------------------- request


def _flags_of(request: Request) -> tuple[FeatureFlags | None, AdminState]:
    """(flags, admin state) after the admin API's read authorisation.

    No flags (a server without a ``FeatureFlags``) is None: every key is then
    ``FLAG_NOT_FOUND`` and the bulk answer is empty, the shapes OFREP defines
    (its bulk endpoint has no 404).
    """
    state: AdminState = request.app.state.admin
    try:
        _authorise(request, state, write=False)
    except ApiError as exc:  # 401 (no/unknown token); reads are never 403
        # Its WWW-Authenticate challenge goes with it (RFC 9110: every 401 has one).
        raise _Failure(exc.status, {"errorDetails": exc.message}, exc.headers) from None
    return state.flags, state


async def _actor(request: Request, key: str | None) -> str | None:
    """The ``targetingKey`` of the body's context (None: no actor).

    One rule with ``FoundationProvider``: a missing or empty key is no actor, a
    64-bit int is the actor ``str(int)``, anything else is ``INVALID_CONTEXT``.
    """

    def bad(code: str, details: str, status: int = 400) -> _Failure:
        if key is None:  # bulk: a failure of the whole request
            return _Failure(status, {"errorCode": code, "errorDetails": details})
        return _flag_failure(key, code, details, status)

    try:
        raw = await read_body(request)
    except ApiError as exc:  # 413 BodyTooLarge; 400 ClientDisconnect (no one reads it)
        # GENERAL: the body was not parsed, so it is no PARSE_ERROR (the one
        # other code the protocol's evaluationFailure allows that is not about
        # the context); OFREP's document has no 413, its 400 shape is kept.
        raise bad("GENERAL", exc.message, exc.status) from None
    if not raw.strip():  # the document requires the body (evaluationRequest)
        raise bad("PARSE_ERROR", 'the body is required: a JSON object {"context": {...}}')
    try:
        body = json_input.loads(raw)
    except json_input.TooDeep:
        raise bad("PARSE_ERROR", "the body is nested too deeply") from None
    except ValueError:
        raise bad("PARSE_ERROR", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad("PARSE_ERROR", 'the body is a JSON object: {"context": {...}}')
    # A missing "context" is an empty one (the Python OFREP client sends {} for no
    # evaluation context); one present is an object: null is INVALID_CONTEXT.
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise bad("INVALID_CONTEXT", f"'context' is a JSON object, not {_json_type(context)}")
    return _targeting_key(context, bad)


def _json_type(value: object) -> str:
    """The JSON type of a decoded value, for a message (``null``, ``a string``...)."""
    kinds = ((bool, "a boolean"), (str, "a string"), (int | float, "a number"), (list, "an array"))
    return next((k for t, k in kinds if isinstance(value, t)), "null")


def _targeting_key(context: dict[str, Any], bad: Callable[[str, str], _Failure]) -> str | None:
    """The actor named by a context's ``targetingKey``; ``bad(...)`` raised if it cannot be one."""
    actor = context.get("targetingKey")
    if actor is None or actor == "":
        return None  # as FoundationProvider (and the SDK's merge): empty is unset
    if isinstance(actor, str):
        return actor
    if isinstance(actor, int) and not isinstance(actor, bool) and -(2**63) <= actor < 2**63:
        return str(actor)  # as FoundationProvider and FeatureFlags.evaluate normalise it
    raise bad(
        "INVALID_CONTEXT",
        f"'targetingKey' is a string (or a 64-bit integer), not {type(actor).__name__}",
    )


# ------------------------------------------------------------------- evaluation


def _metadata(
    flags: FeatureFlags, stages: Mapping[str, Mapping[str, MetadataValue]], name: str
) -> Mapping[str, Any]:
    # One rule and one source with FoundationProvider (foundation.flags._metadata,
    # foundation.flags._plans): the plans recorded in the store, read when the app
    # was created and again after the flags change or a Redis store is back in
    # sync, and the served migration's plan. ``stages``: AdminState.plan_stages,
    # read once by the caller (swapped whole, never changed).
    return flag_metadata(flags.flag(name), stages)


class _Evaluates(Protocol):
    """What answers a flag: ``FeatureFlags``, or one snapshot of it (bulk)."""

    def evaluate(self, name: str, actor: str | None = None) -> Evaluation: ...


def _evaluate(
    flags: FeatureFlags,
    reader: _Evaluates,
    stages: Mapping[str, Mapping[str, MetadataValue]],
    name: str,
    actor: str | None,
) -> dict[str, Any]:
    """One flag's OFREP success body, answered by ``reader`` (``flags``, or one
    snapshot of it); UnknownFlag / InvalidFlagValue / FoundationError pass."""
    evaluation = reader.evaluate(name, actor)
    out: dict[str, Any] = {
        "key": name,
        "reason": evaluation.reason,
        "variant": evaluation.variant,
        "metadata": dict(_metadata(flags, stages, name)),
    }
    if evaluation.reason != "DISABLED":
        # DISABLED omits the value (OFREP's codeDefaultFlag): the caller's default
        # applies, as with FoundationProvider in process. The variant stays (the
        # off variant): OFREP clients require the field.
        out["value"] = evaluation.value
    return out


def _json(payload: Any) -> bytes:
    # The admin's one rendering: ASCII, so any string (a lone surrogate in a
    # description too) renders. Object values are read-only mappings that still
    # serialise; NaN never occurs (typed flags refuse it): allow_nan=False guards.
    return render_json(payload)


async def evaluate_flag(request: Request) -> Response:
    key = request.path_params["key"]
    try:
        flags, state = _flags_of(request)
        actor = await _actor(request, key)
        if flags is None:
            raise _flag_failure(key, "FLAG_NOT_FOUND", "this server has no flags", 404)
        try:
            body = _evaluate(flags, flags, state.plan_stages, key, actor)
        except UnknownFlag as exc:
            raise _flag_failure(key, "FLAG_NOT_FOUND", str(exc), 404) from None
        except InvalidFlagValue as exc:
            raise _flag_failure(key, "INVALID_CONTEXT", str(exc), 400) from None
        # Rendered inside the try: a failure to render is the documented JSON 500.
        return Response(_json(body), media_type="application/json")
    except _Failure as failure:
        return failure.response()
    except FoundationError as exc:  # Closed, BackendUnavailable
        return _general(500, f"{type(exc).__name__}: {exc}").response()
    except Exception:
        log.exception("admin: OFREP evaluation of %r failed", key)
        return _general(500, "internal error (logged by the server)").response()


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _matches(header: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: a list of (weak or strong) tags, or ``*``; weak comparison."""
    wanted = etag.removeprefix("W/")
    for item in header.split(","):
        tag = item.strip()
        if tag == "*" or tag.removeprefix("W/") == wanted:
            return True
    return False


def _evaluate_every(
    flags: FeatureFlags, state: AdminState, actor: str | None
) -> list[dict[str, Any]]:
    """The bulk answer's ``flags``: every declared flag for ``actor``, all from one
    committed state of the flags."""
    results: list[dict[str, Any]] = []
    # Race: a reload (another process's migration step, a write of another request)
    # may swap the flags' tables mid-loop. Evaluated one by one, the answer could
    # show some flags before it and some after: half a step that switched several
    # flags in one transaction, a state never committed, which a polling client
    # keeps (its ETag valid) until its next poll. So every flag is answered from
    # one snapshot of the tables (read once, here), and the plans' metadata from one
    # read. The ETag is a digest of exactly this body, so it names this one state.
    snapshot = flags._snapshot()
    stages = state.plan_stages
    for name in flags.names:
        try:
            results.append(_evaluate(flags, snapshot, stages, name, actor))
        except InvalidFlagValue as exc:  # the actor: every flag would refuse it
            raise _Failure(
                400, {"errorCode": "INVALID_CONTEXT", "errorDetails": str(exc)}
            ) from None
        except UnknownFlag as exc:  # not declared any more (cannot happen today)
            results.append({"key": name, "errorCode": "FLAG_NOT_FOUND", "errorDetails": str(exc)})
    return results


async def evaluate_all(request: Request) -> Response:
    try:
        flags, state = _flags_of(request)
        actor = await _actor(request, None)
        results = [] if flags is None else _evaluate_every(flags, state, actor)
        body = _json({"flags": results})  # inside the try: a failure is the JSON 500
    except _Failure as failure:
        return failure.response()
    except FoundationError as exc:  # Closed, BackendUnavailable
        return _general(500, f"{type(exc).__name__}: {exc}").response()
    except Exception:
        log.exception("admin: OFREP bulk evaluation failed")
        return _general(500, "internal error (logged by the server)").response()
    etag = _etag(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match", ""), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def ofrep_routes() -> list[Route]:
    """The two OFREP evaluation routes (``POST`` only)."""
    return [
        Route(PREFIX, evaluate_all, methods=["POST"]),
        Route(PREFIX + "/{key:path}", evaluate_flag, methods=["POST"]),
    ]
