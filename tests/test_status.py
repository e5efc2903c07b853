"""The status app: sessions tagged with host/pid/alias, the cleaner's listeners, publishing,
pool_status across real processes and host names, the staff page in a real browser, and
bad input."""

import ctypes
import html
import io
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import quote

import psycopg2
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import LiveServerTestCase, SimpleTestCase, override_settings

from django_pooled_pg import identity
from django_pooled_pg.base import DatabaseWrapper
from django_pooled_pg.pool import cleaner
from django_pooled_pg.status import conf as status_conf
from django_pooled_pg.status.chart import combine_history
from django_pooled_pg.status.models import TABLE, PoolSnapshot
from django_pooled_pg.status.publish import Publisher, publisher
from django_pooled_pg.status.snapshot import merge_top_queries

from .helpers import (
    PoolTestCase,
    add_alias,
    admin_connection,
    cluster_or_skip,
    query,
    run_engine_code,
    server_params,
    wait_until,
)
from .test_backend import run_python, settings_for
from .test_lease_safety import PooledAliasTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "status_worker.py")
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
#: Sent by the workers (trust authentication ignores it): it must never be published or shown.
PASSWORD = "s3cret-never-shown"
#: What the suite's settings say (tests/settings.py), with publishing on.
PUBLISHING = {"publish": True, "interval": 1.0, "expire_after": 5.0}


def database_url(name=None, password=PASSWORD):
    settings = connection.settings_dict
    user = quote(settings["USER"] or "postgres")
    return (
        f"postgres://{user}:{password}@{settings['HOST']}:{settings['PORT']}/"
        f"{name or settings['NAME']}"
    )


class Worker:
    """A serving process (tests/status_worker.py) with its pool in a given state."""

    def __init__(self, mode, host, url=None, **env):
        self.process = subprocess.Popen(
            [sys.executable, WORKER, mode],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "DATABASE_URL": url or database_url(),
                 identity.HOST_ENV: host, **env},
        )  # fmt: skip
        self.host = host
        self.lines = queue.Queue()
        self.stderr = []
        for stream, put in (
            (self.process.stdout, self.lines.put),
            (self.process.stderr, self.stderr.append),
        ):
            reader = threading.Thread(target=self._read, args=(stream, put), daemon=True)
            reader.start()
        line = self.next_line()
        if not line.startswith("ready"):
            raise AssertionError(f"worker failed: {line!r}\n{''.join(self.stderr)}")
        self.pid = int(line.split()[1])

    @staticmethod
    def _read(stream, put):
        for line in stream:
            put(line)
        put("")

    def next_line(self, timeout=60):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker said nothing in {timeout} s") from None

    def stop(self):
        """A clean exit: close standard input, wait."""
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(30)

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def start_worker(test, mode, host, **kwargs):
    worker = Worker(mode, host, **kwargs)
    test.addCleanup(worker.kill)
    return worker


def pool_status(*args):
    out = io.StringIO()
    call_command("pool_status", *args, stdout=out)
    return out.getvalue()


def status_json(*args):
    return json.loads(pool_status("--json", *args))


def processes_of(status, alias="default"):
    section = next(s for s in status["aliases"] if s["alias"] == alias)
    return {(p["host"], p["pid"]): p for p in section["processes"]}


def published(worker, samples=1):
    """A condition: the worker's row is visible to readers, with this many history samples."""

    def check():
        process = processes_of(status_json()).get((worker.host, worker.pid))
        return process if process and len(process["history"]) >= samples else None

    return check


def run_cli(*args, url=None):
    """``manage.py pool_status`` in a process of its own, as an operator runs it."""
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "testproject")]),
        "DATABASE_URL": url or database_url(),
    }
    return run_python(None, "-m", "django", "pool_status", *args, env=env)


class ApplicationNameTests(PooledAliasTestCase):
    def test_sessions_carry_host_pid_and_alias(self):
        with connection.cursor() as cursor:
            cursor.execute("SHOW application_name")
            (name,) = cursor.fetchone()
        self.assertEqual(name, identity.application_name("default"))
        self.assertEqual(
            identity.parse_application_name(name),
            {"host": identity.host(), "pid": os.getpid(), "alias": "default", "role": None},
        )

    def test_a_long_host_is_shortened_and_the_pid_and_alias_are_kept(self):
        with override_settings(POOLED_PG_STATUS={"host": "web-" + "x" * 100 + ".example.com"}):
            name = identity.application_name("default")
            self.assertLessEqual(len(name.encode()), 63)
            self.assertTrue(name.endswith(f" pid={os.getpid()} alias=default"), name)
            with connection.cursor() as cursor:
                cursor.execute("SHOW application_name")
                self.assertEqual(cursor.fetchone()[0], name)  # the server kept all of it
            connection.close()
        self.assertEqual(identity.parse_application_name(name)["pid"], os.getpid())

    def test_this_processs_sessions_are_recognised_with_a_long_or_non_ascii_host(self):
        # (the page and pool_status leave their own sessions out of "nobody published")
        for host in ("web-" + "x" * 100, "héte"):
            with self.subTest(host), override_settings(POOLED_PG_STATUS={"host": host}):
                tag = identity.parse_application_name(identity.application_name("default"))
                self.assertTrue(identity.is_this_process(tag))
                self.assertFalse(identity.is_this_process({**tag, "pid": tag["pid"] + 1}))
                self.assertFalse(identity.is_this_process({**tag, "host": "other"}))
                self.assertFalse(identity.is_this_process({**tag, "host": tag["host"][:3]}))

    def test_options_application_name_wins(self):
        wrapper = DatabaseWrapper(settings_for(OPTIONS={"application_name": "billing"}), "tag")
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SHOW application_name")
                self.assertEqual(cursor.fetchone(), ("billing",))
        finally:
            wrapper.close()
            wrapper.database.pool.close()

    def test_a_forked_child_tags_its_sessions_with_its_own_pid(self):
        self.assert_child_tags_its_sessions_with_its_own_pid(os.fork)

    def test_a_child_of_c_fork_tags_its_sessions_with_its_own_pid(self):
        # fork(2) from C (uWSGI) runs no Python at-fork hook: the pool's fork check must.
        self.assert_child_tags_its_sessions_with_its_own_pid(ctypes.CDLL(None).fork)

    def assert_child_tags_its_sessions_with_its_own_pid(self, fork):
        with connection.cursor() as cursor:  # the parent's pool and cached parameters
            cursor.execute("SELECT 1")
        connection.close()
        read_end, write_end = os.pipe()
        child = fork()
        if child == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SHOW application_name")
                    os.write(write_end, cursor.fetchone()[0].encode())
            finally:
                connection.close()
                os._exit(0)
        os.close(write_end)
        name = os.read(read_end, 200).decode()
        os.close(read_end)
        os.waitpid(child, 0)
        self.assertEqual(identity.parse_application_name(name)["pid"], child, name)


class ListenerTests(PoolTestCase):
    """The engine's hook: Django-free, throttled, never raising."""

    def listen(self, callback, interval):
        cleaner.add_listener(callback, interval)
        self.addCleanup(cleaner.remove_listener, callback)

    def test_the_cleaner_thread_calls_a_listener_at_most_every_interval(self):
        self.make_pool()  # a pool with cleaner="thread" starts the thread
        calls = []
        self.listen(lambda: calls.append(time.monotonic()), 1.5)
        wait_until(lambda: len(calls) >= 3, timeout=30, what="three calls")
        gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
        # The thread wakes every second: without the throttle the gaps would be ~1 s.
        self.assertTrue(all(gap >= 1.4 for gap in gaps), gaps)

    def test_an_inline_pool_calls_listeners_on_checkin_once_the_connection_is_back(self):
        # A process of its own, with the engine alone: no cleaner thread may call it first.
        code = (
            "import sys, json\n"
            "from django_pooled_pg.pool import ConnectionPool, cleaner\n"
            f"pool = ConnectionPool({server_params()!r}, cleaner='inline')\n"
            "calls = []\n"
            "cleaner.add_listener(lambda: calls.append(pool.get_stats()['pool_leased']), 60)\n"
            "pool.checkout().close()\n"
            "pool.checkout().close()  # within the interval: not called again\n"
            "assert not cleaner.is_running()\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'django']\n"
            "print(json.dumps(calls))\n"
        )
        result = run_engine_code(code)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout), [0])

    def test_a_failing_listener_is_logged_once_a_minute_and_never_raises(self):
        calls = []

        def broken():
            calls.append(1)
            raise RuntimeError("listener broke")

        self.listen(broken, 0.001)
        with self.assertLogs("django_pooled_pg.pool.cleaner", logging.ERROR) as logs:
            wait_until(lambda: cleaner.run_listeners() or len(calls) >= 3, what="three calls")
        self.assertEqual(len(logs.records), 1)
        self.assertIn("listener broke", logs.output[0])

    def test_a_bad_interval_is_refused(self):
        for interval in (0, -1, "10", None):
            with self.assertRaisesRegex(ValueError, "interval must be a number of seconds > 0"):
                cleaner.add_listener(lambda: None, interval)


class SettingsTests(SimpleTestCase):
    def assertRefused(self, value, message):
        with self.assertRaisesMessage(ImproperlyConfigured, message):
            status_conf.parse(value, ["default", "replica"])

    def test_bad_values_name_the_key_and_what_is_allowed(self):
        self.assertRefused({"interval": 0}, "POOLED_PG_STATUS['interval'] must be a number of "
                           "seconds > 0, not 0")  # fmt: skip
        self.assertRefused(
            {"interval": "10"}, "['interval'] must be a number of seconds > 0, not '10'"
        )
        self.assertRefused(
            {"interval": 10, "expire_after": 5},
            "['expire_after'] must be None or a number of seconds > interval (10), not 5",
        )
        self.assertRefused({"history": 1}, "['history'] must be an integer >= 2, not 1")
        self.assertRefused({"publish": "yes"}, "['publish'] must be True or False, not 'yes'")
        self.assertRefused({"host": ""}, "['host'] must be None or a non-empty string")
        self.assertRefused({"intervall": 1}, "unknown key 'intervall'; allowed keys are: database,")
        self.assertRefused(
            {"database": "status"},
            "['database'] is 'status', which is not an alias of DATABASES (known: default, "
            "replica)",
        )
        self.assertRefused([], "POOLED_PG_STATUS must be a dict, not list")

    def test_defaults(self):
        conf = status_conf.parse(None, ["default"])
        self.assertEqual((conf.database, conf.interval, conf.expiry), ("default", 10.0, 30.0))

    @override_settings(POOLED_PG_STATUS={"interval": -1})
    def test_system_check_reports_a_bad_setting(self):
        errors = [m for m in run_checks() if m.id == "django_pooled_pg.status.E001"]
        self.assertEqual(len(errors), 1)
        self.assertIn("['interval'] must be a number of seconds > 0, not -1", errors[0].msg)

    def test_a_bad_setting_fails_at_django_setup(self):
        code = (
            "import django\n"
            "from django.conf import settings\n"
            "settings.configure(INSTALLED_APPS=['django_pooled_pg.status'], DATABASES={\n"
            "  'default': {'ENGINE': 'django_pooled_pg', 'NAME': 'x'}},\n"
            "  POOLED_PG_STATUS={'history': 0})\n"
            "django.setup()\n"
        )
        result = run_python(code)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("ImproperlyConfigured: POOLED_PG_STATUS['history'] must be an integer >= 2",
                      result.stderr)  # fmt: skip


class PublisherTests(PooledAliasTestCase):
    """Publishing from this process, with a Publisher of the test's own."""

    def setUp(self):
        super().setUp()
        # The process's own publisher would write the same rows when publishing is on.
        own = publisher()
        own.stop()
        self.addCleanup(setattr, own, "_stopped", False)
        self.publisher = Publisher()
        self.addCleanup(self.publisher.withdraw)
        with connection.cursor() as cursor:  # a pool to publish
            cursor.execute("SELECT 1")
        connection.close()

    def mine(self):
        return PoolSnapshot.objects.filter(host=identity.host(), pid=os.getpid())

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_one_row_per_process_and_alias_updated_in_place(self):
        self.assertTrue(self.publisher.publish())
        first = self.mine().get(alias="default")
        self.assertTrue(self.publisher.publish())
        second = self.mine().get(alias="default")
        self.assertEqual(first.pk, second.pk)
        self.assertGreaterEqual(second.published_at, first.published_at)
        self.assertEqual(len(second.history), 2)
        self.assertEqual(second.application_name, identity.application_name("default"))
        self.assertEqual(
            second.data["config"]["max_size"], connection.database.pool.config.max_size
        )

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_a_users_pop_stats_does_not_zero_the_published_counters(self):
        self.assertTrue(self.publisher.publish())
        before = self.mine().get(alias="default").data["stats"]["requests_num"]
        self.assertGreaterEqual(before, 1)
        connection.database.pop_stats()  # a metrics exporter's scrape
        self.assertTrue(self.publisher.publish())
        after = self.mine().get(alias="default").data["stats"]["requests_num"]
        self.assertGreaterEqual(after, before)

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_publishing_never_takes_a_pooled_connection(self):
        from django_pooled_pg.conf import configure_pool

        configure_pool("default", max_size=1, timeout=1)
        pool = connection.database.pool
        held = pool.checkout()  # the pool is exhausted
        self.addCleanup(held.close)
        self.assertTrue(self.publisher.publish())
        stats = pool.get_stats()
        self.assertEqual((stats["requests_num"], stats["requests_queued"]), (1, 0))
        held.close()
        row = self.mine().get(alias="default")
        self.assertEqual(row.data["stats"]["pool_leased"], 1)
        self.assertEqual(row.data["oldest_lease_s"] is not None, True)

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_rows_of_another_format_or_damaged_are_skipped_and_named(self):
        from django_pooled_pg.status.report import read_status
        from django_pooled_pg.status.text import render

        self.assertTrue(self.publisher.publish())
        admin = admin_connection()
        self.addCleanup(query, admin, f"DELETE FROM {TABLE} WHERE host = 'odd'")
        good = self.mine().get(alias="default")
        old_format = {**good.data, "format": 1}
        bad_sample = [[1.0, 2, "x", 0]]
        for pid, data, history in (
            (1, [], []), (2, {}, []), (3, old_format, good.history), (4, good.data, "x"),
            (5, good.data, bad_sample), (6, {**good.data, "connections": [{}]}, []),
        ):  # fmt: skip
            query(
                admin,
                f"INSERT INTO {TABLE} (host, pid, alias, application_name, started_at, "
                f"published_at, data, history) VALUES ('odd', %s, 'default', 'x', now(), "
                f"now(), %s::jsonb, %s::jsonb)",
                [pid, json.dumps(data), json.dumps(history)],
            )
        status = read_status()
        self.assertEqual(status["unreadable_snapshots"], [f"odd pid {n}" for n in range(1, 7)])
        shown = processes_of(status).keys()
        self.assertIn((identity.host(), os.getpid()), shown)
        self.assertFalse([key for key in shown if key[0] == "odd"])
        self.assertIn("skipped 6 snapshots of another format", render(status))

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_terminal_control_sequences_in_the_data_are_shown_not_obeyed(self):
        from django_pooled_pg.status.report import read_status
        from django_pooled_pg.status.text import render

        self.assertTrue(self.publisher.publish())
        status = read_status()
        status["hosts"] = ["\x1b]0;owned\x07\x1b[2Jweb-1"]  # any process names its host
        text = render(status, verbosity=2)
        self.assertNotIn("\x1b", text)
        self.assertNotIn("\x07", text)
        self.assertIn("\\x1b]0;owned\\x07\\x1b[2Jweb-1", text)

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_the_publishers_socket_gives_up_on_a_silent_network(self):
        # statement_timeout is the server's: a network that stops answering needs limits
        # on the client's socket, or a cleaner (or an inline cleaner's request) would hang.
        self.assertTrue(self.publisher.publish())
        dsn = self.publisher._conn.get_dsn_parameters()
        self.assertEqual(dsn.get("keepalives"), "1")
        self.assertEqual(dsn.get("keepalives_idle"), "5")
        if psycopg2.__libpq_version__ >= 120000:
            self.assertEqual(dsn.get("tcp_user_timeout"), "10000")

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_no_password_and_no_connection_string_is_published(self):
        wrapper = DatabaseWrapper(settings_for(PASSWORD=PASSWORD), "secretive")
        self.addCleanup(wrapper.database.pool.close)
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
        wrapper.close()
        self.assertTrue(self.publisher.publish())
        row = self.mine().get(alias="secretive")
        text = json.dumps(row.data)
        self.assertNotIn(PASSWORD, text)
        self.assertNotIn(wrapper.database.pool.name, text)  # alias:user@host:port/db
        self.assertEqual(row.data["database"]["name"], connection.settings_dict["NAME"])

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_publishers_delete_expired_rows(self):
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {TABLE} (host, pid, alias, application_name, started_at, "
                f"published_at, data, history) VALUES ('gone', 1, 'default', '', now(), "
                f"now() - interval '1 hour', '{{}}', '[]')"
            )
        self.assertTrue(self.publisher.publish())
        self.assertFalse(PoolSnapshot.objects.filter(host="gone").exists())

    @override_settings(POOLED_PG_STATUS=PUBLISHING)
    def test_a_missing_table_is_logged_once_backed_off_and_never_raised(self):
        renamed(self)
        with self.assertLogs("django_pooled_pg.status", logging.WARNING) as logs:
            self.assertFalse(self.publisher.publish())
            self.assertFalse(self.publisher.publish())  # backing off: not even tried
            logging.getLogger("django_pooled_pg.status").warning("end")
        self.assertEqual(len(logs.records), 2)
        self.assertIn(f"the table {TABLE} does not exist: run 'manage.py migrate'", logs.output[0])
        self.assertIn("Requests are not affected", logs.output[0])
        with connection.cursor() as cursor:  # and this process's requests still work
            cursor.execute("SELECT 1")
            self.assertEqual(cursor.fetchone(), (1,))

    @override_settings(POOLED_PG_STATUS={**PUBLISHING, "keep_connection": False})
    def test_keep_connection_false_leaves_no_session_behind(self):
        self.assertTrue(self.publisher.publish())
        publisher_name = identity.application_name("default", "publisher")
        sessions = query(
            admin_connection(),
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [publisher_name],
        )
        self.assertEqual(sessions, [(0,)])


def renamed(test):
    """Take the status table away for one test (as if the migration had not run)."""
    admin = admin_connection()
    query(admin, f"ALTER TABLE {TABLE} RENAME TO {TABLE}_away")
    test.addCleanup(query, admin, f"ALTER TABLE {TABLE}_away RENAME TO {TABLE}")


class StackIdTests(SimpleTestCase):
    def test_stack_ids_of_hosts_whose_names_slugify_alike_differ(self):
        from django_pooled_pg.status.templatetags.pooled_pg_status import stack_id

        conn = {"backend_pid": 42}
        ids = {stack_id("default", {"host": host, "pid": 7}, conn) for host in ("web.1", "web1")}
        self.assertEqual(len(ids), 2)
        again = stack_id("default", {"host": "web.1", "pid": 7}, conn)
        self.assertIn(again, ids)  # stable across refreshes


class MergeTests(SimpleTestCase):
    def test_counts_and_times_add_up_and_the_average_is_recomputed(self):
        merged = merge_top_queries(
            [
                [{"sql": "SELECT ?", "count": 3, "total_ms": 3.0, "max_ms": 2.0, "rows": 3}],
                [{"sql": "SELECT ?", "count": 1, "total_ms": 5.0, "max_ms": 5.0, "rows": 1},
                 {"sql": "UPDATE t", "count": 1, "total_ms": 1.0, "max_ms": 1.0, "rows": 0}],
            ]
        )  # fmt: skip
        self.assertEqual(
            merged[0],
            {
                "sql": "SELECT ?",
                "count": 4,
                "total_ms": 8.0,
                "max_ms": 5.0,
                "rows": 4,
                "avg_ms": 2.0,
            },
        )
        self.assertEqual([row["sql"] for row in merged], ["SELECT ?", "UPDATE t"])

    def test_history_of_processes_publishing_at_different_instants_adds_up(self):
        first = [[100.0, 1, 2, 0], [101.0, 2, 1, 0], [102.0, 3, 0, 1]]
        second = [[100.5, 1, 0, 0], [101.5, 1, 0, 0]]  # stopped publishing after 101.5
        combined = combine_history([first, second], interval=1.0)
        self.assertEqual(combined, [[100.0, 1, 2, 0], [101.0, 3, 1, 0], [102.0, 4, 0, 1]])


class MultiProcessTests(SimpleTestCase):
    """Two serving processes on two host names; this test process is the third, reading."""

    databases = {"default"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # web-a: max_size=300, so that the sum of max_size crosses max_connections (300).
        cls.web_a = Worker("idle-in-transaction", "web-a", DPP_WORKER_MAX_SIZE="300")
        cls.addClassCleanup(cls.web_a.kill)
        cls.web_b = Worker("busy", "web-b")
        cls.addClassCleanup(cls.web_b.kill)

    def setUp(self):
        wait_until(published(self.web_a, 2), timeout=30, what="web-a's snapshots")
        wait_until(published(self.web_b, 2), timeout=30, what="web-b's snapshots")

    def test_pool_status_shows_every_process_in_its_state(self):
        status = status_json()
        procs = processes_of(status)
        a, b = procs[("web-a", self.web_a.pid)], procs[("web-b", self.web_b.pid)]
        self.assertEqual(a["idle_in_transaction"], 1)
        self.assertEqual((a["stats"]["pool_leased"], a["stats"]["pool_max"]), (1, 300))
        self.assertEqual(
            [
                b["stats"][k]
                for k in ("pool_leased", "pool_available", "requests_waiting", "pool_max")
            ],
            [3, 0, 1, 3],
        )
        self.assertEqual({c["thread"] for c in b["connections"]}, {f"holder-{i}" for i in range(3)})
        self.assertGreaterEqual(a["oldest_lease_s"], 0)
        self.assertIn("web-a", status["hosts"])
        self.assertIn("web-b", status["hosts"])

    def test_idle_in_transaction_is_joined_with_the_server_side(self):
        (a,) = [p for p in processes_of(status_json()).values() if p["host"] == "web-a"]
        (stuck,) = a["idle_in_transaction_connections"]
        self.assertEqual(stuck["thread"], "forgetful")
        self.assertEqual(stuck["server"]["state"], "idle in transaction")
        self.assertIsNotNone(stuck["server"]["xact_start"])
        self.assertGreater(stuck["server"]["xact_s"], 0)
        self.assertEqual(a["server_states"].get("idle in transaction"), 1)

    def test_text_tables_and_stacks(self):
        text = pool_status()
        self.assertIn("== default: database", text)
        for host, worker in (("web-a", self.web_a), ("web-b", self.web_b)):
            line = next(line for line in text.splitlines() if line.startswith(host))
            self.assertIn(str(worker.pid), line)
        b_line = next(line for line in text.splitlines() if line.startswith("web-b")).split()
        self.assertEqual(b_line[2:6], ["3/3", "3", "0", "1"])  # size/max, leased, idle, waiting
        self.assertIn("idle in transaction for", text)
        self.assertIn("--stacks shows where", text)
        execute_line = 'cursor.execute("SELECT count(*) FROM shop_category")  # the forgotten'
        self.assertNotIn(execute_line, text)
        with_stacks = pool_status("--stacks")
        self.assertIn("status_worker.py", with_stacks)
        self.assertIn("in view_that_forgets_to_commit", with_stacks)
        self.assertIn(execute_line, with_stacks)

    def test_queries_are_merged_across_processes(self):
        status = status_json("--alias", "default")
        (section,) = status["aliases"]
        (row,) = [
            q for q in section["top_queries"] if q["sql"] == "SELECT count(*) FROM shop_product"
        ]
        self.assertEqual(row["count"], 5)  # 3 on web-a + 2 on web-b
        self.assertAlmostEqual(row["avg_ms"], row["total_ms"] / 5)
        text = pool_status("--queries", "5")
        self.assertIn("Top queries on default, all processes", text)
        line = next(s for s in text.splitlines() if "SELECT count(*) FROM shop_product" in s)
        self.assertEqual(line.split()[0], "5")

    def test_sessions_nobody_published_and_the_publishers_show(self):
        other = admin_connection()  # a client outside any pool, like psql
        other_pid = query(other, "SELECT pg_backend_pid()")[0][0]
        (section,) = status_json("--alias", "default")["aliases"]
        unpublished = {row["backend_pid"]: row for row in section["unpublished_sessions"]}
        self.assertEqual(unpublished[other_pid]["who"], "another client")
        user = query(other, "SELECT current_user")[0][0]
        self.assertNotIn(user, unpublished[other_pid].values(), "no role names shown")
        publishers = {row["who"] for row in unpublished.values() if "publisher" in row["who"]}
        self.assertIn(f"status publisher of web-a pid {self.web_a.pid}", publishers)
        self.assertIn(f"status publisher of web-b pid {self.web_b.pid}", publishers)

    def test_totals_against_max_connections_warn(self):
        status = status_json()
        (server,) = status["servers"]
        self.assertEqual(server["max_connections"], 300)
        self.assertGreaterEqual(server["sum_max_size"], 303)
        self.assertIn("more than this server allows", server["warning"])
        self.assertIn("WARNING: the pools of", pool_status())

    def test_from_a_process_of_its_own(self):
        result = run_cli("--alias", "default")
        self.assertEqual(result.returncode, 0, result.stderr)
        for worker in (self.web_a, self.web_b):
            self.assertRegex(result.stdout, rf"(?m)^{worker.host} +{worker.pid} ")

    def test_watch_prints_again_every_n_seconds(self):
        text = pool_status("--watch", "0.2", "--count", "2")
        self.assertEqual(text.count("Pool status at"), 2)


class ProcessLifeTests(SimpleTestCase):
    databases = {"default"}

    def test_a_killed_process_disappears_after_expiry(self):
        survivor = start_worker(self, "requests", "web-c")
        victim = start_worker(self, "requests", "web-d")
        wait_until(published(victim), timeout=30, what="the victim's snapshot")
        victim.kill()  # SIGKILL: no chance to withdraw its rows
        self.assertTrue(PoolSnapshot.objects.filter(host="web-d", pid=victim.pid).exists())
        wait_until(
            lambda: ("web-d", victim.pid) not in processes_of(status_json()),
            timeout=30, what="the killed process to expire",
        )  # fmt: skip
        self.assertIn(("web-c", survivor.pid), processes_of(status_json()))
        # Another process's publisher deletes the expired row.
        wait_until(
            lambda: not PoolSnapshot.objects.filter(host="web-d", pid=victim.pid).exists(),
            timeout=30, what="the expired row to be deleted",
        )  # fmt: skip

    def test_a_clean_exit_withdraws_the_rows_at_once(self):
        worker = start_worker(self, "requests", "web-e")
        wait_until(published(worker), timeout=30, what="the snapshot")
        worker.stop()
        self.assertFalse(PoolSnapshot.objects.filter(host="web-e", pid=worker.pid).exists())

    def test_publishing_resumes_after_a_database_restart(self):
        cluster = cluster_or_skip(self)
        worker = start_worker(self, "requests", "web-r")
        wait_until(published(worker), timeout=30, what="the first snapshot")
        connection.close()  # this process's lease back in the pool, as at a request's end
        cluster.restart()
        restarted = query(admin_connection(), "SELECT now()")[0][0]

        def published_since_restart():
            row = PoolSnapshot.objects.filter(host="web-r", pid=worker.pid).first()
            return row is not None and row.published_at > restarted

        wait_until(published_since_restart, timeout=60, what="a snapshot after the restart")
        worker.stop()
        served, failed = worker.next_line().split()[1::2]
        self.assertGreater(int(served), 0)


class FailureTests(SimpleTestCase):
    """A database without the status table: clear messages, requests unaffected."""

    databases = {"default"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.admin = admin_connection()
        # (Class cleanups run last-registered first: this one after the DROP. Left open,
        # this session to the test database would block the test runner's DROP DATABASE.)
        cls.addClassCleanup(cls.admin.close)
        query(cls.admin, "DROP DATABASE IF EXISTS dpp_no_status")
        query(cls.admin, "CREATE DATABASE dpp_no_status")
        cls.addClassCleanup(query, cls.admin, "DROP DATABASE IF EXISTS dpp_no_status WITH (FORCE)")
        cls.url = database_url("dpp_no_status")

    def test_pool_status_says_to_migrate_without_a_traceback(self):
        result = run_cli(url=self.url)
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            # (the app is installed in the test settings: only the migration is missing)
            "CommandError: the status table pooled_pg_status_snapshot does not exist in database "
            "alias 'default': run 'manage.py migrate'",
            result.stderr,
        )
        self.assertNotIn("Traceback", result.stderr)

    def test_a_process_that_cannot_publish_serves_its_requests_and_warns_once(self):
        worker = start_worker(self, "requests", "web-f", url=self.url)
        wait_until(lambda: "does not exist" in "".join(worker.stderr), timeout=30,
                   what="the warning")  # fmt: skip
        worker.stop()
        served, failed = worker.next_line().split()[1::2]
        self.assertGreater(int(served), 0)
        self.assertEqual(int(failed), 0)
        warnings = [line for line in worker.stderr if "could not publish" in line]
        self.assertEqual(len(warnings), 1, worker.stderr)
        self.assertNotIn("Traceback", "".join(worker.stderr))


class CommandInputTests(SimpleTestCase):
    databases = {"default"}

    def test_unknown_alias_lists_the_known_ones(self):
        with self.assertRaisesMessage(
            CommandError, "unknown database alias 'replica'; known aliases: default"
        ):
            pool_status("--alias", "replica")

    def test_watch_must_be_a_positive_number(self):
        for value in ("0", "-1", "soon", "inf", "nan"):
            with self.assertRaisesMessage(
                CommandError, f"--watch must be a finite number of seconds > 0, not {value!r}"
            ):
                pool_status("--watch", value)

    def test_watch_zero_from_the_command_line_is_a_message_not_a_traceback(self):
        result = run_cli("--watch", "0")
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            "CommandError: --watch must be a finite number of seconds > 0, not '0'", result.stderr
        )
        self.assertNotIn("Traceback", result.stderr)

    def test_a_missing_table_is_a_command_error(self):
        renamed(self)
        with self.assertRaisesMessage(CommandError, "run 'manage.py migrate'"):
            pool_status()


def a_port_nobody_listens_on():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class StatusDatabaseDownTests(SimpleTestCase):
    """The status database unreachable, or refusing the login: a message, never a 500."""

    databases = {"default"}

    def status_database(self, **changes):
        """A 'status' alias for the status database, for this test."""
        add_alias(
            self, "status", settings_for(**changes),
            POOLED_PG_STATUS={"database": "status", "publish": False},
        )  # fmt: skip

    def test_the_page_json_and_command_say_why_with_503_and_a_command_error(self):
        staff = make_user(self, "ops-down", is_staff=True)
        port = a_port_nobody_listens_on()
        self.status_database(HOST="127.0.0.1", PORT=str(port))
        self.client.force_login(staff)
        why = "could not read the pool snapshots from database alias 'status': connection to"
        with self.assertLogs("django_pooled_pg.status", logging.WARNING):
            page = self.client.get("/pool-status/")
        self.assertEqual(page.status_code, 503)
        self.assertIn(why, html.unescape(page.content.decode()))
        self.assertIn(f"port {port} failed", html.unescape(page.content.decode()))
        with self.assertLogs("django_pooled_pg.status", logging.WARNING):
            fragment = self.client.get("/pool-status/fragment/")
        self.assertEqual(fragment.status_code, 200)  # the page's script shows it
        self.assertIn(why, html.unescape(fragment.content.decode()))
        with self.assertLogs("django_pooled_pg.status", logging.WARNING):
            data = self.client.get("/pool-status/json/")
        self.assertEqual(data.status_code, 503)
        self.assertIn(why, data.json()["error"])
        with (
            self.assertLogs("django_pooled_pg.status", logging.WARNING),
            self.assertRaisesMessage(CommandError, why),
        ):
            pool_status()

    def test_a_refused_login_is_shown_without_the_role_name(self):
        staff = make_user(self, "ops-role", is_staff=True)
        self.status_database(USER="dpp_no_such_role")
        self.client.force_login(staff)
        with self.assertLogs("django_pooled_pg.status", logging.WARNING) as logs:
            page = html.unescape(self.client.get("/pool-status/").content.decode())
        self.assertIn('role "…" does not exist', page)
        self.assertNotIn("dpp_no_such_role", page)
        self.assertIn("dpp_no_such_role", logs.output[0])  # the log has the whole message

    def test_role_names_are_hidden_in_every_message_that_names_one(self):
        from django_pooled_pg.status.report import describe_error

        messages = {
            # (the server does not escape a quote inside the name)
            'FATAL:  role "rev"se"cret" is not permitted to log in':
                'FATAL:  role "…" is not permitted to log in',
            'FATAL:  role "rev\nx" does not exist': 'FATAL:  role "…"',  # cut at the newline
            'permission denied to set session authorization "rev_nolog"':
                'permission denied to set session authorization "…"',
            'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password '
            'authentication failed for user "app"':
                'connection to server at "127.0.0.1", port 5432 failed: FATAL:  password '
                'authentication failed for user "…"',
            'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "app", database "db"':
                'FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "…"',
            "permission denied for table pooled_pg_status_snapshot":
                "permission denied for table pooled_pg_status_snapshot",
            # the pool's own errors name the pool, user included
            "couldn't get a connection from pool 'default:secretuser@127.0.0.1:5432/app' "
            "after 0.50 sec":
                "couldn't get a connection from pool 'default:…@127.0.0.1:5432/app' after "
                "0.50 sec",
        }  # fmt: skip
        for message, shown in messages.items():
            with self.subTest(message):
                self.assertEqual(describe_error(Exception(message)), shown)

    def test_user_names_in_pool_names_are_hidden_whatever_they_hold(self):
        from django_pooled_pg.pool import ConnectionPool
        from django_pooled_pg.status.report import describe_error

        for user in ("o'brien", "my user", "u@corp"):
            with self.subTest(user):
                pool = ConnectionPool(
                    {**server_params(), "user": user}, name=f"default:{user}@h:5/db"
                )
                self.addCleanup(pool.close)
                message = f"couldn't get a connection from pool {pool.name!r} after 1 sec"
                shown = describe_error(Exception(message))
                self.assertNotIn(user, shown)
                self.assertIn("default:…@h:5/db", shown)

    def test_the_command_line_prints_the_reason_and_watch_keeps_trying(self):
        url = f"postgres://postgres@127.0.0.1:{a_port_nobody_listens_on()}/postgres"
        result = run_cli(url=url)
        self.assertEqual(result.returncode, 1)
        self.assertIn("CommandError: could not read the pool snapshots", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        result = run_cli("--watch", "0.1", "--count", "2", url=url)
        self.assertEqual(result.returncode, 1, result.stderr)  # the last try failed too
        self.assertEqual(result.stderr.count("trying again in 0.1 s"), 2, result.stderr)
        self.assertNotIn("Traceback", result.stderr)


class PageTests(SimpleTestCase):
    """The page through Django's test client (the browser test below drives a real one)."""

    databases = {"default"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.worker = Worker("idle-in-transaction", "web-a")
        cls.addClassCleanup(cls.worker.kill)

    def setUp(self):
        self.staff = make_user(self, "ops", is_staff=True)
        self.plain = make_user(self, "customer", is_staff=False)
        wait_until(published(self.worker, 2), timeout=30, what="two snapshots")

    def test_anonymous_users_are_sent_to_the_login_page(self):
        response = self.client.get("/pool-status/")
        self.assertRedirects(
            response, "/accounts/login/?next=/pool-status/", fetch_redirect_response=False
        )

    def test_users_who_are_not_staff_are_refused(self):
        self.client.force_login(self.plain)
        for url in ("/pool-status/", "/pool-status/fragment/", "/pool-status/json/"):
            self.assertEqual(self.client.get(url).status_code, 403, url)

    def test_staff_see_every_process_stacks_a_chart_and_no_secrets(self):
        self.client.force_login(self.staff)
        response = self.client.get("/pool-status/")
        self.assertEqual(response.status_code, 200)
        page = response.content.decode()
        self.assertIn(f'data-host="web-a" data-pid="{self.worker.pid}"', page)
        self.assertIn('<details class="idle-in-transaction"', page)
        self.assertIn("view_that_forgets_to_commit", page)
        self.assertIn('<svg class="chart"', page)
        self.assertIn("fetch(url", page)  # refreshes itself
        fragment = self.client.get("/pool-status/fragment/").content.decode()
        self.assertIn(f'data-pid="{self.worker.pid}"', fragment)
        data = self.client.get("/pool-status/json/").json()
        self.assertIn(("web-a", self.worker.pid), processes_of(data))
        for text in (page, fragment, json.dumps(data)):
            self.assertNotIn(PASSWORD, text)
            self.assertNotIn("password", text.lower())

    def test_a_missing_table_is_explained_on_the_page(self):
        renamed(self)
        self.client.force_login(self.staff)
        page = self.client.get("/pool-status/").content.decode()
        self.assertIn("run &#x27;manage.py migrate&#x27;", page)
        self.assertEqual(self.client.get("/pool-status/json/").status_code, 503)


def make_user(test, name, is_staff):
    user = User.objects.create_user(name, password=f"{name}-pw", is_staff=is_staff)
    test.addCleanup(user.delete)
    return user


def chromium_or_skip(test):
    """Debian's Chromium, installed when missing and we may (root, apt-get), else a skip."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        test.skipTest("playwright is not installed: pip install -e '.[test]'")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        if not os.environ.get("DPP_NO_INSTALL"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False,
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            path = shutil.which("chromium")
    if path is None:
        test.skipTest(
            "no Chromium to drive: install Debian's chromium package (apt-get install "
            "chromium), or run the tests as root with apt-get so that they install it"
        )
    return path


class BrowserTests(LiveServerTestCase):
    """The page in headless Chromium: log in, see the processes, open a stack, refresh."""

    databases = {"default"}

    def test_staff_see_processes_and_an_idle_in_transaction_stack_others_are_refused(self):
        from playwright.sync_api import sync_playwright

        browser_path = chromium_or_skip(self)
        web_a = start_worker(self, "idle-in-transaction", "web-a")
        web_b = start_worker(self, "busy", "web-b")
        make_user(self, "ops", is_staff=True)
        make_user(self, "customer", is_staff=False)
        for worker in (web_a, web_b):
            wait_until(published(worker, 2), timeout=30, what=f"{worker.host}'s snapshots")
        os.makedirs(ARTIFACTS, exist_ok=True)
        screenshot = os.path.join(ARTIFACTS, "status_page.png")
        if os.path.exists(screenshot):
            os.unlink(screenshot)
        url = self.live_server_url + "/pool-status/"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=browser_path, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                response = page.goto(url)
                self.assertIn(
                    "/accounts/login/", page.url, (response.status, page.content()[:3000])
                )
                log_in(page, "ops")
                page.wait_for_url(url)
                for worker in (web_a, web_b):
                    row = page.locator(f'tr.process[data-host="{worker.host}"]')
                    row.wait_for()
                    self.assertIn(str(worker.pid), row.inner_text())
                busy = page.locator('tr.process[data-host="web-b"] td').all_inner_texts()
                self.assertEqual(busy[2:6], ["3/3", "3", "0", "1"])
                stack = page.locator("details.idle-in-transaction").first
                self.assertFalse(stack.locator("pre.execute-stack").is_visible())
                stack.locator("summary").click()
                execute_stack = stack.locator("pre.execute-stack")
                self.assertTrue(execute_stack.is_visible())
                self.assertIn("# the forgotten transaction", execute_stack.inner_text())
                self.assertTrue(page.locator("svg.chart").first.is_visible())
                # The page refreshes itself, and the opened stack stays open.
                generated = page.locator("#generated-at").inner_text()
                page.wait_for_function(
                    "g => document.getElementById('generated-at').textContent !== g",
                    arg=generated, timeout=30_000,
                )  # fmt: skip
                self.assertTrue(page.locator("details.idle-in-transaction[open]").count() == 1)
                page.screenshot(path=screenshot, full_page=True)
                # Signed out meanwhile: the refresh gets the login page through a redirect,
                # and says so instead of showing a login form inside the status.
                page.context.clear_cookies()
                page.wait_for_function(
                    "() => document.getElementById('refresh-state').textContent"
                    ".includes('signed out')", timeout=30_000,
                )  # fmt: skip
                self.assertEqual(page.locator("#status input[name='password']").count(), 0)
                self.assertGreater(page.locator("tr.process").count(), 0)

                other = browser.new_page()
                other.goto(url)
                log_in(other, "customer")
                response = other.goto(url)
                self.assertEqual(response.status, 403)
                self.assertIn("for staff members only", other.content())
            finally:
                browser.close()
        self.assertGreater(os.path.getsize(screenshot), 10_000)


def log_in(page, name):
    page.fill('input[name="username"]', name)
    page.fill('input[name="password"]', f"{name}-pw")
    page.click('button[type="submit"]')
