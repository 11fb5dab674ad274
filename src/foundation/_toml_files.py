"""Reading a TOML config file safely: the one reader of every config file.

``foundation.toml`` (the CLI's ``[cli]`` table and ``AppConfig``) and flag
config files are user input that an operator may get wrong in every way: a
directory, a FIFO that would block for ever, ``/dev/zero`` that never ends, a
file of another encoding, TOML nested deeper than the parser's recursion.
``read_toml`` turns each into one bounded ``InvalidConfig`` line and never
reads more than ``MAX_CONFIG_BYTES + 1`` bytes.

Example:
    >>> import os, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "foundation.toml")
    ...     with open(path, "w", encoding="utf-8") as f:
    ...         _ = f.write("[flags]\\nbeta = true\\n")
    ...     read_toml(path, "config")
    {'flags': {'beta': True}}
    >>> read_toml("/dev/zero", "config")
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidConfig: config '/dev/zero' is not a regular file
"""

from __future__ import annotations

import os
import stat
from typing import Any, Final

from foundation.errors import InvalidConfig, bounded_repr

MAX_CONFIG_BYTES: Final = 1024 * 1024
"""A config file larger than this (1 MiB) is refused, unread."""


def read_toml(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    """The TOML document in the regular file ``path``; ``what`` names it in errors.

    Raises:
        FileNotFoundError: ``path`` does not exist (callers decide what that means).
        InvalidConfig: anything else that makes it unusable, in one bounded line.
    """
    import tomllib

    shown = bounded_repr(os.fspath(path))
    data = _read_bounded(path, what, shown)
    if len(data) > MAX_CONFIG_BYTES:
        raise InvalidConfig(f"{what} {shown} is larger than {MAX_CONFIG_BYTES} bytes; not loaded")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidConfig(f"{what} {shown} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"malformed TOML in {what} {shown}: {str(exc)[:200]}") from None
    except RecursionError:
        raise InvalidConfig(f"malformed TOML in {what} {shown}: nested too deeply") from None


def _read_bounded(path: str | os.PathLike[str], what: str, shown: str) -> bytes:
    """At most ``MAX_CONFIG_BYTES + 1`` bytes of the regular file ``path``."""
    try:
        # O_NONBLOCK: opening a FIFO (named pipe) would otherwise wait for a writer, for ever.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise InvalidConfig(f"cannot read {what} {shown}: {_why(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a directory, a FIFO, /dev/zero...
            raise InvalidConfig(f"{what} {shown} is not a regular file")
        os.set_blocking(fd, True)
        data = b""
        while len(data) <= MAX_CONFIG_BYTES:  # bounded, whatever the file claims
            chunk = os.read(fd, MAX_CONFIG_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
    except OSError as exc:  # EIO...
        raise InvalidConfig(f"cannot read {what} {shown}: {_why(exc)}") from None
    finally:
        os.close(fd)
    return data


def _why(exc: Exception) -> str:
    """The reason of an ``OSError`` without its path (which may be any length)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)[:200] or type(exc).__name__
