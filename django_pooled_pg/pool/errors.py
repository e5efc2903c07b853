"""Errors raised by the pool: subclasses of psycopg2's, so Django wraps them as its own."""

import psycopg2

__all__ = ["ConnectionReturned", "PoolClosed", "PoolTimeout", "TooManyRequests"]


class PoolTimeout(psycopg2.OperationalError):
    """No connection could be checked out within the pool's ``timeout``."""


class TooManyRequests(psycopg2.OperationalError):
    """The pool already has ``max_waiting`` requests queued for a connection."""


class PoolClosed(psycopg2.OperationalError):
    """The pool was closed (or the process forked after the lease was taken)."""


class ConnectionReturned(psycopg2.InterfaceError):
    """A connection handle or cursor was used after its lease ended."""
