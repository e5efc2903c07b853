"""The Django integration: ENGINE switch, settings checks, test databases, aliases, baseline."""

import concurrent.futures
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import psycopg2
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import request_finished, request_started
from django.db import connection
from django.test import SimpleTestCase, override_settings

from django_pooled_pg.base import DatabaseWrapper
from django_pooled_pg.pool import ConnectionHandle
from django_pooled_pg.pool import stats as S

from .helpers import admin_connection, query, server_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings_for(**changes):
    settings = {**connection.settings_dict, **changes}
    settings["OPTIONS"] = {**connection.settings_dict["OPTIONS"], **changes.get("OPTIONS", {})}
    return settings


def run_python(code, *args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", **(env or {})},
    )  # fmt: skip


class EngineTests(SimpleTestCase):
    databases = {"default"}

    def test_vendor_is_postgresql_so_django_treats_it_as_postgres(self):
        self.assertEqual(connection.vendor, "postgresql")

    def test_connection_is_leased_and_returned_by_the_request_cycle(self):
        connection.close()
        pool = connection.database.pool
        before = pool.get_stats()
        request_started.send(sender=None)
        connection.ensure_connection()
        self.assertIsInstance(connection.connection, ConnectionHandle)
        self.assertEqual(pool.get_stats()[S.POOL_LEASED], before[S.POOL_LEASED] + 1)
        request_finished.send(sender=None)
        # Parked: back in the pool (idle, reset), while the wrapper may take it back.
        self.assertTrue(connection.connection.parked)
        self.assertEqual(pool.get_stats()[S.POOL_LEASED], before[S.POOL_LEASED])
        connection.close()
        self.assertIsNone(connection.connection)

    def test_time_zone_is_part_of_the_session_baseline_not_set_per_lease(self):
        connection.close()
        pool = connection.database.pool
        pool.pop_stats()
        for _ in range(3):
            with connection.cursor() as cursor:
                cursor.execute("SHOW TimeZone")
                self.assertEqual(cursor.fetchone(), ("UTC",))
            connection.close()
        self.assertEqual(pool.get_stats()[S.RESETS_NUM], 0, "no SET TIME ZONE per lease")

    def test_different_credentials_never_share_a_pool(self):
        admin = admin_connection()
        query(admin, "DROP ROLE IF EXISTS dpp_app")
        query(admin, "CREATE ROLE dpp_app LOGIN")
        query(admin, f'GRANT CONNECT ON DATABASE "{connection.settings_dict["NAME"]}" TO dpp_app')
        other = DatabaseWrapper(settings_for(USER="dpp_app"), alias="other")
        try:
            with other.cursor() as cursor:
                cursor.execute("SELECT current_user")
                self.assertEqual(cursor.fetchone(), ("dpp_app",))
            with connection.cursor() as cursor:
                cursor.execute("SELECT current_user")
                self.assertNotEqual(cursor.fetchone(), ("dpp_app",))
            self.assertIsNot(other.database.pool, connection.database.pool)
        finally:
            other.close()
            other.database.pool.close()

    def test_assume_role_is_the_baseline_and_survives_reset(self):
        admin = admin_connection()
        query(admin, "DROP ROLE IF EXISTS dpp_owner")
        query(admin, "CREATE ROLE dpp_owner")
        wrapper = DatabaseWrapper(settings_for(OPTIONS={"assume_role": "dpp_owner"}), "roles")
        try:
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT current_user")
                self.assertEqual(cursor.fetchone(), ("dpp_owner",))
                cursor.execute("RESET ROLE")
            wrapper.close()
            with wrapper.cursor() as cursor:
                cursor.execute("SELECT current_user")
                self.assertEqual(cursor.fetchone(), ("dpp_owner",))
        finally:
            wrapper.close()
            wrapper.database.pool.close()

    def test_isolation_level_option_applies_to_every_lease(self):
        from psycopg2.extensions import ISOLATION_LEVEL_SERIALIZABLE

        wrapper = DatabaseWrapper(
            settings_for(OPTIONS={"isolation_level": ISOLATION_LEVEL_SERIALIZABLE}), "serial"
        )
        try:
            for lease in range(3):
                # Outside transactions the server's default, as with Django's own backend
                # (which sets the level before autocommit is on): on a new connection,
                # and after a lease that needed a full reset.
                with wrapper.cursor() as cursor:
                    cursor.execute("SHOW transaction_isolation")
                    self.assertEqual(cursor.fetchone(), ("read committed",), lease)
                    cursor.execute("SET work_mem = '8MB'")  # the next lease: after a reset
                wrapper.set_autocommit(False)
                with wrapper.cursor() as cursor:
                    cursor.execute("SHOW transaction_isolation")
                    self.assertEqual(cursor.fetchone(), ("serializable",))
                wrapper.rollback()
                wrapper.close()
            self.assertIsNot(wrapper.database.pool, connection.database.pool)
        finally:
            wrapper.close()
            wrapper.database.pool.close()

    def test_pool_false_turns_pooling_off(self):
        wrapper = DatabaseWrapper(settings_for(OPTIONS={"pool": False}), "plain")
        try:
            wrapper.ensure_connection()
            self.assertNotIsInstance(wrapper.connection, ConnectionHandle)
            self.assertEqual(
                repr(wrapper.database), "<PooledDatabase alias='plain' (pooling turned off)>"
            )
        finally:
            wrapper.close()

    def test_no_db_alias_used_for_create_and_drop_database_is_not_pooled(self):
        with connection._nodb_cursor() as cursor:
            self.assertNotIsInstance(cursor.db.connection, ConnectionHandle)
            cursor.execute("SELECT current_database()")
            self.assertEqual(cursor.fetchone(), ("postgres",))

    def test_djangos_fallback_to_the_first_database_is_not_pooled_either(self):
        # Without access to the 'postgres' database (managed hosting), Django opens the
        # first database under this alias for CREATE/DROP DATABASE instead.
        import warnings

        import psycopg2
        from django.db.backends.base.base import BaseDatabaseWrapper

        def no_postgres_database(self):
            raise psycopg2.OperationalError('permission denied for database "postgres"')

        nodb = BaseDatabaseWrapper._nodb_cursor
        BaseDatabaseWrapper._nodb_cursor = contextlib.contextmanager(no_postgres_database)
        self.addCleanup(setattr, BaseDatabaseWrapper, "_nodb_cursor", nodb)
        with warnings.catch_warnings(record=True), connection._nodb_cursor() as cursor:
            self.assertNotIsInstance(cursor.db.connection, ConnectionHandle)
            cursor.execute("SELECT current_database()")
            self.assertEqual(cursor.fetchone(), (connection.settings_dict["NAME"],))
        connection.ensure_connection()  # the alias itself is pooled as before
        self.assertIsInstance(connection.connection, ConnectionHandle)
        connection.close()

    def test_override_settings_databases_gets_fresh_pools(self):
        connection.ensure_connection()
        old_pool = connection.database.pool
        old_pid = query(connection.connection, "SELECT pg_backend_pid()")[0][0]
        connection.close()
        databases = {"default": settings_for(OPTIONS={"pool": {"max_size": 3}})}
        with override_settings(DATABASES=databases):
            self.assertTrue(old_pool.closed)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.assertNotEqual(cursor.fetchone()[0], old_pid)
            self.assertIsNot(connection.database.pool, old_pool)
            connection.close()


class SettingsCheckTests(SimpleTestCase):
    def test_bad_option_fails_at_first_connections_access(self):
        with self.assertRaisesMessage(
            ImproperlyConfigured,
            "DATABASES['bad']['OPTIONS']['pool']: min_size (5) must not be greater than "
            "max_size (2)",
        ):
            DatabaseWrapper(settings_for(OPTIONS={"pool": {"min_size": 5, "max_size": 2}}), "bad")

    def test_bad_option_fails_at_django_setup(self):
        code = (
            "import django\n"
            "from django.conf import settings\n"
            "settings.configure(INSTALLED_APPS=['django_pooled_pg'], DATABASES={'default': {\n"
            "  'ENGINE': 'django_pooled_pg', 'NAME': 'x', 'OPTIONS': {'pool': {'max_size': 0}}}})\n"
            "django.setup()\n"
        )
        result = run_python(code)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("ImproperlyConfigured", result.stderr)
        self.assertIn(
            "DATABASES['default']['OPTIONS']['pool']: max_size must be at least 1", result.stderr
        )

    def test_manage_py_check_reports_bad_option(self):
        result = run_python(
            None, "testproject/manage.py", "check",
            env={"POOL_MAX_SIZE": "-1"},
        )  # fmt: skip
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("max_size must be at least 1, not -1", result.stderr)

    def test_unknown_option_lists_the_allowed_ones(self):
        with self.assertRaisesMessage(
            ImproperlyConfigured, "unknown option 'maxsize' (did you mean 'max_size'?); allowed"
        ):
            DatabaseWrapper(settings_for(OPTIONS={"pool": {"maxsize": 2}}), "bad")

    @override_settings(DATABASES={"default": {"ENGINE": "django_pooled_pg", "CONN_MAX_AGE": 60}})
    def test_conn_max_age_warning(self):
        messages = [m for m in run_checks() if m.id == "django_pooled_pg.W001"]
        self.assertEqual(len(messages), 1)
        self.assertIn("CONN_MAX_AGE", messages[0].msg)


class TestRunnerTests(SimpleTestCase):
    """Contract 7: Django's runner creates, clones and drops test databases while pools
    hold connections to them."""

    def run_testproject_tests(self, *args):
        # Its own database name, so that its test database is not this suite's.
        env = {"DATABASE_URL": os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/demo"}
        return run_python(
            None, "testproject/manage.py", "test", "shop", "--noinput", *args, env=env, timeout=300
        )

    def test_serial_run_creates_and_drops_the_test_database(self):
        result = self.run_testproject_tests()
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Ran 2 tests", result.stderr)
        self.assertNotIn("being accessed by other users", result.stderr)

    def test_another_threads_parked_lease_follows_the_rename_to_the_test_database(self):
        # A worker thread's leases park between its jobs; the runner then renames the
        # databases in place (closing only its own thread's connections), the primary's
        # and its TEST MIRROR's. The worker's next job must run in the test database, as
        # with Django's own backend: not go on in the real one.
        params = server_params()
        code = f"""
import threading
import django
from django.conf import settings
server = {{"ENGINE": "django_pooled_pg", "NAME": "dpp_rename", "USER": {params["user"]!r},
          "HOST": {params["host"]!r}, "PORT": {str(params["port"])!r}}}
settings.configure(DATABASES={{
    "default": server, "replica": {{**server, "TEST": {{"MIRROR": "default"}}}}}})
django.setup()
from django.db import close_old_connections, connection, connections
from django.db.backends.postgresql.base import DatabaseWrapper as Stock
from django.test.utils import setup_databases, teardown_databases
with Stock({{**connection.settings_dict, "NAME": "postgres"}}).cursor() as admin:
    admin.execute("DROP DATABASE IF EXISTS dpp_rename")
    admin.execute("CREATE DATABASE dpp_rename")
parked, renamed, seen = threading.Event(), threading.Event(), []
def worker():
    for job in range(2):
        for alias in ("default", "replica"):
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT current_database()")
                seen.append(alias + ":" + cursor.fetchone()[0])
        close_old_connections()  # between jobs: the leases park
        if job == 0:
            parked.set()
            renamed.wait(30)
thread = threading.Thread(target=worker)
thread.start()
parked.wait(30)
old_config = setup_databases(verbosity=0, interactive=False)
renamed.set()
thread.join(30)
teardown_databases(old_config, verbosity=0)
print(" ".join(seen))
from django_pooled_pg.registry import close_pools
close_pools()
with Stock({{**connection.settings_dict, "NAME": "postgres"}}).cursor() as admin:
    admin.execute("DROP DATABASE dpp_rename")
"""
        result = run_python(code)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout.split(),
            ["default:dpp_rename", "replica:dpp_rename",
             "default:test_dpp_rename", "replica:test_dpp_rename"],
        )  # fmt: skip

    def test_parallel_run_clones_and_drops_test_databases(self):
        result = self.run_testproject_tests("--parallel", "2")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Cloning test database", result.stderr)
        self.assertNotIn("being accessed by other users", result.stderr)


class PreloadTests(SimpleTestCase):
    """gunicorn --preload: the master uses the database, then forks the workers (point 6)."""

    def serve(self, *worker_args):
        """Run gunicorn --preload on tests/preload_wsgi.py; (its process, base URL, the
        master's backend pid)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        report = os.path.join(self.enterContext(tempfile.TemporaryDirectory()), "master")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "testproject")]),
            "PRELOAD_REPORT": report,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "tests.preload_wsgi:application", "--preload",
             "--bind", f"127.0.0.1:{port}", "--workers", "2", *worker_args,
             "--log-level", "warning"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

        def stop():
            if server.returncode is None:
                server.terminate()
                server.communicate(timeout=30)

        self.addCleanup(stop)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get(base + "/backend/")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    self.fail(f"gunicorn did not serve: {server.communicate()[1][-3000:]}")
                time.sleep(0.2)
        with open(report) as file:
            return server, base, int(file.read())

    def get(self, url):
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def check_workers_never_touch_the_masters_session(self, *worker_args):
        server, base, master_backend = self.serve(*worker_args)
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as executor:
                answers = list(executor.map(lambda _: self.get(base + "/backend/"), range(80)))
        except OSError as error:  # an HTTP 500 among them: show the worker's traceback
            server.terminate()
            self.fail(f"{error}; gunicorn's stderr:\n{server.communicate(timeout=30)[1][-6000:]}")
        workers = {answer["worker_pid"] for answer in answers}
        self.assertNotIn(server.pid, workers)
        backends = {answer["backend_pid"] for answer in answers}
        self.assertNotIn(master_backend, backends, "a worker ran on the master's session")
        for answer in answers:  # each worker's sessions carry its own pid, not the master's
            self.assertIn(f" pid={answer['worker_pid']} ", answer["application_name"])
        # The master's session is intact: still there, idle, its last statement its own.
        # (A child that sent anything on the inherited socket, even a goodbye, would show.)
        admin = admin_connection()
        self.addCleanup(admin.close)
        rows = query(admin, "SELECT state, query FROM pg_stat_activity WHERE pid = %s",
                     [master_backend])  # fmt: skip
        self.assertEqual(rows, [("idle", "SELECT pg_backend_pid() /* the master's query */")])

    def test_sync_workers_get_their_own_sessions(self):
        # Each request runs in the worker's main thread: the thread whose wrapper held the
        # master's lease at the fork.
        self.check_workers_never_touch_the_masters_session()

    def test_threaded_workers_get_their_own_sessions(self):
        self.check_workers_never_touch_the_masters_session("--threads", "4")


class DemoTests(SimpleTestCase):
    def test_demo_serves_real_requests_through_gunicorn_and_the_pool(self):
        admin = admin_connection()
        query(admin, "DROP DATABASE IF EXISTS dpp_demo_e2e")
        query(admin, "CREATE DATABASE dpp_demo_e2e")
        self.addCleanup(query, admin, "DROP DATABASE IF EXISTS dpp_demo_e2e WITH (FORCE)")
        url = os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/dpp_demo_e2e"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = str(probe.getsockname()[1])
        # README's command: its own throwaway cluster. An exported DATABASE_URL (for the
        # tests, say) must not receive the demo's data and its admin/admin user.
        result = run_python(
            None, "demo.py", "--seconds", "0", "--requests", "100", "--port", port,
            env={"DATABASE_URL": url}, timeout=240,
        )  # fmt: skip
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("PostgreSQL throwaway cluster on port", result.stdout)
        with psycopg2.connect(url) as untouched, untouched.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            self.assertEqual(cursor.fetchone(), (0,))
        untouched.close()
        self.assertIn("100 requests from", result.stdout)
        self.assertIn("Pool of each gunicorn worker", result.stdout)
        # pool_status, from a process of its own, shows every worker and the open transaction.
        report, _, status = result.stdout.partition("manage.py pool_status")
        rows = re.findall(r"(?m)^ +(\d+) +\d+ +\d+ +\d+ +\d+ +\d+ +(\d+)$", report)
        self.assertEqual(len(rows), 2, report)
        workers = [pid for pid, _ in rows]
        # The orders page's join ran prepared (EXECUTE) in the workers.
        self.assertGreater(sum(int(prepared) for _, prepared in rows), 0, report)
        for pid in workers:
            self.assertRegex(status, rf"(?m)^\S+ +{pid} +\d+/8 ")
        self.assertIn("Idle in transaction:", status)
        self.assertIn("leased at: shop/views.py", status)
        self.assertIn("/pool-status/ (log in as admin", result.stdout)


class ProgrammaticConfigTests(SimpleTestCase):
    databases = {"default"}

    def test_configure_pool_rejects_bad_options_at_once_and_keeps_the_old_ones(self):
        from django_pooled_pg.conf import configure_pool, reset_pool_config

        self.addCleanup(reset_pool_config, "default")
        configure_pool("default", max_size=4)
        with self.assertRaisesMessage(
            ImproperlyConfigured, "configure_pool('default'): max_size must be at least 1"
        ):
            configure_pool("default", max_size=0)
        with self.assertRaisesMessage(
            ImproperlyConfigured,
            "configure_pool('default'): unknown option 'max_szie' (did you mean 'max_size'?)",
        ):
            configure_pool("default", max_szie=2)
        connection.close()
        self.assertEqual(connection.database.pool.config.max_size, 4)
        # Checked with the options of earlier calls: min_size 20 fits the max_size 50 set before.
        configure_pool("default", max_size=50)
        self.assertEqual(configure_pool("default", min_size=20).min_size, 20)

    def test_django_contrib_postgres_registers_hstore_through_the_handle(self):
        import psycopg2.extensions
        from django.contrib.postgres.signals import get_hstore_oids, register_type_handlers

        with connection.cursor() as cursor:
            try:
                cursor.execute("CREATE EXTENSION IF NOT EXISTS hstore")
            except Exception as error:  # a server without contrib
                self.skipTest(f"no hstore extension: {error}")
        self.addCleanup(get_hstore_oids.cache_clear)
        # (register_hstore(globally=True) adapts every dict as hstore: undone after the test)
        self.addCleanup(
            psycopg2.extensions.adapters.pop, (dict, psycopg2.extensions.ISQLQuote), None
        )
        get_hstore_oids.cache_clear()
        register_type_handlers(connection)  # what its connection_created receiver runs
        with connection.cursor() as cursor:
            cursor.execute("SELECT 'a=>1'::hstore")
            self.assertEqual(cursor.fetchone()[0], {"a": "1"})
        self.assertIsInstance(connection.connection, ConnectionHandle)
        connection.close()

        from django.db import connections

        from django_pooled_pg.conf import configure_pool, reset_pool_config

        from .helpers import wait_until

        self.addCleanup(reset_pool_config, "default")
        connection.close()
        configure_pool("default", max_size=1, timeout=30)
        old = connection.database.pool
        connection.ensure_connection()  # the only connection: the request below waits

        def waiting_request():
            try:
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT 1")
                    return cursor.fetchone(), connections["default"].database.pool
            finally:
                connections["default"].close()

        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            waiting = executor.submit(waiting_request)
            wait_until(lambda: old.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
            configure_pool("default", max_size=2)  # closes the old pool
            self.assertTrue(old.closed)
            row, pool = waiting.result(30)  # not PoolClosed
        self.assertEqual(row, (1,))
        self.assertIsNot(pool, old)
        self.assertEqual(pool.config.max_size, 2)
        connection.close()

    def test_configure_pool_and_friends_refuse_aliases_they_cannot_pool(self):
        from django_pooled_pg.conf import configure_pool, reset_pool_config
        from django_pooled_pg.targets import add_prepare_target

        from .helpers import add_alias

        add_alias(self, "plain", settings_for(OPTIONS={"pool": False}))
        add_alias(self, "stock", {**settings_for(), "ENGINE": "django.db.backends.postgresql"})
        self.addCleanup(reset_pool_config)
        refusals = [
            (lambda: configure_pool("defualt", max_size=2),
             "configure_pool(): no database alias 'defualt' in DATABASES (known: default"),
            (lambda: reset_pool_config("defualt"), "reset_pool_config(): no database alias"),
            (lambda: configure_pool("plain", max_size=2),
             "DATABASES['plain']['OPTIONS']['pool'] is False (pooling turned off)"),
            (lambda: configure_pool("stock", max_size=2),
             "DATABASES['stock']['ENGINE'] is 'django.db.backends.postgresql', not "
             "django_pooled_pg"),
            (lambda: add_prepare_target("SELECT 1", using="stock"),
             "add_prepare_target(): DATABASES['stock']['ENGINE']"),
            (lambda: add_prepare_target("SELECT 1", using="plain"),
             "add_prepare_target(using='plain'): DATABASES['plain']['OPTIONS']['pool'] is False"),
        ]  # fmt: skip
        # using=None registers for the pooled aliases only
        from django_pooled_pg import targets

        add_prepare_target("SELECT 12345")
        self.addCleanup(targets.clear_prepare_targets)
        registered = {alias for alias, sql, *_ in targets._registered if "12345" in sql}
        self.assertNotIn("plain", registered)
        self.assertIn("default", registered)
        for call, message in refusals:
            with self.subTest(message), self.assertRaisesMessage(ImproperlyConfigured, message):
                call()
        # Options set while an alias was pooled do not pool it once its settings say False.
        add_alias(self, "later_plain", settings_for())
        configure_pool("later_plain", max_size=2)
        from django.db import connections

        later = connections.settings["later_plain"]
        later["OPTIONS"] = {"pool": False}
        self.assertIsNone(DatabaseWrapper(later, "later_plain").pool_config)

    def test_connection_params_are_the_callers_to_edit(self):
        from django.db import connection

        connection.ensure_connection()  # (the lease target, parameters included, is cached)
        self.addCleanup(connection.close)
        params = connection.get_connection_params()
        params["dbname"] = "somewhere_else"
        self.assertNotEqual(connection.get_connection_params()["dbname"], "somewhere_else")

    def test_a_backend_built_on_this_one_gets_the_startup_checks(self):
        params = server_params()
        code = f"""
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["django_pooled_pg"], DATABASES={{"default": {{
    "ENGINE": "tests.subclassed_backend", "NAME": "postgres", "USER": {params["user"]!r},
    "HOST": {params["host"]!r}, "PORT": {str(params["port"])!r},
    "OPTIONS": {{"pool": {{"max_size": 0}}}}}}}})
django.setup()
"""
        result = run_python(code)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(
            "ImproperlyConfigured: DATABASES['default']['OPTIONS']['pool']: max_size must be at "
            "least 1", result.stderr
        )  # fmt: skip

    def test_a_request_waiting_when_the_pools_close_for_good_gets_pool_closed(self):
        from django.db import OperationalError, connections

        from django_pooled_pg.conf import configure_pool, reset_pool_config
        from django_pooled_pg.pool import close_all_pools

        from .helpers import wait_until

        self.addCleanup(reset_pool_config, "default")
        connection.close()
        configure_pool("default", max_size=1, timeout=30)
        old = connection.database.pool
        connection.ensure_connection()

        def waiting_request():
            try:
                with connections["default"].cursor():
                    return "leased"
            except OperationalError as error:
                return str(error)
            finally:
                connections["default"].close()

        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            waiting = executor.submit(waiting_request)
            wait_until(lambda: old.get_stats()[S.REQUESTS_WAITING] == 1, what="a waiter")
            close_all_pools()  # as at interpreter exit: no new pool, no new connection
            self.assertIn("was closed while waiting", waiting.result(30))
        connection.close()

    def test_connection_database_shows_the_new_pool_after_configure_pool(self):
        from django_pooled_pg.conf import configure_pool, reset_pool_config

        self.addCleanup(reset_pool_config, "default")
        self.addCleanup(connection.close)
        request_started.send(sender=None)
        connection.ensure_connection()
        request_finished.send(sender=None)  # the lease parks: still the wrapper's
        configure_pool("default", max_size=3)
        self.assertFalse(connection.database.pool.closed)
        self.assertEqual(connection.database.pool.config.max_size, 3)

        from django.db import connections

        from .helpers import add_alias

        # (their own application_name makes the connection parameters the same)
        same = settings_for(OPTIONS={"application_name": "shop", "pool": {"max_size": 1}})
        add_alias(self, "primary", same)
        add_alias(self, "replica", dict(same))
        with connections["primary"].cursor(), connections["replica"].cursor():
            # one connection each: with one pool of max_size 1, the second would time out
            primary, replica = connections["primary"].database, connections["replica"].database
            self.assertIsNot(primary.pool, replica.pool)
            self.assertTrue(replica.pool.name.startswith("replica:"), replica.pool.name)
            self.assertEqual(replica.get_stats()[S.POOL_LEASED], 1)

        from django_pooled_pg.registry import close_pools

        connection.ensure_connection()
        old = connection.database.pool
        connection.close()
        self.assertGreaterEqual(close_pools(), 1)
        self.assertTrue(old.closed)
        connection.ensure_connection()
        self.assertIsNot(connection.database.pool, old)
        connection.close()
