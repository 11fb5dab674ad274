"""The Foundation demo: ``make demo`` (or ``foundation demo``).

Runs the whole system on the embedded default (no server needed) in about
30-60 seconds: agents of every kind registered, killed and cleaned up; a
staged rollout switching the registry under live traffic, with an emergency
rollback; a supervised application tree restarting crashed workers; and, with
``--redis URL``, two nodes sharing a Redis registry. ``--chaos`` runs instead
two nodes on redis-server processes of its own through a frozen, a read-only
and an empty Redis, with the kill switch pulled mid-outage. It ends with a
table of measured figures and exits non-zero if any invariant failed.
"""

from __future__ import annotations

import argparse
import sys
import time

from foundation._demo._console import Console
from foundation._demo._logs import library_logs, show_library_logs
from foundation._demo._scoreboard import Scoreboard

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foundation demo", description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=300, help="agents of each kind (default 300)")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="traffic time of the rollout (default 30)"
    )
    parser.add_argument("--workers", type=int, default=4, help="traffic threads (default 4)")
    parser.add_argument("--redis", metavar="URL", help="also run two nodes on this Redis")
    parser.add_argument("--plain", action="store_true", help="plain text output, no colours")
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="instead: two nodes through Redis faults (starts its own redis-server)",
    )
    parser.add_argument(
        "--fault-seconds", type=float, default=3.0, help="--chaos: length of each fault (default 3)"
    )
    parser.add_argument(
        "--admin",
        nargs="?",
        const="127.0.0.1:8800",
        metavar="BIND",
        help="then serve the admin page over a live demo system until Ctrl-C "
        "(default bind 127.0.0.1:8800)",
    )
    return parser


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
    """Run the demo; returns the process exit code (1 if an invariant failed)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.chaos and args.redis:
        parser.error("--chaos starts its own redis-server (it kills it); drop --redis")
    if not args.fault_seconds > 0:
        parser.error("--fault-seconds must be positive")
    console = Console(plain=args.plain)
    score = Scoreboard()
    started = time.perf_counter()

    from foundation._demo._core import run_core
    from foundation._demo._rollout import run_rollout
    from foundation._demo._supervision import run_supervision

    if args.chaos:
        from foundation._demo._chaos import ChaosUnavailable, run_chaos

        try:
            run_chaos(console, score, fault_seconds=args.fault_seconds, workers=args.workers)
        except ChaosUnavailable as exc:
            print(f"foundation demo --chaos: {exc}", file=sys.stderr)
            return 1
    else:
        with library_logs() as logs:
            run_core(console, score, per_kind=args.agents)
            run_rollout(console, score, seconds=args.seconds, workers=args.workers)
            run_supervision(console, score)
            if args.redis:
                from foundation._demo._redis import run_redis

                run_redis(console, score, url=args.redis)
        console.heading("Library logs")
        show_library_logs(console, logs)

    code = _summary(console, score, started)
    if args.admin:
        from foundation.admin._demo import serve_demo

        code = serve_demo(args.admin, print) or code
    return code
