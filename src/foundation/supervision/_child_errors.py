"""The ``SupervisorError`` of a management call: OTP's reason, the child, its handle."""

from __future__ import annotations

from typing import Any, Literal

from foundation.errors import SupervisorError

__all__ = ["ChildErrorReason"]

ChildErrorReason = Literal[
    "not_found",
    "running",
    "restarting",
    "already_started",
    "already_present",
    "max_children",
    "supervisor_running",
    "supervisor_not_running",
    "simple_one_for_one",
    "killed",
]


def _error(
    reason: ChildErrorReason, child: str | None, message: str, handle: Any = None
) -> SupervisorError:
    """A ``SupervisorError`` carrying OTP's reason (``.reason``), the child id
    and, for ``"already_started"``, the running handle (``.handle``)."""
    err = SupervisorError(message)
    err.reason = reason
    err.child = child
    err.handle = handle
    return err


def _not_dynamic(call: str, child: str, why: str) -> SupervisorError:
    """OTP's ``{error, simple_one_for_one}``: ``call`` does not apply to a
    DynamicSupervisor's ``child``, because ``why``."""
    return _error(
        "simple_one_for_one",
        child,
        f"a DynamicSupervisor does not support {call} (child {child!r}): {why}",
    )
