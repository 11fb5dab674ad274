"""The ``foundation`` command (the ``cli`` extra).

::

    foundation flags list | show NAME | history [NAME] [--limit N (100)] | eval NAME [--actor A]
                     | value NAME [--actor A]
    foundation flags enable|disable|clear NAME | percentage NAME P | allow|deny NAME ACTOR
                     | split NAME VARIANT=SHARE... | assign NAME ACTOR VARIANT
                     | unassign NAME ACTOR  [--by WHO] [--reason WHY]
    foundation migration status | advance | rollback N | emergency REASON [--plan NAME]
    foundation agents list [--where PATH OP VALUE]... [--limit N] | show KEY | count
                      | watch [--count N]
    foundation admin [--bind HOST:PORT] [--token T] [--read-only]
    foundation demo [...]     the demo (arguments go to it unchanged)
    foundation version | --version

Every command takes ``--store URL`` (``sqlite:///path`` or
``redis://host:port/db?namespace=NS``), ``--redis URL``, ``--namespace NS``
(else ``FOUNDATION_STORE``, ``FOUNDATION_REDIS``, ``FOUNDATION_NAMESPACE``,
else ``[cli]`` in ``./foundation.toml``), ``--json`` (the default when stdout
is not a terminal; ``--text`` forces text), ``--debug`` and ``--log-level
LEVEL``. Log lines go to stderr: ``admin`` logs Foundation's from INFO (flag
changes, emergency rollbacks, Redis outages), the other commands only errors,
unless ``--log-level`` says otherwise (docs/cli.md, "Log lines").

``agents watch`` prints one stderr line per change of its connection to
Redis (disconnected, degraded, connected again), since the command logs only
errors.

Exit codes (docs/cli.md has the table): 0 done (also a write whose result
could not be printed, stdout full or closed: one stderr line says the write
was done); 1 failed (one line
``ErrorClass: message`` on stderr, the traceback only with ``--debug``); 2
usage error: argparse's usage, or one line such as ``InvalidFlagValue:
'color' is a string flag ...`` for input the command judges wrong before
acting (a command for the other kind of flag, a value the library refuses
such as shares not summing to 100, a bad ``--where``, a missing ``--plan``,
``--bind`` off loopback without ``--token``, ``--json`` with ``--text``, a
blank ``--by``, an empty ``--store``, ``--redis``, ``--namespace``, ``--token``
or ``--plan``, or an empty ``FOUNDATION_*`` variable the command reads:
``check_command_line``, ``option_or_env``); 69 backend unavailable
(``BackendUnavailable``: Redis unreachable, not answering within the op
timeout, read-only or out of memory; ``FlagStoreUnavailable``: a SQLite store
file on a full disk, read-only, failing or corrupt; retrying later may work); 130
interrupted (SIGINT, Ctrl-C); 129 hung up (SIGHUP: the terminal closed, the
ssh session dropped) before the command finished; 141 (128 + SIGPIPE) when
the reader of stdout went away (``foundation agents watch | head -1``): the
command stops quietly, as a tool killed by SIGPIPE would; 143 terminated
(SIGTERM) before the command finished. A writing command holds the three
signals once its write began, until its end (its own exit code, then one line
saying the signal was held): from it, 129, 130 and 143 mean nothing was
written. ``admin``, ``agents watch`` and ``demo --admin`` (once serving) run
until stopped: SIGTERM is their normal end, exit 0 (the demo's own code);
SIGHUP is not (nobody asked them to stop): 129. Each signal stops what the
command started first, then one line ``foundation COMMAND: interrupted`` (or
``hung up``, ``terminated``) goes to stderr; a second Ctrl-C cuts the
shutdown short. A signal ignored when the command starts (``nohup``) stays
so. No command ever creates a flag store: a missing SQLite file or an empty
Redis namespace is an error, and so is an existing file that is not a flag
store (``FlagError``; nothing written to it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

from foundation._cli._signals import EXIT_HANGUP, EXIT_INTERRUPTED, EXIT_TERMINATED

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69  # sysexits' EX_UNAVAILABLE: the backend cannot be used now
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool SIGPIPE ended
# EXIT_HANGUP (129, 128 + SIGHUP), EXIT_INTERRUPTED (130, 128 + SIGINT) and
# EXIT_TERMINATED (143, 128 + SIGTERM): _signals.
EXIT_CODES = (
    EXIT_OK,
    EXIT_FAILED,
    EXIT_USAGE,
    EXIT_UNAVAILABLE,
    EXIT_HANGUP,
    EXIT_INTERRUPTED,
    EXIT_BROKEN_PIPE,
    EXIT_TERMINATED,
)
"""Every exit code a command returns (the documented table lists exactly these)."""


class _Parser(argparse.ArgumentParser):
    """argparse's parser, but ``--help`` and ``--version`` fail loudly when stdout
    cannot take them: argparse drops an ``OSError`` of that write, so a full disk
    exited 0 with nothing printed. Its usage errors on stderr stay as they are."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if file is None or file is not sys.stdout:
            super()._print_message(message, file)
            return
        if message:
            file.write(message)
            _flush_stdout()  # here, where main() sees its error (_help_not_printed)


def _flush_stdout() -> None:
    sys.stdout.flush()


def _parser() -> argparse.ArgumentParser:
    from foundation import __version__
    from foundation._cli import _admin, _agents, _flags, _migration
    from foundation._cli._common import common_options

    common = common_options()
    # (typed as argparse's: its subcommands' parsers are _Parsers all the same)
    parser: argparse.ArgumentParser = _Parser(
        prog="foundation",
        description="Operate Foundation: feature flags, migrations, registry agents.",
        parents=[common],
        epilog="Settings: --store/--redis/--namespace, else FOUNDATION_STORE/FOUNDATION_REDIS/"
        "FOUNDATION_NAMESPACE, else [cli] in ./foundation.toml. "
        "Exit codes: 0 ok; 1 failed; 2 usage error; 69 backend unavailable (Redis "
        "unreachable, frozen past the op timeout, read-only); 129 hung up (SIGHUP); 130 "
        "interrupted (SIGINT, Ctrl-C); 141 stdout closed (SIGPIPE); 143 terminated (SIGTERM) "
        "before done (a write, once begun, runs to the command's end: 129, 130 and 143 mean "
        "nothing written). admin, agents watch and demo --admin run until stopped: SIGTERM "
        "ends them with 0 (SIGHUP: 129). See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _flags.add_parser(commands, common)
    _migration.add_parser(commands, common)
    _agents.add_parser(commands, common)
    _admin.add_parser(commands, common)
    demo = commands.add_parser("demo", help="run the demo (see foundation demo --help)")
    demo.add_argument("rest", nargs=argparse.REMAINDER)
    commands.add_parser("version", help="print the version", parents=[common])
    return parser


def main(argv: list[str] | None = None, *, mask_to_restore: Iterable[int] | None = None) -> int:
    """Entry point of the ``foundation`` console script; returns the exit code.

    SIGINT, SIGTERM and SIGHUP unwind the command (see ``foundation._cli._signals``),
    then one line ``foundation COMMAND: interrupted|terminated|hung up`` goes to
    stderr. ``mask_to_restore``: the signal mask to put back once the handlers
    are in place (the console script holds these signals while it imports
    us: see ``_foundation_cli``); a signal held meanwhile is delivered then.
    """
    from foundation._cli._signals import (
        TERMINATING,
        Terminated,
        held_signals,
        install_terminating,
        release_held,
    )

    args_list = list(sys.argv[1:] if argv is None else argv)
    words: list[str] = []  # the command's words once parsed, for the signal line
    at_default = tuple(s for s in TERMINATING if signal.getsignal(s) is signal.SIG_DFL)
    try:
        install_terminating()
        if mask_to_restore is not None:
            # Race: a signal that landed while we were imported is pending; it is
            # delivered here, inside this try, so it is told as any other.
            signal.pthread_sigmask(signal.SIG_SETMASK, mask_to_restore)
        code = _main(args_list, words)
        # A signal held since a write began (_signals.hold_for_the_write): the
        # command ran to its end, and its code stands. Race: one landing between
        # this look and the next line is held too, and only not told.
        late = held_signals()
        if mask_to_restore is not None:  # the console script: the process ends next
            _ignore_signals_from_now_on()
        if late:
            _told_late(words, args_list, late[0], code)
        return code
    except KeyboardInterrupt:  # Ctrl-C: every command stopped what it started
        return _signalled(words, args_list, "interrupted", EXIT_INTERRUPTED)
    except Terminated as exc:  # SIGHUP 129; SIGTERM 143, or 0 from what runs until stopped
        return _signalled(words, args_list, exc.word, exc.exit_code)
    finally:
        # Race: a SIGTERM (SIGHUP) landing inside install_terminating, once its
        # handler is set, raises before it returns: so the default is put back
        # whenever it was the default on entry and the handler is still ours, not
        # on a returned value. A write's hold ends here too (one step: release_held).
        release_held(restore_defaults_of=at_default)


def _ignore_signals_from_now_on() -> None:
    """The command has ended, its output written and its code chosen: a SIGINT,
    SIGTERM or SIGHUP from now on changes neither.

    Race: the interpreter's exit takes a while (0.1 to 0.7 s after the demo's
    last line, its objects freed), and Python puts the default handlers back as
    it starts: a Ctrl-C then killed the process silently (-2: 130 without the
    line; SIGTERM -15). Ignored handlers are left in place. One that lands
    before this call is told as any other (one line, 129, 130 or 143)."""
    from foundation._cli._signals import STOP_SIGNALS

    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _told_late(words: list[str], args_list: list[str], signum: int, code: int) -> None:
    """The one line of a signal held during a write: the command finished, with ``code``."""
    name = " ".join(["foundation", *(words or _command_words(args_list))])
    what = signal.Signals(signum).name
    message = f"{name}: {what} during its write, held: the command ran to its end (exit {code})"
    _say_last(message)


def _signalled(words: list[str], args_list: list[str], what: str, code: int) -> int:
    """Print the one line of a command a signal stopped; return its exit code.

    Before the parse has named the command (a signal while it builds the parser,
    or while ``--help`` writes to a full pipe), its words are read from the
    arguments as typed (``_command_words``)."""
    name = " ".join(["foundation", *(words or _command_words(args_list))])
    _say_last(f"{name}: {what}")
    return code


def _say_last(line: str) -> None:
    """Print the command's last line on stderr, unless stderr is gone.

    After SIGHUP from a closed terminal, writing to it fails (EIO): the line
    is lost, not the exit code; stdout and stderr then point at /dev/null, so
    the interpreter's final flush has nowhere to fail (it would exit 120)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):  # (ValueError: stderr closed in-process)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                try:
                    os.dup2(devnull, stream.fileno())
                finally:
                    os.close(devnull)


_COMMANDS = ("flags", "migration", "agents", "admin", "demo", "version")
_GROUPS = ("flags", "migration", "agents")  # the commands that take an ACTION
_VALUED = ("--store", "--redis", "--namespace", "--log-level", "--plan")  # options with a value


def _command_words(args_list: list[str]) -> list[str]:
    """The command (and action) words of ``args_list``, read without the parser
    (``["flags", "list"]`` for ``--json flags --store U list``): options and their
    values are skipped; an unknown command gives none; the action is taken as
    typed (the parse would refuse an unknown one)."""
    positionals: list[str] = []
    skip = False
    options = True
    for arg in args_list:
        if skip:  # the value of the option before it
            skip = False
        elif options and arg == "--":
            options = False
        elif options and arg.startswith("-") and arg != "-":
            # "--store URL", or "--sto URL" (argparse takes unique prefixes); "--store=URL"
            skip = "=" not in arg and len(arg) > 2 and any(v.startswith(arg) for v in _VALUED)
        else:
            positionals.append(arg)
            if len(positionals) == 2:
                break
    if not positionals or positionals[0] not in _COMMANDS:
        return []
    if positionals[0] in _GROUPS and len(positionals) == 2 and positionals[1].isalpha():
        return positionals
    return positionals[:1]


def _demo_word(args_list: list[str]) -> tuple[int, list[str]] | None:
    """Where the word ``demo`` stands when it is the command, with the options
    typed before it; else None.

    The demo parses its own options, after the word (``foundation demo --redis
    URL``); the common ones (``--json``, ``--store``...) do not apply to it.
    ``--help``/``-h``/``--version`` before it stay the parser's."""
    if _command_words(args_list) != ["demo"]:
        return None
    # The first prefix whose command is demo ends at the word (an option's value
    # may be "demo" too: "--store demo demo").
    at = next(i for i in range(len(args_list)) if _command_words(args_list[: i + 1]) == ["demo"])
    before = [a for a in args_list[:at] if a != "--"]  # "--" only ends the options
    if any(a in ("-h", "--help", "--version") for a in before):
        return None
    return at, before


def _usage_error(words: list[str], message: str) -> int:
    """Print a usage error as one line naming the command; return exit code 2."""
    print(f"{' '.join(['foundation', *words])}: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _main(args_list: list[str], words: list[str]) -> int:
    demo = _demo_word(args_list)
    if demo is not None:
        at, before = demo
        words.append("demo")
        if before:
            # Said plainly, rather than argparse's "unrecognized arguments" for the
            # demo's own options, or running the demo without what was asked.
            return _usage_error(
                words,
                f"the demo takes its own options after the word demo (foundation demo "
                f"--help); {' '.join(before)} before it does not apply to it",
            )
        return _run_demo(args_list[at + 1 :])  # its options go to it untouched
    parser = _parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    except OSError as exc:  # --help or --version printed into a closed pipe, a full disk
        return _help_not_printed(exc)
    words.extend(w for w in (args.command, getattr(args, "action", None)) if w)
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug, getattr(args, "log_level", None), args.command)
    from foundation._cli._common import StdoutGone, UsageError

    try:
        return _run(args)
    except StdoutGone:  # the reader of stdout went away (| head -1): quietly
        from foundation._cli._signals import write_began

        if write_began():
            # Not quietly after a write: 141 alone reads as "failed", and a
            # wrapper running the command again would apply it twice (a
            # migration one stage too far).
            name = " ".join(["foundation", *words])
            with contextlib.suppress(OSError, ValueError):
                print(
                    f"{name}: the reader of stdout went away after the write, which was done",
                    file=sys.stderr,
                    flush=True,
                )
        return _stdout_gone()
    except UsageError as exc:  # the command does not apply (e.g. the wrong kind of flag)
        _print_error(exc.label, exc, debug)
        return EXIT_USAGE
    except Exception as exc:
        _print_error(type(exc).__name__, exc, debug)
        return _failure_code(exc)


def _help_not_printed(exc: OSError) -> int:
    """``--help`` or ``--version`` could not reach stdout: 141 quietly when its
    reader went away (``| head -1``); else exit 1 with one line, as a read's
    ``StdoutError`` (a full disk, an I/O error)."""
    from foundation._cli._common import _not_printed_reason, _reader_gone, silence_stdout

    if _reader_gone(exc):
        return _stdout_gone()
    silence_stdout()
    message = f"StdoutError: the help could not be printed {_not_printed_reason(exc)}"
    with contextlib.suppress(OSError, ValueError):
        print(message, file=sys.stderr, flush=True)
    return EXIT_FAILED


def _failure_code(exc: Exception) -> int:
    """69 when a backend could not be used (unreachable, frozen past the op timeout,
    read-only, out of memory; a SQLite store file that cannot take the write,
    ``FlagStoreUnavailable``): worth retrying later; 1 for any other failure."""
    from foundation.errors import BackendUnavailable

    return EXIT_UNAVAILABLE if isinstance(exc, BackendUnavailable) else EXIT_FAILED


def _stdout_gone() -> int:
    """After stdout's reader left (``| head -1``): stdout pointed at /dev/null
    (the interpreter's final flush has nowhere to fail); the exit code 141."""
    from foundation._cli._common import silence_stdout

    silence_stdout()
    return EXIT_BROKEN_PIPE


def _run_demo(argv: list[str]) -> int:
    """``foundation demo``: its errors reported as any command's (one line, exit 1 or 69;
    its output's reader gone: 141, quietly)."""
    from foundation._cli._common import StdoutGone

    try:
        from foundation._demo import main as demo_main

        return demo_main(argv)
    except StdoutGone:  # `foundation demo | head -1`: as any command's
        return _stdout_gone()
    except Exception as exc:
        _print_error(type(exc).__name__, exc, False)
        return _failure_code(exc)


_LOGGING_SERVICES = ("admin",)
"""The commands that run as a service, logging at INFO by default (README's "Logs
and metrics": flag changes, emergency rollbacks, Redis outages). ``agents watch``
is not one: it prints its own connection lines (docs/cli.md)."""


def _configure_logging(debug: bool, level: str | None, command: str) -> None:
    """Send the log lines to stderr: Foundation's (``foundation.*``) from ``level``
    (``--log-level``), else DEBUG with ``--debug``, else INFO for a service
    (``admin``) and ERROR for a one-shot command (its one-line error says what
    failed); other libraries' (uvicorn's) from WARNING for a service, ERROR
    otherwise, every one with ``--debug``.

    A process whose logging is already configured (a program calling ``main``
    with its own handlers) is left as it is, as ``logging.basicConfig`` does.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    service = command in _LOGGING_SERVICES
    others = logging.DEBUG if debug else logging.WARNING if service else logging.ERROR
    logging.basicConfig(
        level=others, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if level is not None:
        ours = logging.getLevelName(level)
    elif debug:
        ours = logging.DEBUG
    else:
        ours = logging.INFO if service else logging.ERROR
    # Set on "foundation" itself: its records reach the root's handler whatever the
    # root's level (propagation checks handlers' levels only).
    logging.getLogger("foundation").setLevel(ours)


def _print_error(label: str, exc: BaseException, debug: bool) -> None:
    """Print a failed command's one-line error on stderr (after its traceback with --debug)."""
    if debug:
        traceback.print_exc()
    message = " ".join(str(exc).split()) or "(no message)"
    print(f"{label}: {message}", file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    from foundation._cli._common import Output, check_command_line, load_settings

    check_command_line(args)  # --json with --text, an empty option, a blank --by: exit 2
    out = Output(args)
    if args.command == "version":
        from foundation import __version__

        out.emit({"version": __version__}, lambda: out.line(__version__))
        return EXIT_OK
    if args.command == "demo":  # "foundation --json demo": options before the command
        return _run_demo(list(args.rest))
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
