"""A real redis-server on a free 127.0.0.1 port, owned by the test session.

Never the machine's shared server on 6379: every test that needs Redis gets a
server started here, which it may kill (-9), freeze, make read-only, pause,
put to sleep or fill up, or restart on the same port. The one implementation
is :mod:`foundation._demo._redis_server` (the demo's chaos mode uses it too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from foundation._demo._redis_server import (
    RedisServerProcess,
    free_port,
    redis_server_binary,
)

__all__ = ["RedisServer", "free_port", "redis_server_binary", "running_redis"]


class RedisServer(RedisServerProcess):
    """One redis-server process; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    def __enter__(self) -> RedisServer:
        self.start()
        return self


@contextlib.contextmanager
def running_redis(password: str | None = None) -> Iterator[RedisServer]:
    with RedisServer(password=password) as server:
        yield server
