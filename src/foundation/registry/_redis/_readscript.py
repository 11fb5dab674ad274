"""A pure-read script that Redis 7 also serves while writes are paused.

``CLIENT PAUSE <ms> WRITE`` (what Redis does during ``FAILOVER``, and what
operators use for maintenance) holds back every ``EVAL``/``EVALSHA`` of a
script that does not declare ``#!lua flags=no-writes`` (Redis >= 7.0). Redis
6.2 has no such line (there it is a Lua syntax error), and pauses every script.
So a read script is run in its flagged form on a server that says (``HELLO``)
it is 7 or newer, and as its plain text otherwise: on 6.2 exactly what ran
before. The flag changes nothing else: the script runs atomically either way,
reads as before, and ``no-writes`` implies ``allow-oom`` (reads under ``OOM``
answer, as before); a read-only replica runs both forms (it refuses a script
only when it writes).

The form is chosen at the first run and again whenever the server lacks the
plain script (``NOSCRIPT``: a restart, or a failover, perhaps to a server of
another version) or refuses the flagged one: a server that does not say it is
7 or newer (6.2) is never sent the flagged text, and gets exactly the
``EVALSHA`` (loaded on ``NOSCRIPT``) it got before. So does an ACL user that
may run ``EVALSHA`` but not ``EVAL`` (``HELLO`` needs no permission).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from foundation import _redis_conn

__all__ = ["NO_WRITES", "ReadScript", "server_major"]

NO_WRITES: Final = "#!lua flags=no-writes\n"
"""The shebang line of a script that never writes (Redis >= 7.0)."""


def server_major(client: Any) -> int | None:
    """The server's major version from ``HELLO`` (no argument: the protocol is
    kept), or None if the server refuses it (an error reply: an ACL without
    ``HELLO``, an old or Redis-like server). A failed connection raises."""
    try:
        reply = client.execute_command("HELLO")
    except _redis_conn.import_redis().exceptions.ResponseError:
        return None
    if isinstance(reply, list):  # RESP2: a flat list of names and values
        reply = dict(zip(reply[::2], reply[1::2], strict=False))
    if not isinstance(reply, dict):
        return None
    version = reply.get(b"version", reply.get("version"))
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    try:
        return int(str(version).split(".", 1)[0])
    except ValueError:
        return None


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


class ReadScript:
    """A script that never writes, run by :meth:`run` in the form the server
    supports (see the module docstring)."""

    __slots__ = ("_chosen", "_flagged", "_plain")

    def __init__(self, body: str) -> None:
        self._plain = (body, _sha(body))
        flagged = NO_WRITES + body.lstrip("\n")
        self._flagged = (flagged, _sha(flagged))
        # (text, sha) of the form chosen, None until the first run. Assigned as
        # one tuple: a reader never pairs one form's text with the other's sha.
        self._chosen: tuple[str, str] | None = None

    @property
    def flagged(self) -> bool | None:
        """The ``no-writes`` form is in use (None: not chosen yet)."""
        chosen = self._chosen
        return None if chosen is None else chosen is self._flagged

    def run(self, client: Any, keys: list[str], argv: list[Any]) -> Any:
        """Run the script on ``client`` in the form the server supports. Raises
        what redis-py raises (the caller translates it)."""
        chosen = self._chosen or self._choose(client)
        if chosen is self._flagged:
            return self._run_flagged(client, keys, argv)
        return self._run_plain(client, keys, argv, choose=True)

    def _run_plain(self, client: Any, keys: list[str], argv: list[Any], *, choose: bool) -> Any:
        """``EVALSHA`` of the plain text, loaded on ``NOSCRIPT``; with ``choose``, a
        ``NOSCRIPT`` first asks the version again."""
        try:
            return client.evalsha(self._plain[1], len(keys), *keys, *argv)
        except _redis_conn.import_redis().exceptions.NoScriptError:
            # A new server (restarted, or another one after a failover): its
            # version may differ from the one the form was chosen for.
            if choose and self._choose(client) is self._flagged:
                return self._run_flagged(client, keys, argv)
            client.script_load(self._plain[0])
            return client.evalsha(self._plain[1], len(keys), *keys, *argv)

    def _run_flagged(self, client: Any, keys: list[str], argv: list[Any]) -> Any:
        """``EVAL`` of the flagged text, never ``EVALSHA``: Redis learns a
        script's flags from its text, so during a write pause it holds back an
        ``EVALSHA`` of a script it lacks (a restart, a failover, ``SCRIPT
        FLUSH``) instead of answering ``NOSCRIPT``. (The text is sent with each
        snapshot: a few kB beside the snapshot's own reply.)"""
        exceptions = _redis_conn.import_redis().exceptions
        try:
            return client.eval(self._flagged[0], len(keys), *keys, *argv)
        except exceptions.NoPermissionError:
            # An ACL user allowed EVALSHA but not EVAL (an account for loaded
            # scripts only): the plain form, what it ran before, until the next
            # NOSCRIPT asks again. (Not choose=True: its NOSCRIPT would come back
            # here, and round again.) Refused too (the keys): chosen afresh next run.
            self._chosen = self._plain
            try:
                return self._run_plain(client, keys, argv, choose=False)
            except exceptions.ResponseError:
                self._chosen = None
                raise
        except exceptions.ResponseError:
            # Perhaps another server (a failover to an older version refuses the
            # shebang line): the next run asks the version again.
            self._chosen = None
            raise

    def _choose(self, client: Any) -> tuple[str, str]:
        major = server_major(client)
        chosen = self._flagged if major is not None and major >= 7 else self._plain
        self._chosen = chosen
        return chosen
