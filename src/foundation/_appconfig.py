"""Application configuration: ``foundation.toml`` or ``[tool.foundation]`` in pyproject.toml.

Example ``foundation.toml``::

    [registry]
    backend = "memory"            # or "redis"
    indexed = ["capability"]
    redis_url = "redis://127.0.0.1:6379/0"
    namespace = "foundation"

    [flag_store]
    kind = "sqlite"               # "memory" (default), "sqlite" or "redis"
    path = ".foundation/flags.sqlite3"   # kind = "sqlite"
    # redis_url = "redis://..."   # kind = "redis" (default: registry.redis_url)
    # namespace = "shop-flags"    # kind = "redis" (default: registry.namespace)

    [flags]                       # the config layer of the feature flags
    use_ets_agent_registry = true

    [migration]                   # optional automatic rollback
    health_interval = 5.0
    max_restarts_per_minute = 10
    max_latency_ratio = 3.0

    [cli]                         # read by the ``foundation`` command, not here
    store = "sqlite:///.foundation/flags.sqlite3"
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from foundation.errors import InvalidConfig, bounded_repr

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["AppConfig", "unknown_sections"]

FlagStoreKind = Literal["memory", "sqlite", "redis"]
RegistryBackend = Literal["memory", "redis"]

# [cli] shares the file: the ``foundation`` command reads (and checks) it.
_SECTIONS = {"registry", "flag_store", "flags", "migration", "cli"}
_KNOWN = {
    "registry": {"backend", "indexed", "redis_url", "namespace", "lease_ttl"},
    "flag_store": {"kind", "path", "redis_url", "namespace", "history_limit"},
    "migration": {
        "health_interval",
        "max_error_rate",
        "max_restarts_per_minute",
        "max_latency_ratio",
    },
}


def unknown_sections(data: Mapping[str, Any]) -> list[str]:
    """A problem per top-level table of ``data`` no part of Foundation reads
    (``unknown section [clii] (did you mean [cli]?)``): the one check of the
    shared file, here and in the ``foundation`` command."""
    import difflib

    problems = []
    for section in data:
        if section not in _SECTIONS:
            close = difflib.get_close_matches(str(section), sorted(_SECTIONS), n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            problems.append(f"unknown section [{bounded_repr(section)[1:-1]}]{hint}")
    return problems


def _section_tables(data: Mapping[str, Any], problems: list[str]) -> dict[str, Mapping[str, Any]]:
    """The known sections of ``data``; unknown sections and keys go to ``problems``."""
    problems += unknown_sections(data)
    tables: dict[str, Mapping[str, Any]] = {}
    for section in _SECTIONS:
        table = data.get(section, {})
        if not isinstance(table, Mapping):
            problems.append(f"[{section}] must be a table")
            continue
        tables[section] = table
        known = _KNOWN.get(section)
        if known is not None:
            problems += [f"unknown key {section}.{k}" for k in table if k not in known]
    return tables


def _choice_problems(values: Mapping[str, Any], store: Mapping[str, Any]) -> list[str]:
    """Problems with the backend choices and the settings each choice needs."""
    problems: list[str] = []
    if values.get("registry_backend", "memory") not in ("memory", "redis"):
        problems.append(f"registry.backend must be memory or redis: {values['registry_backend']!r}")
    if values.get("flag_store", "memory") not in ("memory", "sqlite", "redis"):
        problems.append(
            f"flag_store.kind must be memory, sqlite or redis: {values['flag_store']!r}"
        )
    has_url = values.get("redis_url") or values.get("flag_store_redis_url")
    if values.get("registry_backend") == "redis" and not has_url:
        problems.append("registry.backend = 'redis' needs registry.redis_url")
    if values.get("flag_store") == "redis" and not has_url:
        problems.append(
            "flag_store.kind = 'redis' needs flag_store.redis_url or registry.redis_url"
        )
    problems += _range_problems(values)
    limit = values.get("flag_store_history_limit")
    if limit is not None and limit != "unlimited" and not (isinstance(limit, int) and limit >= 1):
        problems.append(
            f'flag_store.history_limit must be an int of at least 1 or "unlimited": {limit!r}'
        )
    if values.get("flag_store") == "sqlite" and "flag_store_path" not in values:
        problems.append("flag_store.kind = 'sqlite' needs flag_store.path")
    return problems


def _finite(value: object) -> float | None:
    """``value`` as a finite float, or None (not a number, NaN, infinite, too large)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _range_problems(values: Mapping[str, Any]) -> list[str]:
    """Numbers out of range, found here rather than when the application starts:
    durations (``lease_ttl``, ``health_interval``) finite and above 0, health
    limits finite and at least 0 (type errors are reported apart)."""
    problems: list[str] = []
    for name in _NUMBERS:
        value = values.get(name)
        if _is_number(value) and not ((n := _finite(value)) is not None and n > 0):
            problems.append(
                f"{name} must be a finite number of seconds above 0: {bounded_repr(value)}"
            )
    for name in _NUMBERS_OR_NONE:
        value = values.get(name)
        if _is_number(value) and not ((n := _finite(value)) is not None and n >= 0):
            problems.append(f"{name} must be a finite number of at least 0: {bounded_repr(value)}")
    return problems


_STR_OR_NONE = ("redis_url", "flag_store_path", "flag_store_redis_url", "flag_store_namespace")
_NUMBERS = ("lease_ttl", "health_interval")
_NUMBERS_OR_NONE = ("max_error_rate", "max_restarts_per_minute", "max_latency_ratio")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _value_problems(config: AppConfig) -> list[str]:
    """AppConfig(...): what is wrong with its values (the rules of a config file)."""
    problems: list[str] = []

    def wrong(name: str, value: object, what: str) -> None:
        problems.append(f"{name} must be {what}, not {bounded_repr(value)}")

    namespace: object = config.namespace  # typed str; checked: the caller's may not be
    if not isinstance(namespace, str):
        wrong("namespace", namespace, "a str")
    for name in _STR_OR_NONE:
        value = getattr(config, name)
        if value is not None and not isinstance(value, str):
            wrong(name, value, "a str or None")
    for name in _NUMBERS:
        if not _is_number(getattr(config, name)):
            wrong(name, getattr(config, name), "a number")
    for name in _NUMBERS_OR_NONE:
        value = getattr(config, name)
        if value is not None and not _is_number(value):
            wrong(name, value, "a number or None")
    indexed = config.indexed
    if not isinstance(indexed, tuple | list) or not all(isinstance(x, str) for x in indexed):
        wrong("indexed", indexed, "a list of names")
    if not isinstance(config.flags, Mapping) or not all(isinstance(k, str) for k in config.flags):
        wrong("flags", config.flags, "a mapping of flag names to values")
    given = {f.name: getattr(config, f.name) for f in fields(config)}
    if isinstance(config.flag_store_history_limit, bool):
        wrong("flag_store_history_limit", given.pop("flag_store_history_limit"),
              'an int of at least 1 or "unlimited"')  # fmt: skip
    problems += _choice_problems({k: v for k, v in given.items() if v is not None}, {})
    return problems


@dataclass(frozen=True)
class AppConfig:
    """What an :class:`~foundation.Application` starts, and on which backends.

    Checked when made, and frozen; ``copy``, ``deepcopy`` and pickle rebuild
    it through the constructor, so a copy is checked and frozen too. Hashable,
    consistently with ``==``, whatever ``flags`` holds: the hash covers every
    field but the flags' values (their names only), since a value may be a
    list or table, so configs differing only there hash alike.

    Example:
        >>> AppConfig.from_mapping({"registry": {"indexed": ["role"]}}).indexed
        ('role',)
        >>> AppConfig().registry_backend
        'memory'
    """

    registry_backend: RegistryBackend = "memory"
    indexed: tuple[str, ...] = ()
    redis_url: str | None = None
    namespace: str = "foundation"
    lease_ttl: float = 5.0
    flag_store: FlagStoreKind = "memory"
    flag_store_path: str | None = None
    flag_store_redis_url: str | None = None
    flag_store_namespace: str | None = None
    flag_store_history_limit: int | Literal["unlimited"] | None = None
    """``[flag_store] history_limit``: records of flag history the store keeps
    (an int of at least 1, or ``"unlimited"``); None: the store's default."""
    flags: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    health_interval: float = 5.0
    max_error_rate: float | None = None
    max_restarts_per_minute: float | None = None
    max_latency_ratio: float | None = None

    def __post_init__(self) -> None:
        """Check the values as a config file's are checked; keep ``flags`` as a read-only copy.

        Raises:
            InvalidConfig: every problem at once (a backend name that does not
                exist, a choice without the setting it needs, a wrong type).
        """
        problems = _value_problems(self)
        if problems:
            raise InvalidConfig("invalid AppConfig: " + "; ".join(problems))
        # Frozen: normalised the dataclass way. A copy of ``flags``: changing the
        # caller's dict later does not change this config (or a running app's).
        object.__setattr__(self, "indexed", tuple(self.indexed))
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))

    def __hash__(self) -> int:
        """Every field's hash, ``flags`` by its names (see :class:`AppConfig`)."""
        # The dataclass's own hash took ``flags`` whole: a MappingProxyType is
        # unhashable, so hash(AppConfig()) raised TypeError. Equal configs have
        # equal flag names, so hashing the names keeps the hash consistent with
        # ``==`` even where a value is unhashable (a list, a table) or is equal to
        # one of another type (a set and a frozenset).
        values = tuple(
            frozenset(self.flags) if f.name == "flags" else getattr(self, f.name)
            for f in fields(self)
        )
        return hash(values)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle, ``copy.copy`` and ``copy.deepcopy`` rebuild through the
        constructor: the copy is checked and frozen as the original, its
        ``flags`` a read-only mapping of its own (a ``MappingProxyType`` cannot
        be pickled or deep-copied itself)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["flags"] = dict(self.flags)
        return (_rebuild, (type(self), values))

    @classmethod
    def discover(cls, directory: str | Path = ".") -> AppConfig:
        """Load ``foundation.toml``, else pyproject's ``[tool.foundation]``, else defaults."""
        from pathlib import Path  # here, not at the top: keeps `import foundation` cheap

        folder = Path(directory)
        if (folder / "foundation.toml").is_file():
            return cls.from_file(folder / "foundation.toml")
        if (folder / "pyproject.toml").is_file():
            return cls.from_file(folder / "pyproject.toml")
        return cls()

    @classmethod
    def from_file(cls, path: str | Path) -> AppConfig:
        """Read a ``foundation.toml`` or the ``[tool.foundation]`` table of a pyproject.toml.

        Raises:
            InvalidConfig: an unreadable or malformed file, or bad values in it.
        """
        # Imported here, not at the top: only reading a file needs them, and
        # `import foundation` stays cheap.
        from pathlib import Path

        from foundation._toml_files import read_toml

        file = Path(path)
        try:
            data = read_toml(file, "config")  # bounded; InvalidConfig for a bad file
        except FileNotFoundError:
            raise InvalidConfig(f"config {bounded_repr(str(file))} does not exist") from None
        if file.name == "pyproject.toml":
            data = data.get("tool", {}).get("foundation", {})
        return cls.from_mapping(data, source=str(file))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "mapping") -> AppConfig:
        """Build from the parsed TOML tables; every problem is reported at once."""
        problems: list[str] = []
        tables = _section_tables(data, problems)
        registry = tables.get("registry", {})
        store = tables.get("flag_store", {})
        migration = tables.get("migration", {})
        values: dict[str, Any] = {}

        def take(
            table: Mapping[str, Any], key: str, name: str, kind: type | tuple[type, ...]
        ) -> None:
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, kind):
                    problems.append(f"{name} has the wrong type: {value!r}")
                else:
                    values[name] = value

        take(registry, "backend", "registry_backend", str)
        take(registry, "redis_url", "redis_url", str)
        take(registry, "namespace", "namespace", str)
        take(registry, "lease_ttl", "lease_ttl", (int, float))
        take(store, "kind", "flag_store", str)
        take(store, "path", "flag_store_path", str)
        take(store, "redis_url", "flag_store_redis_url", str)
        take(store, "namespace", "flag_store_namespace", str)
        take(store, "history_limit", "flag_store_history_limit", (int, str))
        for key in ("health_interval", "max_error_rate", "max_restarts_per_minute",
                    "max_latency_ratio"):  # fmt: skip
            take(migration, key, key, (int, float))
        if "indexed" in registry:
            indexed = registry["indexed"]
            if not isinstance(indexed, list) or not all(isinstance(x, str) for x in indexed):
                problems.append(f"registry.indexed must be a list of names: {indexed!r}")
            else:
                values["indexed"] = tuple(indexed)
        problems += _choice_problems(values, store)
        if problems:
            raise InvalidConfig(f"invalid config in {source}: " + "; ".join(problems))
        if "redis_url" not in values and "flag_store_redis_url" in values:
            values["redis_url"] = values["flag_store_redis_url"]  # one Redis named once
        values["flags"] = MappingProxyType(dict(tables.get("flags", {})))
        return cls(**values)

    @property
    def wants_auto_rollback(self) -> bool:
        """True when any health threshold is configured."""
        limits = (self.max_error_rate, self.max_restarts_per_minute, self.max_latency_ratio)
        return any(x is not None for x in limits)


def _rebuild(cls: type[AppConfig], values: dict[str, Any]) -> AppConfig:
    """Unpickle or copy an :class:`AppConfig` (``AppConfig.__reduce__``)."""
    return cls(**values)
