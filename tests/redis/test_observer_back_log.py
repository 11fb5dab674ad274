"""A ``RedisObserver`` says when Redis is back, not only when it went away.

Before, after a ``kill -9`` and a restart of Redis, the observer logged only
``observer of ... lost Redis (...); retrying`` and nothing after it, although it
was connected again (a registry node logs ``disconnected -> connected``). An
operator reading the admin server's log saw an outage that never ended. Now the
return is one INFO line, with the outage's length; ``status().last_error``
keeps the failure (documented as the last failure met, as a node's), while
``state`` and ``state_since`` say it is connected since the return.

Run in a plain interpreter (the interpreter's default hooks): Redis is killed.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

_BACK = """
import time
from foundation.registry._redis._observer import RedisObserver
from tests._logs import keep_records
from tests.redis_support import RedisServer

said = keep_records("foundation.registry.redis", level=logging.INFO)
server = RedisServer()
server.start()
observer = RedisObserver(server.url, namespace="o", timeout=0.5)
try:
    threads = library_threads()
    assert observer.status().last_error is None
    server.kill()
    wait_for(lambda: not observer.connected, "the observer to lose Redis")
    lost = observer.status()
    assert lost.last_error, lost
    server.start()
    wait_for(lambda: any("-> connected" in m for m in said.messages()), "the line back")
    back = observer.status()
    for r in said:
        print("SAID", r.levelname, r.getMessage())
    print("BACK", back.state, back.state_since > lost.state_since)
    print("ERROR", back.last_error is not None)  # the last failure met (retries may change it)
    assert library_threads() == threads, (threads, library_threads())
    observer.close()
    print("OK")
finally:
    server.stop()
"""


def test_the_observer_logs_one_info_line_when_redis_is_back() -> None:
    result = run_scenario(_BACK, timeout=60)
    said = [line.removeprefix("SAID ") for line in result.lines("SAID ")]
    lost = [line for line in said if "lost Redis" in line]
    assert len(lost) == 1, said
    assert lost[0].startswith("WARNING "), said
    back = [line for line in said if "disconnected -> connected" in line]
    assert len(back) == 1, said
    assert back[0].startswith("INFO "), said
    assert "observer of 'o'" in back[0], said
    assert "after " in back[0], said
    # The line back comes after the line down, and nothing else is said.
    assert said.index(back[0]) > said.index(lost[0]), said
    assert len(said) == 2, said
    # state says connected (since the return); last_error keeps the last failure met.
    assert result.lines("BACK") == ["BACK connected True"], result.stdout
    assert result.lines("ERROR") == ["ERROR True"], result.stdout
    assert "LOG ERROR" not in result.stderr, result.stderr
