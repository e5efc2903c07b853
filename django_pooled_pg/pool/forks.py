"""Fork detection: the after-fork hooks run in every child, however it was forked, and the
check that a lease makes costs a memory read instead of a system call.

Python runs ``os.register_at_fork`` hooks only for forks it makes itself (``os.fork()``,
multiprocessing, gunicorn). A server that calls fork(2) from C, as uWSGI does unless told
``py-call-osafterfork``, runs none of them: a check of ``os.getpid()`` on every lease caught
that for the pool alone, at the price of a system call per request (about 1 us of the
request cycle on the benchmark VM), and the other hooks (the session tag's pid, the status
publisher's socket, the cleaner thread) never ran in such a child.

Here every hook is registered once, and runs either from Python's own fork handling or,
in a child of fork(2), at the first ``check()``: a byte in a private page that the kernel
hands to children zeroed (``madvise(MADV_WIPEONFORK)``, Linux 4.14+) says whether this
process is a child the hooks have not seen. Where the kernel lacks it, ``check()`` falls
back to comparing ``os.getpid()``.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable

__all__ = ["MARK", "after_fork_in_child", "check", "detected", "wipes_on_fork"]

logger = logging.getLogger(__name__)

_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18 if sys.platform == "linux" else None)


class _PidMark:
    """MARK's stand-in without MADV_WIPEONFORK: ``MARK[0]`` is 1 in the process that
    armed it, 0 in any child (one getpid() per read)."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __getitem__(self, index: int) -> int:
        return 1 if os.getpid() == self.pid else 0

    def __setitem__(self, index: int, value: int) -> None:
        self.pid = os.getpid()  # (only ever set to 1: armed in this process)


def _new_mark() -> mmap.mmap | _PidMark:
    if _MADV_WIPEONFORK is not None:
        try:
            page = mmap.mmap(
                -1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            )  # (wipe-on-fork takes private anonymous pages only)
            page.madvise(_MADV_WIPEONFORK)
            return page
        except (AttributeError, OSError, ValueError):  # an older kernel, another system
            pass
    return _PidMark()


#: ``MARK[0]`` is 1 in a process whose after-fork hooks have run (or that was never forked),
#: 0 in a child they have not seen yet. Hot paths test it inline: ``if not MARK[0]: detected()``.
MARK = _new_mark()
MARK[0] = 1

_hooks: list[Callable[[], None]] = []
_lock = threading.Lock()
#: The thread running the hooks, if any: a hook that calls something with a fork check
#: (the registry's closes pools) must not wait for itself, nor run the hooks again.
_runner: int | None = None


def wipes_on_fork() -> bool:
    """Whether the check is a memory read (MADV_WIPEONFORK) rather than a getpid()."""
    return isinstance(MARK, mmap.mmap)


def after_fork_in_child(hook: Callable[[], None]) -> None:
    """Run ``hook()`` in every child process before it leases anything, in registration
    order, once per child. Hooks must not fail; they run with no other thread alive in a
    child of os.fork(), and before any lease of any thread in a child of fork(2)."""
    _hooks.append(hook)


def check() -> None:
    """Run the after-fork hooks now if this is a child that has not run them yet."""
    if not MARK[0]:
        detected()


def detected() -> None:
    """MARK[0] read 0: run the hooks, unless another thread of this child just did. The
    mark is set again only after the last hook, so that a thread that reads it meanwhile
    waits here instead of going on with the parent's state."""
    if _runner == threading.get_ident():
        return  # called from a hook: the hooks are under way
    with _lock:
        if not MARK[0]:
            _run_hooks()


def _run_hooks() -> None:
    global _runner
    _runner = threading.get_ident()
    try:
        for hook in _hooks:
            try:
                hook()
            except Exception:
                # Keep going: the other hooks (the pools forgetting the parent's
                # connections above all) matter more than the one that failed, and a mark
                # left at 0 would run them all again at every lease.
                logger.exception("After-fork hook %r failed in process %s", hook, os.getpid())
        MARK[0] = 1
    finally:
        _runner = None


def _after_os_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    _run_hooks()


os.register_at_fork(after_in_child=_after_os_fork_in_child)
