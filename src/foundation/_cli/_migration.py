"""``foundation migration ...``: status, advance, rollback, emergency (of a recorded plan)."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from foundation._cli._common import Output, Settings, UsageError, default_by
from foundation._cli._flags import open_flags, over_redis
from foundation._cli._signals import hold_for_the_write

__all__ = ["add_parser", "migration_from_store", "status_data"]

_LISTED = 20
"""At most this many recorded plan names in a message."""


def _stage(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:100]!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a stage is 0 or more: {text[:100]!r}")
    return value


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    plan = argparse.ArgumentParser(add_help=False)
    plan.add_argument(
        "--plan",
        default=argparse.SUPPRESS,  # given before or after the action: never reset
        metavar="NAME",
        help="the plan (needed when several are recorded)",
    )
    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--by", default=None, help="who (default: the OS user; never blank)")
    p = commands.add_parser("migration", help="the staged migration", parents=[common, plan])
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("status", help="stage, stages, flags and recent steps", parents=[common, plan])
    adv = sub.add_parser("advance", help="to the next stage", parents=[common, plan, writes])
    adv.add_argument("--reason", default=None)
    rb = sub.add_parser("rollback", help="back to stage N", parents=[common, plan, writes])
    rb.add_argument("stage", type=_stage, metavar="N")
    rb.add_argument("--reason", default=None)
    em = sub.add_parser(
        "emergency", help="every plan flag off, stage 0, now", parents=[common, plan, writes]
    )
    em.add_argument("reason", metavar="REASON")


def _names(plans: Any) -> str:
    names = sorted(plans)
    more = f", ... ({len(names)} in all)" if len(names) > _LISTED else ""
    return ", ".join(names[:_LISTED]) + more


def migration_from_store(flags: Any, plan: str | None) -> Any:
    """``Migration.from_store`` with the command line's words: several plans and
    no ``--plan`` is a usage error naming them; an unknown ``--plan`` lists them."""
    from foundation.errors import MigrationError
    from foundation.flags import Migration

    plans = flags.store.plans()
    if plan is None and len(plans) > 1:
        raise UsageError(
            f"several migration plans are recorded ({_names(plans)}): name one with --plan NAME",
            label="MigrationError",
        )
    try:
        return Migration.from_store(flags, plan)
    except MigrationError as exc:
        if plan is None or plan in plans or not plans:
            raise
        # Race: the plans are read again by from_store; a plan recorded meanwhile
        # is not listed here, which only makes the list one plan short.
        raise MigrationError(f"{exc}; the recorded plans: {_names(plans)}") from exc


def status_data(migration: Any) -> dict[str, Any]:
    from foundation.flags._migration_json import migration_json

    return migration_json(migration, history=10, newest_first=False, problems=False)


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _stage_rows(st: dict[str, Any]) -> list[list[Any]]:
    """One table row per stage of a status: number, name, risk, its flags, whether reached."""
    return [
        [
            s["number"],
            s["name"],
            s["risk"],
            ", ".join(f"{f}={'on' if st['flags'][f] else 'off'}" for f in s["flags"]),
            s["number"] <= st["stage"],
        ]
        for s in st["stages"]
    ]


def _emergency(migration: Any, reason: str, by: str) -> Any:
    """``emergency_rollback`` (its event); during an outage, say where a rollback can be kept."""
    from foundation.errors import BackendUnavailable

    try:
        return migration.emergency_rollback(reason, by=by)
    except BackendUnavailable as exc:
        if not over_redis(migration.flags):
            raise  # a SQLite store locked out: nothing to keep, run it again later
        raise BackendUnavailable(
            f"{str(exc).rstrip('.')}. The command line cannot keep an emergency rollback "
            "until Redis returns: use the admin page of a running node (POST "
            "/api/migration/emergency), which applies it there at once and commits it "
            "when Redis returns"
        ) from exc


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    # An emergency rollback from this short-lived command is refused during an
    # outage rather than left waiting in the node copy (see open_flags).
    with open_flags(settings, hold_kill_switches=False) as flags:
        migration = migration_from_store(flags, getattr(args, "plan", None))
        action = args.action
        by = getattr(args, "by", None) or default_by()
        event = None
        if action != "status":
            # From here on a SIGINT or SIGTERM waits for the command's end: the
            # step may commit at any point of the call (see hold_for_the_write).
            hold_for_the_write()
        if action == "advance":
            event = migration.advance(by=by, reason=args.reason)
        elif action == "rollback":
            event = migration.rollback_to(args.stage, by=by, reason=args.reason)
        elif action == "emergency":
            event = _emergency(migration, args.reason, by)
        data = status_data(migration)
        if event is not None:
            # The step this command recorded, as the call returned it: the plan's
            # last event may already be another writer's (the status read after
            # it shows the stage as it is now, that writer's step included).
            data = {"action": action, "event": event.to_dict(), "status": data}

        def text() -> None:
            st = data if action == "status" else data["status"]
            if action != "status":
                ev = data["event"]
                out.line(
                    f"{st['plan']}: {ev['action']} {ev['from_stage']} -> {ev['to_stage']} "
                    f"(by {ev['by']})"
                )
            where = f"stage {st['stage']}/{st['total']}"
            if st["stage_name"]:
                where += f" ({st['stage_name']})"
            out.line(f"migration {st['plan']!r}: {where}")
            if st["skew"]:  # another version of the plan in play (a rolling deploy)
                out.line(f"WARNING: {st['skew']}")
            out.table(["stage", "name", "risk", "flags", "reached"], _stage_rows(st))
            if action == "status" and st["history"]:
                out.line("recent steps:")
                out.table(
                    ["at", "action", "from", "to", "by", "reason"],
                    [
                        [
                            _when(e["at"]),
                            e["action"],
                            e["from_stage"],
                            e["to_stage"],
                            e["by"],
                            e["reason"],
                        ]
                        for e in st["history"]
                    ],
                )
                kept = getattr(migration.flags.store, "history_limit", None)
                if isinstance(kept, int):  # an operator reading an audit trail must know
                    out.line(
                        f"(the store keeps the last {kept:,} steps of all plans, "
                        "history_limit: older ones are trimmed)"
                    )

        out.emit(data, text)
        return 0
