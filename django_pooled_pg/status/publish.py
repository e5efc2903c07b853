"""Publishing: each serving process writes a snapshot of its pools to the status table.

The pool cleaner calls the publisher (a maintenance listener: the cleaner thread, or a
checkin with ``cleaner="inline"``, after the connection is back in the pool) at most once
per ``interval``. One UPSERT per snapshot, in one round trip, over the publisher's own
connection: never one of the pools' connections, so publishing never makes a request wait
for a connection, even when the pools are exhausted (which is when the status matters
most). That connection is one more session per process (``keep_connection=False`` opens
one per snapshot instead). Failures are logged (rate-limited) and retried with a backoff;
they never reach a request.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import threading
import time
from typing import Any

import psycopg2
import psycopg2.errors
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from .. import identity
from ..pool import cleaner, forks
from ..pool.pool import detach_socket
from .conf import StatusSettings, status_settings
from .models import TABLE
from .snapshot import collect, gauges

__all__ = ["Publisher", "install", "publisher"]

logger = logging.getLogger(__name__)

#: Longest pause between two attempts while publishing keeps failing.
MAX_BACKOFF = 60.0
#: While publishing keeps failing, the warning is repeated at most this often.
WARN_EVERY = 300.0
#: Bounds on the publisher's own session, so that a sick server cannot hold it long.
CONNECT_TIMEOUT = 3
STATEMENT_TIMEOUT_MS = 5000
#: ... and on its socket, for a network that stops answering (the server's
#: statement_timeout cannot fire then): keepalives give up after about 5 + 2 x 2 s of
#: silence, unacknowledged writes after 10 s (tcp_user_timeout: Linux, libpq 12+).
SOCKET_LIMITS = {
    "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2,
    **({"tcp_user_timeout": 10_000} if psycopg2.__libpq_version__ >= 120000 else {}),
}  # fmt: skip

_UPSERT = f"""
INSERT INTO {TABLE} (host, pid, alias, application_name, started_at, published_at, data, history)
VALUES {{rows}}
ON CONFLICT (host, pid, alias) DO UPDATE SET
  application_name = EXCLUDED.application_name, started_at = EXCLUDED.started_at,
  published_at = EXCLUDED.published_at, data = EXCLUDED.data, history = EXCLUDED.history"""
_ROW = "(%s, %s, %s, %s, to_timestamp(%s), now(), %s::jsonb, %s::jsonb)"
_DELETE_EXPIRED = f"DELETE FROM {TABLE} WHERE published_at < now() - make_interval(secs => %s)"
_WITHDRAW = f"DELETE FROM {TABLE} WHERE host = %s AND pid = %s"


class Publisher:
    """This process's publisher: its connection, history ring and failure backoff."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: Any = None
        self._new_process()

    def _new_process(self) -> None:
        self._started_at = time.time()
        #: alias -> deque of [unix time, leased, idle, waiting]
        self._history: dict[str, collections.deque[list[Any]]] = {}
        self._failures = 0
        self._retry_at = 0.0
        self._warned_at = -WARN_EVERY
        self._next_cleanup = 0.0
        self._stopped = False  # exiting, or a process that only reads
        self.published = 0  # snapshots written by this process

    # -- the listener ----------------------------------------------------------------

    def publish(self) -> bool:
        """Write this process's snapshot now, unless publishing is off, backing off after
        failures, or already running in another thread. True when a snapshot was written."""
        forks.check()
        if not self._lock.acquire(blocking=False):
            return False
        try:
            conf = status_settings()
            if not conf.publish or self._stopped or time.monotonic() < self._retry_at:
                return False
            snapshots = collect(conf.top_queries)
            if not snapshots:
                return False  # no pools in this process (yet): nothing to say
            sql, params = self._statement(snapshots, conf)
            try:
                self._execute(sql, params, conf)
            except psycopg2.Error as error:
                self._failed(error, conf)
                return False
            if self._failures:
                logger.info(
                    "Pool status: publishing to database %r works again after %d failures",
                    conf.database,
                    self._failures,
                )
            self._failures = 0
            self._retry_at = 0.0
            self.published += 1
            if not conf.keep_connection:
                self._close()
            return True
        finally:
            self._lock.release()

    def _statement(
        self, snapshots: dict[str, dict[str, Any]], conf: StatusSettings
    ) -> tuple[str, list[Any]]:
        now = time.time()
        rows, params = [], []
        for alias, snapshot in snapshots.items():
            ring = self._history.get(alias)
            if ring is None or ring.maxlen != conf.history:
                ring = self._history[alias] = collections.deque(ring or (), maxlen=conf.history)
            ring.append([round(now, 1), *gauges(snapshot)])
            rows.append(_ROW)
            params += [
                identity.host(), identity.pid(), alias, identity.application_name(alias),
                self._started_at, _dumps(snapshot), _dumps(list(ring)),
            ]  # fmt: skip
        sql = _UPSERT.format(rows=", ".join(rows))
        if time.monotonic() >= self._next_cleanup:
            # Rows of dead processes: any publisher deletes them, now and then.
            self._next_cleanup = time.monotonic() + conf.expiry
            sql = _DELETE_EXPIRED + ";" + sql
            params.insert(0, conf.expiry)
        return sql, params

    def _execute(self, sql: str, params: list[Any], conf: StatusSettings) -> None:
        reused = self._conn is not None and not self._conn.closed
        if not reused:
            self._connect(conf)
        try:
            with self._conn.cursor() as cursor:
                cursor.execute(sql, params)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self._close()
            if not reused:
                raise
            # A kept connection lost in a server restart or killed: once more, on a new one.
            self._connect(conf)
            with self._conn.cursor() as cursor:
                cursor.execute(sql, params)

    def _connect(self, conf: StatusSettings) -> None:
        from django.db import connections

        params = dict(connections[conf.database].get_connection_params())
        params["application_name"] = identity.application_name(conf.database, "publisher")
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        for name, value in SOCKET_LIMITS.items():
            params.setdefault(name, value)
        conn = psycopg2.connect(**params)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(
                    "SET statement_timeout = %s; SET lock_timeout = %s",
                    [STATEMENT_TIMEOUT_MS, STATEMENT_TIMEOUT_MS // 2],
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _failed(self, error: psycopg2.Error, conf: StatusSettings) -> None:
        self._close()
        self._failures += 1
        # Doubling, but resumed within half the expiry, so that after a short outage the
        # process shows again before readers would have dropped it.
        ceiling = max(conf.interval, min(MAX_BACKOFF, conf.expiry / 2))
        backoff = min(conf.interval * 2 ** (self._failures - 1), ceiling)
        now = time.monotonic()
        self._retry_at = now + backoff
        if now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        if isinstance(error, psycopg2.errors.UndefinedTable):
            reason = (
                f"the table {TABLE} does not exist: run 'manage.py migrate' for the "
                f"django_pooled_pg.status app on that database"
            )
        else:
            reason = str(error).strip() or type(error).__name__
        logger.warning(
            "Pool status: could not publish this process's pools to database %r: %s. "
            "Requests are not affected; retrying in %.0f s (this warning repeats at most "
            "every %.0f s while it lasts)",
            conf.database, reason, backoff, WARN_EVERY,
        )  # fmt: skip

    # -- life cycle ------------------------------------------------------------------

    def stop(self) -> None:
        """Publish nothing more from this process (pool_status: its pools aren't the site's)."""
        self._stopped = True

    def withdraw(self) -> None:
        """Delete this process's rows at a clean exit (a killed process's rows expire).
        Only over a connection already open: exit never waits for a new one."""
        forks.check()  # a child of fork(2) that never leased: drop the parent's connection
        if not self._lock.acquire(timeout=2):
            return
        try:
            self._stopped = True  # the cleaner thread may still run until the end
            if self._conn is None or self._conn.closed:
                return
            try:
                with self._conn.cursor() as cursor:
                    cursor.execute(_WITHDRAW, [identity.host(), identity.pid()])
            except psycopg2.Error:
                pass  # the rows expire anyway
            self._close()
        finally:
            self._lock.release()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except psycopg2.Error:  # pragma: no cover - closing a broken connection
                pass

    def after_fork_in_child(self) -> None:
        # The child must never send anything on the parent's socket: closing the inherited
        # connection would (Terminate), so it is pointed at /dev/null first.
        if self._conn is not None:
            detach_socket(self._conn)
        self._conn = None
        self._lock = threading.Lock()
        self._new_process()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


_publisher = Publisher()


def publisher() -> Publisher:
    """This process's publisher (tests and benchmarks call its publish() directly)."""
    return _publisher


def install() -> None:
    """Publish from the pool cleaner when POOLED_PG_STATUS says so (the app's ready())."""
    conf = status_settings()
    if conf.publish:
        cleaner.add_listener(_publisher.publish, conf.interval)
    else:
        cleaner.remove_listener(_publisher.publish)


forks.after_fork_in_child(_publisher.after_fork_in_child)
atexit.register(_publisher.withdraw)


@receiver(setting_changed)
def _reinstall_on_change(setting: str, **kwargs: Any) -> None:
    if setting in ("POOLED_PG_STATUS", "DATABASES"):
        with _publisher._lock:
            _publisher._close()  # the status database may be another one now
            _publisher._retry_at = 0.0
        try:
            install()
        except ImproperlyConfigured:  # reported by the system checks; publish nothing
            cleaner.remove_listener(_publisher.publish)
