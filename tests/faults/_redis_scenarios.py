"""Text shared by the Redis scenario scripts run through ``run_scenario``.

A scenario opens ``server`` (a started ``RedisServer``), ``stop`` (a
``threading.Event`` the registered threads wait on) and ``opened`` (every
registry node and flag store, in opening order) before its ``try:`` block;
``CLOSE_ALL`` is the ``finally:`` that ends that block.
"""

from __future__ import annotations

CLOSE_ALL = """finally:
    stop.set()
    for x in reversed(opened):
        x.close()
    server.stop()
"""

# A started server, a raw client on it (text replies) and ``open_nodes``: two
# ``RedisRegistry`` nodes named "a" and "b" on one namespace, each in ``opened``.
REGISTRY_PAIR = """
import redis as redis_py
from foundation import spawn_thread
from foundation.registry._redis import RedisRegistry
from tests.redis_support import RedisServer

server = RedisServer()
server.start()
stop = threading.Event()
opened = []
raw = redis_py.Redis.from_url(server.url, decode_responses=True)

def open_nodes(namespace, **options):
    for node in ("a", "b"):
        opened.append(RedisRegistry(server.url, namespace=namespace, node=node, **options))
    return opened[-2:]
"""

# Two functions of the scenarios that freeze Redis (SIGSTOP) on ``server``.
FROZEN_PROBES = """
def stopped():                                    # SIGSTOP taken: the kernel says "T"
    with open(f"/proc/{server.process.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"

def queued_connections():                         # accepted by the kernel, not by Redis
    total = 0
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == server.port and fields[3] == "0A":
                total += int(fields[4].split(":")[1], 16)
    return total
"""

# ``Records(level)``: a logging handler keeping the records from ``level`` up
# (add it to the "foundation" logger); ``messages`` are their texts.
RECORDS = """
class Records(logging.Handler):
    def __init__(self, level=logging.DEBUG):
        super().__init__(level)
        self.records = []
    def emit(self, record):
        self.records.append(record)
    @property
    def messages(self):
        return [r.getMessage() for r in self.records]
"""
