"""Knowing what every connection does: states, idle-in-transaction stacks, leaks, statistics."""

import logging
import re
import threading
import time

import psycopg2.errors
import psycopg2.extras
from django.db import DatabaseError, connection, connections, transaction
from shop.models import Category

from django_pooled_pg.pool import stats as S
from django_pooled_pg.pool.querystats import QueryStats, normalize
from django_pooled_pg.pool.tracker import format_table

from .helpers import PoolTestCase, admin_connection, query, run_in_threads, wait_until
from .test_lease_safety import PooledAliasTestCase


def warnings_of_two_maintenance_runs(test, pool, containing):
    """The warnings containing ``containing`` that two maintenance runs in a row log (a
    warning that must come once shows here once, not twice)."""
    with test.assertLogs("django_pooled_pg", logging.WARNING) as logs:
        pool.run_maintenance()
        pool.run_maintenance()
        logging.getLogger("django_pooled_pg").warning("end")  # assertLogs needs one line
    return [line for line in logs.output if containing in line]


class IdleInTransactionTests(PooledAliasTestCase):
    databases = {"default"}
    pool_options = {"idle_in_transaction_threshold": 0.2, "tracking": "stacks"}

    def test_three_stacks_point_at_the_lines_that_lease_take_a_cursor_and_query(self):
        started, finish = threading.Event(), threading.Event()

        def view_that_forgets_to_commit():
            transaction.set_autocommit(False)  # lease: the first use connects
            cursor = connections["default"].cursor()  # cursor taken here
            cursor.execute("SELECT count(*) FROM shop_category")  # last query here
            started.set()
            finish.wait(20)
            transaction.rollback()
            connections["default"].close()

        thread = threading.Thread(target=view_that_forgets_to_commit, name="forgetful")
        thread.start()
        self.addCleanup(thread.join, 20)
        self.addCleanup(finish.set)
        started.wait(10)
        found = wait_until(connection.database.idle_in_tx_stacks, what="idle in transaction")
        self.assertEqual(len(found), 1)
        report = found[0]
        self.assertEqual(report["thread"], "forgetful")
        self.assertEqual(report["state"], "idle in transaction")
        self.assertIn("SELECT count(*) FROM shop_category", report["last_query"])
        for key, line in (
            ("lease_stack", "transaction.set_autocommit(False)  # lease"),
            ("cursor_stack", 'cursor = connections["default"].cursor()  # cursor taken here'),
            ("execute_stack", 'cursor.execute("SELECT count(*) FROM shop_category")'),
        ):
            stack = report[key]
            self.assertIn(__file__, stack, key)
            self.assertIn(line, stack, key)
            # User frames first: the first frame shown is this file's, library frames folded.
            first_frame = next(s for s in stack.splitlines() if s.strip().startswith("File"))
            self.assertTrue(
                "threading.py" not in first_frame and "django/" not in first_frame, first_frame
            )

    def test_a_transaction_begun_as_sql_shows_no_earlier_transactions_cursor(self):
        pool = connection.database.pool
        handle = pool.checkout()
        self.addCleanup(handle.close)
        handle.autocommit = False
        query(handle, "SELECT 1")  # an earlier transaction's cursor: taken in query()
        handle.commit()
        handle.autocommit = True
        cursor = handle.cursor()  # outside any transaction
        cursor.execute("BEGIN")
        cursor.execute("SELECT 2")
        found = wait_until(pool.idle_in_transaction, what="idle in transaction")
        self.assertIsNone(found[0]["cursor_stack"])  # not query()'s, from the commit before
        self.assertIn('cursor.execute("SELECT 2")', found[0]["execute_stack"])
        with self.assertLogs("django_pooled_pg", logging.WARNING) as logs:
            pool.run_maintenance()
        self.assertIn("taken before the transaction began", "\n".join(logs.output))
        cursor.execute("ROLLBACK")

    def test_idle_in_transaction_is_logged_once_by_the_cleaner(self):
        started, finish = threading.Event(), threading.Event()

        def hold():
            with transaction.atomic():
                list(Category.objects.all())  # the statement the warning names
                started.set()
                finish.wait(20)
            connections["default"].close()

        thread = threading.Thread(target=hold)
        thread.start()
        self.addCleanup(thread.join, 20)
        self.addCleanup(finish.set)
        started.wait(10)
        pool = connection.database.pool
        wait_until(lambda: pool.idle_in_transaction(), what="idle in transaction")
        warnings = warnings_of_two_maintenance_runs(self, pool, "idle in transaction")
        self.assertEqual(len(warnings), 1)
        self.assertIn("list(Category.objects.all())", warnings[0])
        self.assertIn('FROM "shop_category"', warnings[0])


class LeakWarningTests(PoolTestCase):
    def test_lease_held_past_leak_threshold_warns_once_with_its_stack(self):
        pool = self.make_pool(leak_threshold=0.1, cleaner="inline")
        held = pool.checkout()  # the leaking line
        wait_until(lambda: time.monotonic() - held.record.leased_at > 0.1, what="threshold")
        leaks = warnings_of_two_maintenance_runs(self, pool, "leak_threshold")
        self.assertEqual(len(leaks), 1)
        self.assertIn("held = pool.checkout()  # the leaking line", leaks[0])
        held.close()


class AsTableTests(PoolTestCase):
    def test_table_shows_each_state_while_threads_hold_wait_and_idle(self):
        pool = self.make_pool(max_size=4, idle_in_transaction_threshold=0.1, timeout=20)
        for handle in [pool.checkout() for _ in range(4)]:
            handle.close()  # four idle connections; three threads take three
        go, finish = threading.Barrier(4), threading.Event()
        self.addCleanup(finish.set)

        def idle_in_tx():
            handle = pool.checkout()
            handle.autocommit = False
            query(handle, "SELECT 1")
            go.wait()
            finish.wait(20)
            handle.rollback()
            handle.close()

        def in_error():
            handle = pool.checkout()
            handle.autocommit = False
            try:
                query(handle, "SELECT 1/0")
            except Exception:
                pass
            go.wait()
            finish.wait(20)
            handle.close()

        def active():
            handle = pool.checkout()
            go.wait()
            try:
                query(handle, "SELECT pg_sleep(30)")
            except Exception:
                pass  # cancelled below
            handle.close()

        threads = [threading.Thread(target=f) for f in (idle_in_tx, in_error, active)]
        for thread in threads:
            thread.start()
        go.wait()
        wait_until(lambda: any(r["state"] == "active" for r in pool.snapshot()), what="active")
        active_pid = next(r["backend_pid"] for r in pool.snapshot() if r["state"] == "active")
        self.addCleanup(query, admin_connection(), "SELECT pg_cancel_backend(%s)", [active_pid])
        wait_until(
            lambda: any(r["state"] == "idle in transaction" for r in pool.snapshot()),
            what="idle in transaction",
        )
        states = sorted(row["state"] for row in pool.snapshot())
        self.assertEqual(
            states, ["active", "idle in pool", "idle in transaction", "in error"], pool.as_table()
        )
        table = pool.as_table()
        for word in ("idle in pool", "active", "idle in transaction", "in error", "pg_sleep"):
            self.assertIn(word, table)
        self.assertIn("test_tracking.py", table)  # the "leased at" column

        # Take the last idle connection here; a fourth thread then has to wait.
        mine = pool.checkout()
        waiter = threading.Thread(target=lambda: pool.checkout().close())
        waiter.start()
        wait_until(lambda: pool.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
        rows = {row["backend_pid"]: row for row in pool.snapshot()}
        self.assertEqual(rows[mine.record.backend_pid]["state"], "leased")
        self.assertEqual(rows[mine.record.backend_pid]["thread"], "MainThread")
        self.assertNotIn("idle in pool", pool.as_table())
        mine.close()
        waiter.join(20)
        query(admin_connection(), "SELECT pg_cancel_backend(%s)", [active_pid])
        finish.set()
        for thread in threads:
            thread.join(20)

    def test_a_named_cursor_is_active_while_it_fetches_and_idle_only_after(self):
        # QuerySet.iterator() streams through a named cursor: its fetches are statements.
        pool = self.make_pool(idle_in_transaction_threshold=0.1, timeout=20)
        handle = pool.checkout()
        handle.autocommit = False
        cursor = handle.cursor(name="stream")
        cursor.itersize = 1
        cursor.execute("SELECT g, pg_sleep(CASE WHEN g = 3 THEN 30 ELSE 0 END) "
                       "FROM generate_series(1, 3) g")  # fmt: skip
        self.assertEqual(cursor.fetchone()[0], 1)
        wait_until(lambda: pool.snapshot()[0]["state"] == "idle in transaction", what="idle in tx")
        self.assertEqual(next(cursor)[0], 2)  # a FETCH: no longer idle
        self.assertEqual(pool.snapshot()[0]["state"], "in transaction")
        pid = handle.record.backend_pid
        cancelled = []

        def fetch_until_cancelled():
            try:
                cursor.fetchall()
            except psycopg2.errors.QueryCanceled:
                cancelled.append(True)

        fetching = threading.Thread(target=fetch_until_cancelled)
        fetching.start()
        self.addCleanup(fetching.join, 20)
        wait_until(
            lambda: query(admin_connection(), "SELECT state FROM pg_stat_activity WHERE pid = %s",
                          [pid]) == [("active",)], what="the FETCH running")  # fmt: skip
        self.assertEqual(pool.snapshot()[0]["state"], "active")
        query(admin_connection(), "SELECT pg_cancel_backend(%s)", [pid])
        fetching.join(20)
        self.assertEqual(cancelled, [True])
        handle.rollback()
        handle.close()

    def test_bad_arguments_to_the_views_are_named(self):
        pool = self.make_pool()
        for call, message in (
            (lambda: pool.top_queries("5"), "n must be an integer >= 0, not '5'"),
            (lambda: pool.top_queries(5, "slowest"), "order_by must be one of count, total_ms"),
            (lambda: pool.idle_in_transaction("x"),
             "threshold must be None or a number of seconds >= 0, not 'x'"),
        ):  # fmt: skip
            with self.subTest(message), self.assertRaisesRegex(ValueError, re.escape(message)):
                call()

    def test_format_table_aligns_columns(self):
        rows = [
            {"backend_pid": 1, "state": "leased", "state_s": 0.5, "thread": "t", "age_s": 10,
             "leases": 3, "last_query": "SELECT 1", "leased_at": "/a/b/c.py:3 in f"},
        ]  # fmt: skip
        table = format_table(rows).splitlines()
        self.assertEqual(len(table), 3)
        self.assertTrue(table[0].startswith("pid"))
        self.assertIn("b/c.py:3 in f", table[2])

    def test_a_pool_without_connections_shows_the_header(self):
        table = format_table([]).splitlines()
        self.assertEqual(len(table), 2)
        self.assertTrue(table[0].startswith("pid"))
        self.assertIn("pid", self.make_pool().as_table())


class TrackingLevelTests(PoolTestCase):
    def test_off_counts_nothing_per_query_and_refuses_snapshots(self):
        pool = self.make_pool(tracking="off")
        handle = pool.checkout()
        query(handle, "SELECT 1")
        self.assertIsNone(handle.record.last_query)
        handle.close()
        self.assertEqual(pool.top_queries(), [])
        with self.assertRaisesRegex(RuntimeError, "tracking='off'"):
            pool.snapshot()

    def test_counters_keep_states_and_statistics_but_no_stacks(self):
        pool = self.make_pool(tracking="counters")
        handle = pool.checkout()
        query(handle, "SELECT 1")
        row = pool.snapshot()[0]
        self.assertEqual(row["state"], "leased")
        self.assertIsNone(row["lease_stack"])
        self.assertIsNone(row["execute_stack"])
        handle.close()
        self.assertEqual(pool.top_queries()[0]["count"], 1)


class QueryStatisticsTests(PoolTestCase):
    def test_psycopg2_sql_objects_run_and_are_counted_by_their_text(self):
        from psycopg2 import sql

        for level in ("counters", "stacks"):
            with self.subTest(level):
                pool = self.make_pool(tracking=level)
                handle = pool.checkout()
                with handle.cursor() as cursor:
                    cursor.execute(sql.SQL("SELECT {}").format(sql.Literal(7)))
                    self.assertEqual(cursor.fetchall(), [(7,)])
                    with self.assertRaises(psycopg2.errors.DivisionByZero):  # its own error
                        cursor.execute(sql.SQL("SELECT 1 / 0"))
                handle.close()
                shapes = [row["sql"] for row in pool.top_queries()]
                self.assertIn("SELECT ?", shapes)
                self.assertIn("SELECT ? / ?", shapes)

    def test_copy_from_and_copy_to_are_counted_and_tracked(self):
        import io

        pool = self.make_pool(tracking="counters")
        handle = pool.checkout()
        with handle.cursor() as cursor:
            cursor.execute("CREATE TEMP TABLE copied (n int)")
            cursor.copy_from(io.StringIO("1\n2\n3\n"), "copied")
            out = io.StringIO()
            cursor.copy_to(out, "copied", columns=["n"])
        self.assertEqual(out.getvalue(), "1\n2\n3\n")
        self.assertEqual(pool.snapshot()[0]["last_query"], "COPY copied TO STDOUT")
        handle.close()
        counted = {row["sql"]: row for row in pool.top_queries()}
        self.assertEqual(counted["COPY copied FROM STDIN"]["rows"], 3)
        self.assertEqual(counted["COPY copied TO STDOUT"]["count"], 1)

    def test_a_named_cursors_fetches_count_for_its_statement(self):
        # QuerySet.iterator(): the DECLARE takes no time, the FETCHes run the query.
        for level in ("counters", "stacks"):
            with self.subTest(level):
                pool = self.make_pool(tracking=level)
                handle = pool.checkout()
                handle.autocommit = False
                for cursor_factory in (None, psycopg2.extras.DictCursor):
                    cursor = handle.cursor(name="stream", cursor_factory=cursor_factory)
                    cursor.itersize = 2
                    cursor.execute("SELECT g, pg_sleep(0.02) FROM generate_series(1, 5) g")
                    self.assertEqual([row[0] for row in cursor], [1, 2, 3, 4, 5])
                    cursor.close()
                handle.rollback()
                handle.close()
                row = pool.top_queries(1)[0]
                self.assertEqual(row["sql"], "SELECT g, pg_sleep(...) FROM generate_series(...) g")
                self.assertEqual(row["count"], 2)  # one per execute(), not per FETCH
                self.assertEqual(row["rows"], 10)
                self.assertGreaterEqual(row["total_ms"], 2 * 5 * 20)  # the server slept
                self.assertGreaterEqual(row["max_ms"], 5 * 20)

    def test_normalization_replaces_literals_and_folds_lists(self):
        self.assertEqual(
            normalize("SELECT * FROM t WHERE a = 'x''y' AND b IN (1, 2, 3) AND c = 4.5"),
            "SELECT * FROM t WHERE a = ? AND b IN (...) AND c = ?",
        )
        self.assertEqual(
            normalize('SELECT "t1"."id" FROM "t1" WHERE "t1"."id" IN (%s, %s)'),
            'SELECT "t1"."id" FROM "t1" WHERE "t1"."id" IN (...)',
        )
        self.assertEqual(
            normalize("INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s), (%s, %s)"),
            "INSERT INTO t (a, b) VALUES (...)",
        )
        # a column position is not a value
        self.assertEqual(
            normalize("SELECT a, b FROM t ORDER BY 2 LIMIT 5"),
            "SELECT a, b FROM t ORDER BY 2 LIMIT ?",
        )
        self.assertEqual(normalize("SELECT a FROM t group by 1"), "SELECT a FROM t group by 1")

    def test_normalization_sees_comments_escapes_dollar_quotes_and_quoted_names(self):
        cases = {
            # sqlcommenter's tags differ per request: one shape all the same
            "SELECT 1 /*traceparent='00-4bf9-01'*/": "SELECT ?",
            "SELECT a -- it's a comment\nFROM t": "SELECT a FROM t",
            # a backslash-escaped quote does not end an E'' string
            "SELECT E'it\\'s', 2": "SELECT ?, ?",
            "SELECT $$it's$$, $fn$ 'x' $$ $fn$, 3": "SELECT ?, ?, ?",
            # quoted identifiers keep their quotes and digits
            'SELECT "t1"."it\'s 2" FROM "t1"': 'SELECT "t1"."it\'s 2" FROM "t1"',
            # bulk_create() of a model with defaults: rows with DEFAULT and NULL fold too
            "INSERT INTO t VALUES (1, DEFAULT, NULL), (2, DEFAULT, 'x')":
                "INSERT INTO t VALUES (...)",
            "UPDATE t SET a = $1 WHERE b = ANY($2)": "UPDATE t SET a = $1 WHERE b = ANY(...)",
            # a prefix or a dollar quote only where no word goes on
            "SELECT CASE WHEN a THEN 'x' ELSE'\\' END FROM u WHERE b = 'q'":
                "SELECT CASE WHEN a THEN ? ELSE? END FROM u WHERE b = ?",
            "SELECT 1 AS c$t0$, 2 AS c$t1$": "SELECT ? AS c$t0$, ? AS c$t1$",
            "SELECT 1 /* never closed 'x' 2": "SELECT ?",
        }  # fmt: skip
        for sql, shape in cases.items():
            with self.subTest(sql):
                self.assertEqual(normalize(sql), shape)

    def test_shapes_and_cached_texts_stay_small_whatever_the_statements_length(self):
        from django_pooled_pg.pool import querystats, session

        # execute_values() sends each batch as new text: 100 of 200,000 characters here.
        stats = QueryStats(max_statements=1000)
        for batch in range(100):
            columns = ", ".join(f"c{batch}_{i}" for i in range(20_000))  # no two alike
            stats.add(f"SELECT {columns} FROM t", 0.001, 1)
            session.may_change_session(f"SELECT {columns} FROM t")
        self.assertLessEqual(max(len(row["sql"]) for row in stats.top(100)), querystats.SHAPE_CHARS)
        self.assertTrue(all(row["sql"].endswith("…") for row in stats.top(100)))
        for cache in (stats.by_sql, stats._shapes):
            self.assertLessEqual(sum(map(len, cache)), querystats._CACHED_CHARS)
        self.assertLessEqual(sum(map(len, session._verdicts)), session._VERDICT_CHARS)
        self.assertEqual(stats.top(1)[0]["count"], 1)

    def test_counts_are_exact_under_16_threads(self):
        pool = self.make_pool(max_size=16, tracking="counters")
        per_thread = 50

        def work(n):
            handle = pool.checkout()
            for i in range(per_thread):
                values = ", ".join(str(v) for v in range(i % 7 + 1))  # IN lists of 1..7
                query(
                    handle, f"SELECT count(*) FROM generate_series(1, 10) g WHERE g IN ({values})"
                )
                query(handle, "SELECT %s::int + 1", [n * i])
            handle.close()

        run_in_threads(work, 16, timeout=60)
        top = {row["sql"]: row for row in pool.top_queries(10)}
        # A list of literals is folded wherever it stands, function arguments included.
        in_list = "SELECT count(*) FROM generate_series(...) g WHERE g IN (...)"
        self.assertEqual(top[in_list]["count"], 16 * per_thread)
        self.assertEqual(top["SELECT %s::int + ?"]["count"], 16 * per_thread)
        self.assertEqual(len(top), 2)
        row = top[in_list]
        self.assertGreater(row["total_ms"], 0)
        self.assertAlmostEqual(row["avg_ms"], row["total_ms"] / row["count"])
        self.assertGreaterEqual(row["max_ms"], row["avg_ms"])
        self.assertEqual(row["rows"], 16 * per_thread)
        pool.reset_query_stats()
        self.assertEqual(pool.top_queries(), [])

    def test_memory_stays_bounded_with_100000_distinct_statements(self):
        stats = QueryStats(max_statements=1000)
        for i in range(100_000):
            stats.add(f"SELECT col_{i} FROM t", 0.001, 1)
        self.assertLessEqual(len(stats), 1000)
        self.assertGreaterEqual(stats.evictions, 99_000)
        self.assertLessEqual(len(stats._shapes), 4000)

    def test_frequent_statements_survive_eviction_through_a_real_pool(self):
        pool = self.make_pool(tracking="counters", max_statements=50)
        handle = pool.checkout()
        for i in range(300):
            query(handle, "SELECT 1 AS hot")
            query(handle, f"SELECT 1 AS rare_{i}")
        handle.close()
        stats = pool.get_stats()
        self.assertLessEqual(stats[S.QUERIES_SHAPES], 50)
        self.assertGreater(stats[S.QUERIES_EVICTED], 0)
        hot = pool.top_queries(1)[0]
        self.assertEqual(hot["sql"], "SELECT ? AS hot")
        self.assertEqual(hot["count"], 300)  # not one lost across the evictions

    def test_a_statement_evicted_then_seen_again_counts_afresh(self):
        stats = QueryStats(max_statements=10)
        stats.add("SELECT 'once'", 0.001, 1)
        for i in range(10):  # twice each: 'once' is the rarest when room runs out
            stats.add(f"SELECT {i} AS c{i}", 0.001, 1)
            stats.add(f"SELECT {i} AS c{i}", 0.001, 1)
        self.assertGreater(stats.evictions, 0)
        self.assertNotIn("SELECT ?", [row["sql"] for row in stats.top(20)])
        stats.add("SELECT 'once'", 0.001, 1)  # the same text as before its eviction
        counts = {row["sql"]: row["count"] for row in stats.top(20)}
        self.assertEqual(counts.get("SELECT ?"), 1)

    def test_django_queries_are_counted_per_shape(self):
        connection.close()
        database = connections["default"].database
        database.reset_query_stats()
        for pk in (1, 2, 3):
            list(Category.objects.filter(pk__in=list(range(pk))))
        connection.close()
        shapes = [row for row in database.top_queries(20) if "shop_category" in row["sql"]]
        self.assertEqual(len(shapes), 1, shapes)
        self.assertEqual(shapes[0]["count"], 3)  # IN lists of 1, 2 and 3 values: one shape

    databases = {"default"}


class NoDatabaseErrorTests(PooledAliasTestCase):
    def test_errors_are_still_counted_in_statistics(self):
        connection.close()
        connection.database.reset_query_stats()
        with self.assertRaises(DatabaseError):
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1/0")
        connection.close()
        self.assertEqual(connection.database.top_queries()[0]["sql"], "SELECT ?/?")
