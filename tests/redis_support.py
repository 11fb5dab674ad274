"""A real redis-server on a free 127.0.0.1 port, owned by the test session.

Never the machine's shared server on 6379: every test that needs Redis gets a
server started here, which it may kill (-9), freeze, make read-only, pause,
put to sleep or fill up, or restart on the same port. The one implementation
is :mod:`foundation._demo._redis_server` (the demo's chaos mode uses it too).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from foundation._demo._redis_server import (
    RedisServerError,
    RedisServerProcess,
    ServerTls,
    free_port,
    redis_server_binary,
)

_LOOPBACK = "127.0.0.1"

__all__ = [
    "RedisServer",
    "SentinelProcess",
    "SentinelSet",
    "VersionlessRedisServer",
    "free_port",
    "redis_server_binary",
    "running_redis",
]


class RedisServer(RedisServerProcess):
    """One redis-server process; ``url`` is ``redis://127.0.0.1:<port>/0``.

    :meth:`start` checks that the server answering on the port is this process
    (``INFO server`` ``process_id``), and on a first start on a port picked by
    :func:`free_port` moves to another one if it was not: see :meth:`start`.
    :meth:`evidence` says what became of it (for a failed test's message).
    """

    killed_by_test = False
    """Whether :meth:`kill` (or ``restart``) SIGKILLed it: a -9 the test asked for."""

    def __init__(
        self, *, password: str | None = None, port: int | None = None, tls: ServerTls | None = None
    ) -> None:
        super().__init__(password=password, port=port, tls=tls)
        self._may_move = port is None  # until the first start: then the port is the server's

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def start(self, *, timeout: float = 10.0) -> None:
        """Start and wait until this process (not another on its port) answers.

        Race: :func:`free_port` only says the port was free a moment ago, and
        other tests (other pytest runs on the machine too) pick ports the same
        way or restart servers on theirs. If another process took the port
        first, the new server cannot bind it and exits, but the wait for a
        ``PING`` reply would be answered by the other process, and the test
        would drive (freeze, kill, fail over) another test's server. So the
        answering process must be this one: on a first start on a picked port
        the server moves to a new free port (twice at most); otherwise (a
        restart, or a port the caller chose) it is an error naming the owner.
        """
        for attempt in range(3):
            may_move = self._may_move and attempt < 2
            try:
                self._launch(timeout)
            except (RedisServerError, RuntimeError) as exc:  # exited early: port taken?
                if not _port_taken(self.log_path):
                    raise
                self._end_launched()
                if not may_move:
                    raise self._taken(self._answering_pid()) from exc
                self._move_port()
                continue
            owner = self._answering_pid()
            if self.process is not None and owner == self.process.pid:
                self._may_move = False
                self.killed_by_test = False
                return
            self._end_launched()
            if not may_move:
                raise self._taken(owner)
            self._move_port()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _taken(self, owner: int | None) -> RedisServerError:
        return RedisServerError(
            f"port {self.port} is taken by another process (pid {owner}), "
            "not the redis-server just started: a free-port race"
        )

    def _launch(self, timeout: float) -> None:
        super().start(timeout=timeout)

    def _move_port(self) -> None:
        self.port = free_port()
        self.log_path.unlink(missing_ok=True)  # it says the old port was taken

    def _answering_pid(self) -> int | None:
        """``process_id`` of the server answering on the port (``None``: not a
        redis-server that takes this server's login)."""
        try:
            info: bytes = self.command("INFO", "server", timeout=2.0)
        except RedisServerError:
            return None
        for line in info.decode(errors="replace").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        return None

    def _end_launched(self) -> None:
        """The process just launched lost its port: wait for it to end (kill it if not)."""
        process = self.process
        if process is not None:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        self.process = None

    @property
    def log_path(self) -> Path:
        return self._dir / "redis.log"

    def kill(self) -> None:
        self.killed_by_test = self.killed_by_test or self.running
        super().kill()

    def evidence(self, role: str, lines: int = 25) -> str:
        """``role``, port, pid, whether it runs (or how it ended) and the tail of its log.

        Read before ``stop()``, which removes the log with the directory."""
        process = self.process
        if process is None:
            state = "not running (never started, or stopped)"
        else:
            code = process.poll()
            if code is None:
                state = "frozen (SIGSTOP)" if self.frozen else "running"
                listening = "accepts connections" if _listens(self.port) else "REFUSES connections"
                state += f", port {listening}"
            else:
                state = f"EXITED, returncode {code}{_signal_name(code)}"
                state += " (killed by the test)" if self.killed_by_test else ""
        pid = process.pid if process is not None else "-"
        return f"{role} on port {self.port} (pid {pid}): {state}\n{_tail(self.log_path, lines)}"


class VersionlessRedisServer(RedisServer):
    """A :class:`RedisServer` that does not tell its version (``HELLO`` renamed
    away), as if it were older than Redis 7: the library then runs the plain
    form of its read scripts, what Redis 6.2 gets. ``url`` asks for RESP2
    (redis-py's RESP3 handshake is itself a ``HELLO``)."""

    extra_args = ("--rename-command", "HELLO", "")

    @property
    def url(self) -> str:
        return super().url + "?protocol=2"


def _port_taken(log: Path) -> bool:
    """Whether the server of ``log`` could not listen: its port was taken."""
    try:
        return "Address already in use" in log.read_text(errors="replace")
    except OSError:
        return False


def _listens(port: int) -> bool:
    """Whether a connection to ``127.0.0.1:port`` is accepted (a listening socket)."""
    try:
        socket.create_connection((_LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _signal_name(returncode: int) -> str:
    if returncode >= 0:
        return ""
    try:
        return f" ({signal.Signals(-returncode).name})"
    except ValueError:
        return ""


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the log at ``path``, indented (or why there are none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"    (no log: {exc})"
    return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])


@contextlib.contextmanager
def running_redis(password: str | None = None) -> Iterator[RedisServer]:
    with RedisServer(password=password) as server:
        yield server


@contextlib.contextmanager
def replica_of_an_empty_master() -> Iterator[tuple[RedisServer, RedisServer]]:
    """(master, replica): two fresh servers, the second a read-only replica
    (``REPLICAOF``) of the first, which holds nothing; both stopped after."""
    with RedisServer() as master, RedisServer() as replica:
        replica.command("REPLICAOF", "127.0.0.1", master.port)
        yield master, replica


# --------------------------------------------------------------------------- Sentinel


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
    """``redis-server <conf> --sentinel`` monitoring ``service``.

    ``quorum``: Sentinels that must agree the master is down (1 for a lone
    Sentinel). ``password`` is the Sentinel's ``requirepass`` (also what it
    gives the other Sentinels of its set); ``acl_user`` is ``(name, password)``
    of one more ACL user allowed every command. ``command()`` logs in with
    ``password``.
    """

    def __init__(
        self,
        service: str,
        master_port: int,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        quorum: int = 1,
        password: str | None = None,
        acl_user: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(password=password)
        self.service = service
        self.master_port = master_port
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = quorum
        self.acl_user = acl_user
        self._reads = 0  # INFO reads of commands_served()

    @property
    def log_path(self) -> Path:
        return self._dir / "sentinel.log"

    def _conf(self) -> str:
        svc = self.service
        lines = [
            f"port {self.port}",
            f"bind {_LOOPBACK}",
            f"dir {self._dir}",
            f"logfile {self.log_path}",
            f"sentinel monitor {svc} {_LOOPBACK} {self.master_port} {self.quorum}",
            f"sentinel down-after-milliseconds {svc} {self.down_after_ms}",
            f"sentinel failover-timeout {svc} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {svc} 1",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        if self.acl_user:
            name, secret = self.acl_user
            lines.append(f"user {name} on >{secret} allchannels +@all")
        return "\n".join(lines) + "\n"

    def _move_port(self) -> None:
        super()._move_port()
        (self._dir / "sentinel.conf").unlink(missing_ok=True)  # it names the old port

    def _launch(self, timeout: float) -> None:
        conf = self._dir / "sentinel.conf"
        if not conf.exists():  # a restart keeps what the Sentinel wrote there
            conf.write_text(self._conf())
        self._frozen = False
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(
                    f"redis-sentinel exited early with {process.returncode}:\n"
                    + _tail(self.log_path, 10)
                )
            try:
                return bool(self.command("PING", timeout=0.5) == "PONG")
            except RedisServerError:
                return False

        _poll(answers, f"redis-sentinel on port {self.port}", timeout)

    @property
    def answering(self) -> bool:
        """Running and not frozen: it answers commands."""
        return self.running and not self.frozen

    def master_address(self) -> tuple[str, int]:
        """``SENTINEL get-master-addr-by-name``: what clients are told now."""
        host, port = self.command("SENTINEL", "get-master-addr-by-name", self.service)
        return host.decode(), int(port)

    def commands_served(self) -> int:
        """Commands this Sentinel served so far (``INFO stats``
        ``total_commands_processed``), not counting the ones of these reads.

        Sentinel 7.0 has no ``INFO commandstats``: in a set of one Sentinel,
        whose only clients are idle Sentinel clients (persistent connections),
        what it serves are their master discoveries (``SENTINEL MASTERS``).
        """
        self._reads += 1
        info: bytes = self.command("INFO", "stats")
        for line in info.decode().splitlines():
            if line.startswith("total_commands_processed:"):
                per_read = 2 if self.password else 1  # AUTH, INFO
                return int(line.split(":", 1)[1]) - self._reads * per_read
        raise RuntimeError("INFO stats has no total_commands_processed")


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds open (``/proc/<pid>/fd``)."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    found.add(target[len("socket:[") : -1])
    return found


_SET_IDS = itertools.count()

LIVE_SETS: weakref.WeakSet[SentinelSet] = weakref.WeakSet()
"""The sets inside their ``with`` block: a failed test reports their
:meth:`SentinelSet.evidence` (``tests/redis/conftest.py``)."""


class SentinelSet:
    """A master, one replica (``REPLICAOF``) and ``sentinels`` Sentinels on free
    loopback ports.

    ``quorum`` defaults to a majority of the Sentinels (1 for one, 2 for
    three). ``sentinel_password`` is every Sentinel's ``requirepass``;
    ``acl_user`` (``(name, password)``) one more ACL user on each. ``url`` is
    the ``redis+sentinel://`` URL of the set, naming every Sentinel (in order)
    and, with ``sentinel_password``, logging in with it (:meth:`url_with` for
    another login). ``sentinel`` is the first Sentinel; the control methods ask
    the first one that answers (not killed nor frozen).

    :meth:`failover` (``SENTINEL FAILOVER``) and :meth:`kill_master` (SIGKILL,
    the Sentinels promote the replica after ``down_after_ms``) return once a
    Sentinel names the new master and that server answers ``ROLE`` as a master.

    ``service`` defaults to a name no other set uses. An exception leaving the
    ``with`` block carries :meth:`evidence` (a note shown with its traceback):
    whether each process still runs or how it ended, and the tail of its log.
    """

    def __init__(
        self,
        service: str | None = None,
        *,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        sentinels: int = 1,
        quorum: int | None = None,
        sentinel_password: str | None = None,
        acl_user: tuple[str, str] | None = None,
    ) -> None:
        # A service name of its own: Sentinels exchange hellos (and adopt a newer
        # master address) with any Sentinel of the same service they reach, and
        # another test's Sentinel may reach this set (it still watches a port of
        # a server it lost, which this set's free_port() may pick).
        service = service or f"foundation-test-{os.getpid()}-{next(_SET_IDS)}"
        self.service = service
        self.servers = [RedisServer(), RedisServer()]
        self.sentinel_password = sentinel_password
        self.all_sentinels = [
            SentinelProcess(
                service,
                self.servers[0].port,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
                quorum=sentinels // 2 + 1 if quorum is None else quorum,
                password=sentinel_password,
                acl_user=acl_user,
            )
            for _ in range(sentinels)
        ]
        self.sentinel = self.all_sentinels[0]

    @property
    def url(self) -> str:
        if self.sentinel_password is None:
            return self.url_with()
        return self.url_with(f"?sentinel_password={self.sentinel_password}")

    def url_with(self, query: str = "", *, db: int = 0) -> str:
        """The set's URL with ``query`` (``"?sentinel_username=..."``) and ``db``."""
        hosts = ",".join(f"{_LOOPBACK}:{s.port}" for s in self.all_sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/{db}{query}"

    def start(self, timeout: float = 30.0) -> None:
        master, replica = self.servers
        master.start()
        replica.start()
        replica.command("REPLICAOF", _LOOPBACK, master.port)
        _poll(lambda: self._link_up(replica), "the replica to sync with the master", timeout)
        for sentinel in self.all_sentinels:
            sentinel.master_port = master.port  # start() may have moved it (a port race)
            sentinel.start()
        self.wait_settled(timeout)

    def wait_settled(self, timeout: float = 30.0) -> None:
        """Wait until every answering Sentinel knows a healthy replica and the
        other answering Sentinels (as after :meth:`start`, or a restart)."""
        others = sum(1 for s in self.all_sentinels if s.answering) - 1
        for sentinel in self.all_sentinels:
            if sentinel.answering:
                self._settle(sentinel, others, timeout)

    def _settle(self, sentinel: SentinelProcess, others: int, timeout: float) -> None:
        def settled() -> bool:
            return self._replica_known(sentinel) and self._peers(sentinel) >= others

        what = f"the Sentinel on port {sentinel.port} to know the replica and {others} peer(s)"
        _poll(settled, what, timeout)

    def stop(self) -> None:
        for sentinel in self.all_sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def evidence(self) -> str:
        """What became of every process of the set: running or how it ended, and
        the tail of its log (``stop()`` removes the logs)."""
        parts = [
            server.evidence(f"redis-server {i} ({'first master' if i == 0 else 'first replica'})")
            for i, server in enumerate(self.servers)
        ]
        parts += [s.evidence(f"Sentinel {i}") for i, s in enumerate(self.all_sentinels)]
        return "--- the Sentinel set's processes ---\n" + "\n".join(parts)

    def __enter__(self) -> SentinelSet:
        LIVE_SETS.add(self)
        try:
            self.start()
        except BaseException as exc:
            self._note_evidence(exc)
            self.stop()
            LIVE_SETS.discard(self)
            raise
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is not None:
            self._note_evidence(exc)
        self.stop()
        LIVE_SETS.discard(self)

    def _note_evidence(self, exc: BaseException) -> None:
        """Add :meth:`evidence` to ``exc`` (shown with its traceback): a failed
        scenario says whether a Sentinel or server died, and what it logged."""
        try:
            exc.add_note(self.evidence())
        except Exception as failed:  # the evidence must never hide the failure
            exc.add_note(f"(no evidence of the Sentinel set: {failed!r})")

    @staticmethod
    def _link_up(server: RedisServer) -> bool:
        info: bytes = server.command("INFO", "replication")
        return b"master_link_status:up" in info

    def live_sentinel(self) -> SentinelProcess:
        """The first Sentinel that answers (neither killed nor frozen)."""
        for sentinel in self.all_sentinels:
            if sentinel.answering:
                return sentinel
        raise RuntimeError("no Sentinel of the set is running")

    def client_connections(self, sentinel: SentinelProcess) -> set[int]:
        """Local ports of the TCP connections to ``sentinel`` that clients
        opened (not the other Sentinels of the set), open or closed by the
        client and not yet acknowledged by ``sentinel`` (Linux's
        ``/proc/net/tcp``). A frozen Sentinel acknowledges nothing, so the ports
        that appear after the freeze count the clients' tries to reach it."""
        peers: set[str] = set()  # socket inodes of the other Sentinels
        for other in self.all_sentinels:
            if other is not sentinel and other.process is not None:
                peers |= _socket_inodes(other.process.pid)
        ports = set()
        with open("/proc/net/tcp") as table:
            for row in table.readlines()[1:]:
                fields = row.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                to_it = int(remote.split(":")[1], 16) == sentinel.port
                # ESTABLISHED, or FIN_WAIT2 (closed by the client, the peer silent)
                if to_it and state in ("01", "05") and inode not in peers:
                    ports.add(int(local.split(":")[1], 16))
        return ports

    def master_address(self) -> tuple[str, int]:
        """The master's address, as the first answering Sentinel names it."""
        return self.live_sentinel().master_address()

    def _peers(self, sentinel: SentinelProcess) -> int:
        fields = sentinel.command("SENTINEL", "MASTER", self.service)
        info = dict(zip(fields[::2], fields[1::2], strict=False))
        return int(info.get(b"num-other-sentinels", b"0"))

    def _replica_known(self, sentinel: SentinelProcess | None = None) -> bool:
        asked = sentinel or self.live_sentinel()
        replicas = asked.command("SENTINEL", "REPLICAS", self.service)
        for fields in replicas:
            info = dict(zip(fields[::2], fields[1::2], strict=False))
            flags = info.get(b"flags", b"")
            if b"s_down" not in flags and info.get(b"master-link-status") == b"ok":
                return True
        return False

    @property
    def master(self) -> RedisServer:
        """The server the Sentinels name as the master now."""
        return self._server(self.master_address()[1])

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
        old = self.master_address()
        self.live_sentinel().command("SENTINEL", "FAILOVER", self.service)
        return self._await_new_master(old, timeout)

    def kill_master(self, timeout: float = 30.0) -> RedisServer:
        """SIGKILL the master; returns the replica once the Sentinels promoted it."""
        old = self.master_address()
        self._server(old[1]).kill()
        return self._await_new_master(old, timeout)

    def _await_new_master(self, old: tuple[str, int], timeout: float) -> RedisServer:
        _poll(lambda: self.master_address() != old, "the Sentinel to switch", timeout)
        new = self.master
        _poll(lambda: self._is_master(new), "the new master to answer ROLE as master", timeout)
        return new

    def wait_demoted(self, server: RedisServer, timeout: float = 30.0) -> None:
        """Wait until ``server`` (an old master) is a replica of the new master, in sync."""
        _poll(lambda: self._link_up(server), f"port {server.port} to follow the master", timeout)
