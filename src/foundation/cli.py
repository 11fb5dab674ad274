"""The ``foundation`` command.

foundation demo [--redis URL]     run the demo (the main job of ``make demo``)
foundation demo --chaos           two nodes through Redis faults (own redis-server)
foundation flags FILE             show the flags persisted in a SQLite flag store
foundation version
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``foundation`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="foundation", description="Foundation command line")
    parser.add_argument("command", choices=["demo", "flags", "version"])
    if not args:
        parser.print_help()
        return 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from foundation._demo import main as demo_main

        return demo_main(rest)
    if command == "version":
        from foundation import __version__

        print(__version__)
        return 0
    if command == "flags":
        return _show_flags(rest)
    parser.parse_args(args)  # prints the usage error
    return 2


def _show_flags(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="foundation flags")
    parser.add_argument("path", help="a SQLite flag store file")
    args = parser.parse_args(argv)
    from foundation.flags import SQLiteFlagStore

    store = SQLiteFlagStore(args.path)
    try:
        states = store.load_states()
        for name in sorted(states):
            print(f"{name}: {states[name]}")
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
