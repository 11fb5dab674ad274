"""Who may do what: operator tokens (``parse_tokens``) and each request's authorisation."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from foundation.admin._errors import ApiError
from foundation.errors import InvalidConfig, bounded_repr

if TYPE_CHECKING:
    from starlette.requests import Request

    from foundation.admin._state import AdminState

__all__ = ["Operators", "parse_tokens"]

_JSON = "application/json"

CHALLENGE: Final = 'Bearer realm="foundation"'
"""The ``WWW-Authenticate`` of every 401 (RFC 9110 11.6.1: a 401 MUST carry one):
the one scheme the admin API and OFREP take (RFC 6750)."""


def _unauthorized(message: str, *, invalid_token: bool = False) -> ApiError:
    """A 401 with its challenge; an unknown token adds RFC 6750's ``invalid_token``."""
    challenge = CHALLENGE + (', error="invalid_token"' if invalid_token else "")
    return ApiError(401, "Unauthorized", message, headers={"WWW-Authenticate": challenge})


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

    An empty list or mapping configures no operator, as ``None`` does
    (``configured`` is False).

    Raises:
        InvalidConfig: a blank operator name (it is the ``by`` of the operator's
            writes), a blank secret or one with whitespace at either end (a
            bearer header's is trimmed: no request could send it), a secret
            that is not printable ASCII, an operator name that is not valid
            Unicode, or a secret given twice. The message names the operator (or the token's
            position), never the secret.
    """
    if token is None:
        return Operators()
    seen: set[str] = set()
    out: list[tuple[bytes, str]] = []
    for position, (name, secret) in enumerate(_token_pairs(token), start=1):
        _check_pair(position, name, secret)
        if secret in seen:
            raise InvalidConfig(f"the secret of operator {name!r} is given twice")
        seen.add(secret)
        out.append((secret.encode(), name))
    return Operators(tuple(out))


def _check_pair(position: int, name: str, secret: str) -> None:
    """InvalidConfig naming what is wrong with the ``position``-th token, if anything."""
    if not name.strip():
        raise InvalidConfig(f"token #{position}: the operator name is blank")
    if not secret.strip():
        raise InvalidConfig(
            f"token #{position}: the secret of operator {bounded_repr(name)} is blank"
        )
    if secret != secret.strip():
        raise InvalidConfig(
            f"token #{position}: the secret of operator {bounded_repr(name)} starts or ends with "
            "whitespace (a bearer token is trimmed: no request could send it)"
        )
    if not (secret.isascii() and secret.isprintable()):
        # An HTTP header carries ASCII: a non-ASCII secret (a lone surrogate was a
        # UnicodeEncodeError here) or a control character could never be matched.
        raise InvalidConfig(
            f"token #{position}: the secret of operator {bounded_repr(name)} must be "
            "printable ASCII (an Authorization header carries no other)"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidConfig(
            f"token #{position}: the operator name {bounded_repr(name)} is not valid Unicode"
        ) from None


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


def _authorise(request: Request, state: AdminState, *, write: bool) -> str | None:
    """The operator of this request (None: an anonymous read); ApiError if refused."""
    # A server without tokens cannot check one: a header it is sent grants nothing and
    # refuses nothing, so the answer is the one without it (reads open, writes 403).
    header = request.headers.get("authorization", "") if state.operators.configured else ""
    scheme, _, secret = header.partition(" ")
    operator = None
    if header:
        if scheme.lower() != "bearer":
            raise _unauthorized("send Authorization: Bearer <token>")
        operator = state.operators.operator(secret.strip())
        if operator is None:
            raise _unauthorized("unknown token", invalid_token=True)
    if write:
        _authorise_write(request, state, operator)
    elif operator is None and not state.public_reads:
        # Fail closed: an app without public_reads and without a token (create_app's
        # defaults, token=[] included) answered every read to anyone.
        raise _unauthorized(
            "reads need Authorization: Bearer <token>"
            if state.operators.configured
            else "reads need a token and none is configured (token=..., or public_reads=True)"
        )
    return operator


def _authorise_write(request: Request, state: AdminState, operator: str | None) -> None:
    """ApiError unless this server takes writes and this request may make one."""
    if state.read_only:
        raise ApiError(403, "ReadOnly", "the admin server runs in read-only mode")
    if not state.operators.configured:
        raise ApiError(403, "ReadOnly", "no operator token is configured: writes are off")
    if operator is None:
        raise _unauthorized("a write needs Authorization: Bearer <token>")
    # CSRF: a browser never sends an Authorization header cross-site on its own,
    # and a JSON content type cannot be sent cross-site without a CORS preflight.
    if request.headers.get("content-type", "").split(";")[0].strip() != _JSON:
        raise ApiError(415, "UnsupportedMediaType", "writes take Content-Type: application/json")
