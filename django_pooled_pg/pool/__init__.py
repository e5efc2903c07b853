"""The pool engine: psycopg2 and the standard library only, no Django."""

from .config import PoolConfig
from .errors import ConnectionReturned, PoolClosed, PoolTimeout, TooManyRequests
from .handles import ConnectionHandle, LeaseCursor
from .pool import ConnectionPool, close_all_pools

__all__ = [
    "ConnectionHandle",
    "ConnectionPool",
    "ConnectionReturned",
    "LeaseCursor",
    "PoolClosed",
    "PoolConfig",
    "PoolTimeout",
    "TooManyRequests",
    "close_all_pools",
]
