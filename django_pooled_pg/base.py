"""Django's postgresql DatabaseWrapper, leasing its connection from a pool, not opening one."""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2.extras
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.base import BaseHandler
from django.db import DEFAULT_DB_ALIAS
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.db.backends.postgresql import base as postgresql
from django.db.backends.signals import connection_created
from django.utils.functional import cached_property

from . import conf, identity, registry, signals, targets  # noqa: F401 (signals: fresh pools on DATABASES change)
from .creation import DatabaseCreation
from .database import PooledDatabase
from .features import DatabaseFeatures
from .pool import ConnectionHandle, ConnectionPool, PoolClosed, PoolConfig, forks, stacks
from .pool.forks import MARK as _FORK_MARK

if postgresql.is_psycopg3:
    raise ImproperlyConfigured(
        "django_pooled_pg pools psycopg2 connections, but psycopg 3 is installed and Django's "
        "postgresql backend always prefers it. Uninstall psycopg (keep psycopg2), or use "
        "Django's built-in pool for psycopg 3 (ENGINE 'django.db.backends.postgresql' with "
        "OPTIONS['pool'])."
    )

__all__ = ["DatabaseWrapper"]


def _configure_new_connection(isolation_level: Any) -> Any:
    def configure(conn: Any) -> None:
        # What Django's get_new_connection() does to each psycopg2 connection, done once
        # per physical connection instead of once per lease.
        psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=lambda x: x)
        if isolation_level is not None:
            conn.isolation_level = isolation_level

    return configure


def _frozen(fingerprint: tuple[Any, ...]) -> tuple[Any, ...]:
    """A fingerprint with a copy of its OPTIONS (two levels: OPTIONS["pool"] is a dict)."""
    options = {k: dict(v) if isinstance(v, dict) else v for k, v in fingerprint[5].items()}
    return (*fingerprint[:5], options, *fingerprint[6:])


# Stacks taken in a request stop at the handler: what is above it is Django and the server.
stacks.STOP_AT.update(
    {BaseHandler._get_response.__code__, BaseHandler._get_response_async.__code__}
)


#: Set (per thread) while a _nodb_cursor() is open: see DatabaseWrapper._nodb_cursor.
_unpooled = threading.local()


class DatabaseWrapper(postgresql.DatabaseWrapper):
    features_class = DatabaseFeatures
    creation_class = DatabaseCreation

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        if alias != NO_DB_ALIAS:  # a bad option fails here, at the first connections[alias] access
            conf.pool_config(alias, settings_dict)

    @property
    def pool_config(self) -> PoolConfig | None:
        """This alias's pool options now (settings and configure_pool()); None: unpooled."""
        if self.alias == NO_DB_ALIAS or getattr(_unpooled, "depth", 0):
            return None  # CREATE/DROP DATABASE connections are never pooled
        return conf.pool_config(self.alias, self.settings_dict)

    @contextmanager
    def _nodb_cursor(self) -> Iterator[Any]:
        # Django's postgresql version falls back, when the 'postgres' database refuses the
        # connection, to a wrapper of this class for the first database under this alias:
        # still a connection for CREATE/DROP DATABASE, so not pooled either.
        depth = getattr(_unpooled, "depth", 0)
        _unpooled.depth = depth + 1
        try:
            with super()._nodb_cursor() as cursor:
                yield cursor
        finally:
            _unpooled.depth = depth

    @property
    def pool(self) -> None:
        # Django's hooks for its psycopg 3 pool stay off; this backend's pool is current_pool.
        return None

    @cached_property
    def database(self) -> PooledDatabase:
        """The public face of this alias's pool: stats, holders, and the tracking tools."""
        return PooledDatabase(self)

    @property
    def current_pool(self) -> ConnectionPool | None:
        """The pool the current lease came from (None when not connected or not pooled)."""
        if isinstance(self.connection, ConnectionHandle):
            return self.connection._pool
        return None

    def get_connection_params(self) -> dict[str, Any]:
        cached = self._cached_lease_target
        if cached is not None and cached[0] == self._settings_fingerprint():
            # (Django's connect() asks on every lease; a copy: a subclass that edits the
            # parameters it is given must not edit the cached lease target's)
            return dict(cached[3])
        # Django's postgresql code rejects OPTIONS["pool"] under psycopg2: show it the
        # options without our key, and keep the user's dict untouched.
        settings_dict = self.settings_dict
        if "pool" not in settings_dict["OPTIONS"]:
            params = super().get_connection_params()
        else:
            options = {k: v for k, v in settings_dict["OPTIONS"].items() if k != "pool"}
            self.settings_dict = {**settings_dict, "OPTIONS": options}
            try:
                params = super().get_connection_params()
            finally:
                self.settings_dict = settings_dict
        # Sessions say which host, process and alias they serve (pg_stat_activity, and the
        # status app's join); OPTIONS["application_name"] wins. It holds the pid: a forked
        # child gets its own (a fork bumps conf.generation, so it is worked out anew).
        params.setdefault("application_name", identity.application_name(self.alias))
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        target = self._lease_target()
        if target is None:
            return super().get_new_connection(conn_params)
        started = time.monotonic()
        timeout = None  # (the pool's own)
        while True:
            self.isolation_level, pool = target
            try:
                handle = pool.checkout(timeout)
                break
            except PoolClosed:
                if not pool.superseded:
                    raise  # closed for good (interpreter exit, close_all_pools())
                # configure_pool(), reset_pool_config() or new DATABASES closed this pool
                # for one with the new options while this request waited in it: wait
                # there for the rest of the timeout.
                target = self._lease_target()
                if target is None:
                    return super().get_new_connection(conn_params)
                timeout = max(0.001, target[1].config.timeout - (time.monotonic() - started))
        handle.on_new_connection, handle.find_pool = self._handle_hooks
        return handle

    @cached_property
    def _handle_hooks(self) -> tuple[Any, Any]:
        # Weak references: no cycle through the wrapper, so leaked leases stay collectable.
        announce = weakref.WeakMethod(self._on_new_connection)
        current = weakref.WeakMethod(self._current_pool_for_resume)
        return (
            lambda: (bound := announce()) is not None and bound(),
            lambda: (bound := current()) is not None and bound(),
        )

    def _current_pool_for_resume(self) -> ConnectionPool:
        target = self._lease_target()
        if target is None:
            raise ImproperlyConfigured(f"pooling was turned off for database {self.alias!r}")
        return target[1]

    def _on_new_connection(self) -> None:
        # A parked lease resumed on another physical connection (someone took ours): to
        # Django's receivers that is a new connection, as after connect().
        connection_created.send(sender=self.__class__, connection=self)

    def _lease_target(self) -> tuple[Any, ConnectionPool] | None:
        """(isolation level, pool) for the current settings, or None when not pooled.

        Every lease needs it, and working it out (connection parameters, session
        baseline, pool key) costs more than the checkout itself, so it is cached on the
        wrapper under a fingerprint of everything it depends on. The fingerprint is taken
        at each lease because Django's test runner renames the database in place.
        """
        cached = self._cached_lease_target
        if self._lease_target_is_current():
            return cached[1], cached[2]  # type: ignore[index]
        fingerprint = self._settings_fingerprint()
        self._cached_lease_target = None
        settings = self.settings_dict
        config = self.pool_config
        if config is None:
            return None
        level = settings["OPTIONS"].get("isolation_level")
        try:
            isolation_level = postgresql.IsolationLevel(
                postgresql.IsolationLevel.READ_COMMITTED if level is None else level
            )
        except ValueError:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {level} specified. "
                f"Use one of the psycopg.IsolationLevel values."
            ) from None
        params = self.get_connection_params()
        pool = self.get_pool(params, config)
        self._cached_lease_target = (_frozen(fingerprint), isolation_level, pool, params)
        return isolation_level, pool

    _cached_lease_target: tuple[Any, Any, ConnectionPool, dict[str, Any]] | None = None

    def _settings_fingerprint(self) -> tuple[Any, ...]:
        """What the lease target depends on. It holds the live OPTIONS dict: the cached
        copy (_frozen) compares equal only while nobody changed OPTIONS in place."""
        settings = self.settings_dict
        return (
            settings["NAME"], settings["USER"], settings["PASSWORD"], settings["HOST"],
            settings["PORT"], settings["OPTIONS"], self.timezone_name, conf.generation,
        )  # fmt: skip

    def _lease_target_is_current(self) -> bool:
        """Whether the cached lease target still holds: same settings, its pool open."""
        if not _FORK_MARK[0]:
            # A child of fork(2) whose after-fork hooks have not run: they close the
            # inherited pools and bump conf.generation, so run them before comparing.
            forks.detected()
        cached = self._cached_lease_target
        return (
            cached is not None
            and not cached[2].closed
            and cached[0] == self._settings_fingerprint()
        )

    def _parked_lease_is_current(self) -> bool:
        """At a request's start, whether a parked lease may go on: its pool open and the
        pool options unchanged (conf.generation), not forked since.

        Cheaper than _lease_target_is_current(), which every new lease checks: the
        connection parameters are not compared again. Like Django's own persistent
        connections, a lease goes on with the parameters it was opened with until
        close(); Django's test runner closes before it renames a database, and
        override_settings(DATABASES=...) closes the pools.
        """
        if not _FORK_MARK[0]:
            forks.detected()  # (closes the inherited pools, bumps conf.generation)
        cached = self._cached_lease_target
        return cached is not None and not cached[2]._closed and cached[0][7] == conf.generation

    def get_pool(
        self, conn_params: dict[str, Any] | None = None, config: PoolConfig | None = None
    ) -> ConnectionPool:
        """The pool for this alias's current settings (created on first use)."""
        config = config or self.pool_config
        if config is None:
            raise ImproperlyConfigured(f"pooling is turned off for database {self.alias!r}")
        if conn_params is None:
            conn_params = self.get_connection_params()
        session_init: list[tuple[str, Any]] = []
        if self.timezone_name:
            session_init.append((self.ops.set_time_zone_sql(), [self.timezone_name]))
        if role := self.settings_dict["OPTIONS"].get("assume_role"):
            session_init.append(("SET ROLE %s", [role]))
        level = self.settings_dict["OPTIONS"].get("isolation_level")
        pool = registry.get_pool(
            conn_params,
            config,
            name=self._pool_name(conn_params),
            session_init=session_init,
            configure=_configure_new_connection(level),
            # One pool per alias even when two have the same settings (an application_name
            # of their own makes the parameters equal): its name, statistics, options and
            # configure_pool() are the alias's.
            extra=(self.alias, level),
        )
        targets.install(pool, self.alias)
        return pool

    def _pool_name(self, params: dict[str, Any]) -> str:
        host = params.get("host", "localhost")
        port = params.get("port", 5432)
        return f"{self.alias}:{params.get('user', '')}@{host}:{port}/{params.get('dbname', '')}"

    def close_if_unusable_or_obsolete(self) -> None:
        """At request start and end (Django's signals): with CONN_MAX_AGE=0, park the lease.

        Parking checks the connection in, reset and free for any other thread, while this
        wrapper keeps a handle that takes it back at its next use. Unlike close() it spares
        Django's reconnect work on every request (about 15 us, measured in bench/). Anything
        unusual (a transaction or atomic block, errors, autocommit off) takes Django's path.
        """
        handle = self.connection
        if isinstance(handle, ConnectionHandle) and self.settings_dict["CONN_MAX_AGE"] == 0:
            if handle._parked:
                if not self._parked_lease_is_current():
                    self.close()  # options changed or the pool closed: lease anew
                return
            if (
                self.autocommit
                and self.settings_dict["AUTOCOMMIT"]
                and not self.in_atomic_block
                and not self.errors_occurred
                and not self.needs_rollback
                # A lease that changed the session is not parked: after its reset,
                # connection_created's set-up must run again (Django's close() below).
                and handle.park_if_unchanged()
            ):
                if self.run_on_commit:  # (as close() leaves it)
                    self.run_on_commit = []
                return
        elif isinstance(handle, ConnectionHandle) and not self.in_atomic_block:
            # CONN_MAX_AGE > 0 keeps the lease across requests (check W001): the pool's
            # own checks still apply at each request's start and end, so a killed backend
            # or one past max_lifetime is replaced, not used by the next request.
            if not handle._pool.lease_sound(handle):
                self.close()
                return
        super().close_if_unusable_or_obsolete()

    def init_connection_state(self) -> None:
        if isinstance(self.connection, ConnectionHandle):
            # The pool's session baseline already holds the time zone and role: skip the
            # postgresql backend's per-connection SETs, keep the base version check.
            BaseDatabaseWrapper.init_connection_state(self)
        else:
            super().init_connection_state()

    def ensure_timezone(self) -> bool:
        # Django's version closes its psycopg 3 pool here. A new TIME_ZONE is a new
        # session baseline, hence a new pool key: only the current lease needs the SET.
        if self.connection is None:
            return False
        return self._configure_timezone(self.connection)

    def close_pool(self) -> None:
        """Close the pools connected to this alias's database, so that Django's test runner
        can clone or drop it ("database is being accessed by other users" otherwise)."""
        name = self.settings_dict["NAME"]
        registry.close_pools(lambda pool: pool.conninfo.get("dbname") == name)
