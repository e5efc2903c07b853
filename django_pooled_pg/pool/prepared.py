"""Prepared plans for hot statements: chosen SQL shapes run as server-side PREPARE/EXECUTE.

psycopg2 interpolates parameters on the client and sends plain SQL, so the server parses,
analyses and plans every statement again. For a registered *target* shape, the first
execution on a physical connection sends ``PREPARE djpp_N (types) AS <sql with $n>``, and
every execution sends ``EXECUTE djpp_N(values)``: the server keeps the parse tree and,
under its ``plan_cache_mode``, the plan.

What keeps this invisible to the holder:

- Parameter types are declared from the Python values the way psycopg2's literal would type
  them (an int is ``int4``, a tz-aware datetime ``timestamptz``, a str stays ``unknown`` and
  is inferred from the context), so a prepared statement returns what the plain one would.
  Each combination of types gets its own statement (None, then an int, is two statements).
- ``IN (%s, %s, ...)`` lists of any length become ``= ANY($n)`` with one array parameter,
  so one statement serves every list length.
- Inside a transaction, PREPARE runs under a savepoint: its failure cannot abort the
  holder's transaction. EXECUTE runs under a savepoint too (released in the round trip
  of the holder's next statement), so that a plan the server refuses to reuse ("cached
  plan must not change result type" after an ALTER TABLE) is prepared again and run
  again, transparently, instead of aborting the transaction.
- Anything that cannot be prepared runs unprepared, counted as a fallback and logged once.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import itertools
import logging
import math
import re
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

if TYPE_CHECKING:
    from .record import ConnectionRecord

__all__ = [
    "PLAN_CACHE_MODES",
    "PreparedTargets",
    "PrepareTarget",
    "UnpreparableStatement",
    "release_guard_first",
]

logger = logging.getLogger(__name__)

#: PostgreSQL's plan_cache_mode values a target may choose (None: the server's setting).
PLAN_CACHE_MODES = ("auto", "force_generic_plan", "force_custom_plan")

#: The savepoint that guards our statements inside the holder's transaction.
GUARD = "djpp_guard"
RELEASE_GUARD = f"RELEASE SAVEPOINT {GUARD}"
_ROLLBACK_GUARD = f"ROLLBACK TO SAVEPOINT {GUARD}; RELEASE SAVEPOINT {GUARD}"

_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
_INTRANS = psycopg2.extensions.TRANSACTION_STATUS_INTRANS
_READY = psycopg2.extensions.STATUS_READY  # (psycopg2's own: no transaction begun)

#: Statements PostgreSQL's PREPARE accepts.
_PREPARABLE = frozenset(
    {"SELECT", "WITH", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE", "MERGE"}
)
_FIRST_WORD = re.compile(r"\s*\(*\s*([A-Za-z]+)")
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
#: psycopg2's placeholders: %s, %(name)s, and %% for a literal percent sign.
_PLACEHOLDER = re.compile(r"%%|%s|%\([^)]*\)s|%.?")
#: An IN list of placeholders, as Django writes it; NOT IN becomes <> ALL.
_IN_LIST = re.compile(r"(\bNOT\s+)?\bIN\s*\(\s*%s(?:\s*,\s*%s)*\s*\)", re.IGNORECASE)


class UnpreparableStatement(ValueError):
    """A target whose SQL PREPARE cannot take (several statements, COPY, named placeholders)."""


def _int_type(value: int) -> str:
    # What PostgreSQL makes of psycopg2's literal: an integer constant is int4 if it fits.
    if -(2**31) <= value < 2**31:
        return "int4"
    return "int8" if -(2**63) <= value < 2**63 else "numeric"


def _float_type(value: float) -> str:
    # psycopg2 writes 1.5 (a numeric constant) but 'Infinity'::float for the others.
    return "numeric" if math.isfinite(value) else "float8"


def _decimal_type(value: decimal.Decimal) -> str:
    # psycopg2 writes str(value): "2" is an integer constant (7 / 2 is integer division
    # there), "2.0", "2E+1" and 'NaN'::numeric are numeric.
    if value.is_finite() and value.as_tuple().exponent == 0:  # type: ignore[comparison-overlap]
        return _int_type(int(value))
    return "numeric"


#: The element types an array parameter may declare, and which of them one array with
#: elements of several (numbers) is declared as.
_NUMBER_WIDTH = {"int4": 0, "int8": 1, "numeric": 2}


def _list_type(values: list[Any]) -> str | None:
    """The array type psycopg2's ARRAY[...] of ``values`` has; None when there is no one
    type to declare (mixed, nested, or only NULLs: then the statement runs unprepared)."""
    types = {parameter_type(value) for value in values if value is not None}
    if not types:
        return "unknown" if not values else None  # ('{}' is an untyped literal)
    if types <= _NUMBER_WIDTH.keys():
        return max(types, key=_NUMBER_WIDTH.__getitem__) + "[]"
    if len(types) == 1:
        (element,) = types
        if element not in ("unknown", "float8") and not element.endswith("[]"):
            return element + "[]"
        if element == "unknown" and all(type(v) is str or v is None for v in values):
            return "text[]"  # (ARRAY['a'] is text[])
    return None


_TYPE_OF: dict[type, Any] = {
    int: _int_type,
    float: _float_type,
    bool: lambda _: "bool",
    decimal.Decimal: _decimal_type,
    datetime.datetime: lambda v: "timestamp" if v.tzinfo is None else "timestamptz",
    datetime.date: lambda _: "date",
    datetime.time: lambda v: "time" if v.tzinfo is None else "timetz",
    datetime.timedelta: lambda _: "interval",
    uuid.UUID: lambda _: "uuid",
    bytes: lambda _: "bytea",
    bytearray: lambda _: "bytea",
    memoryview: lambda _: "bytea",
    psycopg2.extensions.Binary: lambda _: "bytea",  # (Django's BinaryField sends these)
    list: _list_type,
}


def _writes_a_typed_literal(kind: type) -> bool:
    """Whether psycopg2 may write a value of ``kind`` as a literal with a type of its own
    ('...'::date for psycopg2.Date(), tstzrange(...) for a range, whatever an adapter
    object's getquoted() returns): declared "unknown", EXECUTE would read it as text."""
    if issubclass(kind, (psycopg2.extensions.QuotedString, psycopg2.extras.Json)):
        return False  # plain quoted strings: "unknown" reads them as the server would
    return hasattr(kind, "getquoted") or issubclass(kind, psycopg2.extras.Range)


def _typer(kind: type) -> Any:
    """_TYPE_OF's entry for ``kind`` or its nearest base class (psycopg2 adapts a subclass,
    an IntEnum or freezegun's datetime, as its base), remembered per class."""
    typer = _TYPE_OF.get(kind)
    if typer is None:
        base = next((base for base in kind.__mro__[1:] if base in _TYPE_OF), None)
        if base is not None:
            typer = _TYPE_OF[base]
        else:
            typer = _UNTYPEABLE if _writes_a_typed_literal(kind) else _UNKNOWN
        if len(_TYPE_OF) < 1000:
            _TYPE_OF[kind] = typer
    return typer


#: PREPARE errors that say nothing about the statement: a lock or statement timeout (a
#: migration holds the table), a cancel, a deadlock, the server short of resources or
#: going down; and a missing table, schema or privilege (before migrate, another
#: search_path or role), where the unprepared query fails too. Only other errors (a type
#: that cannot be inferred, say) turn the target off for those parameter types.
_PASSING_CLASSES = ("08", "40", "53", "55", "57", "58")
_PASSING_CODES = ("42P01", "3F000", "42501")


def _passing(pgcode: str | None) -> bool:
    return pgcode is not None and (pgcode[:2] in _PASSING_CLASSES or pgcode in _PASSING_CODES)


def _UNKNOWN(_: Any) -> str:
    return "unknown"


def _UNTYPEABLE(_: Any) -> None:
    return None  # (the statement runs unprepared)


def parameter_type(value: Any) -> str | None:
    return _typer(type(value))(value)  # type: ignore[no-any-return]


def parameter_types(arguments: Sequence[Any]) -> tuple[str, ...] | None:
    """The declared type of each argument; ``unknown`` lets the server infer it, as it
    does for psycopg2's quoted strings, NULLs and JSON. None: an argument has no type to
    declare that would keep the unprepared statement's meaning (run it unprepared)."""
    types = tuple(parameter_type(value) for value in arguments)
    return None if None in types else types  # type: ignore[return-value]


def _array_literal(values: list[str | None]) -> str:
    """An IN list of strings as one array literal of unknown type: the server reads each
    element as the column's type, as it reads the quoted strings of ``IN ('a', 'b')``."""
    quoted = (
        "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for v in values
    )
    return "{" + ",".join(quoted) + "}"


#: Statement names by (shape, parameter types), for the life of the process: the same shape
#: registered again (a new pool, targets cleared and added back) finds its statements still
#: prepared on the connections that have them.
_names: dict[tuple[str, tuple[str, ...]], str] = {}
_names_lock = threading.Lock()


def _statement_name(shape: str, signature: tuple[str, ...]) -> str:
    with _names_lock:
        name = _names.get((shape, signature))
        if name is None:
            name = _names[(shape, signature)] = f"djpp_{len(_names) + 1}"
        return name


class PrepareTarget:
    """One hot SQL shape, with its statistics. Shared by every connection of a pool."""

    __slots__ = (
        "id", "name", "shape", "body", "plan_cache_mode", "_signatures", "_failed", "_lock",
        "hits", "prepares", "reprepares", "fallbacks",
    )  # fmt: skip

    _ids = itertools.count(1)

    def __init__(self, name: str | None, shape: str, body: str, plan_cache_mode: str | None):
        self.id = next(PrepareTarget._ids)
        self.name = name or f"target {self.id}"
        self.shape = shape
        #: the statement PREPARE gets: placeholders numbered $1, $2...
        self.body = body
        self.plan_cache_mode = plan_cache_mode
        #: statement name per tuple of parameter types
        self._signatures: dict[tuple[str, ...], str] = {}
        #: parameter types PREPARE refused, with the server's message: run unprepared
        self._failed: dict[tuple[str, ...], str] = {}
        self._lock = threading.Lock()
        self.hits = self.prepares = self.reprepares = self.fallbacks = 0

    def statement_name(self, signature: tuple[str, ...]) -> str:
        name = self._signatures.get(signature)
        if name is None:
            with self._lock:
                name = self._signatures.setdefault(
                    signature, _statement_name(self.shape, signature)
                )
        return name

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def fail(self, signature: tuple[str, ...], reason: str) -> None:
        with self._lock:
            first = signature not in self._failed
            self._failed[signature] = reason
        if first:
            logger.warning(
                "Prepared target %r (parameter types %s) cannot be prepared, it runs "
                "unprepared: %s",
                self.name, ", ".join(signature) or "none", reason,
            )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name,
                "sql": self.shape,
                "plan_cache_mode": self.plan_cache_mode,
                "hits": self.hits,
                "prepares": self.prepares,
                "reprepares": self.reprepares,
                "fallbacks": self.fallbacks,
                "type_signatures": len(self._signatures),
                "unpreparable": dict(self._failed),
            }

    def __repr__(self) -> str:
        return f"<PrepareTarget {self.name!r} hits={self.hits}>"


class _Plan:
    """How one concrete SQL string (Django's, with one IN-list length) maps onto a target."""

    __slots__ = ("target", "slices", "placeholders", "count")

    def __init__(self, target: PrepareTarget, slices: tuple[Any, ...]) -> None:
        self.target = target
        #: per $n: the index of its parameter, or a slice (an IN list packed as an array)
        self.slices = slices
        self.placeholders = ", ".join(["%s"] * len(slices))
        #: how many parameters the SQL takes (psycopg2 refuses any other number)
        self.count = sum(1 if type(i) is int else i.stop - i.start for i in slices)

    def arguments(self, params: Sequence[Any]) -> list[Any] | None:
        """The EXECUTE's arguments, or None: parameters of another shape, run as given."""
        try:
            if len(params) != self.count:
                return None
            arguments = []
            for i in self.slices:
                if type(i) is int:
                    arguments.append(params[i])
                    continue
                values = list(params[i])
                # (Other lists go as arrays, typed by parameter_types(): or unprepared.)
                if all(type(v) is str or v is None for v in values):
                    arguments.append(_array_literal(values))
                else:
                    arguments.append(values)
            return arguments
        except (IndexError, TypeError, KeyError):
            return None


def _rewrite(sql: str) -> tuple[str, str, tuple[Any, ...]] | None:
    """(shape, PREPARE body, parameter slices) of ``sql``, or None if it has placeholders
    other than %s (named ones, or a lone %)."""
    slices: list[Any] = []
    shape_parts: list[str] = []
    position = 0
    index = 0

    def take_placeholders(segment: str) -> bool:
        nonlocal index
        last = 0
        for match in _PLACEHOLDER.finditer(segment):
            if match.group() == "%s":
                slices.append(index)
                index += 1
            elif match.group() != "%%":
                return False
            shape_parts.append(segment[last : match.end()])
            last = match.end()
        shape_parts.append(segment[last:])
        return True

    for match in _IN_LIST.finditer(sql):
        if not take_placeholders(sql[position : match.start()]):
            return None
        count = match.group().count("%s")
        slices.append(slice(index, index + count))
        index += count
        shape_parts.append("<> ALL(%s)" if match.group(1) else "= ANY(%s)")
        position = match.end()
    if not take_placeholders(sql[position:]):
        return None
    shape = "".join(shape_parts)
    numbers = itertools.count(1)
    body = _PLACEHOLDER.sub(lambda m: "%" if m.group() == "%%" else f"${next(numbers)}", shape)
    return shape, body, tuple(slices)


def check_plan_cache_mode(mode: str | None) -> None:
    """Raise ValueError unless ``mode`` is None or one of PLAN_CACHE_MODES."""
    if mode is not None and mode not in PLAN_CACHE_MODES:
        raise ValueError(
            f"plan_cache_mode must be None (the server's setting) or one of "
            f"{', '.join(map(repr, PLAN_CACHE_MODES))}, not {mode!r}"
        )


def check_preparable(sql: str) -> None:
    """Raise UnpreparableStatement unless PREPARE can take ``sql``."""
    if not isinstance(sql, str):
        raise UnpreparableStatement(f"a prepare target must be SQL text, not {type(sql).__name__}")
    match = _FIRST_WORD.match(sql)
    first = match.group(1).upper() if match else ""
    if first not in _PREPARABLE:
        raise UnpreparableStatement(
            f"PREPARE takes only {', '.join(sorted(_PREPARABLE))} statements, not "
            f"{first or 'this'}: {sql[:80]!r}"
        )
    unquoted = _QUOTED.sub("''", sql)
    if re.search(r";\s*\S", unquoted):
        raise UnpreparableStatement(f"a prepare target must be one statement: {sql[:80]!r}")
    if re.search(r"\$\d", unquoted):
        raise UnpreparableStatement(f"a prepare target uses %s placeholders, not $n: {sql[:80]!r}")
    if _rewrite(sql) is None:
        raise UnpreparableStatement(
            f"a prepare target may use only %s placeholders (and %% for a literal %): {sql[:80]!r}"
        )
    if _sorts_or_groups_by_a_placeholder(unquoted):
        # psycopg2 sends ORDER BY 2 (the second column); EXECUTE's $1 is a constant.
        raise UnpreparableStatement(
            f"a prepare target must not ORDER BY or GROUP BY a bare %s: run unprepared, "
            f"PostgreSQL reads a number there as a column position, a parameter as a constant "
            f"(the prepared statement would sort or group differently): {sql[:80]!r}"
        )


_BY_CLAUSE = re.compile(r"\b(?:order|group)\s+by\b", re.IGNORECASE)
#: Where an ORDER BY or GROUP BY list ends (at its parenthesis depth).
_BY_CLAUSE_END = re.compile(
    r"\b(?:limit|offset|fetch|for|having|window|union|intersect|except|returning|on)\b",
    re.IGNORECASE,
)
_SORT_SUFFIX = re.compile(r"\s+(?:asc|desc|nulls\s+(?:first|last)|using\s+\S+)\s*$", re.IGNORECASE)


def _sorts_or_groups_by_a_placeholder(sql: str) -> bool:
    """Whether an item of an ORDER BY or GROUP BY list (quotes removed) is a bare %s."""
    for match in _BY_CLAUSE.finditer(sql):
        depth, start, items = 0, match.end(), []
        position = start
        while position < len(sql):
            char = sql[position]
            if char == "(":
                depth += 1
            elif char == ")":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and char == ",":
                items.append(sql[start:position])
                start = position + 1
            elif (
                depth == 0
                and _BY_CLAUSE_END.match(sql, position)
                and not (sql[position - 1].isalnum() or sql[position - 1] == "_")
            ):
                break
            position += 1
        items.append(sql[start:position])
        for item in items:
            item = item.strip()
            while True:
                bare = _SORT_SUFFIX.sub("", item)
                if bare == item:
                    break
                item = bare.strip()
            if item == "%s":
                return True
    return False


_UNSEEN = object()


class PreparedTargets:
    """A pool's targets, and the lookup from an executed SQL string to its target."""

    #: SQL strings remembered with their verdict (applications send the same few again).
    MAX_PLANS = 20_000

    def __init__(self, max_prepared: int) -> None:
        self.max_prepared = max_prepared
        self._targets: dict[str, PrepareTarget] = {}
        self._plans: dict[str, _Plan | None] = {}
        self._lock = threading.Lock()
        self._warned_vanished = False

    def _vanished(self) -> None:
        # Our statement is gone though the holder sent nothing that drops statements: the
        # usual cause is a PgBouncer in transaction mode handing each transaction another
        # server connection. Everything still works, re-preparing every time; say it once.
        if not self._warned_vanished:
            self._warned_vanished = True
            logger.warning(
                "A prepared statement vanished from its connection. If the connections go "
                "through PgBouncer in transaction or statement mode, set "
                "OPTIONS['pool']['prepare'] = False: prepared statements cannot work there."
            )

    def add(
        self, sql: str, name: str | None = None, plan_cache_mode: str | None = None
    ) -> PrepareTarget:
        """Make ``sql``'s shape a target (the same shape twice is one target)."""
        check_preparable(sql)
        check_plan_cache_mode(plan_cache_mode)
        rewritten = _rewrite(sql)
        assert rewritten is not None
        shape, body, _ = rewritten
        with self._lock:
            target = self._targets.get(shape)
            if target is None:
                target = self._targets[shape] = PrepareTarget(name, shape, body, plan_cache_mode)
            else:
                target.plan_cache_mode = plan_cache_mode
                if name:
                    target.name = name
            self._plans.clear()  # verdicts of "no target" may be wrong now
        return target

    def clear(self) -> None:
        with self._lock:
            self._targets.clear()
            self._plans.clear()

    def targets(self) -> list[PrepareTarget]:
        return list(self._targets.values())

    def plan_for(self, sql: Any) -> _Plan | None:
        """The plan of an executed SQL string, or None: one dict lookup once warm."""
        if not self._targets or type(sql) is not str:
            return None
        plan = self._plans.get(sql, _UNSEEN)
        if plan is not _UNSEEN:
            return plan  # type: ignore[return-value]
        rewritten = _rewrite(sql)
        plan = None
        if rewritten is not None:
            target = self._targets.get(rewritten[0])
            if target is not None:
                plan = _Plan(target, rewritten[2])
        if len(self._plans) >= self.MAX_PLANS:
            self._plans.clear()
        self._plans[sql] = plan
        return plan

    # -- execution ------------------------------------------------------------------------

    def execute(
        self, cursor: Any, record: ConnectionRecord, plan: _Plan, query: str, params: Any
    ) -> None:
        """Run ``query`` with ``params`` on ``cursor`` (a raw psycopg2 cursor of the record's
        connection) as EXECUTE of the target's statement, or unprepared when that fails."""
        target = plan.target
        conn = record.conn
        status = conn.get_transaction_status()
        if record.release_pending and status != _INTRANS:
            # The transaction that held the guard ended without handle.commit() or
            # rollback() (psycopg2's "with conn:", tpc_commit(), a COMMIT in SQL): so did
            # the savepoint, and a RELEASE of it would fail the holder's next transaction.
            record.release_pending = False
        arguments = plan.arguments(params) if status in (_IDLE, _INTRANS) else None
        if arguments is None:  # a failed transaction, or parameters of another shape
            target.count("fallbacks")
            run_unprepared(cursor, record, query, params)
            return
        signature = parameter_types(arguments)
        if signature is None:
            target.count("fallbacks")
            run_unprepared(cursor, record, query, params)
            return
        name = target.statement_name(signature)
        statements = record.statements
        # Inside a transaction, or about to be: psycopg2 begins one unless it believes one
        # is open already (after a COMMIT sent as SQL it does, and sends no BEGIN).
        guarded = status == _INTRANS or (not conn.autocommit and conn.status == _READY)
        if name in statements:
            statements.move_to_end(name)
        elif not self._prepare(cursor, record, target, signature, guarded):
            target.count("fallbacks")
            run_unprepared(cursor, record, query, params)
            return
        mode = target.plan_cache_mode
        sql = f"EXECUTE {name}({plan.placeholders})" if arguments else f"EXECUTE {name}"
        restore = None
        if mode is not None:
            # SET LOCAL: until the end of this statement's implicit transaction. Inside
            # the holder's transaction, the guard's RELEASE would keep it to the end of
            # that: the holder's next statement then puts the holder's mode back first.
            sql = f"SET LOCAL plan_cache_mode = {mode}; {sql}"
            if guarded:
                restore = _holders_plan_cache_mode(record)
        try:
            self._run_guarded(cursor, record, sql, arguments, guarded, restore)
        except psycopg2.Error as error:
            if not _plan_went_stale(error) or conn.closed:
                raise
            # The server refuses the cached statement (its result type changed, or it is
            # gone): prepare it again and run it again, still inside the guard.
            if guarded:
                cursor.execute(_ROLLBACK_GUARD)
            statements.pop(name, None)
            if error.pgcode != "26000":  # 26000: it no longer exists
                cursor.execute(f"DEALLOCATE {name}")
            elif not record.deallocate:
                self._vanished()
            target.count("reprepares")
            if not self._prepare(cursor, record, target, signature, guarded, counted=False):
                target.count("fallbacks")
                run_unprepared(cursor, record, query, params)
                return
            self._run_guarded(cursor, record, sql, arguments, guarded, restore)
        target.count("hits")

    @staticmethod
    def _run_guarded(
        cursor: Any,
        record: ConnectionRecord,
        sql: str,
        arguments: list[Any],
        guarded: bool,
        restore: str | None = None,
    ) -> None:
        if not guarded:
            cursor.execute(sql, arguments)
            return
        prefix = _take_pending_release(record)
        # The savepoint stays open after a success: the holder's next statement releases
        # it in its own round trip (see release_guard_first), since psycopg2 returns the
        # result of the last statement of a string and that must be the EXECUTE.
        cursor.execute(f"{prefix}SAVEPOINT {GUARD}; {sql}", arguments)
        record.guard_release = RELEASE_GUARD if restore is None else f"{RELEASE_GUARD}; {restore}"
        record.release_pending = True

    def _prepare(
        self,
        cursor: Any,
        record: ConnectionRecord,
        target: PrepareTarget,
        signature: tuple[str, ...],
        guarded: bool,
        counted: bool = True,
        retry: bool = True,
    ) -> bool:
        """PREPARE the target for these parameter types on this connection; False when the
        server refused (the target then runs unprepared for these types)."""
        if signature in target._failed:
            return False
        name = target.statement_name(signature)
        statements = record.statements
        evicted = []
        while len(statements) >= self.max_prepared:  # least recently used first
            evicted.append(statements.popitem(last=False)[0])
        types = f" ({', '.join(signature)})" if signature else ""
        parts = [f"DEALLOCATE {old}" for old in evicted]
        parts.append(f"PREPARE {name}{types} AS {target.body}")
        if guarded:
            parts = [f"SAVEPOINT {GUARD}", *parts, RELEASE_GUARD]
            if record.release_pending:
                parts.insert(0, record.guard_release)
        record.release_pending = False
        try:
            cursor.execute("; ".join(parts))  # no parameters: % in the body stays as it is
        except psycopg2.Error as error:
            if record.conn.closed:
                raise
            if guarded:
                cursor.execute(_ROLLBACK_GUARD)
            if retry and error.pgcode in ("26000", "42P05"):
                # Our bookkeeping was wrong: the holder ran DEALLOCATE or DISCARD itself,
                # or a statement of ours survived it. Start from a clean slate, once.
                statements.clear()
                if error.pgcode == "42P05":  # "already exists"
                    cursor.execute(f"DEALLOCATE {name}")
                return self._prepare(cursor, record, target, signature, guarded, counted, False)
            if not _passing(error.pgcode):
                target.fail(signature, str(error).strip().splitlines()[0])
            return False  # (a passing failure: run unprepared now, PREPARE again next time)
        statements[name] = name
        if counted:
            target.count("prepares")
        return True


def _plan_went_stale(error: psycopg2.Error) -> bool:
    # 0A000 "cached plan must not change result type" after a schema change; 26000: the
    # statement is gone (the holder deallocated it); 42883 and 42804 (no such operator,
    # datatype mismatch): a parameter type the server inferred at PREPARE no longer fits
    # (ALTER COLUMN ... TYPE, another search_path), which a new PREPARE infers again.
    return error.pgcode in ("26000", "42883", "42804") or (
        error.pgcode == "0A000" and "cached plan" in str(error)
    )


#: Puts back the session's own plan_cache_mode (the server's, role's or connection's).
_DEFAULT_PLAN_CACHE_MODE = "SET LOCAL plan_cache_mode TO DEFAULT"


def _holders_plan_cache_mode(record: ConnectionRecord) -> str:
    """The statement that gives the holder's transaction its plan_cache_mode back after a
    target's SET LOCAL."""
    if not record.dirty:
        # Nothing in this lease may have set it (any SET or set_config() makes the lease
        # dirty: see session.py), so it is the session's default. The common case costs
        # nothing more.
        return _DEFAULT_PLAN_CACHE_MODE
    # The holder may have chosen one: ask, in a round trip of its own (psycopg2 returns
    # only the last result of a string, and that must be the EXECUTE's).
    # (On a cursor of psycopg2's own class: the holder's may return dicts or name tuples.)
    prefix = _take_pending_release(record)
    with record.conn.cursor() as plain:
        plain.execute(f"{prefix}SELECT current_setting('plan_cache_mode')")
        (mode,) = plain.fetchone()
        return plain.mogrify("SET LOCAL plan_cache_mode = %s", [mode]).decode()  # type: ignore[no-any-return]


def _take_pending_release(record: ConnectionRecord) -> str:
    """The guard release the last EXECUTE left to the next statement, as a prefix for a
    string ("" if none); the next statement is the caller's from now on."""
    prefix = f"{record.guard_release}; " if record.release_pending else ""
    record.release_pending = False
    return prefix


def run_unprepared(cursor: Any, record: ConnectionRecord, query: Any, params: Any) -> None:
    if record.release_pending:
        release_guard_first(cursor, record, query, params, cursor.execute)
    else:
        cursor.execute(query, params)


def release_guard(cursor: Any, record: ConnectionRecord) -> None:
    """Release the guard savepoint the last prepared EXECUTE left open, in a round trip of
    its own (for statements that cannot carry it, like COPY)."""
    record.release_pending = False
    if record.conn.get_transaction_status() == _INTRANS:
        with record.conn.cursor() as plain:  # ``cursor`` may be a named one (DECLARE)
            plain.execute(record.guard_release)


def release_guard_first(
    cursor: Any, record: ConnectionRecord, query: Any, params: Any, method: Any
) -> Any:
    """Run ``method(query, params)`` after releasing the guard savepoint left open by the
    last prepared EXECUTE: in the same round trip when the query is a string."""
    record.release_pending = False
    if record.conn.get_transaction_status() != _INTRANS:
        return method(query, params)  # the transaction ended: so did the savepoint
    if type(query) is str and method == cursor.execute and cursor.name is None:
        return method(f"{record.guard_release}; {query}", params)
    release_guard(cursor, record)
    return method(query, params)


def new_statement_registry() -> collections.OrderedDict[str, str]:
    """Per connection: the names of the pool's statements prepared on it, least recent first
    (an ordered dict used as an LRU set)."""
    return collections.OrderedDict()
