"""``run_scenario`` fails a scenario whose stderr shows an error nobody observed.

Each script below prints one kind of report the interpreter's default hooks
(or asyncio's logger) leave behind when an error is lost: a user running the
same program would see that traceback, so the scenario must not pass.
"""

from __future__ import annotations

import pytest

from tests.faults._subprocess import Expected, run_scenario

_LOST = {
    "unraisable": """
class Finalised:
    def __del__(self):
        raise RuntimeError("a finalizer died")
Finalised()
print("OK")
""",
    "task exception never retrieved": """
import asyncio, gc
async def boom():
    raise RuntimeError("lost task error")
async def main():
    asyncio.ensure_future(boom())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
asyncio.run(main())
gc.collect()
print("OK")
""",
    "future exception never retrieved": """
import asyncio, gc
async def main():
    asyncio.get_running_loop().create_future().set_exception(RuntimeError("lost"))
asyncio.run(main())
gc.collect()
print("OK")
""",
    "exception in callback": """
import asyncio
async def main():
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(done.set)
    await done.wait()
asyncio.run(main())
print("OK")
""",
    "task destroyed pending": """
import asyncio, gc
loop = asyncio.new_event_loop()
task = loop.create_task(asyncio.Event().wait())
loop.run_until_complete(asyncio.sleep(0))
loop.close()
del task
gc.collect()
print("OK")
""",
    "raw traceback": """
import traceback
try:
    1 / 0
except ZeroDivisionError:
    traceback.print_exc()
print("OK")
""",
    "thread death": """
t = threading.Thread(target=lambda: 1 / 0, name="worker")
t.start()
t.join()
print("OK")
""",
}


@pytest.mark.parametrize("kind", sorted(_LOST))
def test_a_lost_error_on_stderr_fails_the_scenario(kind: str) -> None:
    with pytest.raises(AssertionError, match="stray errors in the scenario's stderr"):
        run_scenario(_LOST[kind])


def test_the_librarys_logged_traceback_is_not_a_stray_error() -> None:
    result = run_scenario(
        """
try:
    raise ValueError("reported")
except ValueError:
    logging.getLogger("foundation.example").exception("a listener failed")
print("OK")
"""
    )
    assert "LOG| ValueError: reported" in result.stderr, result.stderr


def test_a_report_the_scenario_expects_is_allowed_and_only_that_one() -> None:
    expect = (Expected("Exception ignored in", "RuntimeError"),)
    run_scenario(_LOST["unraisable"], expect=expect)
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_scenario(_LOST["raw traceback"], expect=expect)
