"""What counts as an agent: kind detection, liveness and a JSON description."""

from __future__ import annotations

import os
import threading
from typing import Any

from foundation.errors import UnsupportedAgent
from foundation.liveness._process import OSProcess, ProcessAgent, exit_down
from foundation.liveness._threads import SpawnedThread
from foundation.liveness._types import AGENT_TYPES, AgentTypes, refresh_agent_types

# asyncio, concurrent.futures, subprocess and multiprocessing are not imported
# here: their classes come from AGENT_TYPES, found in sys.modules (no agent of a
# class can exist before its module is imported; see _types). An agent that
# matches none of them looks again (refresh_agent_types) before it is refused.

__all__ = ["check_supported", "describe_agent", "is_alive", "unsupported"]


def unsupported(agent: object) -> UnsupportedAgent:
    """The error for an object that cannot be monitored."""
    return UnsupportedAgent(
        f"cannot monitor a {type(agent).__name__!r}: supported agents are asyncio "
        "tasks and futures, concurrent.futures.Future, threading.Thread, "
        "subprocess.Popen, multiprocessing.Process and foundation.OSProcess"
    )


def is_alive(agent: object) -> bool:
    """True while ``agent`` runs.

    A ``spawn_thread`` thread is dead from the instant its end was recorded
    (before ``Thread.is_alive()`` turns False); a thread never started, a done
    future, an asyncio future whose loop is closed (it can never complete), and
    an exited process (zombies included) are dead. Never reaps a child process.

    Raises:
        UnsupportedAgent: ``agent`` is not a supported kind.
        BackendUnavailable: an ``OSProcess`` whose ``/proc`` entry cannot be
            read (no fd left: EMFILE); the answer is not guessed.

    Example:
        >>> import concurrent.futures
        >>> fut = concurrent.futures.Future()
        >>> is_alive(fut)
        True
        >>> fut.set_result(1)
        >>> is_alive(fut)
        False
        >>> is_alive(42)
        Traceback (most recent call last):
        ...
        foundation.errors.UnsupportedAgent: cannot monitor a 'int': ...
    """
    if type(agent) is SpawnedThread:
        return _spawned_thread_alive(agent)
    alive = _known_agent_alive(agent, AGENT_TYPES)
    if alive is not None:
        return alive
    if refresh_agent_types():  # a class of a module imported since the last look
        return is_alive(agent)
    raise unsupported(agent)


def _spawned_thread_alive(agent: SpawnedThread) -> bool:
    """True while a ``spawn_thread`` thread runs (its recorded end counts first)."""
    # The watch first: it fires before Thread.is_alive() turns False.
    return agent._foundation_watch.down is None and agent.is_alive()


def _known_agent_alive(agent: object, types: AgentTypes) -> bool | None:
    """``is_alive`` for an agent of a class found so far; None for any other agent."""
    if isinstance(agent, types.aio_future):
        return not agent.done() and not agent.get_loop().is_closed()
    if isinstance(agent, types.cf_future):
        return not agent.done()
    if isinstance(agent, threading.Thread):
        if isinstance(agent, SpawnedThread):
            return _spawned_thread_alive(agent)
        return agent.is_alive()
    if isinstance(agent, OSProcess):
        return agent.is_alive()
    if isinstance(agent, types.processes):
        return exit_down(agent) is None
    return None


def kind_of(agent: object) -> str | None:
    """ "thread", "task", "future", "process", or None if unsupported."""
    if isinstance(agent, threading.Thread):
        return "thread"
    types = AGENT_TYPES
    if isinstance(agent, types.aio_task):
        return "task"
    if isinstance(agent, (types.aio_future, types.cf_future)):
        return "future"
    if isinstance(agent, (OSProcess, *types.processes)):
        return "process"
    if refresh_agent_types():  # a class of a module imported since the last look
        return kind_of(agent)
    return None


def check_supported(agent: object) -> None:
    """Raise ``UnsupportedAgent`` (a ``TypeError``) unless ``agent`` can be monitored.

    Example:
        >>> import concurrent.futures
        >>> check_supported(concurrent.futures.Future())
        >>> check_supported("not an agent")
        Traceback (most recent call last):
        ...
        foundation.errors.UnsupportedAgent: cannot monitor a 'str': ...
    """
    if kind_of(agent) is None:
        raise unsupported(agent)


def describe_agent(agent: object) -> dict[str, Any]:
    """A JSON-compatible description of ``agent`` (for remote registries).

    Always has ``kind`` (``"thread"``, ``"task"``, ``"future"`` or
    ``"process"``), ``pid`` (the OS process the agent is or lives in),
    ``name`` (str or None) and ``host``. Threads add ``ident``, ``native_id``
    and ``daemon``; processes add ``start_time`` (clock ticks since boot, the
    pid-reuse-safe identity, None where unknown).

    Raises:
        UnsupportedAgent: ``agent`` is not a supported kind.

    Example:
        >>> import os
        >>> d = describe_agent(OSProcess(os.getpid()))
        >>> d["kind"], d["pid"] == os.getpid()
        ('process', True)
    """
    kind = kind_of(agent)
    if kind is None:
        raise unsupported(agent)
    out: dict[str, Any] = {"kind": kind, "pid": os.getpid(), "name": None}
    types = AGENT_TYPES  # up to date: kind_of() looked again if it had to
    if isinstance(agent, threading.Thread):
        out.update(
            name=agent.name, ident=agent.ident, native_id=agent.native_id, daemon=agent.daemon
        )
    elif isinstance(agent, types.aio_task):
        out["name"] = agent.get_name()
    elif isinstance(agent, (OSProcess, *types.processes)):
        _describe_process(out, agent, types)
    import socket  # here, not at the top: keeps `import foundation` cheap

    out["host"] = socket.gethostname()
    return out


def _describe_process(out: dict[str, Any], agent: ProcessAgent, types: AgentTypes) -> None:
    """Set a process agent's ``pid``, ``start_time`` and (where known) ``name`` in ``out``."""
    out["pid"] = agent.pid
    if isinstance(agent, OSProcess):
        out["start_time"] = agent.start_time
        return
    out["start_time"] = OSProcess(agent.pid).start_time if agent.pid is not None else None
    if isinstance(agent, types.popen):
        out["name"] = _command_name(agent.args)
    elif isinstance(agent, types.mp_process):
        out["name"] = agent.name


def _command_name(args: Any) -> str:
    """The program of a Popen's ``args`` (its first item, or the whole command string)."""
    first = args[0] if isinstance(args, (list, tuple)) and args else args
    return os.fsdecode(first) if isinstance(first, (str, bytes)) else str(first)
