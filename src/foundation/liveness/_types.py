"""The agent classes of modules that ``import foundation`` does not import.

asyncio, concurrent.futures, subprocess and multiprocessing cost more to
import than the whole library, and most programs use one or two of them. An
object can only be an instance of a class once the module defining that class
has run, so while a module is not in ``sys.modules`` no agent can be of its
classes: they are looked up in ``sys.modules`` when an agent is checked, and
:class:`NotLoaded` (a class nothing is an instance of) stands in for each one
until whoever creates such agents has imported its module. Every
``isinstance`` and ``type(x) is`` check then answers as it would with the
real class, and foundation never imports a module just to answer "no".
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotations only (see above)
    import asyncio
    import concurrent.futures
    import multiprocessing.process
    import subprocess

__all__ = ["AGENT_TYPES", "AgentTypes", "NotLoaded", "agent_types", "refresh_agent_types"]


class NotLoaded:
    """Stands in for a class whose module is not imported: nothing is an instance of it."""

    __slots__ = ()

    def __new__(cls) -> NotLoaded:
        raise TypeError("NotLoaded is a placeholder class and has no instances")


# NotLoaded, typed as whichever class it stands in for.
_NOT_LOADED: Any = NotLoaded


def _loaded(module: str, name: str) -> Any:
    # The package attribute, not the defining submodule's: it is set only once
    # the submodule has finished running (asyncio.futures rebinds Future to the
    # C class near its end), so a half-imported module is never cached.
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) else _NOT_LOADED


class AgentTypes:
    """The agent classes found so far (``NotLoaded`` for the others).

    Example:
        >>> import asyncio, concurrent.futures
        >>> t = agent_types()
        >>> t.aio_future is asyncio.Future, t.cf_future is concurrent.futures.Future
        (True, True)
    """

    __slots__ = (
        "aio_future",
        "aio_task",
        "cf_future",
        "missing",
        "mp_process",
        "popen",
        "processes",
    )

    def __init__(self) -> None:
        self.aio_future: type[asyncio.Future[Any]] = _NOT_LOADED
        self.aio_task: type[asyncio.Task[Any]] = _NOT_LOADED
        self.cf_future: type[concurrent.futures.Future[Any]] = _NOT_LOADED
        self.popen: type[subprocess.Popen[Any]] = _NOT_LOADED
        self.mp_process: type[multiprocessing.process.BaseProcess] = _NOT_LOADED
        #: subprocess.Popen and multiprocessing's BaseProcess (OSProcess is not here).
        self.processes: tuple[
            type[subprocess.Popen[Any]], type[multiprocessing.process.BaseProcess]
        ]
        self.processes = (self.popen, self.mp_process)
        self.missing = True
        self.refresh()

    def refresh(self) -> bool:
        """Look up the classes not found yet; True if one was found.

        Race: threads may refresh at once; each one only ever replaces
        ``NotLoaded`` by the one class its module defines, so any interleaving
        ends in the same state, and a reader sees either value of a field,
        both correct for the agents that can exist at that moment.
        """
        before = (self.aio_future, self.aio_task, self.cf_future, self.popen, self.mp_process)
        if self.aio_future is _NOT_LOADED:
            self.aio_future = _loaded("asyncio", "Future")
        if self.aio_task is _NOT_LOADED:
            self.aio_task = _loaded("asyncio", "Task")
        if self.cf_future is _NOT_LOADED:
            self.cf_future = _loaded("concurrent.futures", "Future")
        if self.popen is _NOT_LOADED:
            self.popen = _loaded("subprocess", "Popen")
        if self.mp_process is _NOT_LOADED:
            self.mp_process = _loaded("multiprocessing.process", "BaseProcess")
        self.processes = (self.popen, self.mp_process)
        after = (self.aio_future, self.aio_task, self.cf_future, self.popen, self.mp_process)
        self.missing = _NOT_LOADED in after
        return after != before


#: The classes found so far. Hot paths read it as is and call
#: :func:`refresh_agent_types` only when an agent matches none of them.
AGENT_TYPES = AgentTypes()


def refresh_agent_types() -> bool:
    """Look up the classes not found yet; True if one was found (check the agent again)."""
    types = AGENT_TYPES
    return types.missing and types.refresh()


def agent_types() -> AgentTypes:
    """The agent classes, with any module imported since the last look looked up."""
    refresh_agent_types()
    return AGENT_TYPES
