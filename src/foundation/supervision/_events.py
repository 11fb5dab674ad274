"""The events of a supervisor's queue, consumed one at a time by its ``_run`` task."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from foundation.supervision._runs import Run
    from foundation.supervision._spec import ChildExit

__all__: list[str] = []

# The events of the supervisor's queue are plain classes, not dataclasses:
# nothing compares, copies or prints them, and `import foundation` would pay
# about a millisecond per dataclass built (tests/test_import_cost.py).


class _Exited:
    """A child's run ended with ``exit``."""

    __slots__ = ("exit", "id", "run")

    def __init__(self, id: str, run: Run, exit: ChildExit) -> None:
        self.id = id
        self.run = run
        self.exit = exit


class _StartFailed:
    """A child could not be restarted: ``exit`` says why."""

    __slots__ = ("exit", "id")

    def __init__(self, id: str, exit: ChildExit) -> None:
        self.id = id
        self.exit = exit


class _Round:
    """The token of one delayed restart round; ``owner`` is the child whose exit began it."""

    __slots__ = ("owner",)

    def __init__(self, owner: str) -> None:
        self.owner = owner


class _RestartDue:
    """The delayed restart round ``token`` is due for the children ``ids``."""

    __slots__ = ("ids", "token")

    def __init__(self, token: object, ids: tuple[str, ...]) -> None:
        self.token = token
        self.ids = ids


_STOP = object()
