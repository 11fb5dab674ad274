"""A redis-server process on a free 127.0.0.1 port, with the faults production sees.

One implementation, used by the test suite (``tests.redis_support``), the chaos
suite and the demo's chaos mode. It talks to the server over a raw socket with
a minimal RESP client, so it needs no redis-py.

Faults (each reversible unless noted):

=========================  ===================================================
``kill()``                 SIGKILL: an abrupt outage; data lost (no persistence)
``restart()``              kill, then start again on the same port, empty
``freeze()`` / ``thaw()``  SIGSTOP / SIGCONT: connections hang, nothing refused
``make_read_only()``       ``REPLICAOF`` a port nobody listens on: the data is
                           kept, reads work, writes answer ``READONLY``
``make_writable()``        ``REPLICAOF NO ONE``
``pause_clients(ms)``      ``CLIENT PAUSE ms``: every client command waits
``debug_sleep(s)``         ``DEBUG SLEEP s`` from a thread of its own: the
                           server's single thread blocks for ``s`` seconds
``oom_on()``/``oom_off()`` ``maxmemory 1`` + ``noeviction``: writes answer ``OOM``
=========================  ===================================================

With ``tls=ServerTls(...)`` the server listens for TLS only (``--port 0
--tls-port``); ``url`` is then ``rediss://``, and the control channel speaks
TLS too (it verifies nothing, so a test may rotate the server's certificate:
assign ``server.tls`` and ``restart()``).

Example:
    >>> with RedisServerProcess() as server:
    ...     server.command("SET", "k", "v")
    ...     server.make_read_only()
    ...     server.command("GET", "k")
    ...     server.make_writable()
    'OK'
    b'v'
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RedisCommandError",
    "RedisServerError",
    "RedisServerProcess",
    "ServerTls",
    "find_redis_server",
    "free_port",
    "redis_server_binary",
]

_HOST = "127.0.0.1"


class RedisServerError(RuntimeError):
    """redis-server is missing, would not start, or cannot be reached."""


class RedisCommandError(RedisServerError):
    """The server answered a control command with an error reply."""


def find_redis_server() -> str | None:
    """The path of the ``redis-server`` binary, or ``None`` if it is not installed."""
    return shutil.which("redis-server")


def redis_server_binary() -> str:
    """The path of ``redis-server``; raises :class:`RedisServerError` if missing."""
    path = find_redis_server()
    if path is None:
        raise RedisServerError(
            "redis-server is not installed; `make test` installs it with apt-get"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- minimal RESP


def _encode(args: tuple[object, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""

    def _fill(self) -> None:
        chunk = self._sock.recv(65536)
        if not chunk:
            raise RedisServerError("redis-server closed the connection")
        self._buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self._buf:
            self._fill()
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill()
        data, self._buf = self._buf[:n], self._buf[n + 2 :]
        return data

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisCommandError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RedisServerError(f"unexpected reply from redis-server: {line[:40]!r}")


# --------------------------------------------------------------------------- the process


@dataclass(frozen=True)
class ServerTls:
    """The TLS files of a server (PEM paths); ``auth_clients``: ``--tls-auth-clients yes``.

    ``client_cert`` / ``client_key``: what the control channel presents (needed
    when ``auth_clients``).
    """

    cert: Path
    key: Path
    ca: Path
    auth_clients: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None

    def args(self, port: int) -> list[str]:
        """redis-server's arguments: TLS on ``port``, no plain-text port."""
        return [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "yes" if self.auth_clients else "no",
        ]  # fmt: skip

    def wrap(self, sock: socket.socket) -> socket.socket:
        """``sock`` after a TLS handshake that verifies nothing (a test's control channel)."""
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context.wrap_socket(sock)


class RedisServerProcess:
    """One redis-server process; ``url`` is ``redis://127.0.0.1:<port>/0``.

    No persistence (``--save "" --appendonly no``) and ``DEBUG`` enabled. Not
    thread-safe: one owner drives the faults (``debug_sleep`` runs its blocking
    command on a thread of its own).
    """

    extra_args: tuple[str, ...] = ()
    """More ``redis-server`` options, after the defaults (a variant's, in a subclass)."""

    def __init__(
        self, *, password: str | None = None, port: int | None = None, tls: ServerTls | None = None
    ) -> None:
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix="foundation-redis-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self._replica_hold: socket.socket | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "redis" if self.tls is None else "rediss"
        return f"{scheme}://{auth}{_HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """The process exists and has not exited (it may be frozen)."""
        return self.process is not None and self.process.poll() is None

    @property
    def frozen(self) -> bool:
        return self._frozen

    # ------------------------------------------------------------ lifecycle

    def start(self, *, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers ``PING``.

        On a loaded machine a fresh server may take seconds to answer: each try
        waits twice as long as the last (0.2 s up to 2 s), within ``timeout``.
        """
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", _HOST,
            "--save", "",
            "--appendonly", "no",
            "--enable-debug-command", "yes",
            "--dir", str(self._dir),
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        args += self.extra_args
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls is not None:
            args[1:3] = self.tls.args(self.port)
        self._frozen = False
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        wait = 0.2
        while (left := deadline - time.monotonic()) > 0:
            if self.process.poll() is not None:
                raise RedisServerError(f"redis-server exited early with {self.process.returncode}")
            with contextlib.suppress(OSError), self._open(timeout=min(wait, left)) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return
            wait = min(wait * 2, 2.0)
            time.sleep(0.01)  # sleep-ok: polling a server's port with a deadline
        raise RedisServerError(
            f"redis-server did not answer PING on port {self.port} within {timeout:g} s"
            f"{self._last_log_line()}"
        )

    def _last_log_line(self) -> str:
        """'; its log ends: <line>', or '' (the directory goes with stop())."""
        try:
            lines = (self._dir / "redis.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"; its log ends: {lines[-1].strip()}" if lines else ""

    def kill(self) -> None:
        """SIGKILL the server (an abrupt outage); data is lost (no persistence)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # delivered even to a stopped process
            self.process.wait(timeout=10)
        self._frozen = False
        self._release_replica_hold()

    def restart(self) -> None:
        """Kill, then start again on the same port: the server comes back empty."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Terminate the server and remove its directory."""
        if self.process is not None and self.process.poll() is None:
            if self._frozen:
                self.thaw()  # SIGTERM stays pending on a stopped process
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None
        self._frozen = False
        self._release_replica_hold()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ control channel

    def _open(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((_HOST, self.port), timeout=timeout)
        if self.tls is None:
            return sock
        try:
            return self.tls.wrap(sock)
        except BaseException:
            sock.close()
            raise

    def _connect(self, timeout: float) -> tuple[socket.socket, _Reader]:
        sock = self._open(timeout)
        reader = _Reader(sock)
        if self.password:
            sock.sendall(_encode(("AUTH", self.password)))
            reader.reply()
        return sock, reader

    def command(self, *args: object, timeout: float = 10.0) -> Any:
        """Send one command on a fresh connection; an error reply raises ``RedisCommandError``."""
        try:
            sock, reader = self._connect(timeout)
            with sock:
                sock.sendall(_encode(args))
                return reader.reply()
        except OSError as exc:
            raise RedisServerError(f"redis-server on port {self.port}: {exc}") from exc

    # ------------------------------------------------------------ faults

    def freeze(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing."""
        if self.process is None or self.process.poll() is not None:
            raise RedisServerError("redis-server is not running")
        self.process.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT: the server resumes where it stopped."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
        self._frozen = False

    def make_read_only(self) -> None:
        """Demote to a replica of a port nobody listens on: data kept, writes get ``READONLY``.

        The port stays bound (never listening) until :meth:`make_writable`, so no other
        process can take it and become this server's master.
        """
        self._release_replica_hold()
        hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        hold.bind((_HOST, 0))  # bound, not listening: connections to it are refused
        self._replica_hold = hold
        self.command("REPLICAOF", _HOST, hold.getsockname()[1])

    def make_writable(self) -> None:
        """``REPLICAOF NO ONE``: a master again, with the data it kept."""
        self.command("REPLICAOF", "NO", "ONE")
        self._release_replica_hold()

    def _release_replica_hold(self) -> None:
        if self._replica_hold is not None:
            self._replica_hold.close()
            self._replica_hold = None

    def pause_clients(self, milliseconds: int) -> None:
        """``CLIENT PAUSE``: every client's commands wait ``milliseconds``, then run."""
        self.command("CLIENT", "PAUSE", int(milliseconds))

    def debug_sleep(self, seconds: float) -> threading.Thread:
        """Block the server's only thread for ``seconds`` (``DEBUG SLEEP``).

        The command is sent before this returns; its reply is awaited on the returned
        (daemon) thread, which ends when the server wakes up. Join it to wait for that.
        """
        sock, reader = self._connect(timeout=seconds + 30.0)
        sock.sendall(_encode(("DEBUG", "SLEEP", f"{seconds:g}")))

        def await_reply() -> None:
            with sock, contextlib.suppress(OSError, RedisServerError):
                reader.reply()

        thread = threading.Thread(target=await_reply, name="redis-debug-sleep", daemon=True)
        thread.start()
        return thread

    def oom_on(self) -> None:
        """``maxmemory 1`` with ``noeviction``: every write that may grow memory gets ``OOM``."""
        self.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        self.command("CONFIG", "SET", "maxmemory", "1")

    def oom_off(self) -> None:
        """``maxmemory 0``: no memory limit again."""
        self.command("CONFIG", "SET", "maxmemory", "0")
