"""Records and the abstract contract shared by every registry backend."""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from foundation.errors import (
    AlreadyRegistered,
    Closed,
    InvalidKey,
    InvalidMetadata,
    NotAlive,
    RegistryError,
    UnsupportedAgent,
)
from foundation.registry._async import AsyncWrites
from foundation.registry._validation import check_bool

if TYPE_CHECKING:
    from foundation.liveness import Down

__all__ = [
    "PROTOCOL_VERSION",
    "BatchItem",
    "Criterion",
    "Divergence",
    "Entry",
    "EventKind",
    "Listener",
    "MetadataFilter",
    "Registry",
    "RegistryEvent",
    "UnregisterReason",
    "new_entry",
]

PROTOCOL_VERSION = "2.0"

EventKind = Literal["registered", "updated", "unregistered"]
UnregisterReason = Literal["unregistered", "replaced", "down"]
Criterion = tuple[str | tuple[Hashable, ...], str, Any]
MetadataFilter = Callable[[Mapping[str, Any]], bool]


class _EntrySlots:
    """The private slot every ``Entry`` carries: ``_registration``.

    ``MemoryRegistry`` stores its ``Entry`` objects in its table as they are
    (a lookup is one ``dict.get``, touching no other object) and keeps, in
    this slot, the registration the entry belongs to (its monitor and
    identity). Not a dataclass field: not compared, printed, copied, pickled
    or passed by ``dataclasses.replace``; unset on every other backend.
    """

    __slots__ = ("_registration",)

    if TYPE_CHECKING:  # no runtime annotation: get_type_hints(Entry) shows the fields only
        _registration: Any


@dataclass(frozen=True, slots=True)
class Entry(_EntrySlots):
    """One registration: who, under which key, with what metadata.

    ``key`` is in its normal form and ``metadata`` is a read-only copy of
    what was given (a ``FrozenMetadata``: a ``dict`` that refuses changes,
    nested mappings alike, arrays as tuples), so ``json.dumps(entry.metadata)``
    works as it is (see docs/keys-and-metadata.md). ``node`` names the
    machine (or process) that owns the agent. An ``Entry`` is immutable:
    ``copy.copy`` and ``copy.deepcopy`` return it as it is (the agent is a
    live handle, never duplicated); it pickles when its agent does.

    Example:
        >>> import json, threading
        >>> from foundation import MemoryRegistry, spawn_thread
        >>> stop = threading.Event()
        >>> with MemoryRegistry() as reg:
        ...     reg.register("worker", spawn_thread(stop.wait), {"role": "io", "tags": ["a"]})
        ...     entry = reg.lookup("worker")
        ...     entry.metadata["role"], json.dumps(entry.metadata)
        ('io', '{"role": "io", "tags": ["a"]}')
        >>> stop.set()
    """

    key: Hashable
    agent: Any
    metadata: Mapping[str, Any]
    registered_at: float
    node: str = field(default="local")

    def __copy__(self) -> Entry:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Entry:
        return self  # immutable; the agent is a handle whose identity is the point


class _EntryBuilder(_EntrySlots):
    """Builds an ``Entry`` at the cost of a plain class (``new_entry``).

    The same slots as ``Entry``, in the same order, so CPython allows an
    instance's ``__class__`` to become ``Entry`` once its slots are stored.
    A frozen dataclass's own ``__init__`` stores each field through
    ``object.__setattr__``: about 3x slower, on every register.
    """

    # Entry's fields in Entry's order (the __class__ switch requires the same layout).
    __slots__ = ("key", "agent", "metadata", "registered_at", "node")  # noqa: RUF023


_new_builder = object.__new__
_ENTRY: Final = Entry  # bound once: a later patch of the module's name cannot break new_entry


def new_entry(
    key: Hashable,
    agent: Any,
    metadata: Mapping[str, Any],
    registered_at: float,
    node: str,
    *,
    registration: object = None,
) -> Entry:
    """``Entry(key, agent, metadata, registered_at, node)``, fast; ``registration``
    fills the private slot (see ``_EntrySlots``). The arguments are not checked:
    for backends that have already normalised them.

    >>> e = new_entry("k", None, {}, 1.0, "local")
    >>> type(e) is Entry, e == Entry("k", None, {}, 1.0, "local")
    (True, True)
    """
    e: Any = _new_builder(_EntryBuilder)
    e.key = key
    e.agent = agent
    e.metadata = metadata
    e.registered_at = registered_at
    e.node = node
    e._registration = registration
    e.__class__ = _ENTRY  # frozen from here on (its __setattr__ refuses every change)
    return e  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """A change in a registry, delivered to ``subscribe`` listeners.

    ``reason`` is set only for ``"unregistered"``: ``"unregistered"`` (explicit),
    ``"replaced"`` (``replace=True`` took it over from a live agent) or ``"down"``
    (the agent died; ``down`` says how, or is None when a ``register`` found it
    dead before its monitor told).

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
    """The registry contract (see docs/contract.md "Registry contract").

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

    def register_many(
        self,
        items: Iterable[BatchItem],
        *,
        replace: bool = False,
    ) -> list[RegistryError | None]:
        """Register many agents; one outcome per item, in input order.

        ``items`` are ``(key, agent)`` or ``(key, agent, metadata)`` tuples. Each
        outcome is ``None`` (registered) or the exception ``register`` would have
        raised for that item (``AlreadyRegistered``, ``NotAlive``, ``InvalidKey``,
        ``InvalidMetadata``, ``UnsupportedAgent``), returned, not raised: the
        batch is atomic per key, not as a whole. A key given twice is
        registered by its first item; the second gets ``AlreadyRegistered``
        (with ``replace=True`` it replaces the first, as two ``register`` calls
        would). Backends that talk to a server send the batch in one round trip.

        Raises:
            TypeError: an item is not a 2- or 3-tuple, or ``replace`` is not
                ``True`` or ``False`` (checked before anything is registered).
            BackendUnavailable, Closed: for the whole call; items whose
                registration the backend did not confirm are not registered
                here (those it confirmed stay: ``lookup`` tells).

        Example:
            >>> import threading
            >>> from foundation import MemoryRegistry, spawn_thread
            >>> stop = threading.Event()
            >>> with MemoryRegistry() as reg:
            ...     worker = spawn_thread(stop.wait)
            ...     outcomes = reg.register_many(
            ...         [("a", worker), ("b", worker, {"role": "io"}), ("a", worker)]
            ...     )
            ...     [type(o).__name__ for o in outcomes], reg.count()
            (['NoneType', 'NoneType', 'AlreadyRegistered'], 2)
            >>> stop.set()
        """
        if getattr(self, "_closed", False):  # first: even an empty or invalid batch is refused
            raise Closed(f"this {type(self).__name__} is closed")
        check_bool(replace, "replace")  # even for an empty batch
        batch = batch_items(items)
        outcomes: list[RegistryError | None] = []
        for key, agent, metadata in batch:
            try:
                self.register(key, agent, metadata, replace=replace)
            except (
                AlreadyRegistered,
                NotAlive,
                InvalidKey,
                InvalidMetadata,
                UnsupportedAgent,
            ) as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        """Exactly ``query([(attr, "eq", value)])``."""
        return self.query([(attr, "eq", value)])

    def protocol_version(self) -> str:
        """The contract version this backend implements: ``"2.0"``."""
        if getattr(self, "_closed", False):
            raise Closed(f"this {type(self).__name__} is closed")
        return PROTOCOL_VERSION

    def __contains__(self, key: object) -> bool:
        try:
            return self.lookup(key) is not None
        except TypeError:
            return False

    def __len__(self) -> int:
        return self.count()

    def __enter__(self) -> Self:
        """``self``; ``Closed`` if closed: a closed registry is not reused (as httpx's
        closed client), and ``with`` says so at once rather than at the first call."""
        self.protocol_version()  # every backend's refuses after close(), before any work
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


BatchItem = tuple[Hashable, Any] | tuple[Hashable, Any, Mapping[str, Any] | None]
"""One item of ``Registry.register_many``: ``(key, agent)`` or ``(key, agent, metadata)``."""


def batch_items(
    items: Iterable[BatchItem],
) -> list[tuple[Hashable, Any, Mapping[str, Any] | None]]:
    """``items`` of ``register_many`` as ``(key, agent, metadata)`` triples;
    ``TypeError`` (before anything is registered) for a malformed item."""
    if isinstance(items, (str, bytes, Mapping)):
        raise TypeError("register_many takes an iterable of (key, agent[, metadata]) tuples")
    out: list[tuple[Hashable, Any, Mapping[str, Any] | None]] = []
    for item in items:
        if not isinstance(item, tuple) or not 2 <= len(item) <= 3:
            raise TypeError(
                "register_many items must be (key, agent) or (key, agent, metadata) "
                f"tuples, got {type(item).__name__}"
            )
        out.append((item[0], item[1], item[2] if len(item) == 3 else None))
    return out


def filtered(entries: list[Entry], filter: MetadataFilter | None) -> list[Entry]:
    """``list_all``'s answer: ``entries`` whose metadata passes ``filter`` (all of
    them for ``None``); ``TypeError`` for a filter that is not callable, even
    when there is nothing to filter (a mistake fails at the call that made it)."""
    if filter is None:
        return entries
    if not callable(filter):
        raise TypeError(
            f"filter must be a callable taking an entry's metadata, got {type(filter).__name__}"
        )
    return [e for e in entries if filter(e.metadata)]


def keys_of(entries: Iterable[Entry]) -> set[Hashable]:
    """The set of keys of ``entries`` (a testing and debugging convenience)."""
    return {e.key for e in entries}
