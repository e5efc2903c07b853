"""Parking: at a request's end the lease goes back to the pool while the wrapper keeps a
handle that takes it back cheaply; every contract point still holds."""

import ctypes
import os

from django.core.signals import request_finished, request_started
from django.db import InterfaceError, connection
from django.db.backends.signals import connection_created

from django_pooled_pg.conf import configure_pool
from django_pooled_pg.pool import stats as S

from .helpers import held_in_another_thread, query
from .test_lease_safety import PooledAliasTestCase


def backend_pid():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


class ParkingTests(PooledAliasTestCase):
    pool_options = {"max_size": 2}

    def setUp(self):
        super().setUp()
        self.created = []
        receiver = lambda sender, connection, **kw: self.created.append(connection.alias)  # noqa: E731
        connection_created.connect(receiver, weak=False)
        self.addCleanup(connection_created.disconnect, receiver)

    def request(self, work):
        request_started.send(sender=None)
        try:
            return work()
        finally:
            request_finished.send(sender=None)

    def test_next_request_resumes_the_same_connection_without_reconnecting(self):
        first = self.request(backend_pid)
        self.assertEqual(self.created, ["default"])
        self.assertTrue(connection.connection.parked)
        second = self.request(backend_pid)
        self.assertEqual(second, first)
        self.assertEqual(self.created, ["default"], "no connect() for a resumed lease")
        self.assertEqual(connection.database.get_stats()[S.REQUESTS_NUM], 2)

    def test_parked_connection_is_free_for_other_threads_and_never_shared(self):
        mine = self.request(backend_pid)
        with held_in_another_thread() as other:
            self.assertEqual(other["pid"], mine, "the other thread got the parked connection")
            now = self.request(backend_pid)  # must get another connection, not share
            self.assertNotEqual(now, mine)
            # Announced: this thread's first connect, the other thread's, and the resume
            # here on another physical connection.
            self.assertEqual(len(self.created), 3, "a new physical connection is announced")

    def test_cursor_from_an_earlier_request_raises_even_on_the_same_connection(self):
        def keep_cursor():
            cursor = connection.cursor()
            cursor.execute("SELECT 1")
            return cursor

        old_cursor = self.request(keep_cursor)
        request_started.send(sender=None)
        backend_pid()  # resumes the same physical connection
        with self.assertRaisesMessage(InterfaceError, "lease has ended"):
            old_cursor.execute("SELECT 1")
        request_finished.send(sender=None)

    def test_dirty_lease_is_not_parked_so_connection_created_runs_again(self):
        def dirty():
            with connection.cursor() as cursor:
                cursor.execute("SET search_path TO pg_catalog")

        self.request(dirty)
        self.assertIsNone(connection.connection, "a dirty lease is closed, not parked")

        def show():
            connection.ensure_connection()
            return query(connection.connection, "SHOW search_path")

        self.assertEqual(self.request(show), [('"$user", public',)])
        self.assertEqual(len(self.created), 2)

    def test_transaction_left_open_takes_the_close_path(self):
        def leave_open():
            connection.set_autocommit(False)
            backend_pid()

        with self.assertLogs("django_pooled_pg", "WARNING"):
            self.request(leave_open)
        self.assertIsNone(connection.connection)

    def test_new_pool_options_drop_the_parked_handle_at_request_start(self):
        first_pool = connection.database.pool
        self.request(backend_pid)
        configure_pool("default", max_size=3)
        self.request(backend_pid)
        self.assertIsNot(connection.database.pool, first_pool)
        self.assertEqual(connection.database.pool.config.max_size, 3)

    def assert_forked_child_leases_its_own_connection(self, fork, request_signal=True):
        """Park a connection, fork with ``fork``, take a backend pid in the child (after
        request_started, or without: a worker loop) with no retry: it must be a new
        session, and the parent must resume its own."""
        parent_pid = self.request(backend_pid)
        read_end, write_end = os.pipe()
        child = fork()
        if child == 0:  # pragma: no cover - the child
            try:
                os.close(read_end)
                if request_signal:
                    request_started.send(sender=None)
                os.write(write_end, str(backend_pid()).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        child_pid = int(os.read(read_end, 64) or 0)
        os.close(read_end)
        os.waitpid(child, 0)
        self.assertNotIn(child_pid, (0, parent_pid))
        self.assertEqual(self.request(backend_pid), parent_pid, "the parent resumes its own")

    def test_forked_child_never_resumes_the_parents_parked_connection(self):
        self.assert_forked_child_leases_its_own_connection(os.fork)

    def test_forked_child_outside_a_request_leases_its_own_connection(self):
        self.assert_forked_child_leases_its_own_connection(os.fork, request_signal=False)

    def test_child_forked_without_pythons_fork_hooks_never_resumes_the_parents_connection(self):
        # uWSGI forks its workers with fork(2) and, by default, runs none of Python's
        # at-fork hooks: the pool's fork check (forks.py) runs them at the first use.
        libc_fork = ctypes.CDLL(None, use_errno=True).fork
        self.assert_forked_child_leases_its_own_connection(libc_fork)
        self.assert_forked_child_leases_its_own_connection(libc_fork, request_signal=False)


class ParkingEdgeTests(PooledAliasTestCase):
    pool_options = {"max_size": 2}

    def test_parked_handle_whose_pool_closed_resumes_from_the_current_pool(self):
        request_started.send(sender=None)
        backend_pid()
        request_finished.send(sender=None)
        configure_pool("default", max_size=4)  # closes the old pool
        # No request signal here (a shell, a worker loop): the parked handle must cope.
        self.assertIsInstance(backend_pid(), int)
        self.assertEqual(connection.database.pool.config.max_size, 4)

    def test_reset_always_never_parks_so_connection_created_set_up_runs_again(self):
        configure_pool("default", reset="always")
        created = []
        receiver = lambda sender, connection, **kw: created.append(1)  # noqa: E731
        connection_created.connect(receiver, weak=False)
        self.addCleanup(connection_created.disconnect, receiver)
        for _ in range(2):
            request_started.send(sender=None)
            backend_pid()
            request_finished.send(sender=None)
        self.assertEqual(len(created), 2)
