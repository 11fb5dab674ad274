"""The Foundation demo: ``make demo`` (or ``foundation demo``).

Runs the whole system on the embedded default (no server needed) in about
35 seconds (the rollout's 30 s of traffic, ``--seconds``, and a few seconds
more): agents of every kind registered, killed and cleaned up; a
staged rollout switching the registry under live traffic, with an emergency
rollback; a supervised application tree restarting crashed workers; and, with
``--redis URL``, two nodes sharing a Redis registry. ``--chaos`` runs instead
two nodes on redis-server processes of its own through a frozen, a read-only
and an empty Redis, with the kill switch pulled mid-outage. It ends with a
table of measured figures and exits non-zero if any invariant failed.

``--redis`` and ``--admin`` are checked before the first part runs. Ctrl-C
(SIGINT) stops every part cleanly (its threads, tasks, processes, redis-server
and temporary files) and exits 130 with one line on stderr; SIGTERM does the
same and exits 143, or, once ``--admin`` serves, the demo's own code (0 when
every invariant held); SIGHUP (the terminal closed) does the same and exits
129, serving or not. Any other error reaches the ``foundation`` command's
one-line error report (exit 1, or 69 for ``BackendUnavailable``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from foundation._demo._console import Console
from foundation._demo._logs import library_logs, show_library_logs
from foundation._demo._scoreboard import Scoreboard

__all__ = ["main"]

_N = TypeVar("_N", int, float)

DESCRIPTION = (
    "The Foundation demo (make demo): agents registered, killed and cleaned up; a staged "
    "rollout under live traffic; supervised workers restarted; then a table of measured "
    "figures and invariants. Exit codes: 0 every invariant held, 1 one failed or an error "
    "(one line on stderr), 2 usage, 69 Redis unavailable, 130 interrupted (Ctrl-C stops "
    "every part cleanly), 143 terminated (SIGTERM; with --admin, once serving, SIGTERM "
    "is its end: the code above), 129 hung up (SIGHUP: stopped the same way)."
)


def _number(
    kind: Callable[[str], _N], low: float, high: float, *, above: bool = False
) -> Callable[[str], _N]:
    """An argparse ``type``: ``kind(text)`` within ``low..high`` (``above``: strictly over low)."""

    def parse(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        too_low = value <= low if above else value < low
        if not math.isfinite(value) or too_low or value > high:
            bound = f"over {low:g}" if above else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is not {bound} and at most {high:g}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    from foundation.cli import _Parser  # --help that stdout cannot take fails loudly

    parser = _Parser(prog="foundation demo", description=DESCRIPTION)
    parser.add_argument(
        "--agents",
        type=_number(int, 1, 2000),
        default=None,  # given with --chaos: a usage error (_MODE_OPTIONS)
        help="agents of each kind, 1-2000 (default 300; not with --chaos)",
    )
    parser.add_argument(
        "--seconds",
        type=_number(float, 0, 3600, above=True),
        default=None,  # given with --chaos: a usage error (_MODE_OPTIONS)
        help="traffic time of the rollout, over 0 and at most 3600 (default 30; not with --chaos)",
    )
    parser.add_argument(
        "--workers", type=_number(int, 1, 64), default=4, help="traffic threads, 1-64 (default 4)"
    )
    parser.add_argument(
        "--redis", metavar="URL", help="also run two nodes on this Redis (checked first)"
    )
    parser.add_argument("--plain", action="store_true", help="plain text output, no colours")
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="instead: two nodes through Redis faults (starts its own redis-server)",
    )
    parser.add_argument(
        "--fault-seconds",
        type=_number(float, 0, 600, above=True),
        default=None,  # given without --chaos: a usage error (_MODE_OPTIONS)
        help="with --chaos only: length of each fault, over 0 and at most 600 (default 3)",
    )
    parser.add_argument(
        "--admin",
        nargs="?",
        const="127.0.0.1:8800",
        metavar="BIND",
        help="then serve the admin page over a live demo system until Ctrl-C "
        "(default bind 127.0.0.1:8800; checked first)",
    )
    return parser


_MODE_OPTIONS = (
    # (dest, default, with --chaos?, the usage error when given in the other mode)
    ("agents", 300, False, "--agents sizes parts 1-3, which --chaos does not run: drop one"),
    ("seconds", 30.0, False, "--seconds times part 2, which --chaos does not run: drop one"),
    (
        "fault_seconds",
        3.0,
        True,
        "--fault-seconds is the length of --chaos's faults: add --chaos, or drop it",
    ),
)
"""The options of one mode only: given in the other, they would be ignored."""


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit 2) for options that would be ignored: ``--redis``,
    ``--agents`` or ``--seconds`` with ``--chaos``, ``--fault-seconds`` without
    it, an empty ``--redis`` or ``--admin`` (as the command's other options: an
    empty value is never a value left out); then the defaults of those left out."""
    for option, value in (("--redis", args.redis), ("--admin", args.admin)):
        if value == "":
            parser.error(f"argument {option}: empty: give it a value, or leave the option out")
    if args.chaos and args.redis:
        parser.error("--chaos starts its own redis-server (it kills it); drop --redis")
    for dest, default, chaos_only, wrong in _MODE_OPTIONS:
        if getattr(args, dest) is None:
            setattr(args, dest, default)
        elif chaos_only != args.chaos:
            parser.error(wrong)


def _check_redis(parser: argparse.ArgumentParser, url: str, namespace: str) -> None:
    """Parse ``--redis`` and try it once, before the demo: a bad URL is a usage error
    (exit 2); a Redis that is unreachable or refuses a write in part 4's namespace
    (read-only, out of memory, an ACL) raises ``BackendUnavailable`` (one line, exit 69).

    It leaves nothing in Redis: one probe key, written with a TTL and deleted (a
    ``RedisRegistry`` opened and closed here left its ``lastbeat``, without a TTL)."""
    from foundation import _redis_conn
    from foundation.errors import InvalidConfig

    try:
        client = _redis_conn.connect(url, op_timeout=2.0, name="foundation-demo-check")
    except InvalidConfig as exc:
        parser.error(f"argument --redis: {exc}")
    probe = "{" + namespace + "}:demo-check"
    try:
        with _redis_conn.translated(_redis_conn.redact_url(url), "checking --redis"):
            client.set(probe, b"1", px=10_000)  # gone by itself if the DEL fails
            client.delete(probe)
    finally:
        client.close()


def _check_admin(parser: argparse.ArgumentParser, bind: str) -> None:
    """Parse ``--admin`` and bind it once, before the demo: a malformed BIND is a usage
    error (exit 2); an address in use raises ``InvalidConfig`` (one line, exit 1)."""
    from foundation.errors import InvalidConfig

    try:
        from foundation.admin._server import _bind, parse_bind
    except ImportError as exc:  # the admin extra is optional
        raise InvalidConfig(f"--admin needs the admin extra: {exc}") from None
    try:
        host, port = parse_bind(bind)
    except InvalidConfig as exc:
        parser.error(f"argument --admin: {exc}")
    # Race: the port may be taken between this check and the end of the demo;
    # the admin page then reports it (exit 1). This catches the usual mistake early.
    _bind(host, port).close()


def _summary(console: Console, score: Scoreboard, started: float) -> int:
    """Print the figures and invariants; 1 if an invariant failed, else 0."""
    console.heading("Summary")
    score.figure("demo wall time", f"{time.perf_counter() - started:.1f} s")
    console.table("Measured figures", ["figure", "value"], score.figures)
    console.table(
        "Invariants",
        ["invariant", "result", "detail"],
        [[name, "ok" if ok else "FAILED", detail] for name, ok, detail in score.checks],
    )
    if score.failed:
        console.say(f"[bold red]{len(score.failed)} invariant(s) failed[/bold red]")
        return 1
    console.say(f"[bold green]all {len(score.checks)} invariants held[/bold green]")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the demo; returns the process exit code (1 if an invariant failed).

    Raises ``KeyboardInterrupt`` on Ctrl-C (``Terminated`` on SIGTERM) once
    every part has stopped what it started (the ``foundation`` command then
    prints one line and exits 130, or 143; SIGTERM while ``--admin`` serves:
    the demo's code; SIGHUP: 129).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except OSError as exc:  # --help into a full disk, or a closed pipe
        from foundation._cli._common import stdout_failed

        stdout_failed(exc, "the help")
    _check_options(parser, args)
    # Part 4's namespace, isolated from other users of that Redis.
    args.namespace = f"foundation-demo-{uuid.uuid4().hex[:8]}"
    if args.redis:
        _check_redis(parser, args.redis, args.namespace)
    if args.admin:
        _check_admin(parser, args.admin)
    console = Console(plain=args.plain)
    score = Scoreboard()
    started = time.perf_counter()
    if args.chaos:
        from foundation._demo._chaos import ChaosUnavailable, run_chaos

        try:
            run_chaos(console, score, fault_seconds=args.fault_seconds, workers=args.workers)
        except ChaosUnavailable as exc:
            print(f"foundation demo --chaos: {exc}", file=sys.stderr)
            return 1
    else:
        _run_parts(console, score, args)

    code = _summary(console, score, started)
    if args.admin:
        from foundation._cli._signals import Terminated
        from foundation.admin._demo import serve_demo

        try:
            code = serve_demo(args.admin, print) or code
        except Terminated as exc:  # serving until stopped: SIGTERM is its end
            exc.exit_code = code
            raise
    return code


def _run_parts(console: Console, score: Scoreboard, args: argparse.Namespace) -> None:
    """Parts 1 to 3 (and 4 with ``--redis``), the library's logs tallied meanwhile."""
    from foundation._demo._core import run_core
    from foundation._demo._rollout import run_rollout
    from foundation._demo._supervision import run_supervision

    with library_logs() as logs:
        run_core(console, score, per_kind=args.agents)
        run_rollout(console, score, seconds=args.seconds, workers=args.workers)
        run_supervision(console, score)
        if args.redis:
            from foundation._demo._redis import run_redis

            run_redis(console, score, url=args.redis, namespace=args.namespace)
    console.heading("Library logs")
    show_library_logs(console, logs)
