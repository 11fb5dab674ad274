"""Records and the abstract contract shared by every registry backend."""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from foundation.registry._async import AsyncWrites

if TYPE_CHECKING:
    from foundation.liveness import Down

__all__ = [
    "PROTOCOL_VERSION",
    "Criterion",
    "Divergence",
    "Entry",
    "EventKind",
    "Listener",
    "MetadataFilter",
    "Registry",
    "RegistryEvent",
    "UnregisterReason",
]

PROTOCOL_VERSION = "2.0"

EventKind = Literal["registered", "updated", "unregistered"]
UnregisterReason = Literal["unregistered", "replaced", "down"]
Criterion = tuple[str | tuple[Hashable, ...], str, Any]
MetadataFilter = Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class Entry:
    """One registration: who, under which key, with what metadata.

    ``metadata`` is a read-only mapping holding a copy of what was given.
    ``node`` names the machine (or process) that owns the agent.

    Example:
        >>> from foundation import MemoryRegistry, spawn_thread
        >>> import threading
        >>> stop = threading.Event()
        >>> with MemoryRegistry() as reg:
        ...     reg.register("worker", spawn_thread(stop.wait), {"role": "io"})
        ...     reg.lookup("worker").metadata["role"]
        'io'
        >>> stop.set()
    """

    key: Hashable
    agent: Any
    metadata: Mapping[str, Any]
    registered_at: float
    node: str = field(default="local")


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """A change in a registry, delivered to ``subscribe`` listeners.

    ``reason`` is set only for ``"unregistered"``: ``"unregistered"`` (explicit),
    ``"replaced"`` (``replace=True``) or ``"down"`` (the agent died; ``down`` says how).

    Example:
        >>> import threading
        >>> from foundation import MemoryRegistry, spawn_thread
        >>> stop, events = threading.Event(), []
        >>> with MemoryRegistry() as reg:
        ...     unsubscribe = reg.subscribe(events.append)
        ...     reg.register("w", spawn_thread(stop.wait))
        ...     reg.unregister("w")
        True
        >>> [(e.kind, e.reason) for e in events]
        [('registered', None), ('unregistered', 'unregistered')]
        >>> stop.set()
    """

    kind: EventKind
    entry: Entry
    reason: UnregisterReason | None = None
    down: Down | None = None


@dataclass(frozen=True, slots=True)
class Divergence:
    """A write a MigratingRegistry could not mirror to its other backend.

    ``thread`` is the ident of the thread whose private legacy copy diverges.

    Example:
        >>> Divergence("db", thread=1234, reason="held by another thread")
        Divergence(key='db', thread=1234, reason='held by another thread')
    """

    key: Hashable
    thread: int
    reason: str


Listener = Callable[[RegistryEvent], None]


class Registry(AsyncWrites, abc.ABC):
    """The registry contract (see DESIGN.md "Registry contract").

    Backends implement the abstract methods; ``find_by_attribute``, ``in``,
    ``len`` and the context manager come from here.
    """

    @abc.abstractmethod
    def register(
        self,
        key: Hashable,
        agent: Any,
        metadata: Mapping[str, Any] | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Register ``agent`` under ``key``; it is monitored from this instant."""

    @abc.abstractmethod
    def lookup(self, key: Hashable) -> Entry | None:
        """The live entry for ``key``, or ``None``."""

    @abc.abstractmethod
    def unregister(self, key: Hashable) -> bool:
        """Remove ``key``; True if it was there. Releases its monitor."""

    @abc.abstractmethod
    def update_metadata(self, key: Hashable, metadata: Mapping[str, Any]) -> None:
        """Replace the metadata of ``key``; raises ``NotRegistered`` if absent."""

    @abc.abstractmethod
    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        """Entries matching all criteria (AND); ``[]`` matches everything."""

    @abc.abstractmethod
    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        """Every live entry, optionally filtered by ``filter(metadata)``."""

    @abc.abstractmethod
    def count(self) -> int:
        """Number of live entries."""

    @abc.abstractmethod
    def indexed_attributes(self) -> frozenset[str]:
        """The attribute names given as ``indexed=`` at construction."""

    @abc.abstractmethod
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` on every change; returns an unsubscribe callable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every monitor, thread and connection. Idempotent."""

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        """Exactly ``query([(attr, "eq", value)])``."""
        return self.query([(attr, "eq", value)])

    def protocol_version(self) -> str:
        """The contract version this backend implements: ``"2.0"``."""
        return PROTOCOL_VERSION

    def __contains__(self, key: object) -> bool:
        try:
            return self.lookup(key) is not None
        except TypeError:
            return False

    def __len__(self) -> int:
        return self.count()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def keys_of(entries: Iterable[Entry]) -> set[Hashable]:
    """The set of keys of ``entries`` (a testing and debugging convenience)."""
    return {e.key for e in entries}
