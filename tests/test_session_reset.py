"""Contract 2: the next holder sees a fresh login's session; the reset is skipped when clean."""

import collections

import psycopg2
import psycopg2.extras

from django_pooled_pg.pool import stats as S
from django_pooled_pg.pool.session import may_change_session

from .helpers import PoolTestCase, admin_connection, query


class SessionResetTests(PoolTestCase):
    """Each test dirties the session in one lease and checks the next lease of the same
    physical connection (max_size=1 guarantees it is the same backend)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        admin = admin_connection()
        query(admin, "DROP ROLE IF EXISTS dpp_other")
        query(admin, "CREATE ROLE dpp_other")
        admin.close()

    def lease_twice(self, dirty_sql, check_sql, **options):
        pool = self.make_pool(max_size=1, **options)
        handle = pool.checkout()
        pid = query(handle, "SELECT pg_backend_pid()")[0][0]
        fresh = query(handle, check_sql)
        for sql in dirty_sql:
            query(handle, sql)
        dirty = query(handle, check_sql)
        handle.close()
        handle = pool.checkout()
        self.assertEqual(query(handle, "SELECT pg_backend_pid()")[0][0], pid, "same backend")
        after = query(handle, check_sql)
        handle.close()
        self.assertNotEqual(fresh, dirty, "the test did not change anything")
        self.assertEqual(after, fresh, f"leaked from the previous lease: {dirty_sql}")
        return pool

    def test_set_role_is_undone(self):
        self.lease_twice(["SET ROLE dpp_other"], "SELECT current_user")

    def test_session_authorization_is_undone(self):
        self.lease_twice(
            ["SET SESSION AUTHORIZATION dpp_other"], "SELECT session_user, current_user"
        )

    def test_search_path_is_undone(self):
        self.lease_twice(["SET search_path TO pg_catalog"], "SHOW search_path")

    def test_statement_timeout_is_undone(self):
        self.lease_twice(["SET statement_timeout = '5s'"], "SHOW statement_timeout")

    def test_custom_setting_via_set_config_is_undone(self):
        # Once defined, a custom placeholder reads '' rather than NULL after RESET ALL
        # (DISCARD ALL behaves the same): compare the values, not their absence.
        self.lease_twice(
            ["SELECT set_config('myapp.tenant', '42', false)"],
            "SELECT coalesce(current_setting('myapp.tenant', true), '')",
        )

    def test_temp_tables_are_dropped(self):
        self.lease_twice(
            ["CREATE TEMP TABLE scratch (a int)"],
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't' AND relname = 'scratch'",
        )

    def test_session_advisory_locks_are_released(self):
        self.lease_twice(
            ["SELECT pg_advisory_lock(4242)"],
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )

    def test_listen_is_undone(self):
        self.lease_twice(["LISTEN dpp_channel"], "SELECT count(*) FROM pg_listening_channels()")

    def test_with_hold_cursors_are_closed(self):
        self.lease_twice(
            ["DECLARE kept CURSOR WITH HOLD FOR SELECT 1"], "SELECT count(*) FROM pg_cursors"
        )

    def test_named_cursor_left_open_is_closed(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        cursor = handle.cursor("iter", withhold=True)  # what QuerySet.iterator() uses
        cursor.execute("SELECT generate_series(1, 1000)")
        cursor.fetchmany(10)
        handle.close()
        handle = pool.checkout()
        self.assertEqual(query(handle, "SELECT count(*) FROM pg_cursors"), [(0,)])
        handle.close()

    def assert_uncommitted_insert_is_gone(self, begin):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        query(handle, "CREATE TABLE IF NOT EXISTS reset_probe (a int)")
        query(handle, "TRUNCATE reset_probe")
        begin(handle)
        query(handle, "INSERT INTO reset_probe VALUES (1)")
        handle.close()  # never committed
        handle = pool.checkout()
        self.assertEqual(
            handle.get_transaction_status(), psycopg2.extensions.TRANSACTION_STATUS_IDLE
        )
        self.assertTrue(handle.autocommit)
        self.assertEqual(query(handle, "SELECT count(*) FROM reset_probe"), [(0,)])
        query(handle, "DROP TABLE reset_probe")
        handle.close()

    def test_open_transaction_is_rolled_back(self):
        self.assert_uncommitted_insert_is_gone(lambda handle: setattr(handle, "autocommit", False))

    def test_transaction_begun_as_sql_in_autocommit_is_rolled_back(self):
        # psycopg2's rollback() does nothing in autocommit mode: the pool must not rely on it.
        self.assert_uncommitted_insert_is_gone(lambda handle: query(handle, "BEGIN"))

    def assert_failed_transaction_is_gone(self, begin):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        begin(handle)
        with self.assertRaises(psycopg2.Error):
            query(handle, "SELECT 1/0")
        handle.close()
        handle = pool.checkout()
        self.assertEqual(query(handle, "SELECT 1"), [(1,)])
        handle.close()

    def test_failed_transaction_is_rolled_back(self):
        self.assert_failed_transaction_is_gone(lambda handle: setattr(handle, "autocommit", False))

    def test_failed_sql_transaction_in_autocommit_is_rolled_back(self):
        self.assert_failed_transaction_is_gone(lambda handle: query(handle, "BEGIN"))

    def test_prepare_after_another_dirty_statement_is_deallocated(self):
        self.lease_twice(
            ["SET search_path TO pg_catalog", "PREPARE later AS SELECT 1"],
            "SELECT count(*) FROM pg_prepared_statements",
        )

    def test_pg_temp_objects_are_dropped(self):
        self.lease_twice(
            ["CREATE TABLE pg_temp.sneaky (a int)"],
            "SELECT count(*) FROM pg_class WHERE relname = 'sneaky'",
        )

    def test_client_encoding_is_restored(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        handle.set_client_encoding("LATIN1")
        handle.close()
        handle = pool.checkout()
        self.assertEqual(handle.encoding, "UTF8")
        handle.close()

    def test_psycopg2_session_characteristics_are_restored(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        handle.set_session(isolation_level="SERIALIZABLE", readonly=True, autocommit=False)
        handle.close()
        handle = pool.checkout()
        self.assert_baseline_characteristics(handle)
        handle.close()

    def assert_baseline_characteristics(self, handle):
        """psycopg2's session characteristics as a new connection has them, also on the
        server (a transaction opened to look)."""
        self.assertTrue(handle.autocommit)
        self.assertIsNone(handle.isolation_level)
        self.assertIsNone(handle.readonly)
        self.assertIsNone(handle.deferrable)
        # The session defaults too: in autocommit mode, psycopg2 sets characteristics
        # there, and each autocommit statement runs under them.
        defaults = [
            query(handle, f"SHOW default_transaction_{name}")[0][0]
            for name in ("isolation", "read_only", "deferrable")
        ]
        self.assertEqual(defaults, ["read committed", "off", "off"])
        handle.autocommit = False
        self.assertEqual(query(handle, "SHOW transaction_isolation"), [("read committed",)])
        self.assertEqual(query(handle, "SHOW transaction_read_only"), [("off",)])
        self.assertEqual(query(handle, "SHOW transaction_deferrable"), [("off",)])
        handle.rollback()

    def test_a_sequence_used_by_name_leaves_no_lastval_to_the_next_holder(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        query(handle, "CREATE SEQUENCE IF NOT EXISTS dpp_lastval")
        self.addCleanup(query, admin_connection(), "DROP SEQUENCE IF EXISTS dpp_lastval")
        self.assertEqual(len(query(handle, "SELECT nextval('dpp_lastval')")), 1)
        handle.close()
        handle = pool.checkout()
        try:
            with self.assertRaisesRegex(psycopg2.Error, "lastval is not yet defined"):
                query(handle, "SELECT lastval()")
        finally:
            handle.close()

    def test_a_holders_setseed_leaves_the_next_holders_random_unpredictable(self):
        other = admin_connection()
        self.addCleanup(other.close)
        _, first, second = query(other, "SELECT setseed(0.5), random(), random()")[0]
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        self.assertEqual(query(handle, "SELECT setseed(0.5), random()")[0][1], first)
        pid = handle.record.backend_pid
        handle.close()
        handle = pool.checkout()
        try:
            self.assertEqual(handle.record.backend_pid, pid)  # the same session
            self.assertNotEqual(query(handle, "SELECT random()")[0][0], second)
        finally:
            handle.close()

    def test_a_configured_isolation_level_holds_for_transactions_alone_on_every_lease(self):
        # As in Django's own connections: on the transactions psycopg2 begins, not on
        # autocommit statements. After a reset (with RESET ALL, or restoring psycopg2's
        # level in autocommit mode) it must be neither lost nor made the session's default.
        pool = self.make_pool(
            max_size=1, configure=lambda conn: setattr(conn, "isolation_level", "SERIALIZABLE")
        )
        # (the lease, and what it does to make the next one's situation)
        leases = [
            ("new connection", lambda h: query(h, "SET work_mem = '8MB'")),
            ("after a RESET ALL", lambda h: setattr(h, "isolation_level", 1)),  # READ COMMITTED
            ("after psycopg2's level was restored", lambda h: None),
        ]
        for name, prepare_next in leases:
            with self.subTest(name):
                handle = pool.checkout()
                try:
                    self.assertEqual(
                        query(handle, "SHOW transaction_isolation"), [("read committed",)]
                    )
                    handle.autocommit = False
                    self.assertEqual(
                        query(handle, "SHOW transaction_isolation"), [("serializable",)]
                    )
                    handle.rollback()
                    handle.autocommit = True
                    prepare_next(handle)
                finally:
                    handle.close()

    def test_characteristics_changed_before_a_park_are_restored_for_the_next_holder(self):
        # park() skips the comparison with the baseline unless the holder changed one:
        # each way of changing one must still be caught.
        changes = {
            "isolation_level attribute": lambda h: setattr(h, "isolation_level", "SERIALIZABLE"),
            "readonly attribute": lambda h: setattr(h, "readonly", True),
            "set_session()": lambda h: h.set_session(deferrable=True, readonly=True),
            "set_isolation_level()": lambda h: h.set_isolation_level(4),
        }
        pool = self.make_pool(max_size=1)
        for name, change in changes.items():
            with self.subTest(name):
                handle = pool.checkout()
                change(handle)
                handle.park()
                other = pool.checkout()  # max_size=1: the same physical connection
                self.assert_baseline_characteristics(other)
                other.close()
                handle.close()

    def test_client_side_connection_state_is_restored_for_the_next_holder(self):
        # Not session state on the server, but psycopg2's, on the same physical connection:
        # a cursor_factory left behind would hand the next holder dicts instead of tuples.
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        login_notices = handle.notices
        handle.cursor_factory = psycopg2.extras.RealDictCursor
        handle.notices = collections.deque(maxlen=3)
        handle.notifies = collections.deque()
        self.assertEqual(query(handle, "SELECT 1 AS one"), [{"one": 1}], "the change took")
        handle.park()
        other = pool.checkout()  # max_size=1: the same physical connection
        self.assertEqual(query(other, "SELECT 1 AS one"), [(1,)])
        self.assertIsNone(other.cursor_factory)
        self.assertIs(other.notices, login_notices)
        self.assertIsInstance(other.notifies, list)
        query(other, "DO $$ BEGIN RAISE NOTICE 'seen'; END $$")
        self.assertEqual(len(other.notices), 1)
        other.close()
        handle.close()

    def test_user_prepared_statements_are_deallocated(self):
        self.lease_twice(
            ["PREPARE mine AS SELECT 1"], "SELECT count(*) FROM pg_prepared_statements"
        )

    def test_prepared_inside_a_do_block_is_deallocated(self):
        self.lease_twice(
            ["DO $$ BEGIN EXECUTE 'PREPARE hidden AS SELECT 1'; END $$"],
            "SELECT count(*) FROM pg_prepared_statements",
        )

    def test_session_baseline_is_reapplied_after_reset(self):
        pool = self.make_pool(max_size=1, session_init=[("SET TIME ZONE %s", ["Asia/Tokyo"])])
        handle = pool.checkout()
        self.assertEqual(query(handle, "SHOW TimeZone"), [("Asia/Tokyo",)])
        query(handle, "SET TIME ZONE 'UTC'")
        handle.close()
        handle = pool.checkout()
        self.assertEqual(query(handle, "SHOW TimeZone"), [("Asia/Tokyo",)])
        handle.close()
        self.assertEqual(pool.get_stats()[S.RESETS_NUM], 1)


class ResetSkipTests(PoolTestCase):
    def test_clean_leases_skip_the_reset_round_trip(self):
        pool = self.make_pool(max_size=1)
        for _ in range(5):
            handle = pool.checkout()
            query(handle, "SELECT 1")
            query(handle, "CREATE TABLE IF NOT EXISTS skip_probe (a int)")
            query(handle, "UPDATE skip_probe SET a = 1 WHERE a = 2")
            handle.close()
        self.assertEqual(pool.get_stats()[S.RESETS_NUM], 0)
        handle = pool.checkout()
        query(handle, "DROP TABLE skip_probe")
        handle.close()

    def test_reset_always_resets_every_return(self):
        pool = self.make_pool(max_size=1, reset="always")
        for _ in range(3):
            pool.checkout().close()
        self.assertEqual(pool.get_stats()[S.RESETS_NUM], 3)

    def test_reset_rollback_only_ends_the_transaction(self):
        pool = self.make_pool(max_size=1, reset="rollback")
        handle = pool.checkout()
        query(handle, "SET search_path TO pg_catalog")
        handle.close()
        handle = pool.checkout()
        self.assertEqual(query(handle, "SHOW search_path"), [("pg_catalog",)])
        handle.close()

    def test_disguised_session_changes_are_reset(self):
        # Statements the lexical check once took for clean (a review found each leaking
        # into the next lease): the next holder of the same backend sees the baseline.
        disguised = [
            "/* /* */ UPDATE */ SET search_path = pg_catalog",
            "-- x\rSET search_path = pg_catalog,\nupdate",
            "DO 'BEGIN EXECUTE ''SE''||''T search_path = pg_catalog''; END'",
            "SELECT query_to_xml('select s'||'et_config(''search_path'',''pg_catalog'',false)',"
            " true, false, '')",
        ]
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        baseline = query(handle, "SHOW search_path")
        handle.close()
        for sql in disguised:
            handle = pool.checkout()
            pid = query(handle, "SELECT pg_backend_pid()")
            query(handle, sql)
            handle.close()
            handle = pool.checkout()
            self.assertEqual(query(handle, "SELECT pg_backend_pid()"), pid)
            self.assertEqual(query(handle, "SHOW search_path"), baseline, sql)
            handle.close()

    def test_classifier_flags_what_changes_a_session(self):
        session_changing = [
            "SET search_path TO x",
            "set role bob",
            "RESET ALL",
            "SELECT set_config('a.b', '1', false)",
            "CREATE TEMPORARY TABLE t (a int)",
            "SELECT a INTO TEMP t FROM u",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock(1)",
            "LISTEN channel",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "PREPARE p AS SELECT 1",
            "DO $$ BEGIN PERFORM set_config('a.b', '1', false); END $$",
            "DO $$ BEGIN SET search_path = x; END $$",
            "UPDATE t SET a = set_config('x.y', '1', false)",
            "LOAD 'auto_explain'",
            "/* comment */ SET x = 1",
            "CREATE TABLE pg_temp.x (a int)",
            "CREATE VIEW pg_temp.v AS SELECT 1",
            "SELECT 1; RESET ROLE",
            "UPDATE t SET a = 1; SET search_path = x",
            "DO $$BEGIN SET TIME ZONE 'Asia/Tokyo'; END$$",
            "DO $$BEGIN SET SESSION search_path TO x; END$$",
            "DO $$BEGIN SET search_path FROM CURRENT; END$$",
            "SELECT 1; SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            # (a prepare target restores plan_cache_mode after its EXECUTE: a clean lease
            # tells it that the holder chose none)
            "SET LOCAL plan_cache_mode = force_custom_plan",
            "SELECT set_config('plan_cache_mode', 'force_custom_plan', true)",
            "SELECT nextval('s')",
            "SELECT setval('s', 5)",
            "SELECT setseed(0.5)",
            # a SET followed by a quote or a comment, or after the word "update"
            "DO 'BEGIN SET\"work_mem\"=''1234kB''; END'",
            "DO $$BEGIN SET/**/work_mem = '1MB'; END$$",
            "DO $$BEGIN -- update\nSET work_mem = '1MB'; END$$",
            # a name spelled in Unicode escapes, or with letters re folds and lower() not
            "SELECT U&\"\\0073et_config\"('work_mem', '1MB', false)",
            "SELECT pg_advİsory_lock(1)",
            # block comments nest; "--" also ends at a carriage return; a quote inside a
            # comment opens no string
            "/* /* */ UPDATE */ SET search_path = pg_catalog",
            "-- x\rSET search_path = pg_catalog,\nupdate",
            "UPDATE t SET a = 1 /* ' */; SET search_path = x /* ' */",
            "/* unterminated SELECT 1",
            "UPDATE t SET a = E'\\''; SET search_path = x; --'",
            # DO bodies build statements at run time; "local." is a custom setting's class
            "DO 'BEGIN EXECUTE ''SE''||''T search_path = pg_catalog''; END'",
            "DO 'BEGIN NULL; END'",
            "SET local.tenant = 'x'",
            "UPDATE t SET a = 1 WHERE b = (SELECT 1 FROM (SELECT 1) s); SET local.x = 1",
            # built-ins that run a query string, or keep a connection in the session
            "SELECT query_to_xml('select s'||'et_config(''role'',''x'',false)', true, false, '')",
            "SELECT dblink_connect('c', 'dbname=x')",
        ]
        clean = [
            "SELECT 1",
            "  -- a comment\nSELECT * FROM t WHERE id IN (1, 2, 3)",
            "INSERT INTO t (a) VALUES (1) RETURNING id",
            'UPDATE "t" SET "a" = 1 WHERE "id" = 2',
            "DELETE FROM t WHERE id = 3",
            "SAVEPOINT s1",
            "RELEASE SAVEPOINT s1",
            "SELECT pg_advisory_xact_lock(1)",
            "CREATE TABLE t (a int)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            'SELECT "templates"."id" FROM "templates"',
            "INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = EXCLUDED.a",
            "SELECT 'a;b' FROM t",
            'SELECT "x;y" FROM t;',
            "SELECT pg_advisory_xact_lock(1)",
            "/* a comment */ SELECT 1",
            "SELECT 1 -- a comment\r",
            "SELECT 'a\\b' FROM t",
        ]
        for sql in session_changing:
            self.assertTrue(may_change_session(sql), sql)
        for sql in clean:
            self.assertFalse(may_change_session(sql), sql)
