"""What a process publishes about its pools, and how statistics from many processes merge."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from ..pool import ConnectionPool
from ..pool import stats as S
from ..pool.tracker import IDLE_IN_TRANSACTION, IN_ERROR, IN_TRANSACTION
from ..registry import alias_of, pools

__all__ = ["collect", "merge_top_queries"]

#: Connection states whose stacks are published (the stacks of the others cost bytes and
#: say little: a connection in a transaction is the one somebody needs to find).
_STATES_WITH_STACKS = (IN_TRANSACTION, IDLE_IN_TRANSACTION, IN_ERROR)
_STACKS = ("lease_stack", "cursor_stack", "execute_stack")
#: Settings shown next to the sizes (never connection parameters: no user, no password).
_CONFIG_SHOWN = ("min_size", "max_size", "timeout", "cleaner", "tracking", "reset")


#: The shape of a published snapshot: readers skip rows of another (a process running
#: another version of this package, in a rolling deploy) rather than fail on them.
SNAPSHOT_FORMAT = 2

_NUMBER = (int, float)
_CONNECTION_FIELDS = {
    "backend_pid": int, "state": str, "state_s": _NUMBER, "age_s": _NUMBER, "leases": int,
}  # fmt: skip
#: ... and these, text or None
_CONNECTION_TEXTS = (
    "thread", "last_query", "leased_at", "lease_stack", "cursor_stack", "execute_stack",
)  # fmt: skip
_QUERY_FIELDS = {"sql": str, "count": int, "total_ms": _NUMBER, "max_ms": _NUMBER, "rows": int}


def readable(data: Any, history: Any) -> bool:
    """Whether a snapshot row (its data and history, as read back) has the shape this
    version's readers use: another version's, or a damaged row, is skipped."""

    def fields(row: Any, types: dict[str, Any], texts: tuple[str, ...] = ()) -> bool:
        return (
            isinstance(row, dict)
            and all(
                isinstance(row.get(name), kind) and not isinstance(row.get(name), bool)
                for name, kind in types.items()
            )
            and all(row.get(name) is None or isinstance(row[name], str) for name in texts)
        )

    return (
        isinstance(data, dict)
        and data.get("format") == SNAPSHOT_FORMAT
        and isinstance(data.get("stats"), dict)
        and all(isinstance(v, _NUMBER) for v in data["stats"].values())
        and isinstance(data.get("idle_in_transaction"), int)
        and isinstance(data.get("database"), dict)
        and isinstance(data.get("config"), dict)
        and isinstance(data.get("connections"), list)
        and all(
            fields(row, _CONNECTION_FIELDS, _CONNECTION_TEXTS) for row in data["connections"]
        )
        and isinstance(data.get("top_queries"), list)
        and all(fields(row, _QUERY_FIELDS) for row in data["top_queries"])
        and isinstance(history, list)
        and all(
            isinstance(sample, list) and len(sample) == 4
            and all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in sample)
            for sample in history
        )
    )  # fmt: skip


def collect(top_queries: int = 25) -> dict[str, dict[str, Any]]:
    """A snapshot per alias of this process's open pools (several pools of one alias, as
    after configure_pool(), are added together)."""
    by_alias: dict[str, list[ConnectionPool]] = collections.defaultdict(list)
    for pool in pools():
        by_alias[alias_of(pool)].append(pool)
    return {alias: _describe(group, top_queries) for alias, group in sorted(by_alias.items())}


def _describe(group: list[ConnectionPool], top_queries: int) -> dict[str, Any]:
    totals: collections.Counter[str] = collections.Counter()
    connections: list[dict[str, Any]] = []
    queries: list[list[dict[str, Any]]] = []
    oldest_lease = None
    tracked = False
    for pool in group:
        totals.update(pool.total_stats())  # (a user's pop_stats() zeroes get_stats())
        for holder in pool.holders():
            if oldest_lease is None or holder["held_s"] > oldest_lease:
                oldest_lease = holder["held_s"]
        if pool.tracker is None:
            continue
        tracked = True
        for row in pool.snapshot():
            if row["state"] not in _STATES_WITH_STACKS:
                for key in _STACKS:
                    row[key] = None
            connections.append(row)
        if top_queries:
            # The most frequent and the most time-consuming: what either ordering of the
            # merged, site-wide list would put first.
            both = [pool.top_queries(top_queries, order) for order in ("count", "total_ms")]
            queries.append(merge_top_queries(both, deduplicate=True))
    first = group[0]
    return {
        "format": SNAPSHOT_FORMAT,
        "config": {name: getattr(first.config, name) for name in _CONFIG_SHOWN},
        "database": {
            "name": first.conninfo.get("dbname") or first.conninfo.get("database"),
            "server": f"{first.conninfo.get('host') or 'localhost'}:"
            f"{first.conninfo.get('port') or 5432}",
        },
        "stats": dict(totals),
        "tracked": tracked,
        "oldest_lease_s": oldest_lease,
        "idle_in_transaction": sum(1 for r in connections if r["state"] == IDLE_IN_TRANSACTION),
        "connections": connections,
        "top_queries": merge_top_queries(queries),
    }


def gauges(snapshot: dict[str, Any]) -> list[int]:
    """[leased, idle, waiting] of a snapshot: one sample of the chart."""
    stats = snapshot["stats"]
    return [stats[S.POOL_LEASED], stats[S.POOL_AVAILABLE], stats[S.REQUESTS_WAITING]]


def merge_top_queries(
    lists: Iterable[Iterable[dict[str, Any]]], limit: int | None = None,
    order_by: str = "total_ms", deduplicate: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """Add up statistics of the same statement shape: counts, total times and rows add,
    the maximum is the largest, the average is recomputed.

    ``deduplicate``: the lists are views of the same statistics (one pool's top by count and
    by total time), so a shape seen twice is counted once.
    """
    merged: dict[str, dict[str, Any]] = {}
    for rows in lists:
        for row in rows:
            entry = merged.get(row["sql"])
            if entry is None:
                merged[row["sql"]] = {
                    key: row[key] for key in ("sql", "count", "total_ms", "max_ms", "rows")
                }
            elif not deduplicate:
                entry["count"] += row["count"]
                entry["total_ms"] += row["total_ms"]
                entry["rows"] += row["rows"]
                entry["max_ms"] = max(entry["max_ms"], row["max_ms"])
    result = list(merged.values())
    for entry in result:
        entry["avg_ms"] = entry["total_ms"] / entry["count"] if entry["count"] else 0.0
    result.sort(key=lambda entry: (-entry[order_by], entry["sql"]))
    return result if limit is None else result[:limit]
