"""The site-wide status as plain text, for ``manage.py pool_status``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..pool import stats as S
from ..pool.tracker import format_duration, short_path

__all__ = ["render"]


def render(
    status: dict[str, Any], *, stacks: bool = False, queries: int = 0, verbosity: int = 1
) -> str:
    hosts = status["hosts"]
    out = [
        f"Pool status at {status['generated_at']}: {_plural(status['processes'], 'process')} "
        f"on {_plural(len(hosts), 'host')}{' (' + ', '.join(hosts) + ')' if hosts else ''}; "
        f"snapshots of the last {status['expire_after_s']:g} s, published every "
        f"{status['interval_s']:g} s"
    ]
    unreadable = status.get("unreadable_snapshots")
    if unreadable:
        out.append(
            f"(skipped {_plural(len(unreadable), 'snapshot')} of another format, from another "
            f"version of django_pooled_pg or damaged: {', '.join(unreadable)})"
        )
    for section in status["aliases"]:
        out += ["", *_alias(section, stacks, queries, verbosity)]
    for server in status["servers"]:
        out += ["", *_server(server)]
    # Query text, thread and host names come from any client or process: terminal control
    # sequences in them (a retitled window, a cleared screen) are shown, not obeyed.
    return _CONTROL.sub(_escape, "\n".join(out)) + "\n"


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # (tabs and newlines stay)


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def _alias(section: dict[str, Any], stacks: bool, queries: int, verbosity: int) -> list[str]:
    title = (
        f"== {section['alias']}: database {section['database'] or '?'!s} on {section['server']} =="
    )
    out = [title]
    if section["server_error"]:
        out.append(f"(server side unknown: {section['server_error']})")
    processes = section["processes"]
    if not processes:
        out.append("no process published a snapshot for this alias (is the status app in "
                   "their INSTALLED_APPS, and publishing on?)")  # fmt: skip
    else:
        rows = [_process_row(process) for process in processes]
        totals = section["totals"]
        rows.append([
            "total", str(totals["processes"]), f"{totals[S.POOL_SIZE]}/{totals[S.POOL_MAX]}",
            str(totals[S.POOL_LEASED]), str(totals[S.POOL_AVAILABLE]),
            str(totals[S.REQUESTS_WAITING]), str(totals[S.REQUESTS_NUM]),
            str(totals[S.REQUESTS_TIMEOUTS]), "", str(totals["idle_in_transaction"]), "", "",
        ])  # fmt: skip
        out += align(
            ("host", "pid", "size/max", "leased", "idle", "waiting", "checkouts", "timeouts",
             "oldest lease", "idle in tx", "server sessions", "published"),
            rows,
        )  # fmt: skip
    if verbosity >= 2:
        for process in processes:
            out += ["", f"Connections of {process['host']} pid {process['pid']}:"]
            out += align(
                ("backend", "state", "for", "thread", "leases", "server state", "xact",
                 "wait", "last query"),
                [_connection_row(conn) for conn in process["connections"]],
            )  # fmt: skip
    stuck = [(p, conn) for p in processes for conn in p["idle_in_transaction_connections"]]
    if stuck:
        out += ["", "Idle in transaction:"]
        for process, conn in stuck:
            out += _idle_in_transaction(process, conn, stacks)
        if not stacks:
            out.append("  (--stacks shows where each was leased, took its cursor and ran its "
                       "last query)")  # fmt: skip
    unpublished = section["unpublished_sessions"]
    if unpublished:
        out += ["", f"Sessions on this database nobody published ({len(unpublished)}):"]
        out += [
            "  " + line
            for line in align(
                ("backend", "who", "application_name", "state", "for", "wait", "query"),
                [
                    [str(r["backend_pid"]), r["who"], r["application_name"] or "",
                     r["state"] or "", _maybe(r["state_s"]), _wait(r),
                     _cut(r["query"], 60)]
                    for r in unpublished
                ],
            )
        ]  # fmt: skip
    if queries:
        out += ["", f"Top queries on {section['alias']}, all processes (by total time):"]
        top = section["top_queries"][:queries]
        if not top:
            out.append("  (none published)")
        else:
            out += [
                "  " + line
                for line in align(
                    ("count", "total ms", "avg ms", "max ms", "rows", "statement"),
                    [
                        [str(q["count"]), f"{q['total_ms']:.1f}", f"{q['avg_ms']:.2f}",
                         f"{q['max_ms']:.1f}", str(q["rows"]), _cut(q["sql"], 100)]
                        for q in top
                    ],
                )
            ]  # fmt: skip
    return out


def _process_row(process: dict[str, Any]) -> list[str]:
    stats = process["stats"]
    states = ", ".join(f"{n} {state}" for state, n in sorted(process["server_states"].items()))
    return [
        process["host"], str(process["pid"]), f"{stats[S.POOL_SIZE]}/{stats[S.POOL_MAX]}",
        str(stats[S.POOL_LEASED]), str(stats[S.POOL_AVAILABLE]), str(stats[S.REQUESTS_WAITING]),
        str(stats[S.REQUESTS_NUM]), str(stats[S.REQUESTS_TIMEOUTS]),
        _maybe(process["oldest_lease_s"]), str(process["idle_in_transaction"]),
        states or "-", f"{format_duration(process['age_s'])} ago",
    ]  # fmt: skip


def _connection_row(conn: dict[str, Any]) -> list[str]:
    server = conn["server"] or {}
    return [
        str(conn["backend_pid"]), conn["state"], format_duration(conn["state_s"]),
        conn["thread"] or "", str(conn["leases"]), server.get("state") or "-",
        _maybe(server.get("xact_s")), _wait(server), _cut(conn["last_query"], 50),
    ]  # fmt: skip


def _idle_in_transaction(process: dict[str, Any], conn: dict[str, Any], stacks: bool) -> list[str]:
    server = conn["server"]
    if server is None:
        seen = "not seen on the server (closed since the snapshot?)"
    else:
        seen = (
            f"server: {server['state']}, transaction open {_maybe(server['xact_s'])} "
            f"(since {server['xact_start'] or '?'}), {_wait(server) or 'not waiting'}"
        )
    out = [
        f"  {process['host']} pid {process['pid']}, backend {conn['backend_pid']}, thread "
        f"{conn['thread']!r}: idle in transaction for {format_duration(conn['state_s'])}; {seen}",
        f"    last query: {_cut(conn['last_query'], 200)}",
    ]
    if conn.get("leased_at"):
        out.append(f"    leased at: {short_path(conn['leased_at'])}")
    if stacks:
        for key, title in (
            ("lease_stack", "leased at"),
            ("cursor_stack", "last cursor taken at"),
            ("execute_stack", "last query run at"),
        ):
            out.append(f"    {title}:")
            text = conn.get(key) or "  (not tracked: set tracking='stacks')\n"
            out += ["    " + line for line in text.rstrip("\n").splitlines()]
    return out


def _server(server: dict[str, Any]) -> list[str]:
    if server.get("error"):
        return [f"Server {server['server']}: {server['error']}"]
    out = [
        f"Server {server['server']} ({', '.join(server['aliases'])}): {server['sessions']} "
        f"client sessions now; max_connections {server['max_connections']} "
        f"({server['reserved']} reserved for superusers); the pools may open "
        f"{server['sum_max_size']} (sum of max_size over all processes), plus "
        f"{server['publishers']} status publisher sessions"
    ]
    if server["warning"]:
        out.append(f"WARNING: {server['warning']}")
    return out


def align(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns under a header and a dashed rule."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return lines


def _maybe(seconds: float | None) -> str:
    return format_duration(seconds) if seconds is not None else "-"


def _wait(server: dict[str, Any]) -> str:
    if not server.get("wait_event_type"):
        return ""
    return f"waits on {server['wait_event_type']}:{server['wait_event']}"


def _cut(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else ('es' if noun.endswith('s') else 's')}"
