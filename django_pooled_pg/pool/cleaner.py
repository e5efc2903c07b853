"""The background cleaner: one daemon thread per process that runs each pool's maintenance,
then the maintenance listeners (periodic work such as publishing the pools' status)."""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import ConnectionPool

__all__ = [
    "INTERVAL", "add_listener", "register", "remove_listener", "run_listeners", "unregister",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: Seconds between two maintenance runs of a pool.
INTERVAL = 1.0

_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
_lock = threading.Lock()
_stop = threading.Event()
_thread: threading.Thread | None = None


def register(pool: ConnectionPool) -> None:
    global _thread
    with _lock:
        _pools.add(pool)
        if _thread is None and not _stop.is_set():
            # Daemon: never holds up interpreter exit. It holds pools only weakly.
            _thread = threading.Thread(target=_run, name="django_pooled_pg cleaner", daemon=True)
            _thread.start()


def unregister(pool: ConnectionPool) -> None:
    with _lock:
        _pools.discard(pool)


def is_running() -> bool:
    return _thread is not None and _thread.is_alive()


def _run() -> None:
    while not _stop.wait(INTERVAL):
        for pool in list(_pools):
            if _stop.is_set():
                return
            try:
                pool.run_maintenance()
            except Exception:  # keep cleaning the other pools
                logger.exception("Pool %r: maintenance failed", pool.name)
            del pool
        run_listeners()


# -- maintenance listeners ------------------------------------------------------------------
#
# Periodic work that belongs with the pools but not in the engine (the Django status app
# publishes snapshots this way). The cleaner thread runs them after each maintenance round;
# pools with cleaner="inline" run them after their own maintenance, on a checkin, once the
# connection is back in the pool.

#: A failing listener logs its error at most once per this many seconds.
LISTENER_ERROR_LOG_INTERVAL = 60.0


class _Listener:
    __slots__ = ("callback", "interval", "next_run", "failures_logged_at")

    def __init__(self, callback: Callable[[], None], interval: float) -> None:
        self.callback = callback
        self.interval = interval
        self.next_run = 0.0  # due at the first maintenance round
        self.failures_logged_at = -LISTENER_ERROR_LOG_INTERVAL


#: Replaced, never changed in place, so that a run iterates over a stable tuple.
_listeners: tuple[_Listener, ...] = ()
#: Held while listeners run; other threads skip the run rather than wait.
_running = threading.Lock()


def add_listener(callback: Callable[[], None], interval: float) -> None:
    """Call ``callback()`` after pool maintenance, at most once every ``interval`` seconds.

    Maintenance runs about once a second (``INTERVAL``), so shorter intervals act as one
    second. The callback must be quick; its exceptions are logged (rate-limited), never
    raised. Adding a callback that is already there only changes its interval.
    """
    global _listeners
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise ValueError(f"interval must be a number of seconds > 0, not {interval!r}")
    with _lock:
        for listener in _listeners:
            if listener.callback == callback:
                listener.interval = interval
                return
        _listeners = (*_listeners, _Listener(callback, interval))


def remove_listener(callback: Callable[[], None]) -> None:
    global _listeners
    with _lock:
        _listeners = tuple(listener for listener in _listeners if listener.callback != callback)


def run_listeners() -> None:
    """Run the listeners that are due. Never raises, never waits: when another thread is
    already running them (inline cleaners on several request threads), return at once."""
    if not _listeners or not _running.acquire(blocking=False):
        return
    try:
        now = time.monotonic()
        for listener in _listeners:
            if now < listener.next_run:
                continue
            # Scheduled before the call, so a slow or failing listener keeps its pace.
            listener.next_run = now + listener.interval
            try:
                listener.callback()
            except Exception:
                if now - listener.failures_logged_at >= LISTENER_ERROR_LOG_INTERVAL:
                    listener.failures_logged_at = now
                    logger.exception(
                        "Maintenance listener %r failed (logged at most once a minute)",
                        listener.callback,
                    )
    finally:
        _running.release()


def forget_after_fork() -> None:
    """In a forked child the thread is gone: start a new one at the next register()."""
    global _thread, _lock, _running
    _thread = None
    _lock = threading.Lock()
    _running = threading.Lock()  # another thread may have held it at the fork
    for listener in _listeners:
        listener.next_run = 0.0  # the child is a new process: its listeners run soon
    pools = list(_pools)
    _pools.clear()
    for pool in pools:
        if pool.config.cleaner == "thread":
            register(pool)


@atexit.register
def _stop_at_exit() -> None:
    # Stop before modules are torn down; the thread checks _stop between pools.
    _stop.set()
