"""What an operator reads when an Application's start or stop goes wrong.

A worker that ignores its stop is named by its path in the tree
("workers/stuck"), not by the supervisor holding it; a failed start is one
ERROR record with the traceback (the child's crash report), the layers above
it saying so briefly rather than logging the same traceback again.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from foundation import Application, ChildSpec
from foundation.errors import ShutdownError, StartError
from foundation.supervision import ChildContext
from tests._logs import Records, captured


def _with_traceback(records: Records) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.ERROR and r.exc_info]


def _errors(records: Records) -> list[logging.LogRecord]:
    return [r for r in records if r.levelno >= logging.ERROR]


def test_a_stuck_worker_is_named_by_its_path_in_the_shutdown_error() -> None:
    never = threading.Event()
    started = threading.Event()

    def stuck(ctx: ChildContext) -> None:
        ctx.ready()
        started.set()
        never.wait()  # ignores ctx.stopping: abandoned at its shutdown timeout

    specs = [ChildSpec("stuck", stuck, kind="thread", shutdown_timeout=0.2)]
    try:
        with pytest.raises(ShutdownError) as raised, Application.start(workers=specs):
            assert started.wait(30)
        message = str(raised.value)
        assert "could not stop ['workers/stuck']" in message, message
        assert "a thread cannot be killed" in message, message
        assert "a nested supervisor" not in message, message
    finally:
        never.set()
        for thread in threading.enumerate():
            if thread.name == "foundation-workers/stuck":
                thread.join(30)


def test_a_worker_that_fails_to_start_is_one_error_with_one_traceback() -> None:
    def refuse(ctx: ChildContext) -> None:
        raise ValueError("no database")

    specs = [ChildSpec("db", refuse, kind="thread")]
    with captured() as records, pytest.raises(StartError):
        Application.start(workers=specs)
    [traced] = _with_traceback(records)
    assert traced.name == "foundation.supervision.crash"
    assert getattr(traced, "child", None) == "db"
    assert "ValueError: no database" in logging.Formatter().format(traced)
    # The application's own line, brief, and nothing else at ERROR: the
    # nested supervisor "workers" restates the failure at DEBUG.
    assert [r.name for r in _errors(records)] == [
        "foundation.supervision.crash",
        "foundation.application",
    ]
    app_line = _errors(records)[1].getMessage()
    assert app_line.endswith("(traceback in the crash report above)"), app_line
    [workers] = records.of("start_failed", "workers")
    assert workers.levelno == logging.DEBUG
    assert not workers.exc_info


def test_a_service_that_fails_to_start_is_one_traceback(tmp_path: Path) -> None:
    config = tmp_path / "foundation.toml"
    config.write_text("[flags]\nno_such_flag = true\n")
    with captured() as records, pytest.raises(StartError):
        Application.start(config)
    [traced] = _with_traceback(records)
    assert getattr(traced, "child", None) == "flags"
    assert len(_errors(records)) == 2, [r.getMessage() for r in _errors(records)]
