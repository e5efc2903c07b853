"""Shared test helpers: real connections to the test database, and deadline-bounded waits."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import unittest
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
from django.core.signals import request_finished, request_started
from django.db import connection, connections

from django_pooled_pg.pool import ConnectionPool
from django_pooled_pg.testing import Cluster


def server_params(alias: str = "default") -> dict[str, Any]:
    """psycopg2.connect() arguments for the test database of ``alias``."""
    settings = connections[alias].settings_dict
    params = {"host": settings["HOST"], "port": settings["PORT"], "dbname": settings["NAME"]}
    if settings["USER"]:
        params["user"] = settings["USER"]
    if settings["PASSWORD"]:
        params["password"] = settings["PASSWORD"]
    return {k: v for k, v in params.items() if v}


def admin_connection() -> Any:
    """A plain autocommit connection outside any pool, for watching and killing backends."""
    conn = psycopg2.connect(**server_params())
    conn.autocommit = True
    return conn


def query(conn: Any, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def request(sql: str = "SELECT pg_backend_pid()") -> Any:
    """One Django request cycle running ``sql``; returns its first row."""
    request_started.send(sender=None)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchone()
    finally:
        request_finished.send(sender=None)


def add_alias(test: Any, alias: str, settings_dict: dict[str, Any], **other_settings: Any) -> None:
    """A database alias that exists for one test (with ``other_settings`` overridden too).

    django.db.connections reads DATABASES once, so the alias is added there by hand; and
    SimpleTestCase refuses aliases outside its ``databases``, so it joins them meanwhile.
    """
    from django.conf import settings
    from django.test import override_settings

    overridden = override_settings(
        DATABASES={**settings.DATABASES, alias: settings_dict}, **other_settings
    )
    overridden.enable()
    test.addCleanup(overridden.disable)
    configured = connections.configure_settings({"default": {}, alias: settings_dict})
    connections.settings[alias] = configured[alias]
    test.addCleanup(connections.settings.pop, alias)
    cls = type(test)
    test.addCleanup(setattr, cls, "databases", cls.databases)
    cls.databases = frozenset(cls.databases | {alias})
    test.addCleanup(connections.__delitem__, alias)
    test.addCleanup(lambda: connections[alias].close())


def run_engine_code(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (no Django set up), from the project's root."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def run_in_threads(work: Callable[[int], Any], count: int, timeout: float) -> None:
    """Run ``work(0)`` .. ``work(count - 1)`` in as many threads at once; wait for them all."""
    threads = [threading.Thread(target=work, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        raise AssertionError(f"{stuck} of {count} threads still running after {timeout} s")


@contextlib.contextmanager
def held_in_another_thread(final_query: str | None = None) -> Iterator[dict[str, Any]]:
    """While the block runs, another thread holds alias 'default' inside a transaction.

    Yields a dict with that thread's backend ``pid``; after the block, ``rows`` holds what
    ``final_query`` returned inside that transaction (if given).
    """
    entered, release, outcome = threading.Event(), threading.Event(), {}

    def hold() -> None:
        other = connections["default"]
        other.set_autocommit(False)
        outcome["pid"] = query(other.connection, "SELECT pg_backend_pid()")[0][0]
        entered.set()
        release.wait(10)
        if final_query is not None:
            outcome["rows"] = query(other.connection, final_query)
        other.rollback()
        other.close()

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait(10)
    try:
        yield outcome
    finally:
        release.set()
        thread.join(10)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def backend_gone(pid: int) -> Callable[[], bool]:
    admin = admin_connection()

    def check() -> bool:
        return not query(admin, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])

    return check


class PoolTestCase(unittest.TestCase):
    """Engine tests: pools built directly on the test database, closed after each test."""

    def make_pool(self, **options: Any) -> ConnectionPool:
        options.setdefault("timeout", 5.0)
        pool = ConnectionPool(server_params(), name=f"test:{self._testMethodName}", **options)
        self.addCleanup(pool.close)
        return pool


def cluster_or_skip(test: unittest.TestCase) -> Cluster:
    """The throwaway cluster runtests.py started; tests that restart the server need it."""
    cluster = Cluster.attach()
    if cluster is None:
        test.skipTest("the server is external (DATABASE_URL): cannot restart it from here")
    return cluster
