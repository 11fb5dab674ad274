"""Opening a ``RedisRegistry`` node's connections and scripts, and shutting it down.

``connect`` and ``load_scripts`` run in the constructor (which undoes them on
failure); ``shut_down`` is ``close()`` after it marked the node closed: it
stops the threads, releases the lease and closes the connections.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from foundation import _redis_conn
from foundation.errors import FoundationError
from foundation.registry._redis import _scripts
from foundation.registry._redis._readscript import ReadScript
from foundation.registry._redis._scripts import (
    HEARTBEAT,
    REAP,
    REGISTER,
    REGISTER_MANY,
    RELEASE,
    SNAPSHOT,
    UNREGISTER,
    UPDATE,
    ReleaseArgs,
)
from foundation.registry._redis._shared import TAIL_BLOCK_MS, Shared

if TYPE_CHECKING:
    from foundation.registry._redis._lease import Lease
    from foundation.registry._redis._tail import Tail

__all__ = ["connect", "load_scripts", "shut_down"]


def connect(sh: Shared, url: str, name: str, op_timeout: float) -> None:
    """Open the node's write client (``sh.client``) and its tail's single
    connection (``sh.tail_client``, its pool's owner ``sh.tail_owner``).

    The owner lives on the node, which the lease and tail threads hold: not on
    the ``RedisRegistry``, which its user may drop without ``close()`` (a
    function's local); collecting the owner closes the pool, cutting the
    tail's read (a false outage, logged at WARNING)."""
    sh.client = _redis_conn.connect(url, op_timeout=op_timeout, name=f"foundation:{name}")
    tail = sh.tail_owner = _redis_conn.connect(
        url,
        op_timeout=op_timeout + TAIL_BLOCK_MS / 1000,
        connect_timeout=op_timeout,
        name=f"foundation-tail:{name}",
    )
    # The tail holds ONE connection: one the server cut while the tail was
    # not reading (it pauses after its own writes, see _tail.OWN_QUIET_S)
    # then fails the next read, and the link recovers; a pooled client
    # would replace it silently.
    sh.tail_client = _redis_conn.import_redis().Redis(
        connection_pool=tail.connection_pool, single_connection_client=True
    )


def load_scripts(sh: Shared) -> None:
    """Register the node's scripts on its write client (``sh.scripts``)."""
    c = sh.client
    sh.scripts = {
        "register": c.register_script(REGISTER),
        "register_many": c.register_script(REGISTER_MANY),
        "update": c.register_script(UPDATE),
        "unregister": c.register_script(UNREGISTER),
        "heartbeat": c.register_script(HEARTBEAT),
        "reap": c.register_script(REAP),
        "release": c.register_script(RELEASE),
        # A pure read: run so that Redis >= 7 serves it while writes
        # are paused (see _readscript).
        "snapshot": ReadScript(SNAPSHOT),
    }


def _release(sh: Shared) -> None:
    """Drop this node's registrations and forget its lease (``RELEASE``), at most
    ``REAP_CHUNK`` per script (Redis serves other clients between them), until
    none is left, or until its lease would have run out anyway: past that the
    other nodes' heartbeats reap the rest (as ``lease_expired``), as after a
    failure here. Each call is bounded by ``op_timeout``, so ``close()`` is by
    about ``lease_ttl`` (``op_timeout`` if longer) plus one call.

    Race: another node may be reaping our entries meanwhile (our lease expired
    while the lease thread was stopping): both scripts re-check every entry's
    owner, so each entry is dropped once."""
    deadline = max(time.monotonic() + sh.op_timeout, sh.last_beat_ok + sh.ttl)
    while True:
        args = ReleaseArgs(sh.maxlen, sh.node, _scripts.REAP_CHUNK)
        reply = sh.script("release", args, "releasing our lease")
        if int(reply[1]) or time.monotonic() >= deadline:
            return


def shut_down(sh: Shared, lease: Lease, tail: Tail, owns_manager: bool) -> None:
    """The rest of ``close()`` once the node is marked closed: stop the threads,
    release the lease, drop the node's registrations and monitors, close the
    connections (and the manager it owns)."""
    sh.stop.set()
    sh.link.close()
    sh.jobs.put(None)
    sh.poke_tail()
    if lease.thread.ident is not None:  # else a construction that could not start it
        lease.thread.join(timeout=sh.op_timeout * 3 + 1)
    try:
        with sh.writing(public=False):
            _release(sh)
    except FoundationError:
        pass  # Redis is down: the lease will expire and others reap our entries
    with sh.mlock:
        owns = list(sh.own.values())
        sh.own.clear()
        # Nothing stays behind: the mirror is emptied (reads raise Closed anyway).
        for key in list(sh.entries):
            sh.mirror.remove(key, sh.tail_v)
        sh.applied.notify_all()
    for own in owns:
        if own.monitor is not None:
            own.monitor.demonitor()
    if owns_manager:
        sh.manager.close()
    if tail.thread.ident is not None:  # as the lease thread above
        tail.thread.join(timeout=0.5)
    if tail.thread.is_alive():
        # Blocked in XREAD on a server that does not answer: cut the socket.
        sh.tail_client.connection_pool.disconnect()
        tail.thread.join(timeout=sh.op_timeout + TAIL_BLOCK_MS / 1000 + 1)
    with contextlib.suppress(FoundationError):
        sh.call("deleting our wake stream", sh.client.delete, sh.k_wake)
    sh.client.close()
    sh.tail_client.close()
    sh.tail_owner.close()  # and its pool
