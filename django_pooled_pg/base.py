"""Django's postgresql DatabaseWrapper, leasing its connection from a pool instead of opening one."""

from __future__ import annotations

from typing import Any

import psycopg2.extras
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.db.backends.postgresql import base as postgresql
from django.utils.functional import cached_property

from . import conf, registry, signals  # noqa: F401 (signals: fresh pools on DATABASES change)
from .database import PooledDatabase
from .features import DatabaseFeatures
from .pool import ConnectionHandle, ConnectionPool, PoolConfig

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


class DatabaseWrapper(postgresql.DatabaseWrapper):
    features_class = DatabaseFeatures

    def __init__(self, settings_dict: dict[str, Any], alias: str = DEFAULT_DB_ALIAS) -> None:
        super().__init__(settings_dict, alias)
        self.pool_config  # a bad option fails here, at the first connections[alias] access

    @property
    def pool_config(self) -> PoolConfig | None:
        """This alias's pool options now (settings and configure_pool()); None: unpooled."""
        if self.alias == NO_DB_ALIAS:
            return None  # CREATE/DROP DATABASE connections are never pooled
        return conf.pool_config(self.alias, self.settings_dict)

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
        # Django's postgresql code rejects OPTIONS["pool"] under psycopg2: show it the
        # options without our key, and keep the user's dict untouched.
        settings_dict = self.settings_dict
        if "pool" not in settings_dict["OPTIONS"]:
            return super().get_connection_params()
        options = {k: v for k, v in settings_dict["OPTIONS"].items() if k != "pool"}
        self.settings_dict = {**settings_dict, "OPTIONS": options}
        try:
            return super().get_connection_params()
        finally:
            self.settings_dict = settings_dict

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        config = self.pool_config
        if config is None:
            return super().get_new_connection(conn_params)
        level = self.settings_dict["OPTIONS"].get("isolation_level")
        try:
            self.isolation_level = postgresql.IsolationLevel(
                postgresql.IsolationLevel.READ_COMMITTED if level is None else level
            )
        except ValueError:
            raise ImproperlyConfigured(
                f"Invalid transaction isolation level {level} specified. "
                f"Use one of the psycopg.IsolationLevel values."
            ) from None
        return self.get_pool(conn_params, config).checkout()

    def get_pool(
        self, conn_params: dict[str, Any] | None = None, config: PoolConfig | None = None
    ) -> ConnectionPool:
        """The pool for this alias's current settings (the key is computed now, because
        Django's test runner renames the database in place)."""
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
        return registry.get_pool(
            conn_params,
            config,
            name=self._pool_name(conn_params),
            session_init=session_init,
            configure=_configure_new_connection(level),
            extra=level,
        )

    def _pool_name(self, params: dict[str, Any]) -> str:
        host = params.get("host", "localhost")
        port = params.get("port", 5432)
        return f"{self.alias}:{params.get('user', '')}@{host}:{port}/{params.get('dbname', '')}"

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
