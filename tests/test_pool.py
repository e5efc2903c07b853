"""The pool engine on its own: sizing, waiting, timeouts, lifetime, idle, uses, cleaner, stats."""

import ctypes
import json
import logging
import os
import sys
import threading
import time

from django_pooled_pg.pool import (
    ConnectionPool,
    ConnectionReturned,
    PoolClosed,
    PoolConfig,
    PoolTimeout,
    TooManyRequests,
    cleaner,
    forks,
)
from django_pooled_pg.pool import pool as pool_module
from django_pooled_pg.pool import stats as S

from .helpers import (
    PoolTestCase,
    admin_connection,
    query,
    run_engine_code,
    server_params,
    wait_until,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backend_pid(handle):
    return query(handle, "SELECT pg_backend_pid()")[0][0]


class SizingTests(PoolTestCase):
    def test_connections_open_on_demand_and_idle_ones_are_reused_newest_first(self):
        pool = self.make_pool(max_size=3)
        self.assertEqual(pool.get_stats()[S.POOL_SIZE], 0)
        first, second = pool.checkout(), pool.checkout()
        first_pid, second_pid = backend_pid(first), backend_pid(second)
        first.close()
        second.close()
        again = pool.checkout()
        self.assertEqual(backend_pid(again), second_pid, "LIFO: the last returned comes first")
        again.close()
        self.assertEqual(pool.get_stats()[S.CONNECTIONS_NUM], 2)
        self.assertNotEqual(first_pid, second_pid)

    def test_checkout_waits_for_a_return_then_gets_that_connection(self):
        pool = self.make_pool(max_size=1, timeout=10)
        holder = pool.checkout()
        pid = backend_pid(holder)
        got = []

        def wait_for_it():
            handle = pool.checkout()
            got.append(backend_pid(handle))
            handle.close()

        thread = threading.Thread(target=wait_for_it)
        thread.start()
        wait_until(lambda: pool.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
        holder.close()
        thread.join(10)
        self.assertEqual(got, [pid])
        self.assertEqual(pool.get_stats()[S.REQUESTS_QUEUED], 1)

    def test_timeout_error_names_pool_sizes_wait_and_holder_stack(self):
        pool = self.make_pool(max_size=2, timeout=0.3)
        held = [pool.checkout(), pool.checkout()]  # the line the error must point at
        with self.assertRaises(PoolTimeout) as caught:
            pool.checkout()
        message = str(caught.exception)
        self.assertIn("test:test_timeout_error_names_pool_sizes_wait_and_holder_stack", message)
        self.assertIn("after 0.3", message)
        self.assertIn("max_size=2, 2 leased", message)
        self.assertIn(__file__, message)
        self.assertIn("held = [pool.checkout(), pool.checkout()]", message)
        self.assertEqual(pool.get_stats()[S.REQUESTS_TIMEOUTS], 1)
        for handle in held:
            handle.close()

    def test_pool_timeout_is_a_psycopg2_operational_error(self):
        import psycopg2

        self.assertTrue(issubclass(PoolTimeout, psycopg2.OperationalError))
        self.assertTrue(issubclass(TooManyRequests, psycopg2.OperationalError))

    def test_max_waiting_refuses_extra_waiters_at_once(self):
        pool = self.make_pool(max_size=1, max_waiting=1, timeout=10)
        holder = pool.checkout()
        thread = threading.Thread(target=lambda: pool.checkout().close())
        thread.start()
        wait_until(lambda: pool.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
        started = time.monotonic()
        with self.assertRaisesRegex(TooManyRequests, r"max_waiting=1"):
            pool.checkout()
        self.assertLess(time.monotonic() - started, 5, "refused without waiting for timeout")
        holder.close()
        thread.join(10)

    def test_discarded_connection_frees_its_slot_for_a_waiter(self):
        pool = self.make_pool(max_size=1, max_uses=1, timeout=10)
        holder = pool.checkout()
        result = []
        thread = threading.Thread(target=lambda: result.append(backend_pid(pool.checkout())))
        thread.start()
        wait_until(lambda: pool.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
        old_pid = backend_pid(holder)
        holder.close()  # max_uses=1: closed, the waiter opens a new one in the freed slot
        thread.join(10)
        self.assertEqual(len(result), 1)
        self.assertNotEqual(result[0], old_pid)

    def test_closed_pool_refuses_checkout_and_wakes_waiters(self):
        pool = self.make_pool(max_size=1, timeout=10)
        holder = pool.checkout()
        errors = []

        def wait():
            try:
                pool.checkout()
            except PoolClosed as error:
                errors.append(error)

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until(lambda: pool.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
        pool.close()
        thread.join(10)
        self.assertEqual(len(errors), 1)
        with self.assertRaises(PoolClosed):
            pool.checkout()
        holder.close()  # returned to a closed pool: closed, not kept
        self.assertEqual(pool.get_stats()[S.POOL_SIZE], 0)


class ParkedHandoverTests(PoolTestCase):
    """While others wait, a parked connection stays with its holder for a grace period
    (its next request takes it back without a handoff), then goes to the oldest waiter;
    and at once when that waiter has waited too long (pool.PARK_GRACE, handoff_after)."""

    def waiting_checkout(self, pool, timeout, hold=None):
        """A thread that checks out (with ``timeout``) and returns at once, or when
        ``hold`` (an Event) is set; returns (thread, result list: the handle's backend
        pid, or the exception), once the thread waits."""
        result = []

        def run():
            try:
                handle = pool.checkout(timeout=timeout)
            except Exception as error:  # reported to the test
                result.append(error)
                return
            result.append(backend_pid(handle))
            if hold is not None:
                hold.wait(10)
            handle.close()

        thread = threading.Thread(target=run)
        waiting = pool.get_stats()[S.REQUESTS_WAITING]
        thread.start()
        wait_until(lambda: pool.get_stats()[S.REQUESTS_WAITING] == waiting + 1, what="a waiter")
        return thread, result

    def holder_and_waiter(
        self, waiter_timeout, grace=60.0, handoff_after=60.0, reclaim_interval=0.5, **options
    ):
        """A pool of one connection, leased, and a thread waiting for it:
        (pool, the holder's handle, its backend pid, the waiter thread, its result)."""
        pool = self.make_pool(max_size=1, handoff_after=handoff_after, **options)
        pool._park_grace = grace
        pool._reclaim_interval = reclaim_interval  # the waiter's other reason to wake
        handle = pool.checkout()
        pid = backend_pid(handle)
        thread, result = self.waiting_checkout(pool, timeout=waiter_timeout)
        return pool, handle, pid, thread, result

    def test_a_holder_back_within_the_grace_keeps_its_connection_while_others_wait(self):
        _, handle, pid, thread, result = self.holder_and_waiter(waiter_timeout=10)
        for _ in range(20):  # requests of one Django thread: park at the end, resume
            handle.park()
            self.assertEqual(backend_pid(handle), pid, "the same session, taken back")
            self.assertTrue(handle.lease_active)
        self.assertEqual(result, [], "the waiter got nothing while the holder kept it")
        handle.close()  # a real return goes to the waiter at once
        thread.join(10)
        self.assertEqual(result, [pid])

    def test_a_parked_connection_goes_to_the_waiter_when_its_grace_ends(self):
        _, handle, pid, thread, result = self.holder_and_waiter(
            10, grace=0.05, reclaim_interval=60.0, cleaner="inline"
        )
        handle.park()  # ... and the holder does not come back
        # Nothing else happens in the pool: only the waiter's own wake at the grace's
        # end hands it over (else it would wait for its 10 s timeout).
        wait_until(lambda: result, timeout=2, what="the parked connection, handed over")
        thread.join(10)
        self.assertEqual(result, [pid])
        # Its next use leases anew, as a new connection to the holder: the waiter had it.
        renewed = []
        handle.on_new_connection = lambda: renewed.append(True)
        self.assertEqual(backend_pid(handle), pid)  # (the only one: max_size=1)
        self.assertEqual(renewed, [True])
        handle.close()

    def test_a_waiter_at_its_deadline_takes_a_connection_in_its_grace(self):
        pool, handle, pid, thread, result = self.holder_and_waiter(waiter_timeout=0.3)
        handle.park()  # idle, reserved for 60 s: better than a PoolTimeout
        thread.join(10)
        self.assertEqual(result, [pid])
        self.assertEqual(pool.get_stats()[S.REQUESTS_TIMEOUTS], 0)
        handle.close()

    def test_a_full_queue_takes_a_connection_in_its_grace_rather_than_refuse(self):
        pool, handle, _, thread, result = self.holder_and_waiter(10, max_waiting=1)
        handle.park()
        other = pool.checkout()  # the queue is full, but a connection is idle
        self.assertEqual(pool.get_stats()[S.REQUESTS_REFUSED], 0)
        other.close()  # to the waiter
        thread.join(10)
        self.assertEqual(len(result), 1)
        self.assertIsInstance(result[0], int)
        handle.close()

    def test_giving_up_the_right_to_resume_ends_the_grace(self):
        _, handle, pid, thread, result = self.holder_and_waiter(waiter_timeout=10)
        handle.park()
        handle.close()  # Django's close() of a parked wrapper: no comeback
        wait_until(lambda: result, timeout=2, what="the connection, handed over at once")
        thread.join(10)
        self.assertEqual(result, [pid])

    def test_an_interrupted_waiter_leaves_the_queue_and_passes_on_its_grant(self):
        pool = self.make_pool(max_size=1, cleaner="inline")
        holder = pool.checkout()
        pid = backend_pid(holder)
        original_wait = pool._wait

        def interrupted(waiter, deadline):
            holder.close()  # granted to this waiter while it "waits"...
            self.assertIsNotNone(waiter.grant)
            raise KeyboardInterrupt  # ...then interrupted before it takes it

        pool._wait = interrupted
        with self.assertRaises(KeyboardInterrupt):
            pool.checkout()
        pool._wait = original_wait
        stats = pool.get_stats()
        self.assertEqual((stats[S.REQUESTS_WAITING], stats[S.POOL_LEASED]), (0, 0))
        again = pool.checkout(timeout=1)  # the connection was not lost with the waiter
        self.assertEqual(backend_pid(again), pid)
        again.close()

    def test_the_next_oldest_waiter_is_woken_to_watch_parked_connections(self):
        pool = self.make_pool(max_size=2, cleaner="inline", handoff_after=60.0)
        pool._park_grace = 0.05
        pool._reclaim_interval = 60.0
        first, second = pool.checkout(), pool.checkout()
        second_pid = backend_pid(second)
        release = threading.Event()
        self.addCleanup(release.set)
        thread1, result1 = self.waiting_checkout(pool, timeout=10, hold=release)
        # This waiter slept as "not the oldest": it must be woken when its turn comes.
        thread2, result2 = self.waiting_checkout(pool, timeout=10)
        first.close()  # to the oldest waiter at once, which keeps it
        wait_until(lambda: result1, what="the first waiter's connection")
        second.park()  # and never comes back
        wait_until(lambda: result2, timeout=2, what="the parked connection, handed over")
        thread2.join(10)
        self.assertEqual(result2, [second_pid])
        release.set()
        thread1.join(10)
        second.close()

    def test_a_waiter_past_the_starvation_bound_gets_the_next_park_at_once(self):
        _, handle, pid, thread, result = self.holder_and_waiter(5, handoff_after=0.05)
        time.sleep(0.06)  # the waiter is past the bound (the sleep only makes time pass)
        handle.park()
        thread.join(10)
        self.assertEqual(result, [pid], "handed over at the park, without the 60 s grace")
        handle.close()

    def test_handoff_after_0_hands_every_park_to_the_waiter_at_once(self):
        _, handle, pid, thread, result = self.holder_and_waiter(5, handoff_after=0)
        handle.park()  # first come, first served: the 60 s grace does not apply
        thread.join(10)
        self.assertEqual(result, [pid])
        handle.close()

    def test_no_connection_has_two_holders_with_handovers_under_load(self):
        pool = self.make_pool(max_size=3, timeout=30, handoff_after=0.01)
        pool._park_grace = 0.001  # many handovers of each kind
        holders = {}
        errors = []
        guard = threading.Lock()

        def worker():
            handle = pool.checkout()
            try:
                for _ in range(150):
                    conn_pid = backend_pid(handle)
                    with guard:
                        other = holders.get(conn_pid)
                        holders[conn_pid] = threading.get_ident()
                    if other is not None:
                        errors.append(f"backend {conn_pid} held by two threads")
                    query(handle, "SELECT 1")
                    with guard:
                        holders.pop(conn_pid, None)
                    handle.park()
            except Exception as error:
                errors.append(repr(error))
            finally:
                handle.close()

        threads = [threading.Thread(target=worker) for _ in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertFalse(any(thread.is_alive() for thread in threads), "a thread hangs")
        self.assertEqual(errors, [])
        stats = pool.get_stats()
        self.assertGreater(stats[S.REQUESTS_QUEUED], 0, "the threads did wait")
        self.assertEqual(stats[S.POOL_SIZE], 3)


class AtRestTests(PoolTestCase):
    """park()'s fast path: a clean lease rests in a dict by handle, outside the lock; its
    holder takes it back with one atomic pop, and everyone else (checkouts, waiters, the
    cleaner, close()) moves it to the idle deque first (_wake_resting())."""

    def parked(self, **options):
        pool = self.make_pool(**options)
        handle = pool.checkout()
        pid = backend_pid(handle)
        pool.run_maintenance()  # (else an inline cleaner's park runs it, the general way)
        handle.park()
        self.assertIs(pool._resting.get(handle), handle.record, "at rest")
        return pool, handle, pid

    def test_the_holder_takes_it_back_without_the_pool_lock_and_it_is_counted(self):
        pool, handle, pid = self.parked()
        self.assertEqual(pool.get_stats()[S.POOL_AVAILABLE], 1)
        self.assertEqual(pool.get_stats()[S.POOL_LEASED], 0)
        resumed = []
        with pool._lock:  # resume() from rest must not need it
            thread = threading.Thread(target=lambda: resumed.append(backend_pid(handle)))
            thread.start()
            thread.join(5)
            self.assertFalse(thread.is_alive(), "resume() from rest waited for the lock")
        self.assertEqual(resumed, [pid])
        stats = pool.pop_stats()
        self.assertEqual((stats[S.REQUESTS_NUM], stats[S.POOL_LEASED]), (2, 1))
        self.assertEqual(pool.get_stats()[S.REQUESTS_NUM], 0, "pop_stats() reset the count")
        handle.park()
        backend_pid(handle)
        self.assertEqual(pool.get_stats()[S.REQUESTS_NUM], 1)

    def test_a_checkout_takes_a_connection_at_rest_when_nothing_else_is_idle(self):
        pool, handle, pid = self.parked(max_size=1)
        other = pool.checkout(timeout=1)
        self.assertEqual(backend_pid(other), pid)
        self.assertEqual(pool.get_stats()[S.REQUESTS_QUEUED], 0, "taken from rest, not waited for")
        self.assertEqual(pool._resting, {})
        renewed = []
        handle.on_new_connection = lambda: renewed.append(True)
        other.close()
        self.assertEqual(backend_pid(handle), pid)  # (the only one: max_size=1) ...
        self.assertEqual(renewed, [True], "... but announced: another lease had it")

    def test_the_cleaner_closes_connections_at_rest_past_max_idle_or_lifetime(self):
        for change, counter in (
            (lambda record: setattr(record, "idle_since", record.idle_since - 120),
             S.CONNECTIONS_IDLE_CLOSED),
            (lambda record: setattr(record, "expires_at", 0), S.CONNECTIONS_EXPIRED),
        ):  # fmt: skip
            with self.subTest(counter):
                pool, handle, pid = self.parked(max_idle=60, cleaner="inline")
                pool.run_maintenance()
                self.assertIn(handle, pool._resting, "not due: it stays at rest")
                change(handle.record)
                pool.run_maintenance()
                self.assertEqual(pool.get_stats()[counter], 1)
                self.assertEqual((pool._resting, len(pool._idle)), ({}, 0))
                self.assertNotEqual(backend_pid(handle), pid, "a new connection")
                handle.close()

    def test_close_hangs_up_connections_at_rest(self):
        pool, handle, pid = self.parked()
        admin = admin_connection()
        self.addCleanup(admin.close)
        pool.close()
        self.assertEqual(pool._resting, {})
        wait_until(
            lambda: not query(admin, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]),
            what="the session at rest to end",
        )

    def test_giving_up_the_right_to_resume_makes_it_idle_for_anyone(self):
        pool, handle, pid = self.parked()
        handle.close()
        self.assertEqual(pool._resting, {})
        self.assertEqual([r.parked_for for r in pool._idle], [None])
        with self.assertRaises(ConnectionReturned):
            handle.cursor()
        other = pool.checkout()
        self.assertEqual(backend_pid(other), pid)
        other.close()

    def test_a_killed_backend_at_rest_is_replaced_on_resume(self):
        pool, handle, pid = self.parked()
        admin = admin_connection()
        self.addCleanup(admin.close)
        query(admin, "SELECT pg_terminate_backend(%s)", [pid])
        wait_until(lambda: handle.record.poller.poll(0), what="the FATAL on the socket")
        self.assertNotEqual(backend_pid(handle), pid)
        self.assertEqual(pool.get_stats()[S.CONNECTIONS_LOST], 1)
        handle.close()

    def test_as_table_lists_a_connection_at_rest_as_idle(self):
        pool, handle, pid = self.parked(tracking="stacks")
        (row,) = pool.snapshot()
        self.assertEqual(
            (row["backend_pid"], row["state"], row["thread"]), (pid, "idle in pool", None)
        )


class LifetimeTests(PoolTestCase):
    def test_max_uses_closes_after_n_leases(self):
        pool = self.make_pool(max_uses=2)
        pids = []
        for _ in range(4):
            handle = pool.checkout()
            pids.append(backend_pid(handle))
            handle.close()
        self.assertEqual(pids[0], pids[1])
        self.assertEqual(pids[2], pids[3])
        self.assertNotEqual(pids[1], pids[2])

    def test_max_idle_zero_and_max_lifetime_zero_close_on_return(self):
        for option in ("max_idle", "max_lifetime"):
            with self.subTest(option=option):
                pool = self.make_pool(**{option: 0})
                handle = pool.checkout()
                handle.close()
                self.assertEqual(pool.get_stats()[S.POOL_SIZE], 0)

    def test_max_lifetime_expires_with_jitter(self):
        pool = self.make_pool(max_lifetime=100.0, max_size=20)
        handles = [pool.checkout() for _ in range(20)]
        expiries = {
            round(handle.record.expires_at - handle.record.opened_at, 3) for handle in handles
        }
        self.assertTrue(all(90.0 <= expiry <= 100.0 for expiry in expiries))
        self.assertGreater(len(expiries), 1, "connections must not all expire together")
        for handle in handles:
            handle.close()

    def test_expired_idle_connection_is_replaced_at_checkout(self):
        pool = self.make_pool(max_lifetime=3600, cleaner="inline")
        handle = pool.checkout()
        first = backend_pid(handle)
        handle.record.expires_at = time.monotonic() - 1  # as if an hour had passed
        handle.close()
        self.assertEqual(pool.get_stats()[S.CONNECTIONS_EXPIRED], 1)
        handle = pool.checkout()
        self.assertNotEqual(backend_pid(handle), first)
        handle.close()

    def test_maintenance_closes_idle_above_min_size_and_refills_to_min_size(self):
        pool = self.make_pool(min_size=2, max_size=5, max_idle=60, cleaner="inline")
        handles = [pool.checkout() for _ in range(4)]
        for handle in handles:
            handle.close()
        self.assertEqual(pool.get_stats()[S.POOL_AVAILABLE], 4)
        for record in pool._idle:
            record.idle_since -= 120  # idle for two minutes
        pool.run_maintenance()
        stats = pool.get_stats()
        self.assertEqual(stats[S.POOL_AVAILABLE], 2, "min_size connections stay")
        self.assertEqual(stats[S.CONNECTIONS_IDLE_CLOSED], 2)
        for record in list(pool._idle):
            record.expires_at = 0
        pool.run_maintenance()
        stats = pool.get_stats()
        self.assertEqual(stats[S.CONNECTIONS_EXPIRED], 2)
        self.assertEqual(stats[S.POOL_AVAILABLE], 2, "refilled to min_size")

    def test_cleaner_thread_runs_maintenance(self):
        pool = self.make_pool(min_size=1, cleaner="thread")
        self.assertTrue(cleaner.is_running())
        wait_until(lambda: pool.get_stats()[S.POOL_AVAILABLE] == 1, what="refill to min_size")

    def test_inline_cleaner_starts_no_thread_and_maintains_on_checkin(self):
        code = (
            "import threading, time\n"
            "from django_pooled_pg.pool import ConnectionPool\n"
            f"pool = ConnectionPool({server_params()!r}, min_size=2, cleaner='inline')\n"
            "pool.checkout().close()\n"
            "assert threading.active_count() == 1, threading.enumerate()\n"
            "assert pool.get_stats()['pool_available'] == 2, pool.get_stats()\n"
        )
        result = run_engine_code(code)
        self.assertEqual(result.returncode, 0, result.stderr)


class ExitAndImportTests(PoolTestCase):
    def test_interpreter_exits_cleanly_with_cleaner_thread_and_leased_connections(self):
        code = (
            "from django_pooled_pg.pool import ConnectionPool\n"
            f"pool = ConnectionPool({server_params()!r}, min_size=2, max_size=4)\n"
            "held = pool.checkout()\n"
            "cur = held.cursor(); cur.execute('BEGIN; SELECT 1')\n"
            "pool.checkout().close()\n"
        )
        for _ in range(3):
            result = run_engine_code(code, timeout=30)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(result.stderr, "")

    def test_engine_imports_no_django(self):
        code = (
            "import sys, django_pooled_pg.pool, django_pooled_pg.testing\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'django'], \\\n"
            "    'django imported'\n"
        )
        result = run_engine_code(code, timeout=30)
        self.assertEqual(result.returncode, 0, result.stderr)


class ConfigTests(PoolTestCase):
    def test_infinite_times_mean_never_where_they_can(self):
        pool = self.make_pool(
            max_size=1, timeout=float("inf"), max_lifetime=float("inf"), max_idle=float("inf"),
            ping_after=float("inf"), leak_threshold=float("inf"), cleaner="inline",
        )  # fmt: skip
        handle = pool.checkout()
        pid = handle.record.backend_pid
        handle.close()
        pool.run_maintenance()
        handle = pool.checkout()
        self.assertEqual(handle.record.backend_pid, pid)  # neither expired nor closed idle
        handle.close()

    def test_bad_options_name_the_option_and_what_is_allowed(self):
        cases = [
            ({"max_size": 0}, "max_size must be at least 1, not 0"),
            ({"min_size": 5, "max_size": 2}, "min_size (5) must not be greater than max_size (2)"),
            ({"timeout": -1}, "timeout must be a number of seconds > 0"),
            ({"max_idle": -5}, "max_idle must be a number of seconds >= 0, not -5"),
            ({"handoff_after": -1}, "handoff_after must be a number of seconds >= 0, not -1"),
            ({"timeout": float("nan")}, "timeout must be a number of seconds > 0, not nan"),
            ({"max_lifetime": float("nan")}, "max_lifetime must be a number of seconds >= 0"),
            ({"handoff_after": None}, "handoff_after must be a number of seconds, not None"),
            ({"max_size": "10"}, "max_size must be an integer, not '10'"),
            ({"max_size": True}, "max_size must be an integer, not True"),
            ({"cleaner": "cron"}, "cleaner must be one of 'thread', 'inline', not 'cron'"),
            ({"reset": "never"}, "reset must be one of 'auto', 'always', 'rollback'"),
            ({"tracking": None}, "tracking must be one of 'off', 'counters', 'stacks', not None"),
            (
                {"connect_timeout": float("inf")},
                "connect_timeout must be a number of seconds from 0 to 2147483647, not inf",
            ),
            ({"connect_timeout": 1e20}, "connect_timeout must be a number of seconds from 0"),
            ({"max_sise": 3}, "unknown option 'max_sise' (did you mean 'max_size'?); allowed"),
            ({"zzz": 3}, "unknown option 'zzz'; allowed options are: "),
            ({"num_workers": 3}, "unknown option 'num_workers' (num_workers is psycopg_pool's:"),
        ]
        for options, message in cases:
            with self.subTest(options=options):
                with self.assertRaises(ValueError) as caught:
                    PoolConfig.from_options(options)
                self.assertIn(message, str(caught.exception))

    def test_true_means_defaults(self):
        self.assertEqual(PoolConfig.from_options(True), PoolConfig())
        self.assertEqual(PoolConfig.from_options({}), PoolConfig())


class StatsTests(PoolTestCase):
    def test_pop_stats_resets_counters_but_not_gauges(self):
        pool = self.make_pool()
        pool.checkout().close()
        first = pool.pop_stats()
        self.assertEqual(first[S.REQUESTS_NUM], 1)
        second = pool.pop_stats()
        self.assertEqual(second[S.REQUESTS_NUM], 0)
        self.assertEqual(second[S.POOL_SIZE], 1)

    def test_total_stats_count_since_the_pool_opened_whatever_pop_stats_zeroed(self):
        pool = self.make_pool(max_size=1)
        pool.checkout().close()
        self.assertEqual(pool.pop_stats()[S.REQUESTS_NUM], 1)
        handle = pool.checkout()
        handle.park()
        handle.cursor().close()  # resumed from rest: counted without the lock
        handle.close()
        totals = pool.total_stats()
        self.assertEqual(totals[S.REQUESTS_NUM], 3)
        self.assertEqual(totals[S.CONNECTIONS_NUM], 1)
        self.assertEqual(totals[S.POOL_SIZE], 1)
        self.assertEqual(pool.get_stats()[S.REQUESTS_NUM], 2)
        pool.pop_stats()
        self.assertEqual(pool.total_stats()[S.REQUESTS_NUM], 3)

    def test_failed_connect_is_counted_and_frees_the_slot(self):
        params = {**server_params(), "dbname": "no_such_database"}
        pool = ConnectionPool(params, name="broken", max_size=1)
        self.addCleanup(pool.close)
        import psycopg2

        for _ in range(2):  # the second would time out if the first leaked its slot
            with self.assertRaises(psycopg2.OperationalError):
                pool.checkout()
        self.assertEqual(pool.get_stats()[S.CONNECTIONS_ERRORS], 2)
        self.assertEqual(pool.get_stats()[S.POOL_SIZE], 0)


class LoggingTests(PoolTestCase):
    def test_rollback_on_return_is_logged_with_the_lease_stack(self):
        pool = self.make_pool()
        handle = pool.checkout()
        handle.autocommit = False
        query(handle, "SELECT 1")
        with self.assertLogs("django_pooled_pg.pool.pool", logging.WARNING) as logs:
            handle.close()
        self.assertIn("rolled back", logs.output[0])
        self.assertIn("handle = pool.checkout()", logs.output[0])
        self.assertEqual(pool.get_stats()[S.RETURNS_ROLLED_BACK], 1)


class RaceTests(PoolTestCase):
    def test_connection_opened_while_the_pool_closes_is_not_kept(self):
        holder = {}

        def close_pool_during_connect(conn):
            if holder.get("pool") is not None and not holder.get("done"):
                holder["done"] = True
                holder["pool"].close()

        pool = ConnectionPool(
            server_params(), name="race", min_size=1, cleaner="inline",
            configure=close_pool_during_connect,
        )  # fmt: skip
        holder["pool"] = pool
        pool.run_maintenance()  # refill: opens one, the pool closes meanwhile
        stats = pool.get_stats()
        self.assertEqual(stats[S.POOL_AVAILABLE], 0)
        self.assertEqual(stats[S.POOL_SIZE], 0)
        self.assertEqual(stats[S.CONNECTIONS_CLOSED], 1)

    def test_a_checkout_that_opens_a_connection_while_the_pool_closes_gets_none(self):
        # The slot was reserved before close(); the connection is opened after it: handing
        # it out would keep a session open past close() (the test runner drops databases
        # right after closing their pools).
        holder = {}

        def close_pool_during_connect(conn):
            holder["pool"].close()

        pool = ConnectionPool(
            server_params(), name="race", max_size=1, configure=close_pool_during_connect
        )
        holder["pool"] = pool
        with self.assertRaisesRegex(PoolClosed, "closed during this checkout"):
            pool.checkout()
        stats = pool.get_stats()
        self.assertEqual((stats[S.POOL_SIZE], stats[S.POOL_LEASED]), (0, 0))
        self.assertEqual(stats[S.CONNECTIONS_CLOSED], 1)

    def test_a_waiter_handed_a_connection_just_before_close_gets_none(self):
        pool = self.make_pool(max_size=1, timeout=10)
        holder = pool.checkout()
        granted, closed, outcome = threading.Event(), threading.Event(), []
        usable = pool._usable

        def usable_once_closed(record):  # (the waiter's check of its grant: after close)
            granted.set()
            closed.wait(10)
            return usable(record)

        def wait():
            try:
                outcome.append(pool.checkout())
            except PoolClosed as error:
                outcome.append(error)

        thread = threading.Thread(target=wait)
        thread.start()
        wait_until(lambda: pool.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
        pool._usable = usable_once_closed
        holder.close()  # handed to the waiter: it is no longer in the queue close() empties
        granted.wait(10)
        pool.close()
        closed.set()
        thread.join(10)
        self.assertEqual(len(outcome), 1)
        self.assertIsInstance(outcome[0], PoolClosed)
        self.assertEqual(pool.get_stats()[S.POOL_SIZE], 0)

    def test_a_handle_collected_while_another_thread_leases_its_old_connection(self):
        # The handle that parked a connection last is collected (its thread's wrapper
        # dropped it) while another thread is inside _lease() of that connection: its
        # leak callback must not take the new, live lease for a lost one.
        pool = self.make_pool(max_size=1, timeout=1, tracking="stacks")
        first = pool.checkout()
        first.cursor().close()
        first.park()  # at rest: "second" takes it, as from a thread that died since
        leasing, dropped, got = threading.Event(), threading.Event(), []
        capture = pool_module.capture

        def capture_after_the_drop(limit):  # (in _lease(), after the holder is set)
            if threading.current_thread().name == "second":
                leasing.set()
                dropped.wait(10)
            return capture(limit)

        pool_module.capture = capture_after_the_drop
        self.addCleanup(setattr, pool_module, "capture", capture)
        thread = threading.Thread(target=lambda: got.append(pool.checkout()), name="second")
        thread.start()
        leasing.wait(10)
        del first  # the last reference: the callback runs now
        dropped.set()
        thread.join(10)
        (second,) = got
        self.assertEqual(list(pool._leaked), [])
        with self.assertRaises(PoolTimeout):  # max_size=1, and "second" holds it
            pool.checkout()
        self.assertEqual(query(second, "SELECT 1"), [(1,)])
        second.close()

    def test_fork_while_another_thread_holds_the_statistics_lock(self):
        pool = self.make_pool(tracking="counters")
        pool.checkout().close()
        lock = pool.tracker.queries._lock
        lock.acquire()  # as if another thread were recording a query at the fork
        try:
            child = os.fork()
            if child == 0:  # pragma: no cover - the child
                import signal

                signal.alarm(10)  # a deadlock would end here with a non-zero status
                try:
                    handle = pool.checkout()
                    handle.cursor().execute("SELECT 1")
                    handle.close()
                finally:
                    os._exit(0)
            _, status = os.waitpid(child, 0)
        finally:
            lock.release()
        self.assertEqual(status, 0)


class ForkDetectionTests(PoolTestCase):
    """A child forked by fork(2) from C (uWSGI) runs no Python at-fork hook by itself: the
    pool's first use in it must run them all, once, before anything touches a connection."""

    def test_the_fork_check_is_a_memory_read_on_linux(self):
        if not sys.platform.startswith("linux"):
            self.skipTest("MADV_WIPEONFORK is Linux's")
        self.assertTrue(forks.wipes_on_fork())

    def test_a_child_of_c_fork_runs_every_hook_once_then_leases_its_own_connection(self):
        pool = self.make_pool(max_size=2)
        handle = pool.checkout()
        parent_pid = backend_pid(handle)
        handle.park()  # a parked handle, as a Django thread leaves it between requests
        calls = []
        hook = lambda: calls.append(os.getpid())  # noqa: E731
        forks.after_fork_in_child(hook)
        self.addCleanup(forks._hooks.remove, hook)

        def child_work():
            report = {"mark_before": forks.MARK[0], "calls_before": len(calls)}
            report["backend_pid"] = backend_pid(handle)  # resumes: the check runs here
            forks.check()
            report.update(calls=calls, mark_after=forks.MARK[0], own_pid=os.getpid())
            return report

        report = self.run_in_c_fork_child(child_work)
        self.assertEqual(report["mark_before"], 0, "the kernel zeroes the mark in a child")
        self.assertEqual(report["calls_before"], 0)
        self.assertEqual(report["calls"], [report["own_pid"]], "every hook ran once, in the child")
        self.assertEqual(report["mark_after"], 1)
        self.assertNotEqual(report["backend_pid"], parent_pid, "the child used the parent's")
        self.assertEqual(calls, [], "the parent ran no hook")
        self.assertEqual(backend_pid(handle), parent_pid, "the parent resumes its own")
        handle.close()
        self.assertEqual(pool.get_stats()[S.CONNECTIONS_LOST], 0)

    def run_in_c_fork_child(self, work):
        """Run ``work()`` (returns a JSON-able report) in a child of libc's fork()."""
        read_end, write_end = os.pipe()
        child = ctypes.CDLL(None, use_errno=True).fork()
        if child == 0:  # pragma: no cover - the child
            try:
                os.write(write_end, json.dumps(work()).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            report = json.loads(pipe.read() or "null")
        os.waitpid(child, 0)
        return report

    def test_a_lease_taken_before_a_c_fork_refuses_work_in_the_child(self):
        pool = self.make_pool(max_size=2)
        handle = pool.checkout()
        parent_pid = backend_pid(handle)
        cursor = handle.cursor()

        def child_work():
            report = {}
            for name, action in (
                ("cursor_execute", lambda: cursor.execute("SELECT 1")),  # the first check
                ("handle_cursor", handle.cursor),
                ("commit", handle.commit),
            ):
                try:
                    action()
                    report[name] = "ran"
                except ConnectionReturned:
                    report[name] = "refused"
            report["parked"] = handle.park_if_unchanged()
            return report

        report = self.run_in_c_fork_child(child_work)
        self.assertEqual(
            report,
            {"cursor_execute": "refused", "handle_cursor": "refused", "commit": "refused",
             "parked": False},
        )  # fmt: skip
        self.assertEqual(backend_pid(handle), parent_pid, "the parent's lease is intact")
        handle.close()
        self.assertEqual(pool.get_stats()[S.CONNECTIONS_LOST], 0)

    def test_a_failing_hook_does_not_stop_the_others_nor_run_them_again(self):
        pool = self.make_pool(max_size=2)
        pool.checkout().close()
        calls = []

        def failing():
            raise RuntimeError("this hook fails")

        def counting():
            calls.append(os.getpid())

        for hook in (failing, counting):
            forks.after_fork_in_child(hook)
            self.addCleanup(forks._hooks.remove, hook)

        def child_work():
            logging.disable(logging.CRITICAL)  # the failure is logged: keep the output clean
            handle = pool.checkout()
            pid = backend_pid(handle)
            handle.close()
            forks.check()
            return {"calls": len(calls), "mark": forks.MARK[0], "leased": pid > 0}

        report = self.run_in_c_fork_child(child_work)
        self.assertEqual(report, {"calls": 1, "mark": 1, "leased": True})
