"""The authoritative readers of a ``MigratingRegistry``, swapped when the flag flips.

A facade read is one attribute load and one call: ``self._reader.lookup(key)``.
The reader is the target itself (flag on, nothing queued), or one of these:
``_LegacyReader`` (flag off: apply the legacy retries asked for, rule 7, and
catch the caller's legacy view up first, rule 4),
``_SettlingReader`` (flag on while flag-off mirrors are still queued: apply
them first, rule 6), ``_CLOSED_READER`` (after ``close()``) or
``_FORKED_READER`` (inherited across fork()). See the module
documentation of ``foundation.registry._migrating``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any, Final

from foundation._fork import forked_closed
from foundation.errors import Closed
from foundation.registry._types import Criterion, Entry, MetadataFilter

if TYPE_CHECKING:
    from foundation.registry._migrating import MigratingRegistry


class _LegacyReader:
    """Reads of the legacy side (flag off), after the legacy retries asked for
    (a flip back asks for them) and the catch-up of the caller's view."""

    __slots__ = ("_owner",)

    def __init__(self, owner: MigratingRegistry) -> None:
        self._owner = owner

    def lookup(self, key: Hashable) -> Entry | None:
        self._owner._before_legacy_read()
        return self._owner._legacy.lookup(key)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        self._owner._before_legacy_read()
        return self._owner._legacy.query(criteria)

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        self._owner._before_legacy_read()
        return self._owner._legacy.find_by_attribute(attr, value)

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        self._owner._before_legacy_read()
        return self._owner._legacy.list_all(filter)

    def count(self) -> int:
        self._owner._before_legacy_read()
        return self._owner._legacy.count()


class _SettlingReader:
    """Reads of the target while flag-off mirrors are still queued (flag on).

    Applies the queued mirrors first (rule 6), then answers from the target;
    once the queue is empty the facade reads the target directly again.
    """

    __slots__ = ("_owner",)

    def __init__(self, owner: MigratingRegistry) -> None:
        self._owner = owner

    def lookup(self, key: Hashable) -> Entry | None:
        self._owner._settle()
        return self._owner._target.lookup(key)

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        self._owner._settle()
        return self._owner._target.query(criteria)

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        self._owner._settle()
        return self._owner._target.find_by_attribute(attr, value)

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        self._owner._settle()
        return self._owner._target.list_all(filter)

    def count(self) -> int:
        self._owner._settle()
        return self._owner._target.count()


class _ClosedReader:
    """The reader of a closed facade: every read raises ``Closed``."""

    __slots__ = ()

    def _closed(self) -> Closed:
        return Closed("this MigratingRegistry is closed")

    def lookup(self, key: Hashable) -> Entry | None:
        raise self._closed()

    def query(self, criteria: Sequence[Criterion]) -> list[Entry]:
        raise self._closed()

    def find_by_attribute(self, attr: str, value: Any) -> list[Entry]:
        raise self._closed()

    def list_all(self, filter: MetadataFilter | None = None) -> list[Entry]:
        raise self._closed()

    def count(self) -> int:
        raise self._closed()


_CLOSED_READER: Final = _ClosedReader()


class _ForkedReader(_ClosedReader):
    """The reader of a facade inherited across fork(): every read raises
    ``Closed`` naming fork() (``MigratingRegistry._inherited_by_fork``)."""

    __slots__ = ()

    def _closed(self) -> Closed:
        return forked_closed("MigratingRegistry")


_FORKED_READER: Final = _ForkedReader()
