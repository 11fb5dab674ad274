"""``foundation admin``: the admin web server over the configured store and registry.

``foundation.admin`` (the ``admin`` extra) is imported only here, only when the
command runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
from contextlib import ExitStack
from typing import Any

from foundation._cli._common import Output, Settings, UsageError, option_or_env
from foundation._cli._signals import Terminated
from foundation.errors import InvalidConfig

__all__ = ["add_parser"]

TOKEN_ENV = "FOUNDATION_ADMIN_TOKEN"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("admin", help="serve the admin web page", parents=[common])
    p.add_argument(
        "--bind",
        default="127.0.0.1:8800",
        metavar="HOST:PORT",
        help="where to listen (default: %(default)s); off loopback, --token is required",
    )
    p.add_argument("--token", default=None, help=f"the operator token (default: ${TOKEN_ENV})")
    p.add_argument("--read-only", action="store_true", help="refuse every write")
    p.add_argument("--plan", default=None, metavar="NAME", help="the migration plan (when several)")
    p.add_argument(
        "--header-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=(
            "close a connection that has not sent a complete request, head and body, "
            "by then (default: 10)"
        ),
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="close new connections at once beyond N open ones "
        "(default: 1000, or half the open-file limit if lower)",
    )


def _load_serve() -> Any:
    """``serve`` returning the signal that stopped it; ImportError if the admin
    extra is not installed."""
    try:
        from foundation.admin import _server
    except ImportError as exc:
        if "foundation[admin]" in str(exc):  # foundation.admin's own message: the hint once
            raise ImportError(str(exc)) from None
        raise ImportError(
            f"the admin server is not available ({exc}); install foundation[admin]"
        ) from None
    return _server.serve


def _check_bind(bind: str, token: str | None) -> None:
    """UsageError for a bad ``--bind``, or one off loopback without a token, in
    the command line's words (before any store is opened)."""
    from foundation.admin._server import is_loopback, parse_bind

    try:
        host, _port = parse_bind(bind)
    except InvalidConfig as exc:
        raise UsageError(f"--bind: {exc}", label="InvalidConfig") from exc
    if token is None and not is_loopback(host):
        raise UsageError(
            f"refusing to serve the admin page on non-loopback {host!r} without a token: "
            f"give --token T (or set {TOKEN_ENV}), or --bind 127.0.0.1:PORT",
            label="InvalidConfig",
        )


def _slow_client_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--header-timeout`` and ``--max-connections`` as ``serve`` options (those
    given); UsageError for a bad one, before any store is opened."""
    from foundation.admin._slow_clients import check_header_timeout, check_max_connections

    options: dict[str, Any] = {}
    for flag, name, check in (
        ("--header-timeout", "header_timeout", check_header_timeout),
        ("--max-connections", "max_connections", check_max_connections),
    ):
        value = getattr(args, name)
        if value is None:
            continue
        try:
            options[name] = check(value)
        except InvalidConfig as exc:
            raise UsageError(f"{flag}: {exc}", label="InvalidConfig") from exc
    return options


def run(args: argparse.Namespace, settings: Settings, out: Output) -> int:
    """Serve until SIGINT (then ``KeyboardInterrupt``: exit 130), SIGTERM (exit 0) or
    SIGHUP (exit 129)."""
    # An empty --token or FOUNDATION_ADMIN_TOKEN is a usage error naming it (exit 2),
    # as an empty --store or FOUNDATION_STORE: the one rule of option_or_env.
    token, _where = option_or_env(args.token, "--token", TOKEN_ENV)
    serve = _load_serve()
    if not settings.store and not settings.redis:
        raise InvalidConfig(
            "foundation admin needs a flag store (--store) and/or a registry (--redis)"
        )
    _check_bind(args.bind, token)
    options = _slow_client_options(args)
    with ExitStack() as stack:
        flags = migration = registry = None
        if settings.store:
            from foundation._cli._flags import open_flags
            from foundation._cli._migration import migration_from_store

            flags = stack.enter_context(open_flags(settings))
            if flags.store.plans() or args.plan is not None:
                migration = migration_from_store(flags, args.plan)
        if settings.redis:
            from foundation._cli._agents import open_observer

            registry = stack.enter_context(open_observer(settings))
        stopped_by: int | None = serve(
            flags=flags,
            migration=migration,
            registry=registry,
            bind=args.bind,
            token=token,
            read_only=args.read_only,
            on_ready=lambda url: print(f"admin page: {url}", file=sys.stderr, flush=True),
            **options,
        )
    # Raised once the server and the store/registry above are closed: the
    # command then exits as any command a signal stopped.
    if stopped_by == signal.SIGINT:
        raise KeyboardInterrupt
    if stopped_by == signal.SIGTERM:
        raise Terminated(exit_code=0)  # serving until stopped: SIGTERM is its end
    if stopped_by is not None:  # SIGHUP: not an end asked for, 129 (_signals)
        raise Terminated(signum=stopped_by)
    return 0
