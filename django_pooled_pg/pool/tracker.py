"""Per-lease tracking: what each connection is doing, where it was leased, and warnings."""

from __future__ import annotations

import logging
from collections.abc import Callable
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

import psycopg2.extensions

from .querystats import QueryStats
from .stacks import capture, first_user_frame, format_stack

try:
    from . import _querytimer  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler): run() in Python
    _querytimer = None

#: Which Tracker.run() times statements (bench/ and the README's figures say which).
TIMER = "C" if _querytimer is not None else "Python"

if TYPE_CHECKING:
    from .config import PoolConfig
    from .record import ConnectionRecord

__all__ = ["STATES", "Tracker", "format_duration", "format_table", "short_path"]

logger = logging.getLogger(__name__)

_IN_TRANSACTION = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
_IN_ERROR = psycopg2.extensions.TRANSACTION_STATUS_INERROR
_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE

#: psycopg2's own rowcount getter: a pooled cursor's checks its lease in Python, and the
#: lease is known to be live here (the statement just ran on it).
_ROWCOUNT = psycopg2.extensions.cursor.__dict__["rowcount"]
_rowcount = _ROWCOUNT.__get__

IDLE_IN_POOL = "idle in pool"
LEASED = "leased"
ACTIVE = "active"
IN_TRANSACTION = "in transaction"
IDLE_IN_TRANSACTION = "idle in transaction"
IN_ERROR = "in error"
STATES = (IDLE_IN_POOL, LEASED, ACTIVE, IN_TRANSACTION, IDLE_IN_TRANSACTION, IN_ERROR)

#: Frames kept for the cursor and execute stacks: enough to reach the user's code above
#: the ORM, bounded because they are taken on every query.
_QUERY_STACK_FRAMES = 40


class Tracker:
    """Tracking of one pool at the level its config asks for ("counters" or "stacks")."""

    def __init__(self, pool_name: str, config: PoolConfig) -> None:
        self.pool_name = pool_name
        self.config = config
        self.stacks = config.tracking == "stacks"
        self.queries = QueryStats(config.max_statements)
        if _querytimer is not None:
            # run() below, in C: every statement comes through it, and the Python version's
            # bookkeeping cost as much as a SELECT 1's execute(). It then updates the
            # statistics' entries on its own (atomically, without their lock), so add()
            # goes through it too: an update in Python could interleave with one in C.
            timer = _querytimer.QueryTimer(
                self.queries.by_sql,
                self.queries.entry_for,
                _ROWCOUNT,
                _monotonic,
                capture if self.stacks else None,
                _QUERY_STACK_FRAMES,
                _IDLE,
            )
            self.run = timer.run  # type: ignore[method-assign]
            self.queries.add = timer.count  # type: ignore[method-assign]
            self.queries.add_fetch = timer.add_fetch  # type: ignore[method-assign]

    # -- on the query path (keep it short) ----------------------------------------------

    def cursor_taken(self, record: ConnectionRecord) -> None:
        """A cursor was taken inside a transaction (the handle calls this at the "stacks"
        level only, and tests the transaction itself: most cursors are taken outside one)."""
        record.cursor_stack = capture(3, _QUERY_STACK_FRAMES)

    def run(  # (the C timer replaces this where it was built: the same steps)
        self,
        record: ConnectionRecord,
        method: Callable[..., Any],
        query: Any,
        args: Any,
        cursor: Any,
    ) -> Any:
        """Run ``method(query, args)`` timed, noting the query and where it ran."""
        record.last_query = query
        started = record.query_started = _monotonic()
        try:
            return method(query, args)
        finally:
            ended = record.query_ended = _monotonic()
            record.query_started = 0.0
            self.queries.add(query, ended - started, _rowcount(cursor))
            # Stacks cost about a microsecond per frame the first time a frame is seen.
            # The cursor and execute stacks only matter for a connection left idle in a
            # transaction, so they are taken only when a transaction is open.
            if self.stacks:
                conn = record.conn
                if not conn.autocommit or conn.get_transaction_status() != _IDLE:
                    record.execute_stack = capture(3, _QUERY_STACK_FRAMES)

    # -- views ----------------------------------------------------------------------------

    def state(self, record: ConnectionRecord, leased: bool, now: float) -> tuple[str, float]:
        """(state, seconds in it) of one connection."""
        if not leased:
            return IDLE_IN_POOL, now - record.idle_since
        if record.query_started:
            return ACTIVE, now - record.query_started
        since = max(record.leased_at, record.query_ended)
        status = record.conn.info.transaction_status if not record.conn.closed else None
        if status == _IN_ERROR:
            return IN_ERROR, now - since
        if status == _IN_TRANSACTION:
            threshold = self.config.idle_in_transaction_threshold
            if threshold is not None and now - since >= threshold:
                return IDLE_IN_TRANSACTION, now - since
            return IN_TRANSACTION, now - since
        return LEASED, now - since

    def describe(self, record: ConnectionRecord, leased: bool, now: float) -> dict[str, Any]:
        state, seconds = self.state(record, leased, now)
        holder = record.holder if leased else None
        return {
            "backend_pid": record.backend_pid,
            "state": state,
            "state_s": seconds,
            "thread": holder.name if holder is not None else None,
            "age_s": now - record.opened_at,
            "leases": record.uses,
            "held_s": now - record.leased_at if leased else None,
            "last_query": _text(record.last_query),
            "leased_at": first_user_frame(record.lease_stack)
            if leased and record.lease_stack
            else None,
            "lease_stack": format_stack(record.lease_stack)
            if leased and record.lease_stack
            else None,
            "cursor_stack": format_stack(record.cursor_stack)
            if leased and record.cursor_stack
            else None,
            "execute_stack": (
                format_stack(record.execute_stack) if leased and record.execute_stack else None
            ),
        }

    def idle_in_transaction(
        self, leased: list[ConnectionRecord], threshold: float | None, now: float
    ) -> list[dict[str, Any]]:
        if threshold is None:
            threshold = self.config.idle_in_transaction_threshold or 0.0
        found = []
        for record in leased:
            state, seconds = self.state(record, True, now)
            if state in (IN_TRANSACTION, IDLE_IN_TRANSACTION, IN_ERROR) and seconds >= threshold:
                found.append(self.describe(record, True, now))
        return found

    # -- warnings, from the cleaner (thread or inline) --------------------------------------

    def check(self, leased: list[ConnectionRecord], now: float) -> None:
        leak_after = self.config.leak_threshold
        idle_after = self.config.idle_in_transaction_threshold
        for record in leased:
            if leak_after is not None and not record.leak_warned:
                if now - record.leased_at >= leak_after:
                    record.leak_warned = True
                    logger.warning(
                        "Pool %r: connection (backend pid %s) held for %.0f s by thread %r, "
                        "longer than leak_threshold=%s s. Leased at:\n%s",
                        self.pool_name, record.backend_pid, now - record.leased_at,
                        record.holder.name if record.holder else "?", leak_after,
                        _stack_text(record.lease_stack),
                    )  # fmt: skip
            if idle_after is not None and not record.idle_tx_warned:
                state, seconds = self.state(record, True, now)
                if state == IDLE_IN_TRANSACTION:
                    record.idle_tx_warned = True
                    logger.warning(
                        "Pool %r: connection (backend pid %s) idle in transaction for %.0f s. "
                        "Last query: %s\nLeased at:\n%sLast cursor taken at:\n%s"
                        "Last query run at:\n%s",
                        self.pool_name, record.backend_pid, seconds, _text(record.last_query),
                        _stack_text(record.lease_stack),
                        _stack_text(record.cursor_stack, self.stacks and _TAKEN_BEFORE),
                        _stack_text(record.execute_stack),
                    )  # fmt: skip


#: An empty cursor stack at the "stacks" level: the cursor came before the transaction.
_TAKEN_BEFORE = "  (taken before the transaction began: a BEGIN sent as SQL on it)\n"


def _stack_text(stack: Any, empty: str | bool = False) -> str:
    if stack:
        return format_stack(stack)
    return empty or "  (not tracked: set tracking='stacks')\n"


def _text(query: Any, limit: int = 200) -> str | None:
    if query is None:
        return None
    if isinstance(query, bytes):
        query = query.decode("utf-8", "replace")
    query = " ".join(str(query).split())
    return query if len(query) <= limit else query[: limit - 1] + "…"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of describe() rows, for a Django shell."""
    headers = ("pid", "state", "for", "thread", "age", "leases", "last query", "leased at")
    lines = []
    for row in rows:
        lines.append(
            (
                str(row["backend_pid"]),
                row["state"],
                format_duration(row["state_s"]),
                row["thread"] or "",
                format_duration(row["age_s"]),
                str(row["leases"]),
                _text(row["last_query"], 50) or "",
                short_path(row["leased_at"]) if row["leased_at"] else "",
            )
        )
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out.extend(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return "\n".join(out)


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def short_path(where: str) -> str:
    path, _, rest = where.partition(":")
    parts = path.split("/")
    return "/".join(parts[-2:]) + ":" + rest
