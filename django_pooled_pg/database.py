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
        """The pool for the alias's current settings (created if needed, nothing opened)."""
        return self._wrapper.current_pool or self._wrapper.get_pool()

    def get_stats(self) -> dict[str, int]:
        return self.pool.get_stats()

    def pop_stats(self) -> dict[str, int]:
        return self.pool.pop_stats()

    def holders(self) -> list[dict[str, Any]]:
        return self.pool.holders()

    def __repr__(self) -> str:
        return f"<PooledDatabase alias={self._wrapper.alias!r} pool={self.pool!r}>"
