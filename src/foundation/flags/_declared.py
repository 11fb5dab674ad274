"""The declaration of flags: ``Flag``, the declared set by name, its default states.

A program declares its flags once; everything else (the service, the
compiled rules, the stores' catalogue) starts from these records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from foundation.errors import InvalidFlagValue
from foundation.flags._config import env_key, env_variable, short_repr
from foundation.flags._store import FlagState
from foundation.flags._typed import Kind, check_flag, declaration_repr, kind_of

__all__ = ["Flag"]


@dataclass(frozen=True, slots=True)
class Flag:
    """A declared flag: its name, default, what it is for and, if typed, its variants.

    A boolean flag has ``variants=None`` and a bool ``default``. A typed flag
    has named variants (all ``str``, all ``int``, all ``float`` -- ints mixed
    in become floats -- or all JSON objects/arrays, stored read-only) and
    ``default`` names one of them. ``kind`` and ``default_value`` tell which.
    ``name`` and ``description`` must be valid Unicode (no lone surrogates) and
    the description at most ``MAX_DESCRIPTION_CHARS`` (1,000) characters, else
    ``InvalidFlagValue``.

    Example:
        >>> Flag("new_checkout", default=False, description="the 2025 checkout")
        Flag(name='new_checkout', default=False, description='the 2025 checkout')
        >>> color = Flag("color", variants={"red": "#f00", "blue": "#00f"}, default="red")
        >>> color.kind, color.default_value
        ('string', '#f00')
        >>> Flag("color", variants={"red": "#f00"}, default="rde")
        Traceback (most recent call last):
        ...
        foundation.errors.InvalidFlagValue: default of 'color' must name one of its variants, not 'rde' (did you mean 'red'?)
    """  # noqa: E501

    name: str
    default: bool | str = False
    description: str = ""
    variants: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        # Name and description are kept by every store and served as JSON:
        # a str, valid Unicode (no lone surrogates), the description bounded.
        variants = check_flag(self.name, self.default, self.description, self.variants)
        object.__setattr__(self, "variants", variants)
        # A StrEnum member (or other str subclass) as the plain string it equals: that
        # is what every store keeps, so names read back alike from each.
        for attribute in ("name", "default", "description"):
            value = getattr(self, attribute)
            if isinstance(value, str) and value.__class__ is not str:
                object.__setattr__(self, attribute, str.__str__(value))

    def __repr__(self) -> str:
        return declaration_repr("Flag", self.name, self.default, self.description, self.variants)

    @property
    def kind(self) -> Kind:
        """``"boolean"``, ``"string"``, ``"integer"``, ``"float"`` or ``"object"``."""
        return kind_of(self.variants)

    @property
    def default_value(self) -> Any:
        """The default variant's value (a boolean flag: its bool default)."""
        if self.variants is None:
            return self.default
        return self.variants[self.default]  # type: ignore[index]  # a str when typed


def _by_name(declared: Iterable[object], *, tool: bool = False) -> dict[str, Flag]:
    """The declared flags by name; InvalidFlagValue for a non-Flag, a name declared
    twice, or two names one environment variable would set (``env_variable``:
    ``Beta`` and ``beta``, ``new-parser`` and ``new.parser``).

    ``tool`` (``FeatureFlags.from_store``): such a clash is allowed. A store's catalogue
    is the union of every version's declarations, so a flag renamed by case is there
    twice, and a tool must still open the store."""
    flags: dict[str, Flag] = {}
    keys: dict[str, str] = {}
    for flag in declared:
        if not isinstance(flag, Flag):
            raise InvalidFlagValue(f"declare flags with Flag(...), not {short_repr(flag)}")
        if flag.name in flags:
            raise InvalidFlagValue(f"flag {flag.name!r} is declared twice")
        key = env_key(flag.name)
        clash = keys.get(key)
        if clash is not None and not tool:
            how = "differ only by case, so" if clash.upper() == flag.name.upper() else "clash:"
            raise InvalidFlagValue(
                f"flags {short_repr(clash)} and {short_repr(flag.name)} {how} one environment "
                f"variable would set both ({short_repr(env_variable(flag.name))[1:-1]}): "
                "rename one"
            )
        flags[flag.name] = flag
        keys[key] = flag.name
    return flags


def _declared_states(flags: Mapping[str, Flag]) -> dict[str, FlagState]:
    """Each flag's state before any config or write: its declared default."""
    # A typed flag starts switched on: its declared default variant, reason STATIC.
    return {
        n: FlagState(True if f.variants is not None else f.default is True)
        for n, f in flags.items()
    }
