"""The site-wide status: every live snapshot, joined with each server's pg_stat_activity.

Used by the ``pool_status`` command and the status page. Nothing here shows connection
parameters beyond the alias, the database name and the server's host and port.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import re
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections, transaction

from .. import identity
from ..pool import stats as S
from ..pool.pool import all_pools
from .chart import combine_history
from .conf import status_settings
from .models import TABLE
from .snapshot import merge_top_queries, readable

__all__ = ["StatusTableMissing", "StatusUnavailable", "UnknownAlias", "read_status"]

logger = logging.getLogger(__name__)

#: Statements shown in the site-wide top list.
TOP_QUERIES = 20


class StatusUnavailable(Exception):
    """The snapshots could not be read: the status database is down, refuses the login..."""


class StatusTableMissing(StatusUnavailable):
    """The snapshot table is not in the status database (the app's migration did not run)."""


class UnknownAlias(Exception):
    """An alias that is not in DATABASES."""


# statement_timestamp(), not now(): a reader inside a transaction (ATOMIC_REQUESTS, tests)
# must still see snapshots expire and age. pg_stat_activity is read once per transaction.
_SNAPSHOTS = f"""
SELECT host, pid, alias, application_name, started_at, published_at,
       EXTRACT(EPOCH FROM statement_timestamp() - published_at), data, history
FROM {TABLE}
WHERE published_at >= statement_timestamp() - make_interval(secs => %s)
ORDER BY alias, host, pid"""

#: (No role names: the page shows none of the connection settings' user names.)
_ACTIVITY = """
SELECT pid, datname, application_name, state, backend_type,
       xact_start, EXTRACT(EPOCH FROM statement_timestamp() - xact_start),
       EXTRACT(EPOCH FROM statement_timestamp() - state_change), wait_event_type, wait_event,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 200)
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'
ORDER BY pid"""
_ACTIVITY_COLUMNS = (
    "backend_pid", "datname", "application_name", "state", "backend_type",
    "xact_start", "xact_s", "state_s", "wait_event_type", "wait_event", "query",
)  # fmt: skip
#: Wait events of a session that is merely idle (waiting for its client), not stuck.
_NOT_WAITING = ("Client", "Activity")
_SERVER = """
SELECT current_database(), current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int"""


def pooled_aliases() -> list[str]:
    from ..checks import pooled_aliases as aliases

    return aliases()


def read_status(aliases: list[str] | None = None) -> dict[str, Any]:
    """Everything pool_status and the page show, as plain data (JSON-ready).

    ``aliases``: only these (each must be in DATABASES); default: every pooled alias, and
    any alias another process published.
    """
    known = list(settings.DATABASES)
    for alias in aliases or ():
        if alias not in known:
            raise UnknownAlias(
                f"unknown database alias {alias!r}; known aliases: {', '.join(known)}"
            )
    conf = status_settings()
    unreadable: list[str] = []
    rows = _read_snapshots(conf.database, conf.expiry, unreadable)
    if aliases is None:
        aliases = sorted(set(pooled_aliases()) | {row["alias"] for row in rows})
    servers: dict[str, dict[str, Any]] = {}
    sections = []
    for alias in aliases:
        processes = [row for row in rows if row["alias"] == alias]
        server_key, server = _server_view(alias, servers)
        sections.append(_alias_section(alias, processes, server_key, server, conf.interval))
    now = datetime.datetime.now(datetime.timezone.utc)
    return {
        "generated_at": now.isoformat(timespec="seconds"),
        "status_database": conf.database,
        "interval_s": conf.interval,
        "expire_after_s": conf.expiry,
        "processes": len({(row["host"], row["pid"]) for row in rows}),
        "hosts": sorted({row["host"] for row in rows}),
        # (processes of another version of this package, in a rolling deploy, say)
        "unreadable_snapshots": unreadable,
        "aliases": sections,
        "servers": [_server_totals(key, server, sections) for key, server in servers.items()],
    }


def _read_snapshots(database: str, expiry: float, unreadable: list[str]) -> list[dict[str, Any]]:
    """The live snapshots; rows of another format (or damaged) go to ``unreadable``."""
    try:
        # A savepoint when the caller is in a transaction (ATOMIC_REQUESTS): a missing
        # table must not break the rest of the request.
        with transaction.atomic(using=database), connections[database].cursor() as cursor:
            cursor.execute(_SNAPSHOTS, [expiry])
            fetched = cursor.fetchall()
    except DatabaseError as error:
        if getattr(error.__cause__, "pgcode", None) == "42P01":  # undefined_table
            from django.apps import apps

            migrate = (
                f"'manage.py migrate{'' if database == 'default' else ' --database ' + database}'"
            )
            todo = (
                f"run {migrate}"
                if apps.is_installed("django_pooled_pg.status")
                else f"add 'django_pooled_pg.status' to INSTALLED_APPS and run {migrate}"
            )
            raise StatusTableMissing(
                f"the status table {TABLE} does not exist in database alias {database!r}: {todo}"
            ) from None
        logger.warning("pool status: could not read the snapshots: %s", error)
        raise StatusUnavailable(
            f"could not read the pool snapshots from database alias {database!r}: "
            f"{describe_error(error)}"
        ) from None
    rows = []
    for host, pid, alias, app_name, started, published, age, data, history in fetched:
        try:
            data, history = _json(data), _json(history)
        except ValueError:
            data = None
        if not readable(data, history):
            unreadable.append(f"{host} pid {pid}")
            continue
        rows.append(
            {
                "host": host, "pid": pid, "alias": alias, "application_name": app_name,
                "started_at": started.isoformat(timespec="seconds"),
                "published_at": published.isoformat(timespec="seconds"),
                "age_s": float(age), **data, "history": history,
            }
        )  # fmt: skip
    return rows


#: libpq and the server name the role in some messages ('password authentication failed
#: for user "app"', 'permission denied to set session authorization "app"'); the status
#: output names none (the log has the whole message). The server does not escape quotes
#: in the name: everything up to the line's last quote goes (or to its end, when a name
#: with a newline in it was cut there).
_ROLE_NAME = re.compile(r'\b(user|role|authorization) (?:"[^\n]*"|"[^\n]*$)')
#: The pool's own errors (timeout, too many waiting, closed) name it 'alias:user@host...'.
_POOL_USER = re.compile(r"'([^':\s]+):[^'@\s]*@")


def describe_error(error: BaseException) -> str:
    """The first line of a database error, its SQLSTATE if any, without role names."""
    cause = error.__cause__ if isinstance(error.__cause__, Exception) else error
    lines = str(cause).strip().splitlines() or [type(cause).__name__]
    text = _ROLE_NAME.sub(r'\1 "…"', lines[0].strip())
    # The pools' own names, exactly: a user name may hold quotes, spaces or "@".
    for pool in all_pools():
        user = str(pool.conninfo.get("user") or "")
        if user:
            for spelled in {user, repr(user)[1:-1]}:
                text = text.replace(f":{spelled}@", ":…@")
    text = _POOL_USER.sub(r"'\1:…@", text)
    code = getattr(cause, "pgcode", None)
    return f"{text} (SQLSTATE {code})" if code else text


def _json(value: Any) -> Any:
    # The pooled backend hands jsonb over as text (as Django's postgresql backend does).
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _server_view(alias: str, servers: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """pg_stat_activity and limits of the server behind ``alias`` (read once per server)."""
    settings_dict = settings.DATABASES.get(alias)
    if settings_dict is None:
        return "?", {"error": f"alias {alias!r} is not in this process's DATABASES"}
    key = f"{settings_dict.get('HOST') or 'localhost'}:{settings_dict.get('PORT') or 5432}"
    server = servers.get(key)
    if server is not None and alias in server["databases"]:
        return key, server
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute(_SERVER)
            database, max_connections, reserved = cursor.fetchone()
            if server is None:
                cursor.execute(_ACTIVITY)
                activity = [
                    dict(zip(_ACTIVITY_COLUMNS, row, strict=True)) for row in cursor.fetchall()
                ]
    except DatabaseError as error:
        logger.warning("pool status: could not read pg_stat_activity through %r: %s", alias, error)
        return key, {
            "error": f"could not read pg_stat_activity through {alias!r}: {describe_error(error)}"
        }
    if server is None:
        for row in activity:
            row["xact_start"] = row["xact_start"].isoformat() if row["xact_start"] else None
            for name in ("xact_s", "state_s"):
                row[name] = float(row[name]) if row[name] is not None else None
            if row["wait_event_type"] in _NOT_WAITING:
                row["wait_event_type"] = row["wait_event"] = None
            row["tag"] = identity.parse_application_name(row["application_name"])
        server = servers[key] = {
            "server": key, "max_connections": max_connections, "reserved": reserved,
            "activity": activity, "databases": {},
        }  # fmt: skip
    server["databases"][alias] = database
    return key, server


def _alias_section(
    alias: str, processes: list[dict[str, Any]], server_key: str, server: dict[str, Any],
    interval: float,
) -> dict[str, Any]:  # fmt: skip
    activity = {row["backend_pid"]: row for row in server.get("activity", ())}
    published = set()
    for process in processes:
        states: collections.Counter[str] = collections.Counter()
        for conn in process["connections"]:
            seen = activity.get(conn["backend_pid"])
            published.add(conn["backend_pid"])
            conn["server"] = _server_fields(seen)
            if seen is not None:
                states[seen["state"] or "?"] += 1
                if seen["wait_event_type"] == "Lock":
                    states["waiting on a lock"] += 1
        process["server_states"] = dict(states)
        process["idle_in_transaction_connections"] = [
            conn for conn in process["connections"] if conn["state"] == "idle in transaction"
        ]
    database = server.get("databases", {}).get(alias)
    unpublished = []
    for row in server.get("activity", ()):
        tag = row["tag"]
        if row["datname"] != database or row["backend_pid"] in published:
            continue
        if tag is not None and identity.is_this_process(tag):
            continue  # this command's (or page's) own sessions
        unpublished.append({**row, "who": _who(tag)})
    stats = [process["stats"] for process in processes]
    return {
        "alias": alias,
        "database": database or (processes[0]["database"]["name"] if processes else None),
        "server": server_key,
        "server_error": server.get("error"),
        "processes": processes,
        "unpublished_sessions": unpublished,
        "totals": {
            "processes": len(processes),
            "hosts": len({process["host"] for process in processes}),
            **{
                name: sum(s.get(name, 0) for s in stats)
                for name in (
                    S.POOL_SIZE,
                    S.POOL_MAX,
                    S.POOL_LEASED,
                    S.POOL_AVAILABLE,
                    S.REQUESTS_WAITING,
                    S.REQUESTS_NUM,
                    S.REQUESTS_TIMEOUTS,
                )
            },
            "idle_in_transaction": sum(process["idle_in_transaction"] for process in processes),
        },  # fmt: skip
        "top_queries": merge_top_queries(p["top_queries"] for p in processes)[:TOP_QUERIES],
        "history": combine_history([process["history"] for process in processes], interval),
    }


def _server_fields(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None  # closed since the snapshot, or on a server this process cannot see
    keys = ("state", "xact_start", "xact_s", "state_s", "wait_event_type", "wait_event", "query")
    return {key: row[key] for key in keys}


def _who(tag: dict[str, Any] | None) -> str:
    if tag is None:
        return "another client"
    if tag["role"] == "publisher":
        return f"status publisher of {tag['host']} pid {tag['pid']}"
    return f"{tag['host']} pid {tag['pid']} (not in its last snapshot)"


def _server_totals(key: str, server: dict[str, Any], sections: list[dict[str, Any]]) -> dict:
    if "error" in server:
        return {"server": key, "error": server["error"]}
    mine = [section for section in sections if section["server"] == key]
    activity = server["activity"]
    max_size = sum(section["totals"][S.POOL_MAX] for section in mine)
    publishers = sum(1 for row in activity if row["tag"] and row["tag"]["role"] == "publisher")
    usable = server["max_connections"] - server["reserved"]
    totals = {
        "server": key,
        "aliases": [section["alias"] for section in mine],
        "max_connections": server["max_connections"],
        "reserved": server["reserved"],
        "sessions": len(activity) + 1,  # + the one reading this
        "pooled_sessions": sum(s["totals"][S.POOL_SIZE] for s in mine),
        "publishers": publishers,
        "sum_max_size": max_size,
        "warning": None,
    }
    if max_size + publishers > usable:
        totals["warning"] = (
            f"the pools of {sum(s['totals']['processes'] for s in mine)} processes may open "
            f"{max_size} connections (sum of max_size) plus {publishers} publisher sessions, "
            f"more than this server allows ({server['max_connections']} max_connections - "
            f"{server['reserved']} reserved = {usable}): under load, new connections will "
            f"fail with 'too many clients'. Lower max_size, raise max_connections, or put "
            f"fewer processes on this server."
        )
    return totals
