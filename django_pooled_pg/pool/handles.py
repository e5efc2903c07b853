"""What a holder gets for one lease: a connection handle and cursors that die with the lease."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg2.extensions

from . import forks
from .errors import ConnectionReturned
from .forks import MARK as _FORK_MARK
from .prepared import release_guard, release_guard_first
from .session import _verdicts, may_change_session, may_prepare

if TYPE_CHECKING:
    from .pool import ConnectionPool
    from .prepared import PreparedTargets
    from .record import ConnectionRecord
    from .tracker import Tracker

__all__ = ["ConnectionHandle", "PooledCursor", "forwarding_class"]

#: Lease numbers, unique in the process (itertools.count is atomic under the GIL).
_lease_numbers = itertools.count(1)

#: psycopg2 connection methods that change the session (the return then resets it).
_SESSION_CHANGING_METHODS = frozenset({"set_client_encoding", "tpc_begin", "lobject"})


_PSYCOPG2_CURSOR = psycopg2.extensions.cursor

#: Forwarded methods that cannot change psycopg2's session characteristics (any other
#: call makes the return compare them with the baseline: a cheap check, but not free).
_READING_METHODS = frozenset(
    "cancel fileno get_backend_pid get_dsn_parameters get_native_connection "
    "get_parameter_status get_transaction_status isexecuting poll xid".split()
)

_RETURNED = (
    "this connection handle's lease has ended (it was returned to the pool, or the process "
    "forked): take a new connection instead of keeping cursors or handles across leases"
)


class ConnectionHandle:
    """Forwards to a psycopg2 connection while the lease lasts; raises ConnectionReturned after.

    psycopg2's connection API is forwarded by generated methods and properties (see
    forwarding_class()), not by __getattr__/__setattr__: with those hooks every access to
    the handle's own slots, on every lease, takes CPython's slow attribute path.

    ``close()`` checks the connection back in. Holders never see the raw connection, so a
    handle kept past its lease can never run on the next holder's session.

    ``park()`` also checks the connection in (reset, and free for any other thread), but
    the handle stays usable: its next use takes the same connection back if nobody else
    took it meanwhile, or leases another one. The Django layer parks at the end of each
    request, which spares Django's disconnect and reconnect on every request. Every lease
    (and every park) gets a new number: cursors of an earlier one refuse to work.
    """

    __slots__ = (
        "_conn", "_record", "_pool", "_lease", "_parked", "on_new_connection", "find_pool",
        "__weakref__",
    )  # fmt: skip

    _conn: Any
    _record: ConnectionRecord
    _pool: ConnectionPool
    _lease: int
    _parked: bool

    #: Called (no arguments) when resuming had to bind another physical connection than
    #: the one parked, so that the holder can redo its per-connection set-up.
    on_new_connection: Any
    #: Called (no arguments) when a parked handle's pool has been closed: returns the pool
    #: to resume from now (the holder's settings may have changed with it).
    find_pool: Any

    def __init__(self, pool: ConnectionPool, record: ConnectionRecord) -> None:
        self._pool = pool
        self.on_new_connection = None
        self.find_pool = None
        self._bind(record)

    def _bind(self, record: ConnectionRecord) -> None:
        self._record = record
        self._conn = record.conn
        self._lease = next(_lease_numbers)
        self._parked = False

    def _end(self, parked: bool) -> None:
        self._conn = None
        self._lease = -1
        self._parked = parked

    def _live(self) -> Any:
        if not _FORK_MARK[0]:
            # A child of fork(2) whose hooks have not run: they end a lease taken before
            # the fork, and may close this pool.
            forks.detected()
        conn = self._conn
        if conn is None:
            if not self._parked:
                raise ConnectionReturned(_RETURNED)
            if self._pool._closed and self.find_pool is not None:
                self._pool = self.find_pool()
            if not self._pool.resume(self) and self.on_new_connection is not None:
                self.on_new_connection()
            conn = self._conn
        return conn

    @property
    def lease_active(self) -> bool:
        return self._conn is not None

    @property
    def parked(self) -> bool:
        return self._parked

    @property
    def can_park(self) -> bool:
        """Whether parking would hand back this very session: the lease changed nothing
        and the pool does not reset every session on return."""
        return not self._record.dirty and not self._pool.resets_always

    def park_if_unchanged(self) -> bool:
        """park() if can_park (the end of every request); True if parked."""
        if self._conn is None or self._record.dirty or self._pool.resets_always:
            return False  # (not can_park, spelled out)
        return self._pool.park(self)  # (False when a fork(2) ended the lease meanwhile)

    @property
    def record(self) -> ConnectionRecord:
        """The pool's record of the physical connection behind this lease."""
        return self._record

    def cursor(self, *args: Any, **kwargs: Any) -> PooledCursor:
        conn = self._conn
        if conn is None or not _FORK_MARK[0]:
            conn = self._live()
        if args or kwargs:
            if args or kwargs.get("name"):
                # A named cursor is a server-side DECLARE: it can outlive the transaction.
                self._record.dirty = True
            raw = conn.cursor(*args, **kwargs)
        else:
            raw = conn.cursor()
        if type(raw) is _PSYCOPG2_CURSOR:
            cursor = PooledCursor(self, raw)
        else:  # a cursor_factory's class
            cursor = forwarding_class(PooledCursor, raw)(self, raw)
        tracker = self._pool.tracker
        if tracker is not None and tracker.stacks:
            tracker.cursor_taken(self._record)
        return cursor

    def close(self) -> None:
        """Check the connection back in for good; closing twice is harmless."""
        if self._conn is not None or self._parked:
            self._pool.checkin(self)

    def park(self) -> None:
        """Check the connection in, keeping the right to take it back (see the class)."""
        if self._conn is not None:
            self._pool.park(self)

    @property
    def closed(self) -> int:
        conn = self._conn
        if conn is None:
            return 0 if self._parked else 1
        return conn.closed

    def commit(self) -> None:
        conn = self._live()
        self._record.release_pending = False  # the transaction's savepoints end with it
        conn.commit()

    def rollback(self) -> None:
        conn = self._live()
        self._record.release_pending = False
        conn.rollback()

    @property
    def autocommit(self) -> bool:
        return self._live().autocommit  # type: ignore[no-any-return]

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        conn = self._live()
        self._record.characteristics_changed = True
        conn.autocommit = value

    def __enter__(self) -> ConnectionHandle:
        self._live().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live().__exit__(*exc)

    def __repr__(self) -> str:
        state = "leased" if self._conn is not None else "returned"
        return f"<ConnectionHandle {state} pid={self._record.backend_pid} pool={self._pool.name!r}>"


class PooledCursor:
    """A psycopg2 cursor that refuses work once its lease has ended, and notes statements
    that may change session state so that the return knows whether a full reset is due.

    The rest of psycopg2's cursor API is forwarded by generated methods and properties
    (see forwarding_class()).
    """

    __slots__ = ("_cursor", "_handle", "_lease", "_record", "_tracker", "_prepared", "_shown")

    _cursor: Any
    _handle: ConnectionHandle
    _lease: int
    _record: ConnectionRecord
    _tracker: Tracker | None
    _prepared: PreparedTargets | None

    def __init__(self, handle: ConnectionHandle, cursor: Any) -> None:
        # Fixed for the cursor's life: its lease number pins it to one record.
        self._handle = handle
        self._cursor = cursor
        self._lease = handle._lease
        self._record = handle._record
        pool = handle._pool
        self._tracker = pool.tracker
        # Named cursors (DECLARE ... FOR) cannot run EXECUTE: they never run prepared.
        self._prepared = pool.prepared if cursor.name is None else None
        #: (query, params) of the last execute() when it ran prepared: what ``query`` shows
        self._shown = None

    def _live(self) -> Any:
        if not _FORK_MARK[0]:
            forks.detected()
        if self._lease != self._handle._lease:
            raise ConnectionReturned(_RETURNED)
        return self._cursor

    def _note(self, query: Any) -> None:
        record = self._record
        if type(query) is str:
            verdict = _verdicts.get(query)
            if verdict is None:
                verdict = may_change_session(query)
            if verdict:
                record.dirty = True
                if may_prepare(query):
                    record.deallocate = True
            return
        if isinstance(query, bytes):
            self._note(query.decode("utf-8", "replace"))
        else:  # psycopg2.sql.Composed and the like: assume the worst
            record.dirty = record.deallocate = True

    def execute(self, query: Any, vars: Any = None) -> None:
        if not _FORK_MARK[0]:
            forks.detected()  # a cursor taken before a fork(2): the hooks end its lease
        if self._lease != self._handle._lease:
            raise ConnectionReturned(_RETURNED)
        cursor = self._cursor
        prepared = self._prepared
        if prepared is not None and vars is not None:
            plan = prepared.plan_for(query)
            if plan is not None:
                record = self._record
                run = lambda q, a: prepared.execute(cursor, record, plan, q, a)  # noqa: E731
                self._shown = (query, vars)
                self._run(run, query, vars, prepared_run=True)
                return
        record = self._record
        if (
            record.deallocate  # the fullest reset is due already, or something to look at:
            or type(query) is not str
            or _verdicts.get(query) is not False
            or self._shown is not None
            or record.release_pending
        ):
            self._run(cursor.execute, query, vars)
            return
        # The common case, spelled out: a known statement that changes no session state.
        tracker = self._tracker
        if tracker is None:
            cursor.execute(query, vars)
        else:
            tracker.run(record, cursor.execute, query, vars, cursor)

    def executemany(self, query: Any, vars_list: Any) -> None:
        self._run(self._live().executemany, query, vars_list)

    def callproc(self, procname: str, parameters: Any = None) -> Any:
        cursor = self._live()
        record = self._handle._record
        record.dirty = record.deallocate = True  # a function can change anything
        return self._run(cursor.callproc, procname, parameters)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        cursor = self._live()
        if self._record.release_pending:
            release_guard(cursor, self._record)
        self._note(sql)
        tracker = self._tracker
        if tracker is None:
            cursor.copy_expert(sql, file, size)
        else:
            tracker.run(self._record, lambda q, f: cursor.copy_expert(q, f, size),
                        sql, file, cursor)  # fmt: skip

    def _run(self, method: Any, query: Any, args: Any, prepared_run: bool = False) -> Any:
        record = self._record
        if not record.deallocate and (  # else the fullest reset is due already
            type(query) is not str or _verdicts.get(query) is not False
        ):
            self._note(query)
        if not prepared_run:  # (a prepared run does both itself)
            if self._shown is not None:
                self._shown = None
            if record.release_pending:
                # The last prepared EXECUTE left its guard savepoint open: release it
                # first, so that it never encloses the holder's own savepoints.
                cursor = self._cursor
                method = lambda q, a, m=method: release_guard_first(cursor, record, q, a, m)  # noqa: E731
        tracker = self._tracker
        if tracker is None:
            return method(query, args)
        return tracker.run(record, method, query, args, self._cursor)

    def fetchone(self) -> Any:
        if self._lease != self._handle._lease:
            raise ConnectionReturned(_RETURNED)
        return self._cursor.fetchone()

    def fetchmany(self, size: int | None = None) -> Any:
        cursor = self._live()
        return cursor.fetchmany() if size is None else cursor.fetchmany(size)

    def fetchall(self) -> Any:
        return self._live().fetchall()

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return next(self._live())

    def close(self) -> None:
        # A named cursor's close() talks to the server: never on a returned lease.
        if self._lease == self._handle._lease or self._cursor.name is None:
            self._cursor.close()

    @property
    def connection(self) -> ConnectionHandle:
        return self._handle

    @property
    def tzinfo_factory(self) -> Any:
        return self._live().tzinfo_factory

    @tzinfo_factory.setter
    def tzinfo_factory(self, value: Any) -> None:
        # Django sets it on every cursor it creates: spelled out, not forwarded.
        if self._lease != self._handle._lease:
            raise ConnectionReturned(_RETURNED)
        self._cursor.tzinfo_factory = value

    @property
    def query(self) -> bytes | None:
        """The last statement as sent; for a prepared run, the statement it stands for (so
        that Django's query log and debug tools show the SELECT, not the EXECUTE)."""
        cursor = self._live()
        shown = self._shown
        if shown is not None:
            return cursor.mogrify(*shown)  # type: ignore[no-any-return]
        return cursor.query  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:
        # Like psycopg2's cursor of a closed connection: closed, not an error.
        return self._lease != self._handle._lease or bool(self._cursor.closed)

    def __enter__(self) -> PooledCursor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- forwarding of the rest of psycopg2's API ------------------------------------------


def _forward_method(name: str, dirties: bool, changes_characteristics: bool) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        target = self._live()
        if dirties:
            self._record.dirty = True
        if changes_characteristics:
            self._record.characteristics_changed = True
        return getattr(target, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"psycopg2's {name}(), on the live lease."
    return method


def _forward_attribute(name: str, changes_characteristics: bool) -> property:
    def get(self: Any) -> Any:
        return getattr(self._live(), name)

    def set(self: Any, value: Any) -> None:
        target = self._live()
        if changes_characteristics:  # isolation_level, readonly... of a connection
            self._record.characteristics_changed = True
        setattr(target, name, value)

    return property(get, set, doc=f"psycopg2's {name}, on the live lease.")


def _add_forwarders(cls: type, wrapped: type, instance: Any = None) -> None:
    """Give ``cls`` a forwarder for each public name of ``wrapped`` (and of ``instance``'s
    own attributes) that ``cls`` does not define itself."""
    names = {name for name in dir(wrapped) if not name.startswith("_")}
    if instance is not None:
        names.update(n for n in getattr(instance, "__dict__", ()) if not n.startswith("_"))
    on_connection = issubclass(cls, ConnectionHandle)
    for name in sorted(names):
        if hasattr(cls, name):
            continue
        member = inspect.getattr_static(wrapped, name, None)
        if callable(member) and not inspect.isclass(member) and not isinstance(member, property):
            forwarder: Any = _forward_method(
                name,
                dirties=name in _SESSION_CHANGING_METHODS,
                changes_characteristics=on_connection and name not in _READING_METHODS,
            )
        else:
            forwarder = _forward_attribute(name, changes_characteristics=on_connection)
        setattr(cls, name, forwarder)


_classes: dict[tuple[type, type], type] = {}


def forwarding_class(base: type, wrapped: Any) -> Any:
    """``base`` (ConnectionHandle or PooledCursor) for the psycopg2 object ``wrapped``:
    ``base`` itself for psycopg2's own classes, else a subclass that also forwards what a
    connection_factory or cursor_factory class adds."""
    kind = type(wrapped)
    if kind is psycopg2.extensions.connection or kind is psycopg2.extensions.cursor:
        return base
    cls = _classes.get((base, kind))
    if cls is None:
        cls = type(f"{base.__name__}[{kind.__name__}]", (base,), {"__slots__": ()})
        _add_forwarders(cls, kind, wrapped)
        _classes[(base, kind)] = cls
    return cls


_add_forwarders(ConnectionHandle, psycopg2.extensions.connection)
_add_forwarders(PooledCursor, psycopg2.extensions.cursor)
