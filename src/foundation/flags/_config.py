"""Config-as-code: read a config layer from TOML, a mapping and the environment.

Parsing is pure: it returns the new layer or raises, and never touches a
``FeatureFlags``, which is what makes a load all-or-nothing.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from foundation.errors import InvalidFlagValue, UnknownFlag
from foundation.flags._store import FlagState

__all__ = ["ENV_PREFIX", "nearest", "parse_config", "parse_value"]

ENV_PREFIX = "FOUNDATION_FLAG_"
_ON = frozenset({"on", "true"})
_OFF = frozenset({"off", "false"})

Source = str | os.PathLike[str] | Mapping[str, Any] | None


def nearest(name: str, declared: Collection[str]) -> str | None:
    """The declared name closest to ``name`` (for 'did you mean'), or None."""
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


def parse_value(value: object) -> FlagState:
    """A config value as a flag state: ``True``/``False``, on/off/true/false, or ``"<p>%"``.

    Raises:
        InvalidFlagValue: anything else, bare numbers included.
    """
    if isinstance(value, bool):
        return FlagState(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _ON:
            return FlagState(True)
        if text in _OFF:
            return FlagState(False)
        if text.endswith("%"):
            try:
                p = float(text[:-1])
            except ValueError:
                p = math.nan
            if math.isfinite(p) and 0.0 <= p <= 100.0:
                return FlagState(True, p)
            raise InvalidFlagValue(f"percentage {value!r} is not a number within 0..100")
    raise InvalidFlagValue(
        f"{value!r} is not a flag value: use true/false, 'on'/'off' or a percentage like '25%'"
    )


def _read_table(path: Path) -> Mapping[str, Any]:
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except OSError as exc:
        raise InvalidFlagValue(f"cannot read flag config {str(path)!r}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidFlagValue(f"malformed TOML in {str(path)!r}: {exc}") from exc
    if "flags" in document:
        table = document["flags"]
        where = "[flags]"
    else:
        table = document.get("tool", {}).get("foundation", {}).get("flags")
        where = "[tool.foundation.flags]"
        if table is None:
            raise InvalidFlagValue(
                f"{str(path)!r} has neither a [flags] table nor [tool.foundation.flags]"
            )
    if not isinstance(table, Mapping):
        raise InvalidFlagValue(f"{where} in {str(path)!r} must be a table, not {table!r}")
    return table


def parse_config(
    source: Source, env: Mapping[str, str] | None, declared: Collection[str]
) -> tuple[dict[str, FlagState], str]:
    """The whole config layer (file or mapping, then environment) and a label for it.

    Raises:
        UnknownFlag: naming every undeclared flag at once.
        InvalidFlagValue: naming every bad value at once, or an unreadable file.
    """
    label = "environment"
    entries: list[tuple[str, str, object]] = []  # (flag name, where, value)
    if source is not None:
        if isinstance(source, Mapping):
            table: Mapping[str, Any] = source
            label = "mapping"
        elif isinstance(source, str | os.PathLike):
            table = _read_table(Path(source))
            label = os.fspath(source)
        else:
            raise InvalidFlagValue(
                f"config source must be a TOML file path or a mapping, not {source!r}"
            )
        entries.extend((str(k), f"{k}", v) for k, v in table.items())
    if env is not None:
        by_upper = {d.upper(): d for d in declared}
        for key, value in env.items():
            if key.startswith(ENV_PREFIX):
                suffix = key[len(ENV_PREFIX) :]
                entries.append((by_upper.get(suffix.upper(), suffix.lower()), key, value))
        label = f"{label} + environment" if source is not None else label

    unknown = [name for name, _, _ in entries if name not in declared]
    if unknown:
        unique = list(dict.fromkeys(unknown))
        raise UnknownFlag(unique, suggestions={n: nearest(n, declared) for n in unique})
    layer: dict[str, FlagState] = {}
    problems: list[str] = []
    for name, where, raw in entries:  # the environment comes last, so it wins
        try:
            layer[name] = parse_value(raw)
        except InvalidFlagValue as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        raise InvalidFlagValue("invalid flag config: " + "; ".join(problems))
    return layer, label
