"""``ApiError``: the admin API's own refusal, a status, an error name and a message."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["ApiError"]


class ApiError(Exception):
    """An error answered as ``{"error": name, "message": message}`` with ``status``
    (and ``headers``: a 401's ``WWW-Authenticate``)."""

    def __init__(
        self, status: int, name: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.name = name
        self.message = message
        self.headers: Mapping[str, str] = MappingProxyType(dict(headers or {}))
