"""An operator's Ctrl-C while ``with app:`` stops the tree is no failure, as
during the start: no ERROR, no traceback, and the ``KeyboardInterrupt`` goes
on. It cuts the stop short (its loop closes, the children not yet stopped are
left running): one WARNING ``app_stop_cut_short`` naming them, as for a cut of
an ``async with`` exit's stop.

Was: ERROR "failed to stop cleanly: KeyboardInterrupt()" with a full traceback;
then INFO ``app_stop_interrupted`` plus the handle's own WARNING
``supervisor_stop_cut_short``: two reports of one Ctrl-C.
"""

from __future__ import annotations

from tests.faults._subprocess import run_scenario

# Every report of the stop's end or interruption, whichever logger makes it.
_STOP_REPORTS = ("interrupted", "cut_short", "stop_failed", "app_stopped")


def test_ctrl_c_during_the_stop_is_one_warning_naming_the_children_left_running() -> None:
    result = run_scenario(
        """
        import os, signal, tempfile
        from foundation import Application, ChildSpec

        # Ctrl-C raises KeyboardInterrupt, as in a program started from a terminal
        # (a test run started as a background job inherits SIGINT ignored).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        DIR = tempfile.mkdtemp()
        SEEN = os.path.join(DIR, "term.seen")
        # Ignores SIGTERM (records it), so the stop waits for its shutdown_timeout.
        STUBBORN = '''
        import signal, sys
        def seen(*_):
            open(sys.argv[1], "a").close()
        signal.signal(signal.SIGTERM, seen)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        from foundation.supervision import notify_ready
        notify_ready()   # its handler is in place: the stop may come
        while True:
            signal.pause()
        '''.replace("\\n        ", "\\n")

        class Events(logging.Handler):
            def emit(self, record):
                print("EVENT", getattr(record, "event", None), record.levelname,
                      getattr(record, "children", None), flush=True)

        # The application's records and the supervisors' (its handle's included).
        logging.getLogger("foundation").addHandler(Events())

        def interrupt():
            wait_for(lambda: os.path.exists(SEEN), "the stop reaching the stubborn child")
            os.kill(os.getpid(), signal.SIGINT)

        stubborn = ChildSpec("stubborn", [sys.executable, "-c", STUBBORN, SEEN],
                             shutdown_timeout=5, readiness="explicit", ready_timeout=60)
        app = Application(services=("flags", "monitors", "registry"), workers=[stubborn])
        try:
            with app:
                threading.Thread(target=interrupt, daemon=True).start()
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
        print("OK")
        """,
        timeout=90.0,
    )
    assert result.lines("INTERRUPTED") == ["INTERRUPTED"], result.stdout + result.stderr
    events = result.lines("EVENT")
    reports = [e for e in events if any(word in e for word in _STOP_REPORTS)]
    assert reports == [
        "EVENT app_stop_cut_short WARNING ['flags', 'monitors', 'registry', 'workers/stubborn']"
    ], events
    assert "failed to stop cleanly" not in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
