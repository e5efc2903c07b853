"""Timing and counting statements: the C query timer and the Python one do the same."""

import gc
import platform
import sys
import time
import weakref

import psycopg2

from django_pooled_pg.pool import tracker as tracker_module
from django_pooled_pg.pool.querystats import QueryStats
from django_pooled_pg.pool.tracker import Tracker

from .helpers import PoolTestCase, run_engine_code, run_in_threads


def run_here(cursor, sql, params=None):
    cursor.execute(sql, params)  # the innermost frame of an execute stack


def use_timer(pool, timer):
    """Make ``pool``'s tracker time statements with the ``timer`` given ("C" or "Python")."""
    tracker = pool.tracker
    if timer == "Python" and "run" in vars(tracker):
        del tracker.run  # the class's Python methods again
        del tracker.queries.add
    return tracker


def _timers():
    return ["C", "Python"] if tracker_module.TIMER == "C" else ["Python"]


class QueryTimerTests(PoolTestCase):
    def test_the_c_timer_is_built_where_it_can_be(self):
        # What the benchmarks measure is what the tests test: CPython builds _querytimer.c.
        expected = "C" if platform.python_implementation() == "CPython" else "Python"
        self.assertEqual(tracker_module.TIMER, expected)
        tracker = Tracker("t", self.make_pool(tracking="counters").config)
        self.assertEqual("run" in vars(tracker), expected == "C")

    def test_both_timers_time_count_and_place_statements_alike(self):
        for timer in _timers():
            with self.subTest(timer):
                pool = self.make_pool(tracking="stacks")
                tracker = use_timer(pool, timer)
                handle = pool.checkout()
                record = handle.record
                cursor = handle.cursor()
                before = time.monotonic()
                for _ in range(3):
                    run_here(cursor, "SELECT generate_series(1, %s)", [3])
                self.assertEqual(record.last_query, "SELECT generate_series(1, %s)")
                self.assertEqual(record.query_started, 0.0)  # not running now
                self.assertTrue(before < record.query_ended <= time.monotonic())
                self.assertEqual(record.execute_stack, ())  # autocommit: no stack needed
                # Inside a transaction the execute stack starts at the cursor's caller.
                handle.autocommit = False
                cursor = handle.cursor()
                for _ in range(2):  # (a statement's first run takes a longer way)
                    run_here(cursor, "SELECT 1")
                self.assertIs(record.execute_stack[0], run_here.__code__)
                self.assertIs(
                    record.execute_stack[2],
                    QueryTimerTests.test_both_timers_time_count_and_place_statements_alike.__code__,
                )
                # A failing statement: its own error, counted, and no longer running.
                with self.assertRaises(psycopg2.errors.DivisionByZero):
                    run_here(cursor, "SELECT 1 / 0")
                self.assertEqual(record.query_started, 0.0)
                handle.rollback()
                handle.close()
                top = {row["sql"]: row for row in tracker.queries.top(10)}
                self.assertIn("SELECT generate_series(...)", top, top)
                series = top["SELECT generate_series(...)"]
                self.assertEqual((series["count"], series["rows"]), (3, 9))
                self.assertTrue(0 < series["max_ms"] <= series["total_ms"])
                self.assertAlmostEqual(series["avg_ms"], series["total_ms"] / 3)
                self.assertEqual(top["SELECT ? / ?"]["count"], 1)
                self.assertEqual(top["SELECT ? / ?"]["rows"], 0)  # (rowcount -1: none)

    def test_every_statement_of_many_threads_is_counted(self):
        # Known text is counted without the statistics' lock, new text through it; every
        # update must land either way, with threads switching as often as they can.
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        self.addCleanup(sys.setswitchinterval, old_interval)
        for timer in _timers():
            with self.subTest(timer):
                tracker = use_timer(self.make_pool(tracking="counters"), timer)
                add = tracker.queries.add
                per_thread = 4000

                def work(n, add=add, per_thread=per_thread):
                    for i in range(per_thread):
                        add("SELECT 1", 0.001, 1)  # known after the first
                        # Ever new text of the same shape (one entry for both): the
                        # by-text index fills and is cleared again and again.
                        add(f"SELECT {1_000_000 * (n + 1) + i}", 0.002, 2)

                run_in_threads(work, 8, timeout=120)
                [row] = tracker.queries.top(10)
                self.assertEqual(row["sql"], "SELECT ?")
                self.assertEqual(row["count"], 2 * 8 * per_thread)
                self.assertEqual(row["rows"], 3 * 8 * per_thread)
                self.assertAlmostEqual(row["total_ms"], 3 * 8 * per_thread)

    def test_a_closed_pool_s_statistics_are_freed(self):
        # The C timer and the statistics refer to each other (see _querytimer.c): the
        # garbage collector must still free them with their pool.
        pool = self.make_pool(tracking="counters")
        with pool.checkout() as handle:
            handle.cursor().execute("SELECT 1")
        stats_ref = weakref.ref(pool.tracker.queries)
        pool.close()
        del pool, handle
        self.doCleanups()
        gc.collect()
        self.assertIsNone(stats_ref(), "the pool's query statistics outlived it")

    def test_a_failing_bookkeeping_step_keeps_the_statement_s_error_as_its_context(self):
        if tracker_module.TIMER != "C":
            self.skipTest("the C timer is not built here")
        from django_pooled_pg.pool import _querytimer

        class RecordWithoutQueryEnded:
            __slots__ = ("last_query", "query_started")

        def failing(query, args):
            raise ValueError("the statement's own error")

        stats = QueryStats()
        timer = _querytimer.QueryTimer(
            stats.by_sql, stats.entry_for, tracker_module._ROWCOUNT, time.monotonic, None, 40, 0
        )
        with self.assertRaises(AttributeError) as raised:
            timer.run(RecordWithoutQueryEnded(), failing, "SELECT 1", None, None)
        self.assertIsInstance(raised.exception.__context__, ValueError)
        self.assertIn("own error", str(raised.exception.__context__))
        self.assertIsNotNone(raised.exception.__context__.__traceback__)
        with self.assertRaises(TypeError):
            _querytimer.QueryTimer({}, stats.entry_for, object(), time.monotonic, None, 40, 0)
        with self.assertRaises(TypeError):
            timer.run(1, 2, 3)

    def test_without_the_extension_the_python_timer_serves(self):
        # As on a machine where _querytimer.c did not build: the import fails, and the
        # tracker times and counts statements in Python.
        done = run_engine_code(
            """
import sys
sys.modules["django_pooled_pg.pool._querytimer"] = None  # the import now fails
from django_pooled_pg.pool import tracker
from django_pooled_pg.pool.config import PoolConfig
t = tracker.Tracker("t", PoolConfig(tracking="counters"))
class Record:
    last_query = query_started = query_ended = None
class Cursor: pass
tracker._rowcount = lambda cursor: 4
t.run(Record(), lambda q, a: None, "SELECT 1", None, Cursor())
print(tracker.TIMER, "run" in vars(t), t.queries.top(1)[0]["count"], t.queries.top(1)[0]["rows"])
"""
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split(), ["Python", "False", "1", "4"])
