"""Foundation's exceptions, named by cause.

Every error also subclasses the builtin a Python user would catch, so
``except KeyError`` around a lookup of an unknown flag keeps working::

    FoundationError
    ├── Closed                       (RuntimeError) any call on a closed object, reads included
    ├── RegistryError
    │   ├── AlreadyRegistered        (ValueError)   key holds a live agent; ``.entry``
    │   ├── NotRegistered            (KeyError)     update of an absent key
    │   ├── NotAlive                 (ValueError)   agent already dead at register
    │   ├── UnsupportedAgent         (TypeError)    no way to monitor this object
    │   ├── InvalidKey               (TypeError)    unhashable / unserialisable key
    │   ├── InvalidMetadata          (ValueError)   not a JSON-compatible mapping
    │   ├── InvalidCriteria          (ValueError)   malformed query
    │   └── BackendUnavailable       (ConnectionError) backend down or unreachable
    ├── FlagError
    │   ├── UnknownFlag              (KeyError)     undeclared flag name
    │   ├── InvalidFlagValue         (ValueError)   bad value or percentage
    │   ├── MigrationError           (RuntimeError) refused stage transition
    │   └── FlagStoreUnavailable     (BackendUnavailable) the store's file cannot be used
    ├── SupervisorError
    │   ├── StartError               (RuntimeError) a child failed to start; ``.child``
    │   ├── ShutdownError            (RuntimeError) a child failed to stop
    │   └── RestartIntensityExceeded (RuntimeError) too many restarts
    └── InvalidConfig                (ValueError)   a bad config file, URL or option

Example:
    >>> from foundation import errors
    >>> issubclass(errors.NotRegistered, KeyError)
    True
    >>> str(errors.UnknownFlag("use_ets", suggestion="use_ets_agent_registry"))
    "unknown flag 'use_ets' (did you mean 'use_ets_agent_registry'?)"
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any, Final

__all__ = [
    "AlreadyRegistered",
    "BackendUnavailable",
    "Closed",
    "FlagError",
    "FlagStoreUnavailable",
    "FoundationError",
    "InvalidConfig",
    "InvalidCriteria",
    "InvalidFlagValue",
    "InvalidKey",
    "InvalidMetadata",
    "MigrationError",
    "NotAlive",
    "NotRegistered",
    "RegistryError",
    "RestartIntensityExceeded",
    "ShutdownError",
    "StartError",
    "SupervisorError",
    "UnknownFlag",
    "UnsupportedAgent",
]


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 3, 80, 80, 40


def bounded_repr(value: object) -> str:
    """``repr(value)`` cut to at most 200 characters, never raising: messages stay short.

    >>> len(bounded_repr("x" * 10_000)) < 100, bounded_repr(10**5000)
    (True, '<int object>')
    """
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__: name the type only
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 200 else text[:197] + "..."


def escape_controls(text: object) -> str:
    """``str(text)`` with each unprintable character (newline, tab, other control and
    format characters, a lone surrogate) escaped as ``repr`` writes it: for user
    text (a reason, an actor) in a log message, which then stays one line and
    cannot forge another. Printable text is returned unchanged.

    >>> escape_controls("rollout"), escape_controls("a\\nERROR forged\\udcff")
    ('rollout', 'a\\\\nERROR forged\\\\udcff')
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def bounded_list(problems: list[str]) -> str:
    """``problems`` joined by ``"; "`` in at most about 1,300 characters, however many
    there are: each is cut to 300 characters, and those past 1,000 are counted.

    >>> bounded_list(["a", "b"])
    'a; b'
    >>> bounded_list(["x" * 400] * 10).endswith("; and 7 more")
    True
    """
    shown: list[str] = []
    length = 0
    for text in problems:
        problem = text if len(text) <= 300 else text[:297] + "..."
        if shown and length + len(problem) > 1000:
            shown.append(f"and {len(problems) - len(shown)} more")
            break
        shown.append(problem)
        length += len(problem) + 2
    return "; ".join(shown)


class FoundationError(Exception):
    """Base class of every error Foundation raises on purpose."""


# --------------------------------------------------------------------------- registry


class Closed(FoundationError, RuntimeError):
    """A public call on an object that was closed: a registry, a flag service, a
    store, a monitor manager or a supervisor handle. Reads are refused too: a
    closed object answers nothing rather than something stale.

    >>> issubclass(Closed, RuntimeError)
    True
    """


class RegistryError(FoundationError):
    """Base class of registry errors."""


class AlreadyRegistered(RegistryError, ValueError):
    """The key already holds a live agent; ``entry`` is that live entry."""

    def __init__(self, key: Any, entry: Any = None) -> None:
        super().__init__(
            f"key {bounded_repr(key)} is already registered to a live agent; "
            "unregister it first or pass replace=True"
        )
        self.key = key
        self.entry = entry


class NotRegistered(RegistryError, KeyError):
    """The key is not registered (or its agent has died)."""

    def __init__(self, key: Any) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"key {bounded_repr(self.key)} is not registered"


class NotAlive(RegistryError, ValueError):
    """The agent is already dead, so it cannot be registered."""

    def __init__(self, key: Any, agent: Any = None) -> None:
        super().__init__(
            f"cannot register {bounded_repr(key)}: agent {bounded_repr(agent)} is not alive"
        )
        self.key = key
        self.agent = agent


class UnsupportedAgent(RegistryError, TypeError):
    """Foundation does not know how to watch this kind of object for death."""


class InvalidKey(RegistryError, TypeError):
    """The key is not usable by this backend (unhashable, or not serialisable)."""


class InvalidMetadata(RegistryError, ValueError):
    """Metadata is not a mapping of JSON-compatible values (or is too large)."""


class InvalidCriteria(RegistryError, ValueError):
    """A query criterion has the wrong shape, an unknown op, or a bad value."""


class BackendUnavailable(RegistryError, ConnectionError):
    """The backend (for example Redis) cannot be reached within the time bound."""


# --------------------------------------------------------------------------- flags


class FlagError(FoundationError):
    """Base class of feature-flag and migration errors."""


class FlagStoreUnavailable(FlagError, BackendUnavailable):
    """A flag store whose file cannot be used now, through no fault of the call: a
    ``SQLiteFlagStore`` file on a full disk, read-only, failing I/O or corrupt, or
    deleted or replaced while in use (stale: reopen the store). Nothing was written.

    Both a ``FlagError`` (what these failures raised before) and a
    ``BackendUnavailable`` (the store's backend cannot serve the call), so every
    layer treats it as an unavailable backend: the admin API answers 503, the
    ``foundation`` command exits 69.

    >>> [issubclass(FlagStoreUnavailable, t) for t in (FlagError, BackendUnavailable)]
    [True, True]
    """


class UnknownFlag(FlagError, KeyError):
    """A flag name that was never declared.

    ``names`` lists every unknown name (a config load reports them all at once);
    ``suggestion`` is the nearest declared name, if any is close.
    """

    def __init__(
        self,
        name: str | Iterable[str],
        *,
        suggestion: str | None = None,
        suggestions: dict[str, str | None] | None = None,
        origins: dict[str, str] | None = None,
    ) -> None:
        names = [name] if isinstance(name, str) else list(name)
        super().__init__(names[0] if len(names) == 1 else names)
        self.names: tuple[str, ...] = tuple(names)
        self.name = names[0] if names else ""
        self.suggestions: dict[str, str | None] = dict(suggestions or {})
        if suggestion is not None and len(names) == 1:
            self.suggestions[names[0]] = suggestion
        self.suggestion = self.suggestions.get(self.name)
        #: Where a name came from when it was not written as a flag name (the
        #: environment variable ``FOUNDATION_FLAG_...`` that named it).
        self.origins: dict[str, str] = dict(origins or {})

    def __str__(self) -> str:
        # Bounded, however many names (a whole environment of FOUNDATION_FLAG_*
        # variables) and however long each: the rest are counted, not listed.
        parts: list[str] = []
        length = 0
        for n in self.names:
            hint = self.suggestions.get(n)
            notes = [f"from {bounded_repr(self.origins[n])[1:-1]}"] if n in self.origins else []
            if hint:
                notes.append(f"did you mean {bounded_repr(hint)}?")
            part = f"{bounded_repr(n)} ({'; '.join(notes)})" if notes else bounded_repr(n)
            if parts and length + len(part) > _UNKNOWN_FLAGS_TEXT:
                parts.append(f"and {len(self.names) - len(parts)} more")
                break
            parts.append(part)
            length += len(part) + 2
        noun = "flag" if len(self.names) == 1 else "flags"
        return f"unknown {noun} " + ", ".join(parts)


_UNKNOWN_FLAGS_TEXT: Final = 500
"""How much of an ``UnknownFlag`` message lists names; the rest are counted."""


class InvalidFlagValue(FlagError, ValueError):
    """A flag value, percentage or config entry that is not valid."""


class MigrationError(FlagError, RuntimeError):
    """A migration step was refused (past the last stage, not ready, bad target)."""


# --------------------------------------------------------------------------- supervision


class SupervisorError(FoundationError):
    """Base class of supervisor errors.

    Management calls raise it directly with OTP's ``reason`` (``"not_found"``,
    ``"running"``, ``"restarting"``, ...) and the ``child`` id.
    """

    reason: str | None = None
    child: str | None = None
    #: With ``reason == "already_started"``: the running child's handle (or the
    #: live agent holding its ``register_as`` name), as OTP's ``{already_started, Pid}``.
    handle: Any = None


class StartError(SupervisorError, RuntimeError):
    """A child failed to start; ``child`` names it and ``__cause__`` says why."""

    def __init__(self, child: str, message: str | None = None) -> None:
        super().__init__(message or f"child {child!r} failed to start")
        self.child: str | None = child


class ShutdownError(SupervisorError, RuntimeError):
    """A child could not be stopped cleanly."""


class RestartIntensityExceeded(SupervisorError, RuntimeError):
    """More than ``max_restarts`` restarts happened within ``max_seconds``."""


# --------------------------------------------------------------------------- application


class InvalidConfig(FoundationError, ValueError):
    """A configuration that cannot be used: a bad config file or option, a
    malformed backend URL, a Redis database index out of range."""
