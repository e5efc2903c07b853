"""Contracts 4 and 6 with real faults: killed backends, server restarts and stops, fork."""

import gc
import multiprocessing
import os
import time

from django.core.signals import request_finished, request_started
from django.db import OperationalError, connection

from django_pooled_pg.pool import close_all_pools
from django_pooled_pg.pool import stats as S

from .helpers import (
    admin_connection,
    backend_gone,
    cluster_or_skip,
    query,
    request,
    wait_until,
)
from .test_lease_safety import PooledAliasTestCase


class DeadConnectionTests(PooledAliasTestCase):
    # ping_after=None: only the free readable-socket check stands between a request
    # and a dead connection, which is what these tests prove is enough.
    pool_options = {"max_size": 3, "ping_after": None, "connect_timeout": 2}

    def test_backend_killed_while_idle_is_replaced_without_an_error(self):
        (first_pid,) = request()
        admin = admin_connection()
        query(admin, "SELECT pg_terminate_backend(%s)", [first_pid])
        wait_until(backend_gone(first_pid), what="the backend to exit")
        (second_pid,) = request()  # must not raise
        self.assertNotEqual(second_pid, first_pid)
        self.assertEqual(connection.database.get_stats()[S.CONNECTIONS_LOST], 1)

    def test_with_conn_max_age_a_kept_lease_is_still_checked_at_each_request(self):
        # Persistent connections (CONN_MAX_AGE > 0 or None) keep the lease across requests,
        # as in Django; the pool's checks still stand between a request and a dead or
        # expired connection.
        for max_age in (60, None):
            with self.subTest(CONN_MAX_AGE=max_age):
                connection.close()
                self.addCleanup(connection.settings_dict.__setitem__, "CONN_MAX_AGE", 0)
                connection.settings_dict["CONN_MAX_AGE"] = max_age
                (first_pid,) = request()
                self.assertEqual(request(), (first_pid,))  # kept, as Django keeps it
                query(admin_connection(), "SELECT pg_terminate_backend(%s)", [first_pid])
                wait_until(backend_gone(first_pid), what="the backend to exit")
                (second_pid,) = request()  # must not raise
                self.assertNotEqual(second_pid, first_pid)
                connection.connection.record.expires_at = 0.0  # past max_lifetime
                (third_pid,) = request()
                self.assertNotEqual(third_pid, second_pid)
                connection.close()

    def test_a_parked_lease_is_never_pinged_on_another_holders_connection(self):
        from django_pooled_pg.conf import configure_pool, reset_pool_config

        connection.close()
        configure_pool("default", max_size=1)
        self.addCleanup(reset_pool_config, "default")
        request()  # CONN_MAX_AGE=0: the lease parks
        other = connection.database.pool.checkout()  # another thread takes the connection
        self.addCleanup(other.close)
        query(other, "LISTEN dpp_ping")
        query(admin_connection(), "NOTIFY dpp_ping")  # its socket turns readable
        self.addCleanup(connection.settings_dict.__setitem__, "CONN_MAX_AGE", 0)
        connection.settings_dict["CONN_MAX_AGE"] = 60  # as Django's own tests change it
        request_started.send(sender=None)
        activity = query(
            admin_connection(), "SELECT query FROM pg_stat_activity WHERE pid = %s",
            [other.record.backend_pid],
        )  # fmt: skip
        self.assertEqual(activity, [("LISTEN dpp_ping",)])  # no SELECT 1 of ours ran there

    def test_all_idle_connections_killed_at_once(self):
        handles = [connection.database.pool.checkout() for _ in range(3)]
        pids = [query(handle, "SELECT pg_backend_pid()")[0][0] for handle in handles]
        for handle in handles:
            handle.close()
        admin = admin_connection()
        for pid in pids:
            query(admin, "SELECT pg_terminate_backend(%s)", [pid])
            wait_until(backend_gone(pid), what="the backend to exit")
        for _ in range(3):
            (pid,) = request()
            self.assertNotIn(pid, pids)

    def test_killed_inside_a_transaction_fails_that_request_only(self):
        request_started.send(sender=None)
        connection.set_autocommit(False)
        pid = query(connection.connection, "SELECT pg_backend_pid()")[0][0]
        query(admin_connection(), "SELECT pg_terminate_backend(%s)", [pid])
        with self.assertRaises(OperationalError):
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        request_finished.send(sender=None)  # Django closes the broken connection
        (new_pid,) = request()
        self.assertNotEqual(new_pid, pid)
        self.assertEqual(connection.database.get_stats()[S.POOL_LEASED], 0)


class ServerRestartTests(PooledAliasTestCase):
    pool_options = {"max_size": 4, "ping_after": None, "connect_timeout": 2}

    def test_requests_succeed_after_a_server_restart(self):
        cluster = cluster_or_skip(self)
        pids = {request()[0] for _ in range(2)}
        cluster.restart()
        for _ in range(4):
            (pid,) = request()  # none of these may raise
            self.assertNotIn(pid, pids)

    def test_requests_fail_fast_while_the_server_is_down_then_recover(self):
        cluster = cluster_or_skip(self)
        request()
        cluster.stop()
        try:
            started = time.monotonic()
            with self.assertRaises(OperationalError):
                request()
            # Bounded by connect_timeout (2 s), far from the pool's 30 s timeout.
            self.assertLess(time.monotonic() - started, 5)
            with self.assertRaises(OperationalError):
                request()
        finally:
            cluster.start()
        self.assertEqual(request(sql="SELECT 1"), (1,))
        self.assertEqual(connection.database.get_stats()[S.POOL_LEASED], 0)


def _child_uses_pool(queue):
    """In the forked child: drop inherited objects, then lease and report the backend."""
    gc.collect()  # would send Terminate on inherited sockets if they were still live
    try:
        (pid,) = request()
        queue.put(("ok", pid, os.getpid()))
    except Exception as error:  # pragma: no cover - reported to the parent
        queue.put(("error", repr(error), os.getpid()))
    connection.close()
    close_all_pools()  # a child that closes everything must still spare the parent's sessions


class ForkTests(PooledAliasTestCase):
    pool_options = {"max_size": 4}

    def test_forked_child_starts_empty_and_leaves_the_parents_sessions_alone(self):
        pool = connection.database.pool
        first, second = pool.checkout(), pool.checkout()
        idle_pid = query(first, "SELECT pg_backend_pid()")[0][0]
        first.close()
        second.close()
        held = pool.checkout()  # leased across the fork; `first` stays idle in the pool
        held_pid = query(held, "SELECT pg_backend_pid()")[0][0]
        self.assertNotEqual(held_pid, idle_pid)
        query(held, "BEGIN")
        query(held, "CREATE TEMP TABLE survives_fork (a int)")

        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        children = [context.Process(target=_child_uses_pool, args=(queue,)) for _ in range(2)]
        for child in children:
            child.start()
        reports = [queue.get(timeout=30) for _ in children]
        for child in children:
            child.join(30)
            self.assertEqual(child.exitcode, 0)
        for status, pid, _ in reports:
            self.assertEqual(status, "ok", pid)
            self.assertNotIn(pid, (idle_pid, held_pid), "the child used a parent's connection")

        # The parent's sessions are intact: the held transaction and the idle connection.
        self.assertEqual(query(held, "SELECT count(*) FROM survives_fork"), [(0,)])
        query(held, "COMMIT")
        held.close()
        both = [pool.checkout(), pool.checkout()]
        pids = {query(handle, "SELECT pg_backend_pid()")[0][0] for handle in both}
        for handle in both:
            handle.close()
        self.assertEqual(pids, {idle_pid, held_pid}, "both parent sessions still work")
        self.assertEqual(connection.database.get_stats()[S.CONNECTIONS_LOST], 0)

    def test_plain_os_fork_child_exiting_normally_sends_nothing_on_parent_sockets(self):
        (idle_pid,) = request()
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            try:
                (pid,) = request()
                os.write(write_end, str(pid).encode())
            finally:
                connection.close()
                close_all_pools()
                gc.collect()
                os._exit(0)
        os.close(write_end)
        child_pid = int(os.read(read_end, 64) or 0)
        os.close(read_end)
        _, status = os.waitpid(child, 0)
        self.assertEqual(status, 0)
        self.assertNotEqual(child_pid, idle_pid)
        self.assertEqual(request()[0], idle_pid, "the parent's idle connection still works")
        self.assertEqual(connection.database.get_stats()[S.CONNECTIONS_LOST], 0)
