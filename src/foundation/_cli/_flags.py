"""``foundation flags ...``: list, show, history, eval, value and the audited writes.

Boolean flags take ``percentage``/``allow``/``eval``; typed flags (string,
integer, float, object variants) take ``split``/``assign``/``unassign``;
``enable``/``disable``/``clear``/``deny``/``value`` take both. A command for the
other kind exits 2 with one line naming the command to use instead.

During a Redis outage, on a machine holding a service's node copy (see
``open_store``), reads answer from that copy and say so on stderr; writes fail
(``BackendUnavailable``), ``disable`` with where to pull the kill switch instead.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from foundation._cli._common import Output, Settings, UsageError, default_by
from foundation._cli._signals import hold_for_the_write
from foundation.errors import BackendUnavailable, InvalidFlagValue

__all__ = [
    "add_parser",
    "change_dict",
    "flag_row",
    "open_flags",
    "state_dict",
]

WRITES = (
    "enable",
    "disable",
    "clear",
    "percentage",
    "allow",
    "deny",
    "split",
    "assign",
    "unassign",
)
HISTORY_DEFAULT_LIMIT = 100
"""``flags history`` without ``--limit``: the last 100 records, as ``GET /api/history``."""
BOOLEAN_ONLY = ("percentage", "allow", "eval")
TYPED_ONLY = ("split", "assign", "unassign")


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
    hist.add_argument(
        "--limit",
        type=_positive_int,
        default=HISTORY_DEFAULT_LIMIT,
        metavar="N",
        help=f"the last N changes (default {HISTORY_DEFAULT_LIMIT}, as the admin API's; "
        "the output says how many more are recorded)",
    )
    ev = sub.add_parser("eval", help="on or off for an actor? (boolean flags)", parents=[common])
    ev.add_argument("name")
    ev.add_argument("--actor", default=None, type=_read_actor)
    val = sub.add_parser(
        "value", help="what does an actor get: value, variant, reason", parents=[common]
    )
    val.add_argument("name")
    val.add_argument("--actor", default=None, type=_read_actor)

    writes = argparse.ArgumentParser(add_help=False)
    writes.add_argument("--by", default=None, help="who (default: the OS user; never blank)")
    writes.add_argument("--reason", default=None, help="why (kept in the history)")
    for action, text in (
        ("enable", "switch on (rollout and actor sets are kept)"),
        ("disable", "switch off: the kill switch"),
        ("clear", "drop the runtime state (the declared default applies)"),
    ):
        w = sub.add_parser(action, help=text, parents=[common, writes])
        w.add_argument("name")
    pct = sub.add_parser(
        "percentage", help="roll out to P%% of actors (boolean flags)", parents=[common, writes]
    )
    pct.add_argument("name")
    pct.add_argument("percentage", type=_percentage, metavar="P")
    for action, text in (
        ("allow", "always on for ACTOR (boolean flags)"),
        ("deny", "always off (typed: the default variant) for ACTOR"),
    ):
        w = sub.add_parser(action, help=text, parents=[common, writes])
        w.add_argument("name")
        w.add_argument("actor", type=_actor)
    split = sub.add_parser(
        "split",
        help="split actors across variants, e.g. red=50 blue=50 (typed flags; switch on)",
        parents=[common, writes],
    )
    split.add_argument("name")
    split.add_argument("shares", nargs="+", type=_share, metavar="VARIANT=SHARE")
    asg = sub.add_parser(
        "assign", help="ACTOR always gets VARIANT (typed flags)", parents=[common, writes]
    )
    asg.add_argument("name")
    asg.add_argument("actor", type=_actor)
    asg.add_argument("variant")
    un = sub.add_parser(
        "unassign", help="drop ACTOR's variant assignment (typed flags)", parents=[common, writes]
    )
    un.add_argument("name")
    un.add_argument("actor")


def _actor(text: str) -> str:
    # An empty actor is "no actor" to every read (the admin API refuses it too):
    # an allow, deny or assignment for it could never apply.
    if not text:
        raise argparse.ArgumentTypeError("an actor is a non-empty string")
    return text


def _read_actor(text: str) -> str | None:
    # --actor "" is "no actor", as the admin API's ?actor= and OFREP's empty
    # targetingKey: an empty actor is "no actor" to every read (see _actor).
    return text or None


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


def _share(text: str) -> tuple[str, float]:
    variant, eq, share = text.rpartition("=")  # the last "=": a variant name may hold one
    if not eq or not variant:
        raise argparse.ArgumentTypeError(f"not VARIANT=SHARE: {text!r}")
    try:
        return variant, float(share.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share in percent: {text!r}") from None


@contextmanager
def open_flags(settings: Settings, *, hold_kill_switches: bool = True) -> Iterator[Any]:
    """A ``FeatureFlags`` over the configured store's catalogue; both closed after.

    A short-lived command passes ``hold_kill_switches=False``: during an outage
    its kill switch is refused (``BackendUnavailable``) rather than kept in the
    node copy, since the command would be gone before Redis returns, and the
    running service sharing the copy does not apply a switch-off another process
    recorded (its readers reload only when its own store tells them). A
    long-running ``foundation admin`` keeps the default: it commits its own.
    """
    from foundation.flags import FeatureFlags, open_store

    store = open_store(settings.need_store(), hold_kill_switches=hold_kill_switches)
    try:
        _warn_if_stale(store)
        flags = FeatureFlags.from_store(store)
        try:
            yield flags
        finally:
            flags.close()
    finally:
        store.close()


def over_redis(flags: Any) -> bool:
    """Whether ``flags`` is over a ``RedisFlagStore``: only there can a running
    node keep a kill switch through an outage (a SQLite store's lock has no
    outage to wait out, so the advice to use the admin page would be wrong)."""
    from foundation.flags import RedisFlagStore

    return isinstance(flags.store, RedisFlagStore)


def _warn_if_stale(store: Any) -> None:
    """One stderr line when ``store`` is stale: it answers from its node copy
    (Redis unreachable at start), or from what it read before it lost Redis
    (no node copy on this machine: its change feed failed just after the read)."""
    if not getattr(store, "stale", False):
        return
    report = store.status()
    if report.cache_path is not None:
        where = f"Redis unreachable; answers come from this machine's node copy {report.cache_path}"
    else:
        where = "the flag store lost Redis just after reading it; answers come from what it read"
    print(
        f"warning: {where} at version {report.version} (stale: changes made elsewhere "
        f"since may be missing): {report.last_error}",
        file=sys.stderr,
        flush=True,
    )


def state_dict(state: Any) -> dict[str, Any]:
    """A ``FlagState`` as JSON with every key present (``split`` None, ``assign`` {}
    when unset: the store's form leaves them out)."""
    data: dict[str, Any] = state.to_dict()
    data.setdefault("split", None)
    data.setdefault("assign", {})
    return data


def change_dict(change: Any) -> dict[str, Any]:
    """A ``FlagChange`` as JSON, its ``old``/``new`` with every key (as ``state_dict``),
    and ``no_op`` (``FlagChange.no_op``: only the runtime state was set or cleared)."""
    data: dict[str, Any] = change.to_dict()
    data["old"] = state_dict(change.old)
    data["new"] = state_dict(change.new)
    data["no_op"] = change.no_op
    return data


def flag_row(
    flags: Any, name: str, runtime: dict[str, Any], snapshot: Any = None
) -> dict[str, Any]:
    """One flag as JSON: declaration, effective state, where the state comes from,
    and what it evaluates to without an actor (``enabled`` is None for typed flags).
    State and answer come from ``snapshot`` (``flags._snapshot()``), else a new one."""
    decl = flags.flag(name)
    typed = decl.kind != "boolean"
    # Race: another process's write reloads the flags meanwhile; read apart, state and
    # answer (and a list's flags) could come from two states: one snapshot for all.
    snapshot = flags._snapshot() if snapshot is None else snapshot
    answer = snapshot.evaluate(name)
    return {
        "name": name,
        "kind": decl.kind,
        "default": decl.default,
        "variants": dict(decl.variants) if typed else None,
        "description": decl.description,
        "source": "runtime" if name in runtime else "default",
        "enabled": None if typed else answer.value,  # a boolean's value is enabled()
        "value": answer.value,
        "variant": answer.variant,
        "reason": answer.reason,
        **state_dict(snapshot.state(name)),
    }


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _summary(state: dict[str, Any]) -> str:
    parts = ["on" if state["switch"] else "off"]
    if state.get("percentage") is not None:
        parts.append(f"{state['percentage']:g}%")
    if state.get("split"):
        parts.append("split " + ",".join(f"{v}={p:g}" for v, p in state["split"].items()))
    if state.get("assign"):
        parts.append("assign=" + ",".join(f"{a}:{v}" for a, v in sorted(state["assign"].items())))
    if state.get("allow"):
        parts.append("allow=" + ",".join(state["allow"]))
    if state.get("deny"):
        parts.append("deny=" + ",".join(state["deny"]))
    return " ".join(parts)


def _shown(value: Any, width: int = 0) -> str:
    """A value for a person: JSON (strings quoted), cut to ``width`` when given."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if width and len(text) > width:
        text = text[: width - 3] + "..."
    return text


def _check_kind(flags: Any, name: str, action: str) -> None:
    """UnknownFlag first (with the nearest name), then UsageError for the wrong kind."""
    decl = flags.flag(name)
    kind = decl.kind
    if kind != "boolean" and action in BOOLEAN_ONLY:
        instead = {
            "percentage": f"split its actors with 'foundation flags split {name} VARIANT=SHARE...'",
            "allow": f"give ACTOR a variant with 'foundation flags assign {name} ACTOR VARIANT'",
            "eval": f"read it with 'foundation flags value {name}'",
        }[action]
        article = "an" if kind[0] in "aeiou" else "a"
        raise UsageError(
            f"{name!r} is {article} {kind} flag: {instead} ({action} is for boolean flags)",
            label="InvalidFlagValue",
        )
    if kind == "boolean" and action in TYPED_ONLY:
        instead = (
            f"roll it out with 'foundation flags percentage {name} P'"
            if action == "split"
            else f"use 'foundation flags allow|deny {name} ACTOR'"
        )
        raise UsageError(
            f"{name!r} is a boolean flag: {instead} ({action} is for typed flags)",
            label="InvalidFlagValue",
        )


def _change_rows(changes: list[Any]) -> list[list[Any]]:
    return [
        [
            _when(c.at),
            c.flag,
            _summary(c.old.to_dict()),
            _summary(c.new.to_dict()) + (" (no-op)" if c.no_op else ""),
            c.by,
            c.reason,
        ]
        for c in changes
    ]


def _list_flags(flags: Any, args: argparse.Namespace, out: Output) -> None:
    """Print every declared flag with its state and value."""
    runtime = flags.store.load_states()  # for "source" only: a read of its own
    snapshot = flags._snapshot()
    rows = [flag_row(flags, n, runtime, snapshot) for n in flags.names]

    def text() -> None:
        if not rows:
            out.line("no flags recorded in this store (no application declared any yet)")
            return
        out.table(
            ["flag", "kind", "state", "value", "source", "default", "description"],
            [
                [
                    r["name"],
                    r["kind"],
                    _summary(r),
                    _value_cell(r),
                    r["source"],
                    r["default"],
                    r["description"],
                ]
                for r in rows
            ],
        )

    out.emit(rows, text)


def _show_flag(flags: Any, args: argparse.Namespace, out: Output) -> None:
    """Print one flag: its state, value, variants and recent changes."""
    runtime = flags.store.load_states()
    row = flag_row(flags, args.name, runtime)
    recent = flags.history(args.name)[-5:]
    data = {**row, "recent_changes": [change_dict(c) for c in recent]}

    def text() -> None:
        out.line(f"{row['name']}: {_summary(row)} ({row['source']})")
        if row["kind"] == "boolean":
            out.line(f"  default: {'on' if row['default'] else 'off'}")
        else:
            out.line(f"  kind: {row['kind']}")
            out.line(
                "  variants: "
                + ", ".join(
                    f"{v}={_shown(x, 60)}" + (" (default)" if v == row["default"] else "")
                    for v, x in row["variants"].items()
                )
            )
        out.line(f"  value: {_shown(row['value'], 60)} (variant {row['variant']}, {row['reason']})")
        if row["description"]:
            out.line(f"  description: {row['description']}")
        if recent:
            out.line("  recent changes:")
            out.table(["at", "flag", "from", "to", "by", "reason"], _change_rows(recent))

    out.emit(data, text)


def _flag_history(flags: Any, args: argparse.Namespace, out: Output) -> None:
    """Print the last ``--limit`` (default 100) recorded changes, oldest first, and
    how many earlier ones the store holds (``more``: text on stderr, a JSON field)."""
    recorded = flags.history(args.name)
    changes = recorded[-args.limit :]
    more = len(recorded) - len(changes)
    kept = getattr(flags.store, "history_limit", None)
    data = {
        "changes": [change_dict(c) for c in changes],
        "more": more,
        "history_limit": kept if isinstance(kept, int) else None,
    }

    def text() -> None:
        if changes:
            out.table(["at", "flag", "from", "to", "by", "reason"], _change_rows(changes))
        else:
            out.line("no changes recorded")
        if kept is not None:  # an operator reading an audit trail must know it is bounded
            out.line(
                f"(the store keeps the last {kept:,} records of all flags, history_limit: "
                "older ones are trimmed)"
            )
        if more:  # on stderr: stdout stays the table
            print(
                f"... {more:,} earlier change{'s' if more != 1 else ''} not shown: "
                f"--limit {len(recorded)} to see {'them' if more != 1 else 'it'}",
                file=sys.stderr,
                flush=True,
            )

    out.emit(data, text)


def _eval_flag(flags: Any, args: argparse.Namespace, out: Output) -> None:
    """Print whether a boolean flag is on for an actor (or none)."""
    _check_kind(flags, args.name, args.action)
    enabled = flags.enabled(args.name, args.actor)
    data = {"flag": args.name, "actor": args.actor, "enabled": enabled}
    who = "without an actor" if args.actor is None else f"for {args.actor!r}"
    out.emit(data, lambda: out.line(f"{args.name} {who}: {'on' if enabled else 'off'}"))


def _flag_value(flags: Any, args: argparse.Namespace, out: Output) -> None:
    """Print a flag's value, variant and reason for an actor (or none)."""
    answer = flags.evaluate(args.name, args.actor)
    data = {
        "flag": args.name,
        "actor": args.actor,
        "kind": answer.kind,
        "value": answer.value,
        "variant": answer.variant,
        "reason": answer.reason,
    }
    who = "without an actor" if args.actor is None else f"for {args.actor!r}"
    out.emit(
        data,
        lambda: out.line(
            f"{args.name} {who}: {_shown(answer.value)} (variant {answer.variant}, {answer.reason})"
        ),
    )


_READS: dict[str, Callable[[Any, argparse.Namespace, Output], None]] = {
    "list": _list_flags,
    "show": _show_flag,
    "history": _flag_history,
    "eval": _eval_flag,
    "value": _flag_value,
}


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    with open_flags(settings, hold_kill_switches=False) as flags:
        action = args.action
        if action in WRITES:
            return _write(flags, args, out)
        read = _READS.get(action)
        if read is not None:
            read(flags, args, out)
        return 0


def _value_cell(row: dict[str, Any]) -> str:
    if row["kind"] == "boolean":
        return "on" if row["value"] else "off"
    return f"{row['variant']}={_shown(row['value'], 30)}"


def _shares(args: argparse.Namespace) -> dict[str, float]:
    """The ``split`` shares given as ``VARIANT=PERCENT`` (UsageError if a variant repeats)."""
    shares: dict[str, float] = {}
    for variant, share in getattr(args, "shares", None) or ():
        if variant in shares:
            raise UsageError(f"variant {variant!r} given twice", label="InvalidFlagValue")
        shares[variant] = share
    return shares


def _write(flags: Any, args: argparse.Namespace, out: Output) -> int:
    by = args.by if args.by is not None else default_by()
    reason = args.reason
    name = args.name
    # UnknownFlag (with the nearest name) before anything else, then the kind.
    _check_kind(flags, name, args.action)
    shares = _shares(args)
    ops: dict[str, Callable[[], None]] = {
        "enable": lambda: flags.enable(name, by=by, reason=reason),
        "disable": lambda: flags.disable(name, by=by, reason=reason),
        "clear": lambda: flags.clear(name, by=by, reason=reason),
        "percentage": lambda: flags.set_percentage(name, args.percentage, by=by, reason=reason),
        "allow": lambda: flags.allow(name, args.actor, by=by, reason=reason),
        "deny": lambda: flags.deny(name, args.actor, by=by, reason=reason),
        "split": lambda: flags.set_split(name, shares, by=by, reason=reason),
        "assign": lambda: flags.assign(name, args.actor, args.variant, by=by, reason=reason),
        "unassign": lambda: flags.assign(name, args.actor, None, by=by, reason=reason),
    }
    changes: list[Any] = []
    # Listeners hear the changes made through this FeatureFlags, in the writing thread.
    unsubscribe = flags.subscribe(lambda c: changes.append(c) if c.flag == name else None)
    # From here on a SIGINT or SIGTERM waits for the command's end: the write may
    # commit at any point of the call (before it, a signal ends the command, 130
    # or 143, with nothing written; after it, 130/143 would say the same, wrongly).
    hold_for_the_write()
    try:
        ops[args.action]()
    except InvalidFlagValue as exc:
        # Refused before anything is written (shares not summing to 100, an
        # undeclared variant, a percentage out of range): the input is wrong.
        raise UsageError(str(exc), label="InvalidFlagValue") from exc
    except BackendUnavailable as exc:
        if args.action != "disable" or not over_redis(flags):
            raise  # a SQLite store locked out: nothing to keep, run it again later
        raise BackendUnavailable(
            f"{str(exc).rstrip('.')}. The command line cannot keep a kill switch until "
            f"Redis returns: use the admin page of a running node (POST "
            f"/api/flags/{name}/disable), which applies it there at once and commits it "
            "when Redis returns"
        ) from exc
    finally:
        unsubscribe()
    mine = [c for c in changes if c.by == by]
    change = mine[-1] if mine else None
    state = state_dict(flags.state(name))
    data = {
        "flag": name,
        "action": args.action,
        "changed": change is not None,
        "change": None if change is None else change_dict(change),
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
            if change.no_op:  # recorded: the runtime state overrides other processes' config
                what = "cleared" if args.action == "clear" else "set"
                out.line(
                    f"  no-op here: only the runtime state was {what} (it overrides the "
                    "config of every process sharing the store)"
                )

    out.emit(data, text)
    return 0
