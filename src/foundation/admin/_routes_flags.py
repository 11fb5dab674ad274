"""The flag routes: list, show, evaluate and write flags, and the audit history."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from foundation.admin._errors import ApiError
from foundation.admin._http import _limit, _need_flags, _only, _text
from foundation.admin._json import _change_dict, _jsonable
from foundation.admin._state import AdminState
from foundation.admin._status import FlagSync, flag_sync, store_status
from foundation.flags import FeatureFlags, FlagState
from foundation.flags._flags import _Snapshot
from foundation.flags._hashing import bucket

__all__ = ["evaluate_flag", "history", "history_retention", "list_flags", "show_flag"]


def _flag_dict(flags: FeatureFlags, name: str, snapshot: _Snapshot | None = None) -> dict[str, Any]:
    """A flag for the API: declaration, state and its answer without an actor.

    Both kinds carry ``kind``, ``variants`` and ``default_variant`` (None for a
    boolean flag), ``value`` and ``variant``; a boolean flag also ``enabled``, a
    typed one ``assign`` (actor -> variant) and ``split`` (variant -> percent, or None).
    State and answer come from ``snapshot`` (the list's one), else from a new one.
    """
    declared = flags.flag(name)
    # Race: state and answer were two lock-free reads, and a write between them
    # showed a state with another state's answer: both come from one snapshot.
    snapshot = flags._snapshot() if snapshot is None else snapshot
    state = snapshot.state(name)
    evaluation = snapshot.evaluate(name)
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
    # Race: flag by flag, a reload mid-list (another process's migration step)
    # could show half of a change made in one transaction: one snapshot for all.
    snapshot = flags._snapshot()
    return {"flags": [_flag_dict(flags, n, snapshot) for n in flags.names], "store": store}


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


_FLAG_FIELDS: Final = {
    action: frozenset(("reason", *extra))
    for action, extra in (
        ("enable", ()),
        ("disable", ("confirm",)),
        ("clear", ()),
        ("percentage", ("percentage",)),
        ("assign", ("actor", "variant")),
        ("split", ("split",)),
        ("allow", ("actor",)),
        ("deny", ("actor",)),
    )
}
"""The body fields each flag write takes (any other: 422 ``InvalidBody``)."""

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
        _only(body, _FLAG_FIELDS[action])
        reason = _text(body, "reason")
        call = _FLAG_CALLS[action](flags, name, body, operator, reason)
        await run_in_threadpool(call)
        # The store's word on this write: "pending" (a kill switch kept through an
        # outage, not yet in Redis: other nodes still serve the old state),
        # "committed", or "stale" (committed, but this node reads its node copy).
        return await run_in_threadpool(_written_flag, flags, name)

    return write
