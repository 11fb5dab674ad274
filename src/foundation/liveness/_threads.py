"""Threads: ``spawn_thread`` (exact death) and the excepthook chain (foreign threads)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from foundation import _fork
from foundation.errors import StartError
from foundation.liveness._core import NORMAL, Down, Watch, exception_down, fire_retrying

__all__ = [
    "EXC_ATTR",
    "SpawnedThread",
    "acquire_hook",
    "record_own_end",
    "release_hook",
    "spawn_thread",
]

# Attribute set on a foreign thread by the excepthook chain when it raised.
EXC_ATTR = "_foundation_exception"


class SpawnedThread(threading.Thread):
    """A thread whose end is recorded exactly: its watch fires in ``run``'s finally."""

    _foundation_watch: Watch

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._foundation_watch = Watch(self)

    def run(self) -> None:
        down = NORMAL
        try:
            super().run()
        except BaseException as exc:
            # Never raises: out of memory it is Down("exception") without the
            # exception (before, "normal" was told, and the MemoryError replaced
            # the target's exception in threading.excepthook's report).
            down = exception_down(exc)
            raise  # still reported by threading.excepthook, as for any thread
        finally:
            # Fires before the thread is marked dead, so is_alive() consults the
            # watch first: the instant it fired, the agent counts as dead.
            # A monitor that could not be taken (out of memory) is handed to
            # the redeliverer thread: this thread still ends at once.
            fire_retrying(
                self._foundation_watch,
                down,
                "the end of a spawn_thread thread (the monitors left are retried)",
            )


def record_own_end(down: Down = NORMAL) -> None:
    """Called by the target of a ``spawn_thread`` thread that is about to return:
    record its end (``down``) now, before ``run`` does once it has returned (a
    no-op in any other thread, or when recorded already).

    From here the thread is dead for ``is_alive()`` and every registry's
    liveness check (a key it holds can be taken, reason ``"down"``); its
    monitors are still told from ``run``'s finally, as always, with the
    ``Down`` recorded here (a target that caught its own exception, as a
    supervisor's thread child does, passes ``exception_down(exc)``, so its
    monitors hear the crash, as for a target that raised): one added meanwhile is told at once
    by ``monitor()`` (it finds the end recorded). For whoever must learn of
    the end from the target itself (the supervisor of a thread child) without
    waiting for those monitors, which may wait for it in turn.

    One attribute store: nothing can cut it half done (a Ctrl-C is never
    raised in a thread that is not the main one, and this one is not).
    """
    thread = threading.current_thread()
    if isinstance(thread, SpawnedThread):
        watch = thread._foundation_watch
        if watch.down is None:
            watch.down = down


def spawn_thread(
    target: Callable[..., object],
    /,
    *args: Any,
    name: str | None = None,
    daemon: bool = True,
    **kwargs: Any,
) -> threading.Thread:
    """Start ``target(*args, **kwargs)`` in a new, exactly monitorable thread.

    The thread is already started when returned, and is a daemon unless
    ``daemon=False`` (``name`` and ``daemon`` are consumed here; every other
    keyword goes to ``target``). Its end is recorded the moment ``target``
    returns or raises, on the thread itself: monitors fire from there with
    ``"normal"`` or ``"exception"`` (the exception is then still passed to
    ``threading.excepthook``, like any thread's), and ``is_alive()`` turns
    False at that instant.

    Example:
        >>> from foundation.liveness import is_alive
        >>> out = []
        >>> t = spawn_thread(out.append, "hello", name="greeter")
        >>> t.join()
        >>> t.name, out, is_alive(t)
        ('greeter', ['hello'], False)

    Raises:
        TypeError: ``target`` is not callable (refused here, not in the new thread).
        StartError: no thread can be started now (the process's thread limit);
            nothing was started (a ``RuntimeError``, as ``Thread.start`` raises).
    """
    if not callable(target):
        raise TypeError(f"spawn_thread needs a callable target, not {type(target).__name__}")
    thread = SpawnedThread(target=target, args=args, kwargs=kwargs, name=name, daemon=daemon)
    try:
        thread.start()
    except RuntimeError as exc:  # "can't start new thread": the thread limit (EAGAIN)
        # Nothing to undo: the thread never ran and nobody holds it or its watch.
        raise StartError(thread.name, f"cannot start thread {thread.name!r}: {exc}") from exc
    return thread


# --------------------------------------------------------------------------- excepthook


class _ExceptHook:
    """Records a thread's uncaught exception on the thread, then chains on."""

    __slots__ = ("prev",)

    def __init__(self, prev: Callable[[Any], object]) -> None:
        self.prev = prev

    def __call__(self, args: Any) -> None:
        thread = args.thread
        if thread is not None and args.exc_value is not None:
            with contextlib.suppress(AttributeError):  # a Thread subclass with __slots__
                setattr(thread, EXC_ATTR, args.exc_value)
        self.prev(args)


# The one piece of process-global state besides the default manager: the hook
# is installed while at least one manager watches a foreign thread. The lock is
# unlocked in a forked child (held by a parent thread at the fork, it hung the
# child's first watch of a foreign thread).
_hook_lock = threading.Lock()
_fork.unlock_after_fork(_hook_lock)
_hook_users = 0


def acquire_hook() -> None:
    """Count one user and make sure our hook is in ``threading.excepthook``.

    Someone (pytest, for one) may have replaced the hook since: then it is
    re-installed on top of whatever is there now.
    """
    global _hook_users
    with _hook_lock:
        _hook_users += 1
        _ensure_hook_locked()


def ensure_hook() -> None:
    """Re-install the hook if it was replaced (cheap when it is in place)."""
    if not isinstance(threading.excepthook, _ExceptHook):
        with _hook_lock:
            _ensure_hook_locked()


def _ensure_hook_locked() -> None:
    if not isinstance(threading.excepthook, _ExceptHook):
        threading.excepthook = _ExceptHook(threading.excepthook)


def release_hook() -> None:
    """Drop one user; the last one restores the previous hook if ours is on top."""
    global _hook_users
    with _hook_lock:
        _hook_users -= 1
        current = threading.excepthook
        if _hook_users == 0 and isinstance(current, _ExceptHook):
            threading.excepthook = current.prev
