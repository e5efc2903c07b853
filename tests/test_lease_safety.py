"""Contracts 1, 3 and 5 through Django: one holder, no use after return, leaks come back."""

import gc
import io
import logging
import threading

import psycopg2
import psycopg2.extensions
import psycopg2.extras
from django.core.signals import request_finished, request_started
from django.db import InterfaceError, connection, connections
from django.test import SimpleTestCase

from django_pooled_pg.conf import configure_pool, reset_pool_config
from django_pooled_pg.pool import ConnectionPool, ConnectionReturned
from django_pooled_pg.pool import stats as S

from .helpers import (
    PoolTestCase,
    held_in_another_thread,
    query,
    run_in_threads,
    server_params,
)


class PooledAliasTestCase(SimpleTestCase):
    """Django-level tests on the 'default' alias with pool options set for the test."""

    databases = {"default"}
    pool_options: dict = {}

    def setUp(self):
        connection.close()
        configure_pool("default", **self.pool_options)
        self.addCleanup(reset_pool_config, "default")
        self.addCleanup(connection.close)
        connection.database.pool.pop_stats()


class OneHolderTests(PooledAliasTestCase):
    pool_options = {"max_size": 8, "timeout": 60}

    def test_64_threads_300_request_cycles_never_share_a_backend(self):
        holding = {}
        lock = threading.Lock()
        problems = []
        cycles = []

        def worker():
            for _ in range(300):
                request_started.send(sender=None)
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    (pid,) = cursor.fetchone()
                    me = threading.get_ident()
                    with lock:
                        if pid in holding:
                            problems.append((pid, holding[pid], me))
                        holding[pid] = me
                    cursor.execute("SELECT %s", [me])
                    if cursor.fetchone()[0] != me:
                        problems.append(("wrong result", pid, me))
                    with lock:
                        del holding[pid]
                request_finished.send(sender=None)
                cycles.append(1)
            connection.close()

        run_in_threads(lambda _: worker(), 64, timeout=300)
        self.assertEqual(problems, [])
        self.assertEqual(len(cycles), 64 * 300)
        stats = connection.database.get_stats()
        self.assertLessEqual(stats[S.POOL_SIZE], 8)
        self.assertGreater(stats[S.REQUESTS_QUEUED], 0, "the test must make threads wait")


class NoUseAfterReturnTests(PooledAliasTestCase):
    pool_options = {"max_size": 1, "timeout": 10}

    def test_cursor_kept_after_close_raises_and_never_touches_the_next_holder(self):
        connection.ensure_connection()
        query(connection.connection, "CREATE TABLE IF NOT EXISTS stale_probe (a int)")
        self.addCleanup(lambda: connection.cursor().execute("DROP TABLE stale_probe"))
        stale_cursor = connection.cursor()
        stale_handle = connection.connection
        first_pid = query(stale_handle, "SELECT pg_backend_pid()")[0][0]
        connection.close()

        # Another thread now holds the only connection, inside a transaction.
        with held_in_another_thread("SELECT count(*) FROM stale_probe") as other:
            self.assertEqual(other["pid"], first_pid, "the other thread got the same backend")
            with self.assertRaisesMessage(InterfaceError, "lease has ended"):
                stale_cursor.execute("INSERT INTO stale_probe VALUES (1)")
            with self.assertRaises(Exception) as caught:
                stale_handle.cursor()
            self.assertIn("lease has ended", str(caught.exception))
        self.assertEqual(other["rows"], [(0,)], "nothing ran in the other holder's transaction")

    def test_django_connection_object_is_a_handle_not_the_raw_connection(self):
        connection.ensure_connection()
        self.assertEqual(type(connection.connection).__name__, "ConnectionHandle")
        self.assertTrue(connection.connection.lease_active)


class LeakRecoveryTests(PooledAliasTestCase):
    pool_options = {"max_size": 5, "timeout": 20}

    def test_fifty_dead_threads_without_close_do_not_exhaust_a_pool_of_five(self):
        results = []

        def leaky_request():
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT 1")  # leaky_request: never closes its connection
                results.append(cursor.fetchone()[0])

        with self.assertLogs("django_pooled_pg", logging.WARNING) as logs:
            for _ in range(50):
                thread = threading.Thread(target=leaky_request)
                thread.start()
                thread.join(30)
            gc.collect()
            connection.database.pool.run_maintenance()
        self.assertEqual(results, [1] * 50)
        stats = connection.database.get_stats()
        self.assertGreaterEqual(stats[S.LEAKS_RECOVERED], 45)
        self.assertLessEqual(stats[S.POOL_SIZE], 5)
        self.assertEqual(stats[S.POOL_LEASED], 0)
        leak_logs = [line for line in logs.output if "never returned" in line]
        self.assertTrue(leak_logs)
        self.assertIn("test_lease_safety.py", leak_logs[0])
        self.assertIn("leaky_request", leak_logs[0])

    def test_leaked_transaction_is_rolled_back_before_reuse(self):
        def leave_transaction_open():
            other = connections["default"]
            other.set_autocommit(False)
            query(other.connection, "CREATE TEMP TABLE leaked_tx (a int)")

        with self.assertLogs("django_pooled_pg", logging.WARNING):
            thread = threading.Thread(target=leave_transaction_open)
            thread.start()
            thread.join(10)
            gc.collect()
            connection.database.pool.run_maintenance()
        connection.ensure_connection()
        self.assertEqual(
            query(
                connection.connection, "SELECT count(*) FROM pg_class WHERE relname = 'leaked_tx'"
            ),
            [(0,)],
        )


class GuardedMethodTests(PooledAliasTestCase):
    def test_methods_taken_during_a_lease_refuse_to_run_after_it(self):
        from django_pooled_pg.pool import ConnectionReturned

        connection.ensure_connection()
        handle = connection.connection
        get_status = handle.get_transaction_status
        cursor = handle.cursor()
        mogrify = cursor.mogrify
        connection.close()
        with self.assertRaises(ConnectionReturned):
            get_status()
        with self.assertRaises(ConnectionReturned):
            mogrify("SELECT %s", [1])


class ForwardingTests(PoolTestCase):
    """Handles forward psycopg2's API (and what factory classes add) without __getattr__;
    cursors are psycopg2 cursors that check their lease. Every name refuses to work once
    the lease has ended."""

    def test_cursor_factory_rows_and_extra_api_are_forwarded_and_die_with_the_lease(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        cursor = handle.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        cursor.execute("SELECT 1 AS one, 'x' AS letter")
        self.assertEqual(cursor.fetchone(), {"one": 1, "letter": "x"})
        cursor.itersize = 7  # a writable psycopg2 attribute reaches the real cursor
        self.assertEqual(cursor.itersize, 7)
        self.assertEqual(cursor.rowcount, 1)
        handle.close()
        with self.assertRaises(ConnectionReturned):
            cursor.execute("SELECT 1")
        with self.assertRaises(ConnectionReturned):
            cursor.rowcount  # noqa: B018

    def test_connection_factory_methods_and_attributes_are_forwarded(self):
        class TaggedConnection(psycopg2.extensions.connection):
            label = "tagged"

            def whoami(self):
                with self.cursor() as cursor:
                    cursor.execute("SELECT current_user")
                    return cursor.fetchone()[0]

        params = {**server_params(), "connection_factory": TaggedConnection}
        pool = ConnectionPool(params, name="test:factory", max_size=1)
        self.addCleanup(pool.close)
        handle = pool.checkout()
        self.assertEqual(handle.label, "tagged")
        self.assertEqual(handle.whoami(), query(handle, "SELECT current_user")[0][0])
        whoami = handle.whoami
        handle.close()
        with self.assertRaises(ConnectionReturned):
            whoami()
        with self.assertRaises(ConnectionReturned):
            handle.label  # noqa: B018

    def test_unknown_attributes_are_refused_as_psycopg2_refuses_them(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        self.addCleanup(handle.close)
        with self.assertRaises(AttributeError):
            handle.no_such_attribute = 1
        with self.assertRaises(AttributeError):
            handle.cursor().no_such_attribute = 1
        raw = psycopg2.connect(**server_params())
        self.addCleanup(raw.close)
        with self.assertRaises(AttributeError):
            raw.no_such_attribute = 1


#: Arguments that psycopg2 would accept, so that only the lease check can refuse the call.
_CURSOR_CALLS = {
    "execute": ("SELECT 1",),
    "executemany": ("SELECT %s", [(1,)]),
    "callproc": ("now",),
    "copy_expert": ("COPY (SELECT 1) TO STDOUT", io.StringIO()),
    "copy_from": (io.StringIO(), "lease_cursor_probe"),
    "copy_to": (io.StringIO(), "lease_cursor_probe"),
    "mogrify": ("SELECT %s", [1]),
    "cast": (23, "1"),
    "scroll": (0,),
    "setinputsizes": ([],),
    "setoutputsize": (1,),
}
#: What a cursor of an ended lease may still do: it touches nothing but the cursor object
#: (``connection`` is the handle, which refuses work itself).
_LOCAL_CURSOR_NAMES = {"tzinfo_factory", "close", "closed", "connection"}


class LeaseCursorTests(PoolTestCase):
    """Cursors are psycopg2 cursors (a subclass that checks the lease), not wrappers."""

    def _stale_cursor(self, pool, **kwargs):
        handle = pool.checkout()
        cursor = handle.cursor(**kwargs)
        cursor.execute("SELECT 1 AS one")
        handle.close()
        return cursor

    def test_psycopg2s_c_functions_take_a_pooled_cursor_where_they_refuse_the_handle(self):
        from psycopg2 import sql

        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        self.addCleanup(handle.close)
        handle.autocommit = False
        cursor = handle.cursor()
        cursor.execute("CREATE TYPE pg_temp.point2 AS (x int, y int)")
        # (the README's advice: these need a real connection or cursor, not the handle)
        with self.assertRaisesRegex(TypeError, "must be a connection or a cursor"):
            sql.Identifier("a b").as_string(handle)
        self.assertEqual(sql.Identifier("a b").as_string(cursor), '"a b"')
        self.assertEqual(psycopg2.extensions.quote_ident("a b", cursor), '"a b"')
        psycopg2.extras.register_composite("pg_temp.point2", cursor)  # this cursor's scope
        cursor.execute("SELECT (1, 2)::pg_temp.point2")
        self.assertEqual(tuple(cursor.fetchone()[0]), (1, 2))
        handle.rollback()

    def test_every_name_of_psycopg2s_cursor_refuses_after_the_lease_but_the_local_two(self):
        pool = self.make_pool(max_size=1)
        public = sorted(n for n in dir(psycopg2.extensions.cursor) if not n.startswith("_"))
        self.assertIn("fetchone", public)
        for factory in (None, psycopg2.extras.RealDictCursor, psycopg2.extras.NamedTupleCursor):
            with self.subTest(cursor_factory=factory):
                kwargs = {"cursor_factory": factory} if factory else {}
                cursor = self._stale_cursor(pool, **kwargs)
                for name in public:
                    if name in _LOCAL_CURSOR_NAMES:
                        continue
                    with self.subTest(name=name), self.assertRaises(ConnectionReturned):
                        member = getattr(cursor, name)
                        if callable(member):
                            member(*_CURSOR_CALLS.get(name, ()))
                with self.assertRaises(ConnectionReturned):
                    next(iter(cursor))
                with self.assertRaises(ConnectionReturned):
                    cursor.itersize = 10
                self.assertTrue(cursor.closed)
                with self.assertRaises(ConnectionReturned):
                    cursor.connection.cursor()
                cursor.tzinfo_factory = None  # Django's set-up: local, allowed
                cursor.close()

    def test_cursor_is_a_psycopg2_cursor_whose_connection_is_the_handle(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        self.addCleanup(handle.close)
        cursor = handle.cursor()
        self.assertIsInstance(cursor, psycopg2.extensions.cursor)
        self.assertIs(cursor.connection, handle)
        # psycopg2's helpers that take a cursor work on it, through the lease checks.
        psycopg2.extras.execute_values(
            cursor, "SELECT sum(a) FROM (VALUES %s) AS v(a)", [(1,), (2,), (3,)]
        )
        self.assertEqual(cursor.fetchone(), (6,))
        self.assertEqual(cursor.query, b"SELECT sum(a) FROM (VALUES (1),(2),(3)) AS v(a)")
        psycopg2.extensions.register_type(psycopg2.extensions.UNICODE, cursor)
        dict_cursor = handle.cursor(cursor_factory=psycopg2.extras.DictCursor)
        dict_cursor.execute("SELECT 1 AS one")
        self.assertEqual(dict_cursor.fetchone()["one"], 1)
        self.assertIs(dict_cursor.connection, handle)

    def test_a_connection_factorys_own_cursor_class_is_kept(self):
        log = io.StringIO()
        params = {**server_params(), "connection_factory": psycopg2.extras.LoggingConnection}
        pool = ConnectionPool(
            params, name="test:logging", max_size=1, configure=lambda c: c.initialize(log)
        )
        self.addCleanup(pool.close)
        handle = pool.checkout()
        self.addCleanup(handle.close)
        cursor = handle.cursor()
        self.assertIsInstance(cursor, psycopg2.extras.LoggingCursor)
        cursor.execute("SELECT 42")
        self.assertEqual(cursor.fetchone(), (42,))
        self.assertIn("SELECT 42", log.getvalue())

    def test_a_connection_factorys_own_state_comes_back_for_the_next_holder(self):
        log, holders_log = io.StringIO(), io.StringIO()
        params = {**server_params(), "connection_factory": psycopg2.extras.LoggingConnection}
        pool = ConnectionPool(
            params, name="test:logging", max_size=1, configure=lambda c: c.initialize(log)
        )
        self.addCleanup(pool.close)
        handle = pool.checkout()
        handle.initialize(holders_log)  # this holder's own log target
        query(handle, "SELECT 'first holder'")
        handle.close()
        handle = pool.checkout()
        self.addCleanup(handle.close)
        query(handle, "SELECT 'next holder'")
        self.assertIn("first holder", holders_log.getvalue())
        self.assertNotIn("next holder", holders_log.getvalue())
        self.assertIn("next holder", log.getvalue())  # the login's, as configure() set it

    def test_a_connection_factory_that_ignores_cursor_factory_is_refused(self):
        class Stubborn(psycopg2.extensions.connection):
            def cursor(self, *args, **kwargs):
                return super().cursor()

        params = {**server_params(), "connection_factory": Stubborn}
        pool = ConnectionPool(params, name="test:stubborn", max_size=1)
        self.addCleanup(pool.close)
        handle = pool.checkout()
        self.addCleanup(handle.close)
        with self.assertRaisesRegex(TypeError, "Stubborn.cursor.. ignored cursor_factory"):
            handle.cursor()

    def test_closing_a_named_cursor_of_an_ended_lease_sends_nothing(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        handle.autocommit = False
        named = handle.cursor("stale_named")
        named.execute("SELECT generate_series(1, 10)")
        self.assertEqual(named.fetchone(), (1,))
        handle.close()  # (the reset closes the server-side cursor)
        # The next holder, in a transaction: a CLOSE sent now would fail it.
        other = pool.checkout()
        self.addCleanup(other.close)
        other.autocommit = False
        self.assertEqual(query(other, "SELECT 2"), [(2,)])
        with self.assertRaises(ConnectionReturned):
            named.fetchone()
        named.close()
        self.assertEqual(query(other, "SELECT 3"), [(3,)])
        self.assertEqual(
            other.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        )
