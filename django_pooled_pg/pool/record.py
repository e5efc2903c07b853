"""The pool's private record of one physical connection: its lifetime and its current lease."""

from __future__ import annotations

import select
import threading
import weakref
from typing import Any

from .prepared import RELEASE_GUARD, new_statement_registry
from .stacks import Stack

try:
    from ._pollnow import Poller as _Poller  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler): select.poll()
    _Poller = None

__all__ = ["POLLER", "ConnectionRecord", "socket_poller"]

#: Which poll() checks idle sockets (bench/ and the README's figures say which).
POLLER = "C" if _Poller is not None else "Python"


def socket_poller(fd: int) -> Any:
    """An object whose poll(0) is true when ``fd`` has something to read (or hung up).

    The C Poller keeps the GIL through the zero-timeout system call; select.poll()'s
    releases it, and a thread that has just taken a connection then waits for another
    thread to hand the GIL back (see _pollnow.c). A registered select.poll() object costs
    0.45 us a check where select.select() costs 1.2 us.
    """
    if _Poller is not None:
        return _Poller(fd)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller


class ConnectionRecord:
    """One physical connection. Outlives leases; the lease fields are cleared at checkin."""

    __slots__ = (
        "conn", "backend_pid", "opened_at", "expires_at", "idle_since", "uses", "dirty",
        "init_sql", "isolation_level", "handle_ref", "leased_at", "lease_stack", "holder",
        "cursor_stack", "execute_stack", "last_query", "query_started", "query_ended",
        "leak_warned", "idle_tx_warned", "on_handle_lost", "parked_for", "poller", "deallocate",
        "encoding", "statements", "release_pending", "guard_release", "characteristics_changed",
        "client_state", "__weakref__",
    )  # fmt: skip

    def __init__(self, conn: Any, opened_at: float, expires_at: float, init_sql: str) -> None:
        self.conn = conn
        self.backend_pid: int = conn.get_backend_pid()
        #: poll(2) on the socket: has the server written while the connection sat idle?
        self.poller = socket_poller(conn.fileno())
        self.opened_at = opened_at
        self.expires_at = expires_at
        self.idle_since = opened_at
        self.uses = 0
        #: set when the current lease ran something that may change session state
        self.dirty = False
        #: ... and something that may have prepared statements (the reset deallocates)
        self.deallocate = False
        #: the session's baseline (e.g. Django's time zone), re-applied after a full reset
        self.init_sql = init_sql
        #: psycopg2's isolation level as configure() left it: the baseline checkin restores
        self.isolation_level = conn.isolation_level
        self.encoding = conn.encoding
        #: psycopg2's client-side state a holder can replace through the handle and the
        #: next holder would inherit: (cursor_factory, notices list, notifies list, and a
        #: connection_factory instance's own attributes, such as LoggingConnection's log
        #: target, or None for psycopg2's class, which has none)
        attributes = getattr(conn, "__dict__", None)
        self.client_state = (
            conn.cursor_factory, conn.notices, conn.notifies,
            dict(attributes) if attributes is not None else None,
        )  # fmt: skip
        #: set when the holder may have changed psycopg2's session characteristics
        #: (autocommit, isolation level, read-only, deferrable, encoding) or client_state:
        #: the return then compares them with the baseline above
        self.characteristics_changed = False
        #: the pool's prepared statements on this connection (see prepared.py)
        self.statements = new_statement_registry()
        #: a prepared EXECUTE left its guard savepoint open for the next statement to release
        self.release_pending = False
        #: ... and what the next statement runs first then: the release, and the end of
        #: the target's plan_cache_mode when it had one (see PreparedTargets.execute)
        self.guard_release = RELEASE_GUARD
        self.handle_ref: weakref.ref[Any] | None = None
        self.on_handle_lost: Any = None  # the weakref callback, made once per connection
        #: while idle: the handle that parked it and may resume it (see handles.py)
        self.parked_for: Any = None
        self.leased_at = 0.0
        self.lease_stack: Stack = ()
        self.holder: threading.Thread | None = None
        # Tracking of the current lease (see tracker.py); last_query outlives the lease.
        self.cursor_stack: Stack = ()
        self.execute_stack: Stack = ()
        self.last_query: Any = None
        self.query_started = 0.0  # non-zero while a query runs
        self.query_ended = 0.0
        self.leak_warned = False
        self.idle_tx_warned = False

    def start_lease(self, now: float, holder: threading.Thread) -> None:
        self.holder = holder
        self.uses += 1
        self.dirty = self.deallocate = self.release_pending = False
        self.characteristics_changed = False
        self.leased_at = now
        self.cursor_stack = self.execute_stack = ()
        self.query_ended = 0.0
        self.leak_warned = self.idle_tx_warned = False

    def __repr__(self) -> str:
        return f"<ConnectionRecord pid={self.backend_pid} uses={self.uses}>"
