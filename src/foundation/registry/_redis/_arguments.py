"""The checks of ``RedisRegistry``'s constructor arguments.

Every bad argument is a ``TypeError`` or ``InvalidConfig`` at the constructor
call, never later (a NaN timeout, say, would break every wait on it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final

from foundation.errors import InvalidConfig
from foundation.liveness import MonitorManager
from foundation.registry._validation import check_unicode, indexed_names, short_repr

__all__ = ["checked_arguments"]


_MAX_SECONDS: Final = threading.TIMEOUT_MAX / 8
"""The longest lease, heartbeat or op_timeout: every wait on them stays a valid timeout."""


def _seconds(name: str, value: object) -> float:
    """``value`` as a number of seconds in ``(0, _MAX_SECONDS]``; ``TypeError`` or
    ``InvalidConfig`` (NaN and infinities included) at the constructor, not later."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if not 0 < value <= _MAX_SECONDS:
        raise InvalidConfig(
            f"{name} must be a positive number of seconds (at most {_MAX_SECONDS:.0f}), "
            f"got {short_repr(value)}"
        )
    return float(value)


def checked_arguments(
    *,
    namespace: object,
    indexed: Iterable[str],
    lease_ttl: object,
    heartbeat: object,
    op_timeout: object,
    stream_maxlen: object,
    node: object,
    manager: object,
) -> tuple[frozenset[str], float, float, float]:
    """``RedisRegistry``'s arguments checked at the call (``TypeError``/``InvalidConfig``,
    never later): its indexed attributes, lease TTL, heartbeat and op timeout."""
    _check_namespace(namespace)
    attrs = frozenset(indexed_names(indexed))
    ttl = _seconds("lease_ttl", lease_ttl)
    beat = ttl / 3 if heartbeat is None else _seconds("heartbeat", heartbeat)
    if not 0 < beat < ttl:
        raise InvalidConfig("heartbeat must be positive and shorter than lease_ttl")
    timeout = _seconds("op_timeout", op_timeout)
    _check_stream_node_manager(stream_maxlen, node, manager)
    return attrs, ttl, beat, timeout


def _check_namespace(namespace: object) -> None:
    """``InvalidConfig`` unless ``namespace`` is a non-empty str without braces."""
    if not isinstance(namespace, str) or not namespace or "{" in namespace or "}" in namespace:
        raise InvalidConfig(
            f"namespace must be a non-empty str without braces, got {short_repr(namespace)}"
        )
    check_unicode("namespace", namespace)


def _check_stream_node_manager(stream_maxlen: object, node: object, manager: object) -> None:
    """Check ``stream_maxlen`` (an int >= 1), ``node`` and ``manager`` (None or their type)."""
    if isinstance(stream_maxlen, bool) or not isinstance(stream_maxlen, int):
        raise TypeError(f"stream_maxlen must be an int, got {type(stream_maxlen).__name__}")
    if stream_maxlen < 1:
        raise InvalidConfig(f"stream_maxlen must be at least 1, got {stream_maxlen}")
    if node is not None and not isinstance(node, str):
        raise TypeError(f"node must be a str, got {type(node).__name__}")
    if node is not None:
        check_unicode("node", node)
    if manager is not None and not isinstance(manager, MonitorManager):
        raise TypeError(f"manager must be a MonitorManager, got {type(manager).__name__}")
