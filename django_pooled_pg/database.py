"""``connection.database``: the public face of an alias's pool in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import DatabaseWrapper
    from .pool import ConnectionPool

__all__ = ["PooledDatabase"]


class PooledDatabase:
    """What ``connection.database`` returns for a django_pooled_pg alias."""

    def __init__(self, wrapper: DatabaseWrapper) -> None:
        self._wrapper = wrapper

    @property
    def pool(self) -> ConnectionPool:
        """The pool of the current lease, or else (closed: configure_pool() replaced it)
        the pool for the alias's current settings (created if needed, nothing opened)."""
        pool = self._wrapper.current_pool
        return pool if pool is not None and not pool.closed else self._wrapper.get_pool()

    def get_stats(self) -> dict[str, int]:
        return self.pool.get_stats()

    def pop_stats(self) -> dict[str, int]:
        return self.pool.pop_stats()

    def total_stats(self) -> dict[str, int]:
        return self.pool.total_stats()

    def holders(self) -> list[dict[str, Any]]:
        return self.pool.holders()

    def snapshot(self) -> list[dict[str, Any]]:
        """Every connection of this alias's pool in this process, as records: backend pid,
        state, seconds in that state, holder thread, age, leases, last query, stacks."""
        return self.pool.snapshot()

    def as_table(self) -> str:
        """snapshot() as a text table: ``print(connection.database.as_table())`` in a shell."""
        return self.pool.as_table()

    def idle_in_tx_stacks(self, threshold: float | None = None) -> list[dict[str, Any]]:
        """Connections idle in a transaction for ``threshold`` seconds or more (default: the
        pool's idle_in_transaction_threshold), each with three stacks as text: where it was
        leased (``lease_stack``), where its last cursor was taken (``cursor_stack``) and where
        its last query ran (``execute_stack``), user frames first and library frames folded."""
        return self.pool.idle_in_transaction(threshold)

    def top_queries(self, n: int = 10, order_by: str = "count") -> list[dict[str, Any]]:
        """The most common statements (normalized) with count, total/avg/max ms and rows."""
        return self.pool.top_queries(n, order_by)

    def reset_query_stats(self) -> None:
        self.pool.reset_query_stats()

    def add_prepare_target(
        self, target: Any, *, name: str | None = None, plan_cache_mode: str | None = None
    ) -> str:
        """Run ``target``'s SQL shape (a QuerySet, or SQL text with %s placeholders) as
        PREPARE/EXECUTE from now on: the same queryset with other values, and ``IN`` lists
        of any length, reuse one statement per connection. ``plan_cache_mode`` (None,
        "auto", "force_generic_plan", "force_custom_plan") is set for its executions only.
        Returns the SQL; raises UnpreparableStatement (a ValueError) if PREPARE can't take it.
        """
        from .targets import add_prepare_target

        (sql,) = add_prepare_target(
            target, self._wrapper.alias, name=name, plan_cache_mode=plan_cache_mode
        )
        return sql

    def prepared_stats(self) -> list[dict[str, Any]]:
        """Per prepare target of this alias's pool: name, SQL, plan_cache_mode, hits (runs as
        EXECUTE), prepares, reprepares (the server dropped a plan), fallbacks (ran unprepared)."""
        return self.pool.prepared_stats()

    def __repr__(self) -> str:
        if self._wrapper.pool_config is None:
            return f"<PooledDatabase alias={self._wrapper.alias!r} (pooling turned off)>"
        return f"<PooledDatabase alias={self._wrapper.alias!r} pool={self.pool!r}>"
