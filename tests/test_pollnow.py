"""The idle-socket check of every lease: the C Poller answers as select.poll() does, and
keeps the GIL while it asks."""

import os
import platform
import select
import socket
import sys
import threading
import time

from django_pooled_pg.pool import record as record_module

from .helpers import (
    PoolTestCase,
    admin_connection,
    backend_gone,
    query,
    run_engine_code,
    wait_until,
)


def registered_poll(fd):
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return poller


def spinner_steps_during(poll, calls):
    """How often another thread ran while this one made ``calls`` calls of poll(0).

    The other thread waits for the GIL between its steps, and with a 10 s switch
    interval this thread is never asked to drop it: the other one runs only when a call
    here lets the GIL go."""
    steps, stop, started = [0], [False], threading.Event()

    def spin():
        started.set()
        while not stop[0]:
            steps[0] += 1
            time.sleep(0)  # lets the GIL go, then waits for it again

    interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    thread = threading.Thread(target=spin)
    try:
        thread.start()
        started.wait(10)
        before = steps[0]
        for _ in range(calls):
            poll(0)
        return steps[0] - before
    finally:
        stop[0] = True
        sys.setswitchinterval(interval)
        thread.join(10)


class PollerTests(PoolTestCase):
    def socket_pair(self):
        """Two connected sockets, closed after the test."""
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        return ours, theirs

    def test_the_c_poller_is_built_where_it_can_be(self):
        expected = "C" if platform.python_implementation() == "CPython" else "Python"
        self.assertEqual(record_module.POLLER, expected)
        handle = self.make_pool().checkout()
        self.addCleanup(handle.close)
        kind = type(handle.record.poller)
        self.assertEqual(kind.__module__ + "." + kind.__name__,
                         "django_pooled_pg.pool._pollnow.Poller" if expected == "C"
                         else "select.poll")  # fmt: skip

    def test_it_answers_as_select_poll_on_a_killed_backend(self):
        pool = self.make_pool(max_size=1)
        handle = pool.checkout()
        record = handle.record
        fd, pid = record.conn.fileno(), record.backend_pid
        handle.close()
        fallback = registered_poll(fd)
        self.assertFalse(record.poller.poll(0), "an idle session has nothing to say")
        self.assertEqual(fallback.poll(0), [])
        query(admin_connection(), "SELECT pg_terminate_backend(%s)", [pid])
        wait_until(backend_gone(pid), what="the backend to exit")
        wait_until(lambda: fallback.poll(0), what="select.poll to see the FATAL")
        self.assertTrue(record.poller.poll(0), "the FATAL and the hang-up are there")
        # ... so the next lease gets another session, and it works.
        again = pool.checkout()
        self.addCleanup(again.close)
        self.assertNotEqual(again.record.backend_pid, pid)
        self.assertEqual(query(again, "SELECT 1"), [(1,)])

    def test_a_peer_that_hung_up_counts_as_readable(self):
        ours, theirs = self.socket_pair()
        poller = record_module.socket_poller(ours.fileno())
        self.assertFalse(poller.poll(0))
        theirs.close()
        self.assertTrue(poller.poll(0))
        self.assertTrue(registered_poll(ours.fileno()).poll(0))

    def test_only_a_zero_timeout_and_real_descriptors_are_taken(self):
        if record_module.POLLER != "C":
            self.skipTest("the C Poller was not built")
        from django_pooled_pg.pool._pollnow import Poller

        ours, theirs = self.socket_pair()
        poller = Poller(ours.fileno())
        self.assertEqual(poller.fd, ours.fileno())
        with self.assertRaisesRegex(ValueError, "timeout of 0 only"):
            poller.poll(100)  # it would block holding the GIL
        with self.assertRaises(TypeError):
            poller.poll()
        with self.assertRaisesRegex(ValueError, "fd must be a file descriptor >= 0"):
            Poller(-1)

    def test_the_c_poller_keeps_the_gil(self):
        if record_module.POLLER != "C":
            self.skipTest("the C Poller was not built")
        ours, theirs = self.socket_pair()
        poller = record_module.socket_poller(ours.fileno())
        self.assertEqual(spinner_steps_during(poller.poll, 20_000), 0)
        if len(os.sched_getaffinity(0)) > 1:
            # The detector works: select.poll() lets the GIL go at each call, and the
            # other thread, on another CPU, takes it now and then (when that CPU is not
            # busy elsewhere: a loaded CI machine may need a few more tries).
            fallback = registered_poll(ours.fileno())
            tries = (spinner_steps_during(fallback.poll, 20_000 * 2**n) for n in range(5))
            self.assertTrue(any(steps > 0 for steps in tries))

    def test_without_the_extension_select_poll_serves(self):
        done = run_engine_code(
            """
import socket, sys
sys.modules["django_pooled_pg.pool._pollnow"] = None  # the import now fails
from django_pooled_pg.pool import record
ours, theirs = socket.socketpair()
poller = record.socket_poller(ours.fileno())
quiet = poller.poll(0)
theirs.send(b"x")
print(record.POLLER, type(poller).__name__, bool(quiet), bool(poller.poll(0)))
"""
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.split(), ["Python", "poll", "False", "True"])
