"""A registry namespace read straight from Redis, a chunk at a time (the CLI's
``agents list`` and ``agents count``).

A ``RedisObserver`` starts with one snapshot of every entry, each decoded whole
(its metadata frozen): on 200k entries ``agents count`` took 14 s and ``agents
list`` 28 s and 840 MB before their first line. These commands need less:
``count`` asks Redis for the number (``HLEN``) and reads the small heads only
(kind and node, never the metadata); ``list`` reads each head's registration
time, sorts the keys by it, then reads the entries ``CHUNK`` at a time in that
order and hands each on as it comes.

Unlike the observer's snapshot (one script), these reads are not one atomic
view: an entry registered, replaced or removed meanwhile shows or not by when
it was read, as it would in a list taken a moment earlier or later.

Each chunk's heads and metadata are read together atomically (``MULTI``), so
an entry's head and metadata belong to one registration. Redis out of memory
(``maxmemory`` reached under ``noeviction``) refuses every command queued in a
``MULTI``, reads too, so there a chunk is read by a pure-read script instead
(``CHUNK_SCRIPT``: atomic as well, and served under ``OOM``, see
``_readscript``), and so is every later chunk of that reader: ``agents list``
answers while writes fail.
"""

from __future__ import annotations

import collections
import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from foundation import _redis_conn
from foundation.registry._redis._codec import decode_key
from foundation.registry._redis._observer import _check_arguments, _entry
from foundation.registry._redis._readscript import ReadScript
from foundation.registry._redis._shared import UNREADABLE

__all__ = ["CHUNK", "CHUNK_SCRIPT", "NamespaceReader"]

CHUNK: Final = 500
"""Entries per round trip (``HSCAN`` ``COUNT`` and ``HMGET``): Redis never serves
one reader for long, and the command holds one chunk of entries at a time."""
OP_TIMEOUT: Final = 2.0
"""Seconds each call may take (the observer's default)."""
CHUNK_SCRIPT: Final = """
return {redis.call('HMGET', KEYS[1], unpack(ARGV)), redis.call('HMGET', KEYS[2], unpack(ARGV))}
"""
"""One chunk's heads (``KEYS[1]``) and metadata (``KEYS[2]``) of the entries
``ARGV``, as the ``MULTI`` reads them; a pure read (``_readscript``), so Redis
runs it out of memory. A missing field is ``false`` in Lua, a nil reply here.
(``unpack`` takes up to 7,999 values; ``CHUNK`` is far below.)"""


class NamespaceReader:
    """The entries of one registry namespace, read in chunks by one connection.

    Raises (constructor): ``InvalidConfig`` for a malformed URL or namespace,
    ``BackendUnavailable`` when Redis cannot be used; every read raises
    ``BackendUnavailable`` the same way (a redis-py error never escapes).
    """

    def __init__(self, url: str, namespace: str) -> None:
        _redis_conn.check_url(url)
        _check_arguments(namespace, OP_TIMEOUT)
        self.namespace = namespace
        self.url = _redis_conn.redact_url(url)
        self._k_head = "{" + namespace + "}:head"
        self._k_meta = "{" + namespace + "}:meta"
        self._client = _redis_conn.connect(
            url, op_timeout=OP_TIMEOUT, name=f"foundation-cli[{namespace}]"
        )
        # None while chunks are read by MULTI; the script once Redis refused one
        # out of memory (see _chunk).
        self._script: ReadScript | None = None

    def close(self) -> None:
        with contextlib.suppress(*_redis_conn.redis_errors()):
            self._client.close()

    def _call(self, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with _redis_conn.translated(self.url, doing):
            return fn(*args, **kwargs)

    def count(self) -> int:
        """How many entries the namespace holds: Redis's number, no entry read."""
        return int(self._call("counting the entries", self._client.hlen, self._k_head))

    def _heads(self) -> Iterator[tuple[bytes, dict[str, Any]]]:
        """Every entry's key (encoded) and decoded head, a chunk per round trip.

        Race: HSCAN returns every entry present throughout the scan; one the
        hash holds twice over a rehash (entries coming and going) may come
        twice: callers keep one per key where it matters. A head nobody can read
        (not written by this library) is left out, as the observer does.
        """
        cursor = 0
        while True:
            cursor, found = self._call(
                "reading the entries", self._client.hscan, self._k_head, cursor, count=CHUNK
            )
            for ek, raw in found.items():
                head = _decoded(raw)
                if head is not None:
                    yield ek, head
            if not cursor:
                return

    def breakdown(self) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """Entries by agent kind and by node, from the heads alone (no metadata)."""
        kinds: collections.Counter[str] = collections.Counter()
        nodes: collections.Counter[str] = collections.Counter()
        seen: set[bytes] = set()  # one per key (see _heads)
        for ek, head in self._heads():
            if ek in seen or not isinstance(head.get("n"), str):
                continue
            seen.add(ek)
            agent = head.get("a") or {}
            kinds[str(agent.get("kind", "?") if isinstance(agent, dict) else "?")] += 1
            nodes[head["n"]] += 1
        return kinds, nodes

    def oldest_first(self) -> list[bytes]:
        """Every entry's encoded key, by registration time (then key: a stable order).

        Holds a key and a time per entry, not the entries."""
        at: dict[bytes, float] = {}
        for ek, head in self._heads():
            t = head.get("t")
            if isinstance(t, int | float) and not isinstance(t, bool):
                at[ek] = float(t)
        return sorted(at, key=lambda ek: (at[ek], ek))

    def entries(self, keys: Sequence[bytes]) -> Iterator[Any]:
        """The entries of ``keys`` (encoded), in that order, ``CHUNK`` per round trip.

        Race: an entry removed since its key was listed is left out; head and
        metadata come from one MULTI, so they belong to the same registration.
        """
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            heads, metas = self._call("reading the entries", self._chunk, chunk)
            for ek, head, meta in zip(chunk, heads, metas, strict=True):
                if head is None:
                    continue  # gone since it was listed
                try:
                    entry = _entry(decode_key(ek), head, b"{}" if meta is None else meta)
                except UNREADABLE:  # not written by this library: left out, as the observer does
                    continue
                yield entry

    def _chunk(self, chunk: list[bytes]) -> tuple[list[Any], list[Any]]:
        """The heads and metadata of ``chunk`` (None where missing), read atomically.

        ``MULTI`` first: on Redis 6.2 a write pause (``CLIENT PAUSE WRITE``)
        holds every script back but lets a ``MULTI`` of reads through. Out of
        memory, Redis refuses each command queued in a ``MULTI`` (and aborts its
        ``EXEC``); the chunk is then read by ``CHUNK_SCRIPT``, and so is every
        later chunk (one round trip each, not a refused one first), memory
        freed meanwhile or not.

        Race: the refused ``MULTI`` read nothing (Redis queued no command), so
        nothing of it is used; the script reads the chunk afresh, an entry
        changed in between shows as the script finds it (as any entry read a
        moment later, see the module docstring). Head and metadata still come
        from one atomic read: a script runs whole, with no other command between
        its two ``HMGET``s, as the ``MULTI``'s ``EXEC`` does.
        """
        if self._script is None:
            pipe = self._client.pipeline(transaction=True)
            pipe.hmget(self._k_head, chunk)
            pipe.hmget(self._k_meta, chunk)
            try:
                heads, metas = pipe.execute()
            except _redis_conn.import_redis().exceptions.OutOfMemoryError:
                self._script = ReadScript(CHUNK_SCRIPT)
            else:
                return heads, metas
        heads, metas = self._script.run(self._client, [self._k_head, self._k_meta], chunk)
        return heads, metas


def _decoded(raw: bytes) -> dict[str, Any] | None:
    """A head as a dict, or None when it is not one (not written by this library)."""
    try:
        head = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    return head if isinstance(head, dict) else None
