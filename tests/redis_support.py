"""A real redis-server on a free 127.0.0.1 port, owned by the test session.

Never the machine's shared server on 6379: every test that needs Redis gets a
server started here, which it may kill (-9), freeze, make read-only, pause,
put to sleep or fill up, or restart on the same port. The one implementation
is :mod:`foundation._demo._redis_server` (the demo's chaos mode uses it too).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator

from foundation._demo._redis_server import (
    RedisServerError,
    RedisServerProcess,
    free_port,
    redis_server_binary,
)

__all__ = [
    "RedisServer",
    "SentinelProcess",
    "SentinelSet",
    "free_port",
    "redis_server_binary",
    "running_redis",
]


class RedisServer(RedisServerProcess):
    """One redis-server process; ``url`` is ``redis://127.0.0.1:<port>/0``."""

    def __enter__(self) -> RedisServer:
        self.start()
        return self


@contextlib.contextmanager
def running_redis(password: str | None = None) -> Iterator[RedisServer]:
    with RedisServer(password=password) as server:
        yield server


# --------------------------------------------------------------------------- Sentinel

_LOOPBACK = "127.0.0.1"


def _poll(predicate: Callable[[], bool], what: str, timeout: float) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(RedisServerError):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # sleep-ok: polling with a deadline


class SentinelProcess(RedisServer):
    """``redis-server <conf> --sentinel`` monitoring ``service`` (quorum 1)."""

    def __init__(
        self,
        service: str,
        master_port: int,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        super().__init__()
        self.service = service
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def start(self, *, timeout: float = 10.0) -> None:
        conf = self._dir / "sentinel.conf"
        if not conf.exists():  # a restart keeps what the Sentinel wrote there
            svc = self.service
            conf.write_text(
                f"port {self.port}\n"
                f"bind {_LOOPBACK}\n"
                f"dir {self._dir}\n"
                f"logfile {self._dir / 'sentinel.log'}\n"
                f"sentinel monitor {svc} {_LOOPBACK} {self.master_port} 1\n"
                f"sentinel down-after-milliseconds {svc} {self.down_after_ms}\n"
                f"sentinel failover-timeout {svc} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {svc} 1\n"
            )
        self._frozen = False
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"redis-sentinel exited early with {process.returncode}")
            try:
                return bool(self.command("PING", timeout=0.5) == "PONG")
            except RedisServerError:
                return False

        _poll(answers, f"redis-sentinel on port {self.port}", timeout)

    def master_address(self) -> tuple[str, int]:
        """``SENTINEL get-master-addr-by-name``: what clients are told now."""
        host, port = self.command("SENTINEL", "get-master-addr-by-name", self.service)
        return host.decode(), int(port)


class SentinelSet:
    """A master, one replica (``REPLICAOF``) and one Sentinel on free loopback ports.

    ``url`` is the ``redis+sentinel://`` URL of the set. :meth:`failover`
    (``SENTINEL FAILOVER``) and :meth:`kill_master` (SIGKILL, the Sentinel
    promotes the replica after ``down_after_ms``) return once the Sentinel
    names the new master and that server answers ``ROLE`` as a master.
    """

    def __init__(
        self,
        service: str = "foundation-test",
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.service = service
        self.servers = [RedisServer(), RedisServer()]
        self.sentinel = SentinelProcess(
            service,
            self.servers[0].port,
            down_after_ms=down_after_ms,
            failover_timeout_ms=failover_timeout_ms,
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://{_LOOPBACK}:{self.sentinel.port}/{self.service}/0"

    def start(self, timeout: float = 30.0) -> None:
        master, replica = self.servers
        master.start()
        replica.start()
        replica.command("REPLICAOF", _LOOPBACK, master.port)
        _poll(lambda: self._link_up(replica), "the replica to sync with the master", timeout)
        self.sentinel.start()
        _poll(self._replica_known, "the Sentinel to know the replica", timeout)

    def stop(self) -> None:
        self.sentinel.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> SentinelSet:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _link_up(server: RedisServer) -> bool:
        info: bytes = server.command("INFO", "replication")
        return b"master_link_status:up" in info

    def _replica_known(self) -> bool:
        replicas = self.sentinel.command("SENTINEL", "REPLICAS", self.service)
        for fields in replicas:
            info = dict(zip(fields[::2], fields[1::2], strict=False))
            flags = info.get(b"flags", b"")
            if b"s_down" not in flags and info.get(b"master-link-status") == b"ok":
                return True
        return False

    @property
    def master(self) -> RedisServer:
        """The server the Sentinel names as the master now."""
        return self._server(self.sentinel.master_address()[1])

    def _server(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise RuntimeError(f"the Sentinel names an unknown master on port {port}")

    @staticmethod
    def _is_master(server: RedisServer) -> bool:
        role = server.command("ROLE")
        return bool(server.running and role[0] == b"master")

    def wait_replicated(self, timeout_ms: int = 5000) -> None:
        """``WAIT 1 timeout_ms`` on the master: every write so far reached the replica."""
        acked = self.master.command("WAIT", 1, timeout_ms, timeout=timeout_ms / 1000 + 10)
        if acked < 1:
            raise RuntimeError(f"the replica did not acknowledge the writes in {timeout_ms} ms")

    def failover(self, timeout: float = 30.0) -> RedisServer:
        """``SENTINEL FAILOVER``; returns the new master once it is one."""
        _poll(self._replica_known, "the Sentinel to know a healthy replica", timeout)
        old = self.sentinel.master_address()
        self.sentinel.command("SENTINEL", "FAILOVER", self.service)
        return self._await_new_master(old, timeout)

    def kill_master(self, timeout: float = 30.0) -> RedisServer:
        """SIGKILL the master; returns the replica once the Sentinel promoted it."""
        old = self.sentinel.master_address()
        self._server(old[1]).kill()
        return self._await_new_master(old, timeout)

    def _await_new_master(self, old: tuple[str, int], timeout: float) -> RedisServer:
        _poll(lambda: self.sentinel.master_address() != old, "the Sentinel to switch", timeout)
        new = self.master
        _poll(lambda: self._is_master(new), "the new master to answer ROLE as master", timeout)
        return new

    def wait_demoted(self, server: RedisServer, timeout: float = 30.0) -> None:
        """Wait until ``server`` (an old master) is a replica of the new master, in sync."""
        _poll(lambda: self._link_up(server), f"port {server.port} to follow the master", timeout)
