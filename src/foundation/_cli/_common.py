"""What every command of the ``foundation`` CLI shares: settings, output, errors.

Settings come from, first found wins: the command line (``--store``,
``--redis``, ``--namespace``), the environment (``FOUNDATION_STORE``,
``FOUNDATION_REDIS``, ``FOUNDATION_NAMESPACE``), then the ``[cli]`` table of
``foundation.toml`` in the current directory. An empty value is an error, never
a value left out (``load_settings``).

Output is JSON when ``--json`` is given or stdout is not a terminal (``--text``
forces text); text otherwise (tables through ``rich`` when it is installed).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import getpass
import json
import os
import sys
import unicodedata
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

from foundation import _json_input as json_input
from foundation._toml_files import read_toml
from foundation.errors import InvalidConfig

__all__ = [
    "CONFIG_FILE",
    "Output",
    "Settings",
    "StdoutError",
    "StdoutGone",
    "UsageError",
    "check_command_line",
    "check_not_empty",
    "common_options",
    "default_by",
    "json_text",
    "key_from_text",
    "key_to_json",
    "load_settings",
    "log_level",
    "option_or_env",
    "positive_int",
    "shortened",
    "silence_stdout",
    "stdout_failed",
    "value_from_text",
]

CONFIG_FILE = "foundation.toml"
_CONFIG_KEYS = ("store", "redis", "namespace")
DEFAULT_NAMESPACE = "foundation"


def common_options() -> argparse.ArgumentParser:
    """Options accepted before and after any command (``default=SUPPRESS``: a later
    parser never overwrites a value given earlier with its default)."""
    p = argparse.ArgumentParser(add_help=False)
    s = argparse.SUPPRESS
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", default=s, help="JSON output")
    out.add_argument("--text", action="store_true", default=s, help="text even when piped")
    out.add_argument(
        "--debug", action="store_true", default=s, help="tracebacks on errors; every log line"
    )
    out.add_argument(
        "--log-level",
        type=log_level,
        default=s,
        metavar="LEVEL",
        help="Foundation's log lines on stderr from LEVEL up (DEBUG, INFO, WARNING, ERROR, "
        "CRITICAL; default: INFO for admin, ERROR for the other commands)",
    )
    where = p.add_argument_group("where")
    where.add_argument(
        "--store",
        metavar="URL",
        default=s,
        help="flag store: sqlite:///path or redis://...?namespace=NS",
    )
    where.add_argument("--redis", metavar="URL", default=s, help="registry Redis URL")
    where.add_argument("--namespace", metavar="NS", default=s, help="registry namespace")
    return p


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(text: str) -> str:
    """``--log-level``: a level name, in any case."""
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"not a log level: {text!r} (one of {', '.join(LOG_LEVELS)})"
        )
    return level


class UsageError(Exception):
    """A command that does not apply as given (exit 2), printed as ``label: message``.

    For what argparse cannot see, such as ``percentage`` on a typed flag:
    ``label`` names the library's error for the same mistake.
    """

    def __init__(self, message: str, *, label: str = "UsageError") -> None:
        super().__init__(message)
        self.label = label


class StdoutGone(Exception):
    """The reader of stdout went away (``foundation ... | head -1``, or the
    terminal closed: a dropped ssh session): the command stops quietly
    (``main`` exits 141, as a tool SIGPIPE ended)."""


class StdoutError(Exception):
    """stdout could not take a result before any write began (a full disk, an
    I/O error, no stdout at all: file descriptor 1 closed): exit 1, one line
    ``StdoutError: ...`` (``Output.line``; after a write, see there)."""


def _reader_gone(exc: OSError) -> bool:
    """Whether writing stdout failed because its reader went away: a closed pipe
    (EPIPE), or a terminal hung up (EIO). Not a full disk, a closed file
    descriptor or the like: stdout failed (``Output._not_printed``).

    Race: after SIGHUP from a closed terminal (held during a write), printing
    the write's result failed with EIO and the command exited 1, which says
    "failed" of a write that was done: a wrapper would run it again.

    >>> import errno
    >>> [_reader_gone(OSError(e, "")) for e in (errno.EIO, errno.EPIPE, errno.ENOSPC)]
    [True, True, False]
    """
    return isinstance(exc, BrokenPipeError) or exc.errno == errno.EIO


def silence_stdout() -> None:
    """Point stdout's file descriptor at /dev/null (Python's signal docs' idiom):
    what it still holds goes nowhere, so the interpreter's final flush has
    nowhere to fail (it would print "Exception ignored" and exit 120). Nothing
    to do without a stdout (fd 1 closed: ``sys.stdout`` is None) or without a
    file descriptor (replaced in-process)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # (AttributeError: no stdout, None)
        pass
    finally:
        os.close(devnull)


def stdout_failed(exc: OSError, what: str = "the result") -> NoReturn:
    """End a command whose output did not reach stdout, outside :class:`Output`
    (the demo's console and its ``--help``), as ``Output._not_printed`` does
    before any write: ``StdoutGone`` (141, quietly) when its reader went away;
    else stdout pointed at /dev/null and ``StdoutError`` (exit 1, one line
    ``StdoutError: WHAT could not be printed to stdout (...)``)."""
    if _reader_gone(exc):
        raise StdoutGone from exc
    silence_stdout()
    raise StdoutError(f"{what} could not be printed {_not_printed_reason(exc)}") from exc


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the CLI looks (each value with where it came from, for messages)."""

    store: str | None
    redis: str | None
    namespace: str
    origin: dict[str, str]

    def need_store(self) -> str:
        if not self.store:
            raise InvalidConfig(
                "no flag store given: use --store URL, FOUNDATION_STORE or "
                f"[cli] store = ... in {CONFIG_FILE}"
            )
        return self.store

    def need_redis(self) -> str:
        if not self.redis:
            raise InvalidConfig(
                "no registry Redis given: use --redis URL, FOUNDATION_REDIS or "
                f"[cli] redis = ... in {CONFIG_FILE}"
            )
        return self.redis


def read_config(path: str) -> dict[str, str]:
    """The ``[cli]`` table of a ``foundation.toml`` (InvalidConfig if it is not usable).

    The file is shared: its other tables are ``AppConfig``'s (``Application``),
    which checks them; a table neither knows (``[clii]``, a typo) is refused
    here as there, in the same words (``_appconfig.unknown_sections``)."""
    from foundation._appconfig import unknown_sections

    try:
        document = read_toml(path, "config")
    except FileNotFoundError:
        return {}
    unknown = unknown_sections(document)
    if unknown:
        raise InvalidConfig(f"invalid config in {path}: " + "; ".join(unknown))
    table = document.get("cli", {})
    _check_cli_table(path, table)
    return dict(table)


def _check_cli_table(path: str, table: Any) -> None:
    """InvalidConfig unless ``[cli]`` is a table of known keys with non-empty string values."""
    if not isinstance(table, dict):
        raise InvalidConfig(f"{path}: [cli] must be a table")
    unknown = sorted(set(table) - set(_CONFIG_KEYS))
    if unknown:
        raise InvalidConfig(f"{path}: unknown [cli] keys {unknown} (known: {list(_CONFIG_KEYS)})")
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise InvalidConfig(f"{path}: [cli] {key} must be a non-empty string")


def _check_wire_text(key: str, value: str | None, origin: dict[str, str]) -> None:
    """InvalidConfig if a setting sent to Redis is not valid UTF-8 text."""
    # Redis URLs and names go over the wire as UTF-8 (a SQLite path is the OS's business).
    redis_url = value is not None and value.startswith(
        ("redis:", "rediss:", "redis+sentinel:", "unix:")
    )
    if value is not None and (key != "store" or redis_url):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8 on the command line
            from foundation._redis_conn import redact_url

            shown = redact_url(value) if key == "redis" or redis_url else value
            raise InvalidConfig(f"{origin[key]} is not valid UTF-8 text: {shown[:100]!r}") from None


def load_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    """The settings of this run, each from the first source that has it.

    An empty value given on the command line or in the environment
    (``--namespace "$NS"`` with NS unset) is a UsageError (exit 2) naming it,
    not a value left out: falling back to the next source would act on
    another namespace or store and exit 0 (as an empty ``[cli]`` value or
    ``?namespace=`` in a store URL is an error)."""
    environ = os.environ if env is None else env
    config = read_config(os.path.join(os.getcwd(), CONFIG_FILE))
    values: dict[str, str | None] = {}
    origin: dict[str, str] = {}
    for key in _CONFIG_KEYS:
        env_name = f"FOUNDATION_{key.upper()}"
        value, where = option_or_env(getattr(args, key, None), f"--{key}", env_name, environ)
        if value is None:
            value, where = config.get(key), CONFIG_FILE  # (checked: read_config)
        values[key] = value
        if value is not None:
            origin[key] = where
        _check_wire_text(key, values[key], origin)
    return Settings(
        values["store"], values["redis"], values["namespace"] or DEFAULT_NAMESPACE, origin
    )


def option_or_env(
    value: str | None, option: str, env_name: str, env: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """The value of ``option`` as given, else of the variable ``env_name`` (in ``env``,
    else the process environment), with where it came from; ``(None, env_name)``
    when neither is given. An empty one is a UsageError naming it
    (``check_not_empty``): the one rule of every setting (``load_settings``, the
    admin token)."""
    if value is not None:
        check_not_empty(value, option)
        return value, option
    found = (os.environ if env is None else env).get(env_name)
    if found is not None:
        check_not_empty(found, env_name)
    return found, env_name


def check_not_empty(value: str, where: str) -> None:
    """UsageError (exit 2) if ``value``, from ``where`` (an option or a variable), is
    empty: the one rule for empty values (``check_command_line``, ``option_or_env``)."""
    if value:
        return
    if where.startswith("--"):
        raise UsageError(f"{where} is empty: give it a value, or leave the option out")
    raise UsageError(f"{where} is set but empty: give it a value, or unset it")


_NAMING_OPTIONS = ("store", "redis", "namespace", "token", "plan")
"""The options (their ``dest``) whose value names something: empty is a usage error."""


def check_command_line(args: argparse.Namespace) -> None:
    """UsageError (exit 2) for what the command line gives wrong whatever the
    command, before anything is read or opened: ``--json`` with ``--text``, an
    empty option of ``_NAMING_OPTIONS``, a blank ``--by`` (the flags' own rule,
    ``check_audit_text``, labelled as the library's error)."""
    if getattr(args, "json", False) and getattr(args, "text", False):
        raise UsageError("--json and --text exclude each other: give one")
    for dest in _NAMING_OPTIONS:
        value = getattr(args, dest, None)
        if isinstance(value, str):
            check_not_empty(value, f"--{dest}")
    by = getattr(args, "by", None)
    if by is not None:
        from foundation.errors import InvalidFlagValue
        from foundation.flags._config import check_audit_text

        try:
            check_audit_text(by, "by")
        except InvalidFlagValue as exc:  # "by= ...": said of the option
            hint = "; leave it out for the OS user" if not by.strip() else ""
            message = "--by" + str(exc).removeprefix("by=") + hint
            raise UsageError(message, label="InvalidFlagValue") from exc


def default_by() -> str:
    """The ``--by`` default: the OS user (``uid:N`` when the user has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return f"uid:{os.getuid()}"


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (``--limit N``, ``--count N``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:100]!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text[:100]!r}")
    return value


def value_from_text(text: str) -> Any:
    """A ``--where`` value: JSON when it parses (``2``, ``true``, ``["a","b"]``), else the text."""
    try:
        return json_input.loads(text)
    except ValueError:  # not JSON, or nested too deeply (TooDeep)
        return text


def key_from_text(text: str) -> Hashable:
    """A registry key from the command line: its JSON form (``7``, ``'["job",7]'``,
    ``'"7"'`` for the string), else the text itself (``NaN`` and ``Infinity``,
    which are no JSON, included: the admin API reads them the same way)."""
    from foundation import _json_input
    from foundation.registry._redis._codec import decode_key

    try:
        _json_input.loads(text)  # ValueError for text that is no JSON, NaN included
        return decode_key(text)
    except (ValueError, TypeError, KeyError, RecursionError):
        return text


def json_text(value: Any) -> str:
    """``value`` as one line of JSON for a person (tuples as arrays, sets sorted)."""
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def key_to_json(key: Hashable) -> Any:
    """A registry key as a JSON value (tuples as arrays, as the Redis backend stores it)."""
    from foundation.registry._redis._codec import encode_key

    return json.loads(encode_key(key))


def encoder_for(stream: TextIO | None) -> Callable[[str], bytes] | None:
    """The encoder of ``stream``'s bytes for :func:`_write_whole`: one for the
    whole run (None for a stream with no file underneath, such as a StringIO).

    Incremental, as the text layer's own: an encoding with a byte order mark
    (``PYTHONIOENCODING=utf-16``) writes it once, before the first text, not
    before every line; none at all when the file already holds bytes (appended
    to), as the text layer does.
    """
    binary = getattr(stream, "buffer", None)
    if binary is None:
        return None
    encoding = getattr(stream, "encoding", None) or "utf-8"
    errors = getattr(stream, "errors", None) or "strict"
    encoder = codecs.getincrementalencoder(encoding)(errors)
    try:
        if binary.seekable() and binary.tell() != 0:
            encoder.setstate(0)  # past the start: no mark
    except (OSError, ValueError):  # not seekable after all, or closed: as a pipe
        pass
    return encoder.encode


def _write_whole(
    stream: TextIO | None, text: str, encode: Callable[[str], bytes] | None = None
) -> None:
    """Write ``text`` to ``stream``, all of it, and flush (``encode``: the run's
    :func:`encoder_for` ``stream``; without it, a new one: a mark each time).

    Race: unbuffered (``PYTHONUNBUFFERED``, ``-u``: common under a service
    manager), a text stream writes straight to the file descriptor, and a
    signal whose handler returns (a writing command holds SIGINT and SIGTERM
    until its end: ``_signals.hold_for_the_write``) cuts a write into a full
    pipe short: write(2) returns the bytes it wrote and the text layer drops
    the rest (65,536 bytes of a longer JSON result, then exit 0). So the bytes
    go to the binary layer here, again until every one is written.

    No stream (``sys.stdout`` is None: the command started with file
    descriptor 1 closed, ``>&-``) is an OSError as the closed descriptor's.
    """
    if stream is None:
        raise OSError(errno.EBADF, "stdout is closed")
    binary = getattr(stream, "buffer", None)
    encode = encode or encoder_for(stream)
    if binary is None or encode is None:  # no file underneath (a StringIO)
        stream.write(text)
        stream.flush()
        return
    if os.linesep != "\n":  # as the text layer translates it (Windows)
        text = text.replace("\n", os.linesep)
    data = memoryview(encode(text))  # before any byte goes: unencodable, nothing written
    stream.flush()  # what the text layer still holds goes first
    while data:
        written = binary.write(data)
        if written is None:  # a non-blocking stream that would block: as print() raises
            raise BlockingIOError("stdout would block")
        data = data[written:]
    binary.flush()


def _not_printed_reason(exc: OSError | UnicodeEncodeError) -> str:
    """Why a result did not reach stdout, for its one line.

    >>> import errno
    >>> _not_printed_reason(OSError(errno.ENOSPC, "No space left on device"))
    'to stdout ([Errno 28] No space left on device)'
    """
    if isinstance(exc, UnicodeEncodeError):
        return f"in stdout's encoding ({exc.encoding})"
    return f"to stdout ({exc})"


def _unprintable_after_the_write(command: str, reason: str) -> bool:
    """After a committed write, a result stdout cannot take (its encoding
    cannot hold it, ``PYTHONIOENCODING=ascii`` and a reason in another script;
    a full disk; an I/O error; no stdout at all): True once one stderr line
    said so (the write was done: the command still ends with 0); False before
    any write (the error stands: exit 1, nothing was written)."""
    from foundation._cli._signals import write_began

    if not write_began():
        return False
    with contextlib.suppress(OSError, ValueError, AttributeError):  # (no stderr: None)
        print(
            f"{command}: the result could not be printed {reason} after the write, which was done",
            file=sys.stderr,
            flush=True,
        )
    return True


class Output:
    """JSON or text, chosen once per run."""

    def __init__(self, args: argparse.Namespace, stream: TextIO | None = None) -> None:
        # sys.stdout is None when the command started with file descriptor 1
        # closed (">&-"): JSON then, and each line fails as a closed stdout.
        self.stream: TextIO | None = stream if stream is not None else sys.stdout
        self._encode = encoder_for(self.stream)
        words = (getattr(args, "command", None), getattr(args, "action", None))
        self._command = " ".join(["foundation", *(w for w in words if isinstance(w, str))])
        self._unprintable = False  # a line after a write could not be encoded: the rest dropped
        forced_text = getattr(args, "text", False)
        terminal = self.stream is not None and self.stream.isatty()
        self.json = bool(getattr(args, "json", False)) or (not forced_text and not terminal)
        self.rich = False
        if not self.json and terminal:
            try:
                import rich  # noqa: F401  (the cli extra)

                self.rich = True
            except ImportError:
                pass

    def emit(self, data: Any, text: Callable[[], None]) -> None:
        """Print ``data`` as JSON, or call ``text()`` to print it for a person."""
        if self.json:
            self.line(json.dumps(data, indent=2, default=_json_default))
        else:
            text()

    def json_array(self, items: Iterable[Any]) -> None:
        """Print ``items`` as :meth:`emit` prints a list of them (the same bytes),
        each as it comes: only one item is held at a time."""
        held: str | None = None  # the item before: its comma waits for the next one
        for item in items:
            text = json.dumps(item, indent=2, default=_json_default)
            # Every newline of indented JSON is between tokens (strings escape theirs).
            self.line("[" if held is None else held + ",")
            held = "  " + text.replace("\n", "\n  ")
        if held is None:
            self.line("[]")
        else:
            self.line(held)
            self.line("]")

    def json_line(self, data: Any) -> None:
        """One compact JSON document on one line (JSON Lines, for streams)."""
        self.line(json.dumps(data, separators=(",", ":"), default=_json_default))

    def line(self, text: str = "") -> None:
        if self._unprintable:  # said once on stderr: the rest of the result is dropped
            return
        try:
            # JSON escapes control characters itself (and is several lines when indented).
            _write_whole(self.stream, (text if self.json else visible(text)) + "\n", self._encode)
        except (OSError, UnicodeEncodeError) as exc:
            self._not_printed(exc)

    def _not_printed(self, exc: OSError | UnicodeEncodeError) -> None:
        """The one way a result that did not reach stdout ends the command.

        Its reader went away (``| head -1``, a closed terminal): StdoutGone,
        141. Otherwise (its encoding, a full disk, an I/O error, no stdout at
        all), after a write: one stderr line says the write was done, the rest
        of the result is dropped and the command ends with its own code (0):
        exit 1 would say "failed" to a wrapper, which would apply the write
        twice by running it again (``migration advance`` one stage too far).
        Before any write: exit 1 with one line (``StdoutError``; an encoding
        error as it is). A stdout that failed is pointed at /dev/null.
        """
        if isinstance(exc, OSError):
            if _reader_gone(exc):
                raise StdoutGone from exc
            if self.stream is sys.stdout:
                silence_stdout()
        if _unprintable_after_the_write(self._command, _not_printed_reason(exc)):
            self._unprintable = True
            return
        if isinstance(exc, UnicodeEncodeError):
            raise exc
        raise StdoutError(f"the result could not be printed {_not_printed_reason(exc)}") from exc

    def table(
        self, headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str | None = None
    ) -> None:
        """Print ``rows`` under ``headers`` (only their text is held while the rows
        come: widths need every row); ``empty``: the line instead when there is none."""
        cells = [[_cell(c) for c in row] for row in rows]
        if self._unprintable:  # as line(): said once on stderr, the rest dropped
            return
        if not cells and empty is not None:
            self.line(empty)
            return
        if self.rich:
            self._rich_table(headers, cells)
        else:
            self._plain_table(headers, cells)

    def _rich_table(self, headers: Sequence[str], rows: list[list[str]]) -> None:
        """Print the table with rich (the cli extra, on a terminal)."""
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        table = Table(box=None, header_style="bold")
        for i, header in enumerate(headers):
            table.add_column(header, no_wrap=i == 0)  # names stay whole
        for row in rows:
            # Text, not str: rich would read a cell as markup, and a reason such as
            # "see [/]" failed the whole command with rich's MarkupError.
            table.add_row(*(Text(cell) for cell in row))
        try:
            Console(file=self.stream).print(table)
        except OSError as exc:
            self._not_printed(exc)

    def _plain_table(self, headers: Sequence[str], rows: list[list[str]]) -> None:
        """Print the table as space-aligned columns under upper-case headers."""
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        self.line(
            "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
        )
        for row in rows:
            self.line("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def visible(text: str) -> str:
    """``text`` with its control and invisible characters written as escapes.

    Reasons, actors, names, descriptions and keys come from whoever wrote
    them: a newline would forge a line of ``flags history``, an escape sequence
    would drive the operator's terminal, and an invisible character would
    mislead the operator reading it (U+202E shows ``ana\\u202egnp.exe`` as
    ``anaexe.png``; a zero-width space makes two actors look the same). Escaped
    as Python writes them (``\\n``, ``\\x1b``, ``\\u202e``): every control, format
    (bidi overrides and isolates, zero-width characters, tags), surrogate,
    private-use or unassigned code point, the line and paragraph separators,
    and the Hangul fillers that show as blanks. JSON output escapes control
    characters already and keeps the rest as written.
    """
    if text.isascii() and text.isprintable():
        return text  # the common case: two C-level scans
    return "".join(_escape(ch) if _is_hidden(ch) else ch for ch in text)


# Letters (category Lo) with no glyph: a name made of them looks blank.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _is_hidden(ch: str) -> bool:
    """A character an operator cannot see as itself: categories C* (controls,
    format characters such as U+202E, surrogates, private use, unassigned),
    Zl and Zp (which break the line), and the blank letters above."""
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp") or ch in _BLANK_LETTERS


def _escape(ch: str) -> str:
    """``ch`` as an escape: Python's (``\\n``, ``\\x1b``), else ``\\uXXXX``/``\\UXXXXXXXX``."""
    escaped = repr(ch)[1:-1]
    if escaped != ch:
        return escaped
    code = ord(ch)  # a character repr keeps as it is (a blank letter)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _cell(value: Any) -> str:
    return visible(_cell_text(value))


TEXT_CELL_CHARS = 200
"""The longest value ``shortened`` leaves whole (a text table's cell)."""


def shortened(value: Any, limit: int = TEXT_CELL_CHARS) -> str:
    """``value``'s table cell text cut to ``limit`` characters, the last three ``...``,
    when longer: for a text table (``agents list``'s metadata, a 60 KB value
    filled a screen per row); JSON keeps every value whole.

    >>> shortened({"a": "x" * 10}, 12)
    '{"a": "xx...'
    """
    text = _cell_text(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cell_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple | set | frozenset):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, default=_json_default)
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if not isinstance(value, tuple) else list(value)
    return str(value)
