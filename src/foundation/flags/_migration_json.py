"""A migration's status as JSON-ready data: the one shape the admin API and the CLI print."""

from __future__ import annotations

from typing import Any

from foundation.flags._migration import Migration

__all__ = ["migration_json"]


def migration_json(
    migration: Migration, *, history: int, newest_first: bool, problems: bool
) -> dict[str, Any]:
    """The plan, its stage, every stage's flags, any skew (``MigrationStatus.skew``:
    another version of the plan in play, else None), and the last ``history`` steps.

    ``newest_first`` orders the steps for a page (the admin API); a terminal
    reads them oldest first (the CLI). ``problems`` adds
    :meth:`Migration.problems` (one more read of the store).
    """
    status = migration.status()
    steps = [e.to_dict() for e in migration.history()[-history:]]
    if newest_first:
        steps.reverse()
    data: dict[str, Any] = {
        "plan": status.plan,
        "stage": status.stage,
        "stage_name": status.stage_name,
        "total": status.total,
        "stages": [
            {"number": s.number, "name": s.name, "flags": list(s.flags), "risk": s.risk}
            for s in migration.plan.stages
        ],
        "flags": dict(status.flags),
        "skew": status.skew,
    }
    if problems:
        data["problems"] = migration.problems()
    data["history"] = steps
    return data
