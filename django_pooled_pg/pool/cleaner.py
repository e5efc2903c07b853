"""The background cleaner: one daemon thread per process that runs each pool's maintenance."""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import ConnectionPool

__all__ = ["INTERVAL", "register", "unregister"]

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


def forget_after_fork() -> None:
    """In a forked child the thread is gone: start a new one at the next register()."""
    global _thread, _lock
    _thread = None
    _lock = threading.Lock()
    pools = list(_pools)
    _pools.clear()
    for pool in pools:
        if pool.config.cleaner == "thread":
            register(pool)


@atexit.register
def _stop_at_exit() -> None:
    # Stop before modules are torn down; the thread checks _stop between pools.
    _stop.set()
