"""The ``foundation`` command (the ``cli`` extra).

::

    foundation flags list | show NAME | history [NAME] [--limit N] | eval NAME [--actor A]
                     | value NAME [--actor A]
    foundation flags enable|disable|clear NAME | percentage NAME P | allow|deny NAME ACTOR
                     | split NAME VARIANT=SHARE... | assign NAME ACTOR VARIANT
                     | unassign NAME ACTOR  [--by WHO] [--reason WHY]
    foundation migration status | advance | rollback N | emergency REASON [--plan NAME]
    foundation agents list [--where PATH OP VALUE]... [--limit N] | show KEY | count
                      | watch [--count N]
    foundation admin [--bind HOST:PORT] [--token T] [--read-only]
    foundation demo [...]     the demo (arguments go to it unchanged)
    foundation version

Every command takes ``--store URL`` (``sqlite:///path`` or
``redis://host:port/db?namespace=NS``), ``--redis URL``, ``--namespace NS``
(else ``FOUNDATION_STORE``, ``FOUNDATION_REDIS``, ``FOUNDATION_NAMESPACE``,
else ``[cli]`` in ``./foundation.toml``), ``--json`` (the default when stdout
is not a terminal; ``--text`` forces text) and ``--debug``.

``agents watch`` prints one stderr line per change of its connection to
Redis (disconnected, degraded, connected again), since the command logs only
errors.

Exit codes: 0 done; 1 failed (one line ``ErrorClass: message`` on stderr, the
traceback only with ``--debug``); 2 usage error (argparse's usage, or one line
such as ``InvalidFlagValue: 'color' is a string flag ...`` for a command of the
wrong kind of flag). No command ever creates a
store: a missing SQLite file or an empty Redis namespace is an error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    from foundation._cli import _admin, _agents, _flags, _migration
    from foundation._cli._common import common_options

    common = common_options()
    parser = argparse.ArgumentParser(
        prog="foundation",
        description="Operate Foundation: feature flags, migrations, registry agents.",
        parents=[common],
        epilog="Settings: --store/--redis/--namespace, else FOUNDATION_STORE/FOUNDATION_REDIS/"
        "FOUNDATION_NAMESPACE, else [cli] in ./foundation.toml. "
        "Exit codes: 0 ok, 1 failed, 2 usage.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _flags.add_parser(commands, common)
    _migration.add_parser(commands, common)
    _agents.add_parser(commands, common)
    _admin.add_parser(commands, common)
    demo = commands.add_parser("demo", help="run the demo (see foundation demo --help)")
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    commands.add_parser("version", help="print the version", parents=[common])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``foundation`` console script; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "demo":
        # The demo has its own options: pass them through untouched.
        from foundation._demo import main as demo_main

        return demo_main(args_list[1:])
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug)
    from foundation._cli._common import UsageError

    try:
        return _run(args)
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:  # the command does not apply (e.g. the wrong kind of flag)
        _print_error(exc.label, exc, debug)
        return EXIT_USAGE
    except Exception as exc:
        _print_error(type(exc).__name__, exc, debug)
        return EXIT_FAILED


def _configure_logging(debug: bool) -> None:
    """Send the library's log lines to stderr."""
    # The library's log lines: every one with --debug, else errors only (the
    # command's own one-line error says what failed).
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.ERROR,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _print_error(label: str, exc: BaseException, debug: bool) -> None:
    """Print a failed command's one-line error on stderr (after its traceback with --debug)."""
    if debug:
        traceback.print_exc()
    message = " ".join(str(exc).split()) or "(no message)"
    print(f"{label}: {message}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from foundation._cli._common import Output, load_settings

    out = Output(args)
    if args.command == "version":
        from foundation import __version__

        out.emit({"version": __version__}, lambda: out.line(__version__))
        return EXIT_OK
    if args.command == "demo":  # "foundation --json demo": options before the command
        from foundation._demo import main as demo_main

        return demo_main(list(args.rest))
    settings = load_settings(args)
    if args.command == "flags":
        from foundation._cli import _flags

        return _flags.run(args, settings, out)
    if args.command == "migration":
        from foundation._cli import _migration

        return _migration.run(args, settings, out)
    if args.command == "agents":
        from foundation._cli import _agents

        return _agents.run(args, settings, out)
    from foundation._cli import _admin

    return _admin.run(args, settings, out)


if __name__ == "__main__":
    raise SystemExit(main())
