"""``foundation flags ...``: list, show, history, eval and the audited writes."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from foundation._cli._common import Output, Settings, default_by

__all__ = ["add_parser", "flag_row", "open_flags"]

WRITES = ("enable", "disable", "clear", "percentage", "allow", "deny")


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("flags", help="feature flags in a store", parents=[common])
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="every declared flag and its state", parents=[common])
    show = sub.add_parser(
        "show", help="one flag: declaration, state, recent changes", parents=[common]
    )
    show.add_argument("name")
    hist = sub.add_parser("history", help="audited changes, oldest first", parents=[common])
    hist.add_argument("name", nargs="?")
    hist.add_argument("--limit", type=_positive_int, default=None, help="the last N changes")
    ev = sub.add_parser("eval", help="what does an actor get?", parents=[common])
    ev.add_argument("name")
    ev.add_argument("--actor", default=None)

    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--by", default=None, help="who (default: the OS user)")
    writes.add_argument("--reason", default=None, help="why (kept in the history)")
    for action, text in (
        ("enable", "switch on (rollout and actor sets are kept)"),
        ("disable", "switch off: the kill switch"),
        ("clear", "drop the runtime state (the declared default applies)"),
    ):
        w = sub.add_parser(action, help=text, parents=[common, writes])
        w.add_argument("name")
    pct = sub.add_parser("percentage", help="roll out to P%% of actors", parents=[common, writes])
    pct.add_argument("name")
    pct.add_argument("percentage", type=_percentage, metavar="P")
    for action, text in (("allow", "always on for ACTOR"), ("deny", "always off for ACTOR")):
        w = sub.add_parser(action, help=text, parents=[common, writes])
        w.add_argument("name")
        w.add_argument("actor")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def _percentage(text: str) -> float:
    try:
        return float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None


@contextmanager
def open_flags(settings: Settings) -> Iterator[Any]:
    """A ``FeatureFlags`` over the configured store's catalogue; both closed after."""
    from foundation.flags import FeatureFlags, open_store

    store = open_store(settings.need_store())
    try:
        flags = FeatureFlags.from_store(store)
        try:
            yield flags
        finally:
            flags.close()
    finally:
        store.close()


def flag_row(flags: Any, name: str, runtime: dict[str, Any]) -> dict[str, Any]:
    """One flag as JSON: declaration, effective state, where the state comes from."""
    decl = flags.flag(name)
    return {
        "name": name,
        "default": decl.default,
        "description": decl.description,
        "source": "runtime" if name in runtime else "default",
        "enabled": flags.enabled(name),
        **flags.state(name).to_dict(),
    }


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(state: dict[str, Any]) -> str:
    parts = ["on" if state["switch"] else "off"]
    if state["percentage"] is not None:
        parts.append(f"{state['percentage']:g}%")
    if state["allow"]:
        parts.append("allow=" + ",".join(state["allow"]))
    if state["deny"]:
        parts.append("deny=" + ",".join(state["deny"]))
    return " ".join(parts)


def _change_rows(changes: list[Any]) -> list[list[Any]]:
    return [
        [_when(c.at), c.flag, _summary(c.old.to_dict()), _summary(c.new.to_dict()), c.by, c.reason]
        for c in changes
    ]


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    with open_flags(settings) as flags:
        action = args.action
        if action in WRITES:
            return _write(flags, args, out)
        if action == "list":
            runtime = flags.store.load_states()
            rows = [flag_row(flags, n, runtime) for n in flags.names]

            def text() -> None:
                if not rows:
                    out.line("no flags recorded in this store (no application declared any yet)")
                    return
                out.table(
                    ["flag", "state", "source", "default", "description"],
                    [
                        [r["name"], _summary(r), r["source"], r["default"], r["description"]]
                        for r in rows
                    ],
                )

            out.emit(rows, text)
        elif action == "show":
            runtime = flags.store.load_states()
            row = flag_row(flags, args.name, runtime)
            recent = flags.history(args.name)[-5:]
            data = {**row, "recent_changes": [c.to_dict() for c in recent]}

            def text() -> None:
                out.line(f"{row['name']}: {_summary(row)} ({row['source']})")
                out.line(f"  default: {'on' if row['default'] else 'off'}")
                if row["description"]:
                    out.line(f"  description: {row['description']}")
                if recent:
                    out.line("  recent changes:")
                    out.table(["at", "flag", "from", "to", "by", "reason"], _change_rows(recent))

            out.emit(data, text)
        elif action == "history":
            changes = flags.history(args.name)
            if args.limit is not None:
                changes = changes[-args.limit :]
            out.emit(
                [c.to_dict() for c in changes],
                lambda: (
                    out.table(["at", "flag", "from", "to", "by", "reason"], _change_rows(changes))
                    if changes
                    else out.line("no changes recorded")
                ),
            )
        elif action == "eval":
            enabled = flags.enabled(args.name, args.actor)
            data = {"flag": args.name, "actor": args.actor, "enabled": enabled}
            who = "without an actor" if args.actor is None else f"for {args.actor!r}"
            out.emit(data, lambda: out.line(f"{args.name} {who}: {'on' if enabled else 'off'}"))
        return 0


def _write(flags: Any, args: argparse.Namespace, out: Output) -> int:
    by = args.by if args.by is not None else default_by()
    reason = args.reason
    name = args.name
    ops: dict[str, Callable[[], None]] = {
        "enable": lambda: flags.enable(name, by=by, reason=reason),
        "disable": lambda: flags.disable(name, by=by, reason=reason),
        "clear": lambda: flags.clear(name, by=by, reason=reason),
        "percentage": lambda: flags.set_percentage(name, args.percentage, by=by, reason=reason),
        "allow": lambda: flags.allow(name, args.actor, by=by, reason=reason),
        "deny": lambda: flags.deny(name, args.actor, by=by, reason=reason),
    }
    flags.flag(name)  # UnknownFlag (with the nearest name) before anything else
    changes: list[Any] = []
    # Listeners hear the changes made through this FeatureFlags, in the writing thread.
    unsubscribe = flags.subscribe(lambda c: changes.append(c) if c.flag == name else None)
    try:
        ops[args.action]()
    finally:
        unsubscribe()
    mine = [c for c in changes if c.by == by]
    change = mine[-1] if mine else None
    state = flags.state(name).to_dict()
    data = {
        "flag": name,
        "action": args.action,
        "changed": change is not None,
        "change": None if change is None else change.to_dict(),
        "state": state,
    }

    def text() -> None:
        if change is None:
            out.line(f"{name}: unchanged ({_summary(state)})")
        else:
            out.line(
                f"{name}: {_summary(change.old.to_dict())} -> {_summary(state)} (by {by}"
                + (f": {reason})" if reason else ")")
            )

    out.emit(data, text)
    return 0
