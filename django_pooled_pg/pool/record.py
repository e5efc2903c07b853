"""The pool's private record of one physical connection: its lifetime and its current lease."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from .stacks import Stack

__all__ = ["ConnectionRecord"]


class ConnectionRecord:
    """One physical connection. Outlives leases; the lease fields are cleared at checkin."""

    __slots__ = (
        "conn", "backend_pid", "opened_at", "expires_at", "idle_since", "uses", "dirty",
        "init_sql", "isolation_level", "handle_ref", "leased_at", "lease_stack", "holder", "__weakref__",
    )  # fmt: skip

    def __init__(self, conn: Any, opened_at: float, expires_at: float, init_sql: str) -> None:
        self.conn = conn
        self.backend_pid: int = conn.get_backend_pid()
        self.opened_at = opened_at
        self.expires_at = expires_at
        self.idle_since = opened_at
        self.uses = 0
        #: set when the current lease ran something that may change session state
        self.dirty = False
        #: the session's baseline (e.g. Django's time zone), re-applied after a full reset
        self.init_sql = init_sql
        #: psycopg2's isolation level as configure() left it: the baseline checkin restores
        self.isolation_level = conn.isolation_level
        self.handle_ref: weakref.ref[Any] | None = None
        self.leased_at = 0.0
        self.lease_stack: Stack = ()
        self.holder: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<ConnectionRecord pid={self.backend_pid} uses={self.uses}>"
