"""The admin's JSON: its one rendering, the lone-surrogate check of request
bodies, and the JSON shapes of registry entries, deaths and flag changes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from foundation.flags import FlagChange
from foundation.registry import Entry, RegistryEvent

__all__ = ["entry_dict", "render_json"]


def render_json(payload: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """The one JSON rendering of every admin and OFREP answer (and SSE event).

    ASCII-only (``ensure_ascii``): any ``str`` renders, a lone surrogate too
    (as ``\\udXXX``, which JSON allows), so a value persisted by an older
    version can never make a read fail. ``NaN`` is refused, as by Starlette.

    Example:
        >>> render_json({"actor": "\\ud800", "café": 1})
        b'{"actor":"\\\\ud800","caf\\\\u00e9":1}'
    """
    return json.dumps(
        payload, ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=default
    ).encode("ascii")


def _lone_surrogate(value: Any) -> str | None:
    """A short description of where ``value`` (decoded JSON) holds a lone surrogate, else None.

    Decoded JSON pairs ``\\ud83d\\ude00`` into one character, so any surrogate
    code point left in a ``str`` is a lone one (UTF-8 cannot encode it).
    """
    if isinstance(value, str):
        return "a string" if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        return _lone_surrogate_in_dict(value)
    if isinstance(value, list):
        for item in value:
            where = _lone_surrogate(item)
            if where is not None:
                return where
    return None


def _lone_surrogate_in_dict(value: dict[Any, Any]) -> str | None:
    """``_lone_surrogate`` for a decoded JSON object: its keys, then each value in order."""
    for k, v in value.items():
        if _SURROGATE.search(k):
            return "a key"
        where = _lone_surrogate(v)
        if where is not None:
            return f"{k!r}" if where == "a string" else where
    return None


_SURROGATE = re.compile("[\\ud800-\\udfff]")


def _plain_key(key: object) -> object:
    """A registry key as JSON: tuples as lists, frozensets as sorted lists."""
    if isinstance(key, tuple):
        return [_plain_key(k) for k in key]
    if isinstance(key, frozenset):
        return sorted((_plain_key(k) for k in key), key=repr)
    if key is None or isinstance(key, str | int | float | bool):
        return key
    return repr(key)


def _kind(agent: object) -> str:
    kind = getattr(agent, "kind", None)  # RemoteAgent
    if isinstance(kind, str):
        return kind
    from foundation.liveness._agents import kind_of

    return kind_of(agent) or type(agent).__name__


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON with ``str`` for anything JSON cannot hold."""
    return json.loads(json.dumps(value, default=str))


def key_text(entry: Entry) -> str:
    """The key as the page shows and sorts it: a ``str`` as it is, else its JSON."""
    return entry.key if isinstance(entry.key, str) else json.dumps(_plain_key(entry.key))


_IN_PROCESS_KINDS = frozenset(("thread", "task", "future"))


def _pid_and_name(agent: Any, kind: str) -> tuple[int | None, str | None]:
    """The process an agent is or lives in, and its name, as every listing shows
    them (``foundation agents list``, another node's entries): a local thread,
    task or future lives in this process, a task is named by ``get_name()``."""
    pid = getattr(agent, "pid", None)
    name = getattr(agent, "name", None)
    if kind in _IN_PROCESS_KINDS and not isinstance(pid, int):
        pid = os.getpid()  # a local agent (a RemoteAgent carries its node's pid)
        if kind == "task" and name is None:
            name = agent.get_name()
    return (pid if isinstance(pid, int) else None, name if isinstance(name, str) else None)


def entry_dict(entry: Entry) -> dict[str, Any]:
    agent = entry.agent
    kind = _kind(agent)
    pid, name = _pid_and_name(agent, kind)
    return {
        "key": _plain_key(entry.key),
        "key_text": key_text(entry),
        "node": entry.node,
        "kind": kind,
        "pid": pid,
        "name": name,
        "metadata": _jsonable(dict(entry.metadata)),
        "registered_at": entry.registered_at,
    }


def _down_dict(event: RegistryEvent) -> dict[str, Any]:
    down = event.down
    if down is None:
        return {"reason": "down", "exception": None, "exit_code": None, "signal": None}
    return {
        "reason": down.reason,
        "exception": None if down.exception is None else repr(down.exception),
        "exit_code": down.exit_code,
        "signal": down.signal,
    }


def _dead_dict(event: RegistryEvent, at: float) -> dict[str, Any]:
    return {**entry_dict(event.entry), "down": _down_dict(event), "at": at}


def _change_dict(change: FlagChange) -> dict[str, Any]:
    """``to_dict`` plus ``no_op`` (see ``FlagChange.no_op``)."""
    return {**change.to_dict(), "no_op": change.no_op}
