"""``AutoRollback`` given something other than a ``Migration``: a ``MigrationError``
naming it, and no thread started.

Before the fix ``AutoRollback(flags, interval=1)`` (the ``FeatureFlags``
instead of its ``Migration``, an easy slip) raised ``AttributeError: ...
has no attribute 'health'``, outside the documented errors (a
``foundation.errors`` type, or ``TypeError``/``ValueError`` for an argument of
the wrong kind), as ``Migration(flags, "default")`` does not.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from foundation.errors import MigrationError
from foundation.flags import DEFAULT_FLAGS, AutoRollback, FeatureFlags


def _watchers() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("foundation-auto-rollback")]


@pytest.mark.parametrize("given", ["flags", "a string", "None"])
def test_autorollback_refuses_what_is_not_a_migration(given: str) -> None:
    flags = FeatureFlags(DEFAULT_FLAGS)
    try:
        wrong: Any = {"flags": flags, "a string": "default", "None": None}[given]
        with pytest.raises(MigrationError, match="AutoRollback needs a Migration, not "):
            AutoRollback(wrong, interval=1.0)
        assert _watchers() == []
    finally:
        flags.close()
