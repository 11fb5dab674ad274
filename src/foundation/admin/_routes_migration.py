"""The migration routes: show the plan's stage, advance, roll back, emergency rollback."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from foundation.admin._errors import ApiError
from foundation.admin._http import _need_migration, _text
from foundation.admin._state import AdminState
from foundation.admin._status import store_status
from foundation.flags import Migration
from foundation.flags._migration_json import migration_json

__all__ = ["show_migration"]


def _migration_dict(migration: Migration) -> dict[str, Any]:
    return migration_json(migration, history=50, newest_first=True, problems=True)


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
