"""The migration routes: show the plan's stage, advance, roll back, emergency rollback."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from foundation.admin._errors import ApiError
from foundation.admin._http import _need_migration, _only, _text
from foundation.admin._state import AdminState
from foundation.admin._status import store_status
from foundation.flags import Migration
from foundation.flags._migration_json import migration_json

__all__ = ["show_migration"]

_MISSING: Any = object()  # (no "confirm" in the body)
_MAX_SHOWN = 80  # characters of a refused "confirm" shown in the 422 message


def _migration_dict(migration: Migration) -> dict[str, Any]:
    return migration_json(migration, history=50, newest_first=True, problems=True)


async def show_migration(request: Request, state: AdminState) -> Any:
    return await run_in_threadpool(_migration_dict, _need_migration(state))


def _check_confirm(confirm: object, stage: int, name: str | None) -> None:
    """422 ``ConfirmationRequired`` unless ``confirm`` names the current stage:
    its number as a JSON integer (``1``) or a string (``"1"``), or its name.

    A boolean is refused (``true`` is no stage number, though Python's ``bool``
    is an ``int``), and so is a number with a fraction part or an exponent
    (``1.0``, ``1e0``: JSON tells them apart from ``1``, as ``"stage"`` of
    ``/api/migration/rollback`` does). The message says what was expected and
    what was received (its JSON type, and its value, bounded)."""
    accepted: set[object] = {str(stage)} | ({name} if name else set())
    if isinstance(confirm, int) and not isinstance(confirm, bool):
        if confirm == stage:
            return
    elif isinstance(confirm, str) and confirm in accepted:  # (a list is unhashable: str first)
        return
    names = " or ".join(json.dumps(n) for n in sorted(map(str, accepted)))
    raise ApiError(
        422,
        "ConfirmationRequired",
        f'an emergency rollback needs "confirm": the current stage, {stage} (a JSON integer)'
        f" or {names} (a string); got {_received(confirm)}",
    )


def _received(value: object) -> str:
    """``value`` as its JSON text (bounded) and JSON type, for an error message."""
    if value is _MISSING:
        return 'nothing (no "confirm")'
    kinds = ((bool, "a boolean"), (int, "an integer"), (str, "a string"), (list, "an array"),
             (float, "a number with a fraction or an exponent"), (dict, "an object"))  # fmt: skip
    kind = next((k for t, k in kinds if isinstance(value, t)), "null")
    text = json.dumps(value, ensure_ascii=True)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return f"{text} ({kind})"


_MIGRATION_FIELDS: Final = {
    "advance": frozenset(("reason",)),
    "rollback": frozenset(("stage", "reason")),
    "emergency": frozenset(("reason", "confirm")),
}
"""The body fields each migration write takes (any other: 422 ``InvalidBody``)."""


def _migration_write(action: str) -> Callable[..., Awaitable[Any]]:
    async def write(
        request: Request, state: AdminState, operator: str, body: dict[str, Any]
    ) -> Any:
        migration = _need_migration(state)
        _only(body, _MIGRATION_FIELDS[action])
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
                _check_confirm(body.get("confirm", _MISSING), status.stage, status.stage_name)
                assert reason is not None
                migration.emergency_rollback(reason, by=operator)

            await run_in_threadpool(emergency)
        result = await run_in_threadpool(_migration_dict, migration)
        state.hub.publish("migration", {"plan": migration.plan.name})
        # An emergency rollback during an outage is a kill switch: the store's block
        # says whether it is still pending (its flags in "pending_flags").
        return {**result, "store": await run_in_threadpool(store_status, migration.flags.store)}

    return write
