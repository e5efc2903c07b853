"""What a holder gets for one lease: a connection handle and cursors that die with the lease."""

from __future__ import annotations

import inspect
import itertools
from time import monotonic as _monotonic
from typing import TYPE_CHECKING, Any

import psycopg2.extensions

from . import forks
from .errors import ConnectionReturned
from .forks import MARK as _FORK_MARK
from .prepared import release_guard, release_guard_first
from .session import _verdicts, may_change_session, may_prepare

if TYPE_CHECKING:
    from .pool import ConnectionPool
    from .record import ConnectionRecord

__all__ = [
    "ConnectionHandle",
    "LeaseCursor",
    "NamedLeaseCursor",
    "forwarding_class",
    "lease_cursor_class",
]

#: Lease numbers, unique in the process (itertools.count is atomic under the GIL).
_lease_numbers = itertools.count(1)

#: psycopg2 connection methods that change the session (the return then resets it).
_SESSION_CHANGING_METHODS = frozenset({"set_client_encoding", "tpc_begin", "lobject"})


_PSYCOPG2_CURSOR = psycopg2.extensions.cursor
_PSYCOPG2_CONNECTION = psycopg2.extensions.connection
_STATUS_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE

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

    def cursor(self, *args: Any, **kwargs: Any) -> LeaseCursor:
        """psycopg2's connection.cursor(name=None, cursor_factory=None, withhold=False,
        scrollable=None): a LeaseCursor (of the cursor_factory's class, if any)."""
        conn = self._conn
        if conn is None or not _FORK_MARK[0]:
            conn = self._live()
        factory = conn.cursor_factory  # (Django's: psycopg2's own class)
        if (
            args
            or kwargs
            or (factory is not _PSYCOPG2_CURSOR and factory is not None)
            or type(conn) is not _PSYCOPG2_CONNECTION
        ):
            cursor = self._new_cursor(conn, *args, **kwargs)
        else:  # Django's cursors
            cursor = conn.cursor(None, LeaseCursor)
        # Fixed for the cursor's life: its lease number pins it to one record.
        cursor._handle = self
        cursor._lease = self._lease
        cursor._record = self._record
        cursor._shown = None
        tracker = self._pool.tracker
        # The cursor stack matters only inside a transaction (Django's autocommit requests
        # take a cursor per query): the test is spelled out here, without a call.
        if tracker is not None and tracker.stacks:
            if not conn.autocommit or conn.get_transaction_status() != _STATUS_IDLE:
                tracker.cursor_taken(self._record)
            elif self._record.cursor_stack:
                # An earlier transaction's: a BEGIN sent on this cursor must not show it.
                self._record.cursor_stack = ()
        return cursor

    def _new_cursor(
        self,
        conn: Any,
        name: str | None = None,
        cursor_factory: type | None = None,
        withhold: bool = False,
        scrollable: bool | None = None,
    ) -> LeaseCursor:
        if name:
            # A named cursor is a server-side DECLARE: it can outlive the transaction.
            self._record.dirty = True
        factory = cursor_factory or conn.cursor_factory or _default_cursor_class(conn)
        cls = lease_cursor_class(factory, named=bool(name))
        cursor = conn.cursor(
            name=name, cursor_factory=cls, withhold=withhold, scrollable=scrollable
        )
        if not isinstance(cursor, cls):  # a connection_factory's cursor() would not have it
            cursor.close()
            raise TypeError(
                f"{type(conn).__qualname__}.cursor() ignored cursor_factory={cls.__name__}: "
                f"pooled cursors must be of a class that checks their lease"
            )
        return cursor  # type: ignore[no-any-return]

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


class LeaseCursor(_PSYCOPG2_CURSOR):
    """A psycopg2 cursor that refuses work once its lease has ended, and notes statements
    that may change session state so that the return knows whether a full reset is due.

    A subclass of psycopg2's cursor, not a wrapper around one: Django takes a cursor for
    every query, and a second Python object with forwarding methods cost about a third of
    the pool's whole overhead per request (bench/instructions.py). What psycopg2 does in C
    stays in C; Python runs only where the lease is checked: every method and attribute of
    psycopg2's cursor API but two that touch nothing beyond the cursor object itself, the
    ``tzinfo_factory`` that Django sets on each cursor and ``close()`` (a client-side
    cursor's frees its rows; a named cursor's talks to the server: NamedLeaseCursor).

    ``connection`` is the lease's ConnectionHandle, never the physical connection.

    The implementation each method extends is the class attribute ``_c_<name>``:
    psycopg2's own here, a cursor_factory's in the classes lease_cursor_class() derives
    (whose methods then run between the lease check and psycopg2's).
    """

    __slots__ = ("_handle", "_lease", "_record", "_shown")

    _handle: ConnectionHandle
    _lease: int
    _record: ConnectionRecord
    #: (query, params) of the last execute() when it ran prepared: what ``query`` shows
    _shown: tuple[Any, Any] | None

    _c_execute = _PSYCOPG2_CURSOR.execute
    _c_executemany = _PSYCOPG2_CURSOR.executemany
    _c_callproc = _PSYCOPG2_CURSOR.callproc
    _c_copy_expert = _PSYCOPG2_CURSOR.copy_expert
    _c_copy_from = _PSYCOPG2_CURSOR.copy_from
    _c_copy_to = _PSYCOPG2_CURSOR.copy_to
    _c_fetchone = _PSYCOPG2_CURSOR.fetchone
    _c_fetchmany = _PSYCOPG2_CURSOR.fetchmany
    _c_fetchall = _PSYCOPG2_CURSOR.fetchall
    _c_next = _PSYCOPG2_CURSOR.__next__
    _c_close = _PSYCOPG2_CURSOR.close

    def _live(self) -> None:
        if not _FORK_MARK[0]:
            forks.detected()  # a cursor taken before a fork(2): the hooks end its lease
        try:
            lease = self._lease
        except AttributeError:
            return  # still in a cursor_factory's __init__: not handed out yet
        if lease != self._handle._lease:
            raise ConnectionReturned(_RETURNED)

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
                    # It may have dropped ours, or prepared its own under our names:
                    # prepare ours again (PREPARE of a name in use is caught: prepared.py).
                    record.statements.clear()
            return
        if isinstance(query, bytes):
            self._note(query.decode("utf-8", "replace"))
        else:  # psycopg2.sql.Composed and the like: assume the worst
            record.dirty = record.deallocate = True

    def execute(self, query: Any, vars: Any = None) -> None:
        if not _FORK_MARK[0]:
            forks.detected()  # a cursor taken before a fork(2): the hooks end its lease
        handle = self._handle
        if self._lease != handle._lease:
            raise ConnectionReturned(_RETURNED)
        record = self._record
        if vars is not None:
            prepared = handle._pool.prepared
            # (Named cursors, DECLARE ... FOR, cannot run EXECUTE: never prepared.)
            if prepared is not None and _CURSOR_NAME.__get__(self) is None:
                plan = prepared.plan_for(query)
                if plan is not None:
                    plain = super()  # this cursor, without the checks
                    run = lambda q, a: prepared.execute(plain, record, plan, q, a)  # noqa: E731
                    self._shown = (query, vars)
                    self._run(run, query, vars, prepared_run=True)
                    return
        if (
            record.deallocate  # the fullest reset is due already, or something to look at:
            or type(query) is not str
            or _verdicts.get(query) is not False
            or self._shown is not None
            or record.release_pending
        ):
            self._run(self._c_execute, query, vars)
            return
        # The common case, spelled out: a known statement that changes no session state.
        tracker = handle._pool.tracker
        if tracker is None:
            self._c_execute(query, vars)
        else:
            tracker.run(record, self._c_execute, query, vars, self)

    def executemany(self, query: Any, vars_list: Any) -> None:
        self._live()
        self._run(self._c_executemany, query, vars_list)

    def callproc(self, procname: str, parameters: Any = None) -> Any:
        self._live()
        record = self._record
        record.dirty = record.deallocate = True  # a function can change anything
        return self._run(self._c_callproc, procname, parameters)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        self._copy(lambda f: self._c_copy_expert(sql, f, size), file, sql=sql)

    def copy_from(self, file: Any, table: str, *args: Any, **kwargs: Any) -> None:
        copy = lambda f: self._c_copy_from(f, table, *args, **kwargs)  # noqa: E731
        self._copy(copy, file, text=f"COPY {table} FROM STDIN")

    def copy_to(self, file: Any, table: str, *args: Any, **kwargs: Any) -> None:
        copy = lambda f: self._c_copy_to(f, table, *args, **kwargs)  # noqa: E731
        self._copy(copy, file, text=f"COPY {table} TO STDOUT")

    def _copy(self, copy: Any, file: Any, text: str | None = None, sql: Any = None) -> None:
        """Run ``copy(file)``, a COPY (of ``sql``, or counted as ``text``), after the guard
        savepoint's release: COPY cannot carry it in its round trip."""
        self._live()
        record = self._record
        if record.release_pending:
            release_guard(self, record)
        if sql is not None:
            self._note(sql)
            text = _query_text(sql, self)
        tracker = self._handle._pool.tracker
        if tracker is None:
            copy(file)
        else:
            tracker.run(record, lambda q, f: copy(f), text, file, self)

    def _run(self, method: Any, query: Any, args: Any, prepared_run: bool = False) -> Any:
        record = self._record
        if record.deallocate:  # the fullest reset is due already; but see _note()
            if record.statements and (type(query) is not str or may_prepare(query)):
                record.statements.clear()
        elif type(query) is not str or _verdicts.get(query) is not False:
            self._note(query)
        if not prepared_run:  # (a prepared run does both itself)
            if self._shown is not None:
                self._shown = None
            if record.release_pending:
                # The last prepared EXECUTE left its guard savepoint open: release it
                # first, so that it never encloses the holder's own savepoints.
                if type(query) is str and method == self._c_execute:
                    # ``query`` shows the holder's statement, not the release before it
                    # (Django's query log reads it).
                    self._shown = (query, args)
                plain = super()
                method = lambda q, a, m=method: release_guard_first(plain, record, q, a, m)  # noqa: E731
        tracker = self._handle._pool.tracker
        if tracker is None:
            return method(query, args)
        if type(query) is not str and type(query) is not bytes:  # psycopg2.sql's objects
            run = lambda q, a: method(query, a)  # noqa: E731
            return tracker.run(record, run, _query_text(query, self), args, self)
        return tracker.run(record, method, query, args, self)

    def fetchone(self) -> Any:
        if self._lease != self._handle._lease:
            raise ConnectionReturned(_RETURNED)
        return self._c_fetchone()

    def fetchmany(self, size: int | None = None) -> Any:
        self._live()
        return self._c_fetchmany() if size is None else self._c_fetchmany(size)

    def fetchall(self) -> Any:
        self._live()
        return self._c_fetchall()

    def __next__(self) -> Any:
        self._live()
        return self._c_next()

    @property
    def connection(self) -> ConnectionHandle:  # type: ignore[override]
        return self._handle

    @property
    def query(self) -> bytes | None:  # type: ignore[override]
        """The last statement as sent; for a prepared run, the statement it stands for (so
        that Django's query log and debug tools show the SELECT, not the EXECUTE)."""
        self._live()
        shown = self._shown
        if shown is not None:
            return self.mogrify(*shown)  # type: ignore[no-any-return]
        return _CURSOR_QUERY.__get__(self)  # type: ignore[no-any-return]

    @property
    def closed(self) -> bool:  # type: ignore[override]
        # Like psycopg2's cursor of a closed connection: closed, not an error.
        return self._lease != self._handle._lease or bool(_CURSOR_CLOSED.__get__(self))


class NamedLeaseCursor(LeaseCursor):
    """LeaseCursor for a named cursor (a server-side DECLARE), whose close() talks to the
    server: on an ended lease it does nothing (the return's reset closed the cursor).

    Its fetches are statements (FETCH on the server): the tracker shows the connection
    active while one runs and idle from the end of the last one, so a view streaming a
    queryset with .iterator() is not reported idle in transaction between batches; and
    their time and rows count for the statement the cursor declared, where a plain
    cursor's execute() would have spent them.
    """

    __slots__ = ("_declared", "_fetch_seconds")

    def close(self) -> None:
        if self._lease == self._handle._lease:
            self._c_close()

    def execute(self, query: Any, vars: Any = None) -> None:
        self._declared = None
        super().execute(query, vars)
        # (as the statistics counted it: see _run())
        self._declared = query if type(query) is str else _query_text(query, self)
        self._fetch_seconds = 0.0

    def fetchone(self) -> Any:
        self._live()
        return self._fetch(self._c_fetchone)

    def fetchmany(self, size: int | None = None) -> Any:
        self._live()
        if size is None:
            return self._fetch(self._c_fetchmany)
        return self._fetch(self._c_fetchmany, size)

    def fetchall(self) -> Any:
        self._live()
        return self._fetch(self._c_fetchall)

    def __next__(self) -> Any:
        self._live()
        return self._fetch(self._c_next)

    def _fetch(self, fetch: Any, *args: Any) -> Any:
        record = self._record
        started = record.query_started = _monotonic()
        try:
            result = fetch(*args)
        finally:
            ended = record.query_ended = _monotonic()
            record.query_started = 0.0
        tracker = self._handle._pool.tracker
        declared = getattr(self, "_declared", None)  # (unset: no execute() yet)
        if tracker is not None and declared is not None:
            seconds = ended - started
            self._fetch_seconds += seconds
            rows = len(result) if type(result) is list else int(result is not None)
            tracker.queries.add_fetch(declared, seconds, rows, self._fetch_seconds)
        return result


def _query_text(query: Any, cursor: Any) -> Any:
    """What the query statistics count ``query`` as: its text. psycopg2.sql's Composed and
    SQL objects run as given, but cannot be hashed (the statistics are a dict by text)."""
    if type(query) is str or type(query) is bytes:
        return query
    try:
        return query.as_string(cursor)
    except Exception:  # not a psycopg2.sql object: its str(), for counting only
        return str(query)


_CURSOR_QUERY = _PSYCOPG2_CURSOR.__dict__["query"]
_CURSOR_CLOSED = _PSYCOPG2_CURSOR.__dict__["closed"]
_CURSOR_NAME = _PSYCOPG2_CURSOR.__dict__["name"]

#: Left to psycopg2 (see LeaseCursor): they touch nothing but the cursor object.
_UNCHECKED_CURSOR_NAMES = frozenset({"tzinfo_factory", "close"})


def _add_lease_checks(cls: type, implementation: type) -> None:
    """Give ``cls`` a lease-checking override of each public name of psycopg2's cursor that
    LeaseCursor does not spell out, running ``implementation``'s version."""
    for name in sorted(dir(_PSYCOPG2_CURSOR)):
        if name.startswith("_") or name in _UNCHECKED_CURSOR_NAMES or name in LeaseCursor.__dict__:
            continue
        member = inspect.getattr_static(implementation, name)
        if not hasattr(member, "__get__"):  # a plain class attribute: psycopg2's slot rules
            member = inspect.getattr_static(_PSYCOPG2_CURSOR, name)
        if callable(member) and not hasattr(member, "__set__"):
            setattr(cls, name, _checked_method(name, getattr(implementation, name)))
        else:
            setattr(cls, name, _checked_attribute(name, member))


def _checked_method(name: str, implementation: Any) -> Any:
    def method(self: LeaseCursor, *args: Any, **kwargs: Any) -> Any:
        self._live()
        return implementation(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"psycopg2's {name}(), while the lease lasts."
    return method


def _checked_attribute(name: str, descriptor: Any) -> property:
    def get(self: LeaseCursor) -> Any:
        # The lease check, spelled out: Django reads rowcount after every write.
        try:
            live = _FORK_MARK[0] and self._lease == self._handle._lease
        except AttributeError:  # still in a cursor_factory's __init__ (see _live())
            live = True
        if not live:
            self._live()
        return descriptor.__get__(self, type(self))

    def set(self: LeaseCursor, value: Any) -> None:
        self._live()
        descriptor.__set__(self, value)

    return property(get, set, doc=f"psycopg2's {name}, while the lease lasts.")


_add_lease_checks(LeaseCursor, _PSYCOPG2_CURSOR)

_lease_cursor_classes: dict[tuple[type, bool], type] = {
    (_PSYCOPG2_CURSOR, False): LeaseCursor,
    (_PSYCOPG2_CURSOR, True): NamedLeaseCursor,
}
_default_cursor_classes: dict[type, type] = {_PSYCOPG2_CONNECTION: _PSYCOPG2_CURSOR}


def _default_cursor_class(conn: Any) -> type:
    """The class of ``conn.cursor()`` for a connection_factory's connection, which may pick
    its own default (psycopg2.extras.LoggingConnection: LoggingCursor): asked once per
    class, by taking (and closing) a cursor, which talks to no server."""
    kind = type(conn)
    cls = _default_cursor_classes.get(kind)
    if cls is None:
        probe = conn.cursor()
        probe.close()
        cls = _default_cursor_classes[kind] = type(probe)
    return cls


def lease_cursor_class(factory: type, named: bool = False) -> type:
    """LeaseCursor (NamedLeaseCursor) for a cursor_factory class: the lease checks first,
    then the factory's methods (DictCursor's rows, LoggingCursor's log...), then
    psycopg2's."""
    cls = _lease_cursor_classes.get((factory, named))
    if cls is None:
        if not (isinstance(factory, type) and issubclass(factory, _PSYCOPG2_CURSOR)):
            raise TypeError(
                f"cursor_factory must be a subclass of psycopg2.extensions.cursor, not {factory!r}"
            )
        if issubclass(factory, LeaseCursor):
            return factory
        base = NamedLeaseCursor if named else LeaseCursor
        namespace: dict[str, Any] = {"__slots__": ()}
        for name in vars(LeaseCursor):
            if name.startswith("_c_"):
                attribute = "__next__" if name == "_c_next" else name[3:]
                namespace[name] = getattr(factory, attribute)
        cls = type(f"{base.__name__}[{factory.__name__}]", (base, factory), namespace)
        _add_lease_checks(cls, factory)
        _lease_cursor_classes[(factory, named)] = cls
    return cls


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
    for name in sorted(names):
        if hasattr(cls, name):
            continue
        member = inspect.getattr_static(wrapped, name, None)
        if callable(member) and not inspect.isclass(member) and not isinstance(member, property):
            forwarder: Any = _forward_method(
                name,
                dirties=name in _SESSION_CHANGING_METHODS,
                changes_characteristics=name not in _READING_METHODS,
            )
        else:
            forwarder = _forward_attribute(name, changes_characteristics=True)
        setattr(cls, name, forwarder)


_classes: dict[tuple[type, type], type] = {}


def forwarding_class(base: type, wrapped: Any) -> Any:
    """``base`` (ConnectionHandle) for the psycopg2 connection ``wrapped``: ``base`` itself
    for psycopg2's own class, else a subclass that also forwards what a connection_factory
    class adds."""
    kind = type(wrapped)
    if kind is _PSYCOPG2_CONNECTION:
        return base
    cls = _classes.get((base, kind))
    if cls is None:
        cls = type(f"{base.__name__}[{kind.__name__}]", (base,), {"__slots__": ()})
        _add_forwarders(cls, kind, wrapped)
        _classes[(base, kind)] = cls
    return cls


_add_forwarders(ConnectionHandle, psycopg2.extensions.connection)
