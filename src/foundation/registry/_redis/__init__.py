"""The Redis backend: ``RedisRegistry`` and the records it reports.

Importing this package does not import ``redis``; constructing a
``RedisRegistry`` without the extra raises ``ImportError`` naming
``foundation[redis]``.
"""

from foundation.registry._redis._codec import RemoteAgent
from foundation.registry._redis._registry import (
    MAX_METADATA_BYTES,
    Conflict,
    RedisRegistry,
    RedisStatus,
)

__all__ = ["MAX_METADATA_BYTES", "Conflict", "RedisRegistry", "RedisStatus", "RemoteAgent"]
