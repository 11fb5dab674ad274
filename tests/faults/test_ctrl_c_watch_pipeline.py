"""A Ctrl-C landing anywhere in a Redis flag write leaves no pooled connection checked out.

A flag commit WATCHes on a connection it takes from the write client's pool;
the ``with`` block's exit (``_WatchPipeline.__exit__``, Python code) gives it
back (redis-py's ``Pipeline.reset()``: UNWATCH, then back to the pool). A
``KeyboardInterrupt`` raised at that exit's first instruction, or at a call
in it, skipped the reset: the connection stayed checked out, WATCHing, until
the pipeline was finalised (``Pipeline.__del__``): not before the
``KeyboardInterrupt``'s traceback, which holds the write's frames, is gone,
and the interactive interpreter keeps the last one (``sys.last_value``);
meanwhile each write took another connection (the pool grew).

The write is cut at its 1st, 2nd, ... real check point in the store's code
(``tests._ctrl_c.interrupt_at_check_points``) until a run completes; after
each run, its ``KeyboardInterrupt`` kept as the interactive interpreter
keeps it, no connection of the write client's pool is in use. The collector
is off for the whole scenario, so a connection only ``__del__`` would give
back stays counted. In a subprocess with the interpreter's default hooks.
"""

from __future__ import annotations

from tests.faults._subprocess import Expected, run_scenario

_SCENARIO = """
import faulthandler, gc
from foundation import FeatureFlags, Flag
from foundation.flags import RedisFlagStore
from tests._ctrl_c import interrupt_at_check_points
from tests.redis_support import RedisServer

faulthandler.dump_traceback_later(100, exit=True)  # a hang fails with its stacks
gc.disable()  # only the write itself may give its connection back (see the module docs)
server = RedisServer()
server.start()
store = RedisFlagStore(server.url, namespace="ctrl-c-pool", cache_path=None, timeout=5.0)
flags = FeatureFlags([Flag("f")], store=store)
pool = store._client.connection_pool

def kept(write):
    def run(n):
        try:
            write(n)
        except KeyboardInterrupt as exc:
            # Kept, as the interactive interpreter keeps the last one (sys.last_value):
            # its traceback keeps the cut write's frames, and their pipeline, alive.
            sys.last_value = exc
            raise
    return run

flags.enable("f")
writes = {
    # A commit: EXEC itself gives the connection back (redis-py resets after it).
    "commit": lambda n: flags.set_percentage("f", n % 100),
    # No commit (the body wrote nothing, as a superseded kill switch's replay, or
    # raised): only the block's exit gives the connection back.
    "no-op": lambda n: flags.enable("f"),
    "read-only body": lambda n: store.transaction(lambda txn: txn.get("f")),
}

leaks = []

def check(n):
    # The listener borrows a pooled connection for a moment (its copy refresh
    # after each commit): wait for that; a connection left checked out stays.
    try:
        wait_for(lambda: not pool._in_use_connections, "the pool's connections back", 5.0)
    except AssertionError:
        leaks.append(n)
        pool._in_use_connections.clear()  # count each cut once

for name, write in writes.items():
    interrupted = interrupt_at_check_points(
        kept(write), ["foundation/flags/_redis_store/"], after_each=check
    )
    print("SWEPT", name, interrupted > 0, flush=True)
    print("LEAKS", name, leaks, flush=True)
    leaks.clear()
flags.set_percentage("f", 100)  # still works
assert store.load_states()["f"].percentage == 100
assert library_threads(), "the listener died"
flags.close()
store.close()
server.kill()
print("OK")
"""


def test_a_ctrl_c_in_a_redis_flag_write_leaves_no_pooled_connection_checked_out() -> None:
    # Each run keeps its KeyboardInterrupt (as the interactive interpreter does),
    # so the previous run's pipeline is finalised inside the next, cut, run: the
    # cut can land in redis-py's Pipeline.__del__ (its reset(), Python code) and
    # CPython prints what a finalizer raises. Any redis-py pipeline finalised
    # during a Ctrl-C does the same; no code can pass a finalizer's exception on.
    finalised = Expected("Exception ignored in: <function Pipeline.__del__", "KeyboardInterrupt")
    result = run_scenario(_SCENARIO, timeout=240, expect=(finalised,))
    names = ("commit", "no-op", "read-only body")
    assert result.lines("SWEPT") == [f"SWEPT {name} True" for name in names]
    assert result.lines("LEAKS") == [f"LEAKS {name} []" for name in names]
