"""One pool per distinct set of connection parameters, options and session baseline."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .pool import ConnectionPool, PoolConfig, forks

__all__ = ["alias_of", "close_pools", "get_pool", "pools"]

_pools: dict[str, ConnectionPool] = {}
_lock = threading.Lock()


def pool_key(
    conninfo: Mapping[str, Any], config: PoolConfig, session_init: Sequence[Any], extra: Any
) -> str:
    # repr() of sorted items: cheap, hashable whatever the values are, and two aliases
    # with different credentials or options can never produce the same key.
    return repr((sorted(conninfo.items(), key=lambda item: item[0]), config, session_init, extra))


def get_pool(
    conninfo: Mapping[str, Any],
    config: PoolConfig,
    *,
    name: str,
    session_init: Sequence[tuple[str, Sequence[Any] | None]] = (),
    configure: Callable[[Any], None] | None = None,
    extra: Any = None,
) -> ConnectionPool:
    """The pool for these parameters, created on first use. ``extra`` adds to the key
    whatever ``configure`` depends on."""
    key = pool_key(conninfo, config, session_init, extra)
    pool = _pools.get(key)
    if pool is None or pool.closed:
        with _lock:
            pool = _pools.get(key)
            if pool is None or pool.closed:
                pool = ConnectionPool(
                    conninfo, name=name, config=config, configure=configure,
                    session_init=session_init,
                )  # fmt: skip
                _pools[key] = pool
    return pool


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    # The engine has already emptied the parent's pools here (it registered its fork hook
    # first). Close them too: the child's sessions carry the child's pid in their
    # application_name, so it leases from new pools, and an inherited pool left open
    # would keep refilling to min_size in the child under the parent's name.
    inherited = list(_pools.values())
    _pools.clear()
    for pool in inherited:
        pool.close()


forks.after_fork_in_child(_after_fork_in_child)


def alias_of(pool: ConnectionPool) -> str:
    """The alias a pool serves: base.DatabaseWrapper names pools
    "<alias>:<user>@<host>:<port>/<dbname>" (and each alias has pools of its own)."""
    return pool.name.partition(":")[0]


def pools() -> list[ConnectionPool]:
    with _lock:
        return [pool for pool in _pools.values() if not pool.closed]


def close_pools(where: Callable[[ConnectionPool], bool] | None = None) -> int:
    """Close and forget the pools ``where`` accepts (all by default); return how many."""
    with _lock:
        chosen = [key for key, pool in _pools.items() if where is None or where(pool)]
        closing: Iterable[ConnectionPool] = [_pools.pop(key) for key in chosen]
    count = 0
    for pool in closing:
        # The next lease gets a fresh pool: requests waiting in this one may go there too
        # (base.py). A pool closed any other way (at exit, say) refuses them.
        pool.superseded = True
        pool.close()
        count += 1
    return count
