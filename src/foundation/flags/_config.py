"""Config-as-code: read a config layer from TOML, a mapping and the environment.

Parsing is pure: it returns the new layer or raises, and never touches a
``FeatureFlags``, which is what makes a load all-or-nothing.

Whatever the input, a load either succeeds or raises ``InvalidFlagValue`` /
``UnknownFlag`` with a short message: a file is read by the one config reader
(``foundation._toml_files``): a regular file of at most ``MAX_CONFIG_BYTES``
(a FIFO, a directory or ``/dev/zero`` is refused unread), UTF-8 TOML nested
no deeper than Python's parser can.
Also here: the checks of the audit fields ``by``/``reason`` of every write.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from foundation._toml_files import MAX_CONFIG_BYTES, read_toml
from foundation.errors import (
    InvalidConfig,
    InvalidFlagValue,
    UnknownFlag,
    bounded_list,
    bounded_repr,
)
from foundation.flags._store import FlagState

if TYPE_CHECKING:
    # tomllib, pathlib and difflib are imported where used (`import foundation` stays cheap).
    from pathlib import Path

__all__ = [
    "ENV_PREFIX",
    "MAX_CONFIG_BYTES",
    "check_audit_text",
    "env_key",
    "env_variable",
    "nearest",
    "parse_config",
    "parse_value",
    "short_repr",
]

ENV_PREFIX = "FOUNDATION_FLAG_"
MAX_AUDIT_CHARS = 4096
"""Longest ``by`` / ``reason`` accepted on a write."""

short_repr = bounded_repr  # messages stay short, whatever the input


def check_audit_text(value: object, what: str) -> None:
    """Refuse a ``by``/``reason`` that is not ``None`` or a str every store can keep.

    One rule on every store (the memory store would keep anything, SQLite and
    Redis would fail later): ``str`` of at most ``MAX_AUDIT_CHARS`` characters,
    valid Unicode (no lone surrogates). A ``by`` names someone: not empty or
    blank (``""``, ``"   "``, ``"\\n"``: the history would record nobody; ``None``
    leaves the write unnamed). The one rule of the ``foundation`` command's
    ``--by`` too.

    >>> check_audit_text(42, "by")
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidFlagValue: by= must be a str or None, not int: 42
    >>> check_audit_text("  ", "by")
    Traceback (most recent call last):
    ...
    foundation.errors.InvalidFlagValue: by= names who makes the change: not empty or blank, not '  ' (the history would record nobody)
    """  # noqa: E501
    if value is None:
        return
    if not isinstance(value, str):
        raise InvalidFlagValue(
            f"{what}= must be a str or None, not {type(value).__name__}: {short_repr(value)}"
        )
    if what == "by" and not value.strip():
        raise InvalidFlagValue(
            f"by= names who makes the change: not empty or blank, not {short_repr(value)} "
            "(the history would record nobody)"
        )
    if len(value) > MAX_AUDIT_CHARS:
        raise InvalidFlagValue(f"{what}= is longer than {MAX_AUDIT_CHARS} characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidFlagValue(
                f"{what}= is not valid Unicode (a lone surrogate): {short_repr(value)}"
            ) from None


_ON = frozenset({"on", "true"})
_OFF = frozenset({"off", "false"})

Source = str | os.PathLike[str] | Mapping[str, Any] | None


def nearest(name: str, declared: Collection[str]) -> str | None:
    """The declared name closest to ``name`` (for 'did you mean'), or None."""
    import difflib

    lowered = {d.lower(): d for d in declared}
    if name.lower() in lowered:
        return lowered[name.lower()]
    close = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.6)
    if close:
        return close[0]
    # A truncated name ("use_ets" for "use_ets_agent_registry") is a common typo
    # that difflib scores low because of the length difference.
    prefixed = sorted(d for d in declared if len(name) >= 3 and d.startswith(name))
    if prefixed:
        return prefixed[0]
    close = difflib.get_close_matches(name, list(declared), n=1, cutoff=0.4)
    return close[0] if close else None


def parse_value(value: object, variants: Collection[str] | None = None) -> FlagState:
    """A config value as a flag state.

    A boolean flag (``variants`` None) takes ``True``/``False``, on/off/true/false
    (any case) or ``"<p>%"``. A typed flag takes one of its variant names
    (switch on, a split giving that variant 100%; a variant name wins over the
    words) or ``True``/``False``/on/off/true/false for the switch.

    Raises:
        InvalidFlagValue: anything else, bare numbers included.

    >>> parse_value("25%")
    FlagState(switch=True, percentage=25.0, allow=frozenset(), deny=frozenset())
    >>> parse_value("blue", ["red", "blue"])
    FlagState(switch=True, percentage=None, allow=frozenset(), deny=frozenset(), split={'blue': 100.0})
    """  # noqa: E501
    if variants is not None:
        return _parse_typed(value, variants)
    if isinstance(value, bool):
        return FlagState(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _ON:
            return FlagState(True)
        if text in _OFF:
            return FlagState(False)
        if text.endswith("%"):
            return _parse_percentage(value, text)
    raise InvalidFlagValue(
        f"{short_repr(value)} is not a flag value: "
        "use true/false, 'on'/'off' or a percentage like '25%'"
    )


def _parse_percentage(value: str, text: str) -> FlagState:
    """The state of a ``"<p>%"`` value (``text``: it stripped and lowered)."""
    try:
        p = float(text[:-1])
    except ValueError:
        p = math.nan
    if math.isfinite(p) and 0.0 <= p <= 100.0:
        return FlagState(True, p)
    raise InvalidFlagValue(f"percentage {short_repr(value)} is not a number within 0..100")


def _parse_typed(value: object, variants: Collection[str]) -> FlagState:
    if isinstance(value, str):
        for name in (value, value.strip()):  # a variant name wins over on/off words
            if name in variants:
                return FlagState(True, split={name: 100.0})
        text = value.strip().lower()
        if text in _ON | _OFF:
            return FlagState(text in _ON)
    if isinstance(value, bool):
        return FlagState(value)
    raise _not_a_variant(value, variants)


def _not_a_variant(value: object, variants: Collection[str]) -> InvalidFlagValue:
    """The error for a value that is neither a variant name nor a switch word."""
    names = list(variants)
    shown = ", ".join(short_repr(n) for n in names[:10]) + (", ..." if len(names) > 10 else "")
    hint = nearest(value, names) if isinstance(value, str) and len(value) <= 200 else None
    did = f" (did you mean {short_repr(hint)}?)" if hint is not None else ""
    return InvalidFlagValue(
        f"{short_repr(value)} is not a value of this typed flag{did}: "
        f"use a variant name ({shown}) or true/false, 'on'/'off'"
    )


def _read_table(path: Path) -> Mapping[str, Any]:
    """The flags table of the TOML file ``path`` (read by the one bounded reader)."""
    shown = short_repr(str(path))
    try:
        document = read_toml(path, "flag config")
    except FileNotFoundError as exc:
        raise InvalidFlagValue(f"cannot read flag config {shown}: {exc.strerror}") from None
    except InvalidConfig as exc:  # a flag config's problems are InvalidFlagValue (contract)
        raise InvalidFlagValue(str(exc)) from None
    return _flags_table(document, shown)


def _flags_table(document: dict[str, Any], shown: str) -> Mapping[str, Any]:
    """The ``[flags]`` (or ``[tool.foundation.flags]``) table of a parsed TOML document."""
    if "flags" in document:
        table = document["flags"]
        where = "[flags]"
    else:
        table = document
        for part in ("tool", "foundation", "flags"):  # any level may be missing or not a table
            table = table.get(part) if isinstance(table, dict) else None
        where = "[tool.foundation.flags]"
        if table is None:
            raise InvalidFlagValue(
                f"{shown} has neither a [flags] table nor [tool.foundation.flags]"
            )
    if not isinstance(table, Mapping):
        raise InvalidFlagValue(f"{where} in {shown} must be a table, not {short_repr(table)}")
    return table


def env_key(name: str) -> str:
    """The part of a flag's variable after ``FOUNDATION_FLAG_``: ``name`` upper-cased,
    each character other than ``A-Z``, ``0-9`` and ``_`` written ``_``, so that a
    shell can set it (``export`` takes nothing else). Every declarable name has
    one; two flags with the same one are refused at declaration (``_by_name``).
    A variable's own suffix is read the same way (``FOUNDATION_FLAG_new-parser``,
    set with ``env``, names the same flag).

    >>> [env_key(n) for n in ("beta", "new-parser", "new.parser", "café au lait")]
    ['BETA', 'NEW_PARSER', 'NEW_PARSER', 'CAF__AU_LAIT']
    """
    return "".join(c if c in _ENV_CHARS else "_" for c in name.upper())


_ENV_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def env_variable(name: str) -> str:
    """The variable that sets flag ``name``: ``FOUNDATION_FLAG_`` + ``env_key(name)``."""
    return ENV_PREFIX + env_key(name)


def _env_entries(env: object, declared: Collection[str]) -> list[tuple[str, str, object]]:
    """(flag name, variable, value) of each ``FOUNDATION_FLAG_*`` variable in ``env``.

    A variable names the declared flag whose ``env_key`` its suffix has; one
    naming none gives its suffix lower-cased (``UnknownFlag`` names the
    variable). Two variables naming one declared flag (``FOUNDATION_FLAG_BETA`` and
    ``FOUNDATION_FLAG_beta``) are ``InvalidFlagValue``: which one wins would
    depend on the environment's order."""
    if not isinstance(env, Mapping):
        raise InvalidFlagValue(
            f"env must be a mapping of environment variables or None, not {short_repr(env)}"
        )
    by_key = {env_key(d): d for d in declared}
    entries: list[tuple[str, str, object]] = []
    seen: dict[str, str] = {}
    for key, value in env.items():
        if isinstance(key, str) and key.startswith(ENV_PREFIX):
            suffix = key[len(ENV_PREFIX) :]
            name = by_key.get(env_key(suffix), suffix.lower())
            if name in seen and name in declared:  # an undeclared one: UnknownFlag names both
                raise InvalidFlagValue(
                    f"{short_repr(seen[name])[1:-1]} and {short_repr(key)[1:-1]} both set "
                    f"flag {short_repr(name)}: keep one"
                )
            seen[name] = key
            entries.append((name, key, value))
    return entries


def parse_config(
    source: Source, env: Mapping[str, str] | None, declared: Collection[str]
) -> tuple[dict[str, FlagState], str]:
    """The whole config layer (file or mapping, then environment) and a label for it.

    ``declared``: the declared names, or a mapping name -> declaration whose
    ``variants`` attribute (None for a boolean flag) says which values a flag takes.

    Raises:
        UnknownFlag: naming every undeclared flag at once.
        InvalidFlagValue: naming every bad value at once, or an unreadable file.
    """
    label = "environment"
    entries: list[tuple[str, str, object]] = []  # (flag name, where, value)
    if source is not None:
        table, label = _source_table(source)
        for k, v in table.items():
            name = k if isinstance(k, str) else short_repr(k)  # a non-str key names no flag
            entries.append((name, name, v))
    if env is not None:
        entries.extend(_env_entries(env, declared))
        label = f"{label} + environment" if source is not None else label
    _refuse_undeclared(entries, declared)
    return _parse_entries(entries, declared), label


def _source_table(source: object) -> tuple[Mapping[str, Any], str]:
    """The table of a config source (a mapping or a TOML file path) and its label."""
    from pathlib import Path

    if isinstance(source, Mapping):
        return source, "mapping"
    if not isinstance(source, str | os.PathLike):
        raise InvalidFlagValue(
            f"config source must be a TOML file path or a mapping, not {short_repr(source)}"
        )
    try:
        path = Path(source)
    except TypeError:  # a PathLike whose __fspath__ gives bytes (or not a path)
        raise InvalidFlagValue(
            f"config source must be a TOML file path or a mapping, not {short_repr(source)}"
        ) from None
    return _read_table(path), os.fspath(source)


def _refuse_undeclared(entries: list[tuple[str, str, object]], declared: Collection[str]) -> None:
    """Raise ``UnknownFlag`` naming every entry whose flag is not declared."""
    unknown = [name for name, _, _ in entries if name not in declared]
    if unknown:
        unique = list(dict.fromkeys(unknown))
        # An environment entry's "where" is its variable (a file's is the name itself).
        origins = {n: w for n, w, _ in entries if w != n and n in unique}
        raise UnknownFlag(
            unique, suggestions={n: nearest(n, declared) for n in unique}, origins=origins
        )


def _parse_entries(
    entries: list[tuple[str, str, object]], declared: Collection[str]
) -> dict[str, FlagState]:
    """The layer of (flag name, where, value) entries; InvalidFlagValue naming every bad one."""
    layer: dict[str, FlagState] = {}
    problems: list[str] = []
    kinds = declared if isinstance(declared, Mapping) else {}
    for name, where, raw in entries:  # the environment comes last, so it wins
        try:
            layer[name] = parse_value(raw, getattr(kinds.get(name), "variants", None))
        except InvalidFlagValue as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise InvalidFlagValue("invalid flag config: " + bounded_list(problems))
    return layer
