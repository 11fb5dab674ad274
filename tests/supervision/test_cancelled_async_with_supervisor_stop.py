"""A cancellation while ``async with Supervisor(...)`` stops its children: a
Ctrl-C under ``asyncio.run`` (which cancels the main task), or an
``asyncio.timeout()`` expiring during the block's exit. The first one lets
the stop already under way go on to its end (not begun again: a process
child gets one SIGTERM), then goes on; it is one INFO line
(``supervisor_stop_cancelled``), no WARNING or ERROR. A second one cuts the
wait short at once: one WARNING (``supervisor_stop_cut_short``) names the
children still running.

Was: the exit raised at once, and the loop's end cancelled the stop: the
supervisor left "stopping", its children running, their cleanups never run,
nothing logged (3/3 runs, each kind of child).

Each scenario runs in a plain interpreter (``run_scenario``). The children
are a thread, an asyncio task and a multiprocessing process (stopped first:
the last one started), whose stops last until the cancellation was met.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.faults._subprocess import Result, run_scenario

DEADLINE = 20.0  # seconds: a stop not reached by then was not reached at all

# The process child (``_cancel_targets.count_terms``) writes each SIGTERM to
# ``folder/terms`` and ends once ``folder/release`` exists: the Events handler
# creates it when the first cancellation is met, as it lets the thread and
# task children's cleanups end. SIGINT goes to the main thread
# (pthread_kill): the loop's wakeup fd wakes it to run the handler.
_CHILDREN = """
import asyncio, os, signal
from pathlib import Path
from foundation.supervision import ChildSpec, Supervisor
from tests.supervision import _cancel_targets as targets

signal.signal(signal.SIGINT, signal.default_int_handler)  # (inherited ignored)
folder = Path(FOLDER)
reached = threading.Event()
cancelled = threading.Event()
cleaned = []

def thread_child(ctx):
    ctx.ready()
    ctx.stopping.wait()
    cancelled.wait(20)  # a cleanup that lasts until the cancellation is met
    cleaned.append(ctx.id)

async def task_child(ctx):
    ctx.ready()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.to_thread(cancelled.wait, 20)  # the same, for a task
        cleaned.append(ctx.id)
        raise

def stuck(ctx):
    ctx.ready()
    ctx.stopping.wait()
    reached.set()
    threading.Event().wait()  # never returns: the stop cannot end

THREE = [
    ChildSpec("t", thread_child, kind="thread", shutdown_timeout=20),
    ChildSpec("a", task_child, kind="task", shutdown_timeout=20),
    ChildSpec("p", targets.count_terms, args=(str(folder),), kind="process",
              shutdown_timeout=20),
]

class Events(logging.Handler):
    def emit(self, record):
        print("EVENT", record.event, record.levelname, getattr(record, "children", ""),
              flush=True)
        if record.event == "supervisor_stop_cancelled":
            (folder / "release").touch()
            cancelled.set()

logging.getLogger("foundation.supervision.supervisor").addHandler(Events())

def terms():
    path = folder / "terms"
    return path.read_text().count("TERM") if path.exists() else 0

def process_stopped():
    # The process child got its SIGTERM: the stop is under way.
    return terms() > 0

def ctrl_c():
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

def ctrl_c_met(under_way):
    # Once the stop is under way. A SIGINT is now and then acted on late:
    # sent again until met (two pending coalesce).
    wait_for(under_way, "the stop under way")
    for _ in range(10):
        ctrl_c()
        if cancelled.wait(2):
            return

async def expire_when(under_way, timeout):
    while not under_way():
        await asyncio.sleep(0.005)  # sleep-ok: polling (the deadline: the scenario's)
    timeout.reschedule(asyncio.get_running_loop().time())  # expires now

def report(sup, process):
    print("STATE", sup.state, "CLEANED", sorted(cleaned), flush=True)
    print("CHILDREN", [(c.id, c.status) for c in sup.which_children()], flush=True)
    print("PROCESS", process.exitcode, "TERMS", terms(), flush=True)
"""


def _run(tmp_path: Path, script: str) -> tuple[Result, str]:
    result = run_scenario(
        _CHILDREN.replace("FOLDER", repr(str(tmp_path))) + textwrap.dedent(script),
        timeout=DEADLINE * 3,
    )
    return result, result.stdout + result.stderr


def _assert_stopped_after_one_cancellation(result: Result, out: str) -> None:
    assert result.lines("STATE") == ["STATE stopped CLEANED ['a', 't']"], out
    assert result.lines("CHILDREN") == [
        "CHILDREN [('t', 'stopped'), ('a', 'stopped'), ('p', 'stopped')]"
    ], out
    # Ended by its one SIGTERM (exit code 0): not sent again, not killed.
    assert result.lines("PROCESS") == ["PROCESS 0 TERMS 1"], out
    events = result.lines("EVENT")
    assert events.count("EVENT supervisor_stop_cancelled INFO ") == 1, out
    assert events[-1] == "EVENT supervisor_stopped INFO ", out
    assert not [e for e in events if "ERROR" in e or "WARNING" in e], out
    assert "Traceback" not in result.stderr, out


def test_one_ctrl_c_under_asyncio_run_while_async_with_stops_lets_the_stop_finish(
    tmp_path: Path,
) -> None:
    result, out = _run(
        tmp_path,
        """
        sup = Supervisor(THREE, name="sup")
        process = []

        async def main():
            async with sup:
                process.append(sup.which_children()[2].handle)
                threading.Thread(target=ctrl_c_met, args=(process_stopped,), daemon=True).start()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        report(sup, process[0])
        print("OK")
        """,
    )
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], out
    _assert_stopped_after_one_cancellation(result, out)


def test_a_timeout_expiring_while_async_with_stops_lets_the_stop_finish(tmp_path: Path) -> None:
    result, out = _run(
        tmp_path,
        """
        sup = Supervisor(THREE, name="sup")
        process = []
        expiring = []

        async def main():
            try:
                async with asyncio.timeout(None) as timeout, sup:
                    process.append(sup.which_children()[2].handle)
                    loop = asyncio.get_running_loop()
                    expiring.append(loop.create_task(expire_when(process_stopped, timeout)))
            except TimeoutError:
                print("TIMED OUT", sup.state, asyncio.current_task().cancelling(), flush=True)

        asyncio.run(main())
        report(sup, process[0])
        print("OK")
        """,
    )
    # Raised once the stop ended; the task's cancellation is over.
    assert result.lines("TIMED OUT") == ["TIMED OUT stopped 0"], out
    _assert_stopped_after_one_cancellation(result, out)


def test_a_second_ctrl_c_while_the_stop_completes_ends_the_program(tmp_path: Path) -> None:
    # A child that never stops, with no shutdown timeout: only a second
    # Ctrl-C ends the wait (it must: the caller can always bound a stop).
    result, out = _run(
        tmp_path,
        """
        sup = Supervisor([ChildSpec("t", thread_child, kind="thread", shutdown_timeout=20),
                          ChildSpec("a", task_child, kind="task", shutdown_timeout=20),
                          ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=None)],
                         name="sup")

        def press_twice():
            ctrl_c_met(reached.is_set)  # the stop goes on
            ctrl_c()

        async def main():
            async with sup:
                threading.Thread(target=press_twice, daemon=True).start()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        print("STATE", sup.state, flush=True)
        print("OK")
        """,
    )
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], out
    assert result.lines("STATE") == ["STATE stopping"], out  # (the stop was cut short)
    events = result.lines("EVENT")
    assert "EVENT supervisor_stop_cancelled INFO " in events, out
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        "EVENT supervisor_stop_cut_short WARNING ['t', 'a', 'stuck']"
    ], out


def test_a_second_timeout_cuts_the_wait_for_a_stop_that_cannot_end(tmp_path: Path) -> None:
    result, out = _run(
        tmp_path,
        """
        sup = Supervisor([ChildSpec("a", task_child, kind="task", shutdown_timeout=20),
                          ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=None)],
                         name="sup")
        expiring = []

        async def main():
            try:
                async with asyncio.timeout(None) as outer:
                    async with asyncio.timeout(None) as inner, sup:
                        loop = asyncio.get_running_loop()
                        expiring.append(loop.create_task(expire_when(reached.is_set, inner)))
                        expiring.append(loop.create_task(expire_when(cancelled.is_set, outer)))
            except TimeoutError:
                print("TIMED OUT", sup.state, flush=True)

        asyncio.run(main())
        print("OK")
        """,
    )
    assert result.lines("TIMED OUT") == ["TIMED OUT stopping"], out
    events = result.lines("EVENT")
    assert "EVENT supervisor_stop_cancelled INFO " in events, out
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        "EVENT supervisor_stop_cut_short WARNING ['a', 'stuck']"
    ], out


# A cancellation met in the block itself (not in its exit), then the exit's
# stop abandons a child (a thread that ignores its stop past its
# shutdown_timeout): the cancellation goes on, not the ShutdownError (its
# context; the child has its own WARNING), as when the cancellation is met
# during the exit. Was: ShutdownError, the timeout never fired, a Ctrl-C ended
# in ShutdownError, a cancelled task ended with it (3/3).
_ABANDONING = """
def ignores_its_stop(ctx):
    ctx.ready()
    ctx.stopping.wait()
    threading.Event().wait()  # never returns: abandoned after its shutdown_timeout

sup = Supervisor([ChildSpec("w", ignores_its_stop, kind="thread", shutdown_timeout=0.3)],
                 name="sup")
met = threading.Event()  # the block met its cancellation

async def block():
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        met.set()
        raise

def chain(exc):
    names = []
    while exc is not None and len(names) < 10:  # (a cycle shows as 10 names)
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return names
"""


def _assert_abandoned_once(result: Result, out: str) -> None:
    assert result.lines("STATE") == ["STATE stopped"], out
    events = result.lines("EVENT")
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        "EVENT thread_abandoned WARNING "
    ], out
    assert events[-1] == "EVENT supervisor_stopped INFO ", out


def test_a_timeout_in_the_block_goes_on_when_the_exit_abandons_a_child(tmp_path: Path) -> None:
    result, out = _run(
        tmp_path,
        _ABANDONING
        + textwrap.dedent(
            """
        async def main():
            try:
                async with asyncio.timeout(None) as timeout, sup:
                    timeout.reschedule(asyncio.get_running_loop().time())  # expires now
                    await block()
            except BaseException as exc:
                print("CAUGHT", chain(exc), asyncio.current_task().cancelling(), flush=True)

        asyncio.run(main())
        print("STATE", sup.state, flush=True)
        print("OK")
        """
        ),
    )
    assert result.lines("CAUGHT") == [
        "CAUGHT ['TimeoutError', 'CancelledError', 'ShutdownError'] 0"
    ], out
    _assert_abandoned_once(result, out)


def test_a_ctrl_c_in_the_block_goes_on_when_the_exit_abandons_a_child(tmp_path: Path) -> None:
    result, out = _run(
        tmp_path,
        _ABANDONING
        + textwrap.dedent(
            """
        def press_until_met():
            for _ in range(10):  # a SIGINT is now and then acted on late: sent again
                ctrl_c()
                if met.wait(2):
                    return

        async def main():
            async with sup:
                threading.Thread(target=press_until_met, daemon=True).start()
                await block()

        try:
            asyncio.run(main())
        except BaseException as exc:
            print("RAISED", chain(exc), flush=True)
        print("STATE", sup.state, flush=True)
        print("OK")
        """
        ),
    )
    assert result.lines("RAISED") == [
        "RAISED ['KeyboardInterrupt', 'CancelledError', 'ShutdownError']"
    ], out
    _assert_abandoned_once(result, out)


def test_a_task_cancelled_in_the_block_ends_cancelled_when_the_exit_abandons_a_child(
    tmp_path: Path,
) -> None:
    result, out = _run(
        tmp_path,
        _ABANDONING
        + textwrap.dedent(
            """
        entered = asyncio.Event()

        async def inner():
            async with sup:
                entered.set()
                await block()

        async def main():
            task = asyncio.get_running_loop().create_task(inner())
            await entered.wait()
            task.cancel()
            await asyncio.wait({task})
            print("TASK", task.cancelled(), task.cancelling(), flush=True)
            try:
                task.result()
            except asyncio.CancelledError as exc:
                print("CONTEXT", chain(exc)[0], chain(exc)[-1], flush=True)
            print("MAIN", asyncio.current_task().cancelling(), flush=True)

        asyncio.run(main())
        print("STATE", sup.state, flush=True)
        print("OK")
        """
        ),
    )
    # Cancelled (its one cancel() request still counted, as any cancelled task's).
    assert result.lines("TASK") == ["TASK True 1"], out
    assert result.lines("CONTEXT") == ["CONTEXT CancelledError ShutdownError"], out
    assert result.lines("MAIN") == ["MAIN 0"], out
    _assert_abandoned_once(result, out)


# The loop's end (asyncio.run ending: a Ctrl-C, or main returning) cancels the
# stop task of a supervisor stopped by a direct ``await sup.stop()``: its
# caller's cancellation returned at once, so nothing waits for the stop to
# report its cut. The task reports it itself: one WARNING
# (``supervisor_stop_cut_short``) naming the children still running. Was:
# nothing logged, the children left running (3/3). Where a report exists
# already (an ``async with`` exit's, an Application's, the parent's for a
# nested supervisor it stops), still that one record alone.
_LEFT_RUNNING = """
def quick(ctx):
    ctx.ready()
    ctx.stopping.wait()

met = threading.Event()  # the direct stop's caller met its cancellation

def press_until_met():
    wait_for(reached.is_set, "the stop under way")
    for _ in range(10):  # a SIGINT is now and then acted on late: sent again
        ctrl_c()
        if met.wait(2):
            return

async def direct_stop(sup):
    try:
        await sup.stop()
    except asyncio.CancelledError:
        met.set()
        raise

async def until_reached():
    while not reached.is_set():
        await asyncio.sleep(0.005)  # sleep-ok: polling (the deadline: the scenario's)

def pair():
    return [ChildSpec("quick", quick, kind="thread", shutdown_timeout=20),
            ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=None)]
"""


def _run_left_running(tmp_path: Path, script: str) -> tuple[Result, str]:
    return _run(tmp_path, _LEFT_RUNNING + textwrap.dedent(script))


def _warnings(result: Result) -> list[str]:
    """Every WARNING or worse logged, by any logger (PRELUDE's stderr lines)."""
    return [
        line.split(" [", 1)[0]
        for line in result.stderr.splitlines()
        if line.startswith(("LOG WARNING", "LOG ERROR", "LOG CRITICAL"))
    ]


_CUT = "EVENT supervisor_stop_cut_short WARNING"
_ONE_CUT = ["LOG WARNING foundation.supervision.supervisor"]


def test_a_ctrl_c_during_a_direct_stop_reports_the_children_left_running(tmp_path: Path) -> None:
    result, out = _run_left_running(
        tmp_path,
        """
        sup = Supervisor(pair(), name="sup")

        async def main():
            await sup.start()
            threading.Thread(target=press_until_met, daemon=True).start()
            await direct_stop(sup)

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        print("STATE", sup.state, flush=True)
        print("OK")
        """,
    )
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], out
    assert result.lines("STATE") == ["STATE stopping"], out  # (the stop was cut short)
    events = result.lines("EVENT")
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        f"{_CUT} ['quick', 'stuck']"
    ], out
    assert _warnings(result) == _ONE_CUT, out


def test_asyncio_run_ending_during_a_direct_stop_reports_the_children_left_running(
    tmp_path: Path,
) -> None:
    result, out = _run_left_running(
        tmp_path,
        """
        sup = Supervisor(pair(), name="sup")

        async def main():
            await sup.start()
            asyncio.get_running_loop().create_task(direct_stop(sup))
            await until_reached()  # then main returns: asyncio.run cancels the rest

        asyncio.run(main())
        print("OK")
        """,
    )
    events = result.lines("EVENT")
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        f"{_CUT} ['quick', 'stuck']"
    ], out
    assert _warnings(result) == _ONE_CUT, out


def test_a_direct_stop_of_nested_supervisors_cut_short_is_reported_once_by_the_top(
    tmp_path: Path,
) -> None:
    result, out = _run_left_running(
        tmp_path,
        """
        inner = Supervisor([ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=None)],
                           name="inner")
        sup = Supervisor([ChildSpec("quick", quick, kind="thread", shutdown_timeout=20),
                          ChildSpec("inner", inner, kind="supervisor")], name="outer")

        async def main():
            await sup.start()
            threading.Thread(target=press_until_met, daemon=True).start()
            await direct_stop(sup)

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        print("OK")
        """,
    )
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], out
    events = result.lines("EVENT")
    # The outer supervisor's (the inner one's would name "stuck" alone).
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        f"{_CUT} ['quick', 'inner/stuck']"
    ], out
    assert _warnings(result) == _ONE_CUT, out


def test_asyncio_run_ending_during_an_async_with_exit_is_reported_once(tmp_path: Path) -> None:
    # The exit reports it (it waits for the stop): the stop's task does not too.
    result, out = _run_left_running(
        tmp_path,
        """
        sup = Supervisor(pair(), name="sup")

        async def block():
            async with sup:
                pass

        async def main():
            asyncio.get_running_loop().create_task(block())
            await until_reached()

        asyncio.run(main())
        print("OK")
        """,
    )
    events = result.lines("EVENT")
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        f"{_CUT} ['quick', 'stuck']"
    ], out
    assert _warnings(result) == _ONE_CUT, out


def test_asyncio_run_ending_during_an_application_exit_is_reported_once(tmp_path: Path) -> None:
    # The application reports it (app_stop_cut_short), not its supervisors.
    result, out = _run_left_running(
        tmp_path,
        """
        from foundation import Application

        logging.getLogger("foundation.application").addHandler(Events())
        app = Application(services=("flags",),
                          workers=[ChildSpec("stuck", stuck, kind="thread",
                                             shutdown_timeout=None)])

        async def block():
            async with app:
                pass

        async def main():
            asyncio.get_running_loop().create_task(block())
            await until_reached()

        asyncio.run(main())
        print("OK")
        """,
    )
    events = result.lines("EVENT")
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        "EVENT app_stop_cut_short WARNING ['flags', 'workers/stuck']"
    ], out
    assert _warnings(result) == ["LOG WARNING foundation.application"], out


def test_a_second_ctrl_c_during_an_application_exit_is_reported_once(tmp_path: Path) -> None:
    # The wait cut short by the second Ctrl-C, then the loop's end cancelling
    # the stop itself: one record, the application's.
    result, out = _run_left_running(
        tmp_path,
        """
        from foundation import Application

        logging.getLogger("foundation.application").addHandler(Events())
        app = Application(services=("flags",),
                          workers=[ChildSpec("stuck", stuck, kind="thread",
                                             shutdown_timeout=None)])
        seen = threading.Event()

        class Cancelled(logging.Handler):
            def emit(self, record):
                if record.event == "app_stop_cancelled":
                    seen.set()

        logging.getLogger("foundation.application").addHandler(Cancelled())

        def press_twice():
            wait_for(reached.is_set, "the stop under way")
            for _ in range(10):  # until met (see ctrl_c_met)
                ctrl_c()
                if seen.wait(2):
                    break
            ctrl_c()

        async def main():
            async with app:
                threading.Thread(target=press_twice, daemon=True).start()

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        print("OK")
        """,
    )
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], out
    events = result.lines("EVENT")
    assert [e for e in events if "WARNING" in e or "ERROR" in e] == [
        "EVENT app_stop_cut_short WARNING ['flags', 'workers/stuck']"
    ], out
    assert _warnings(result) == ["LOG WARNING foundation.application"], out
