"""Prepared plans for hot querysets: same results as unprepared, reuse, re-preparation, safety."""

import datetime
import decimal
import io

import psycopg2
import psycopg2.extras
from django.core.signals import request_finished, request_started
from django.db import OperationalError, connection, transaction
from django.db.models import Count, DecimalField, ExpressionWrapper, F, Q, TextField, Value
from django.db.models.functions import Coalesce
from shop.models import Category, Product, Review, Supplier

from django_pooled_pg import targets
from django_pooled_pg.pool.prepared import (
    UnpreparableStatement,
    _rewrite,
    check_preparable,
    parameter_types,
)

from .helpers import admin_connection, backend_gone, query, run_in_threads, wait_until
from .test_lease_safety import PooledAliasTestCase

UTC = datetime.timezone.utc


def server_statements():
    """Our prepared statements on the current lease's session, as the server lists them."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE name LIKE 'djpp%%' ORDER BY name"
        )
        return cursor.fetchall()


def stats_of(name):
    return next(s for s in connection.database.prepared_stats() if s["name"] == name)


class PreparedTestCase(PooledAliasTestCase):
    pool_options = {"max_size": 1}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        category = Category.objects.create(name="prep")
        supplier = Supplier.objects.create(name="prep", country="FI")
        cls.products = [
            Product.objects.create(name=f"prep {i}", category=category, supplier=supplier,
                                   price=decimal.Decimal(f"{i}.50"))
            for i in range(3)
        ]  # fmt: skip
        base = datetime.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
        cls.reviews = [
            Review.objects.create(
                product=cls.products[i % 3],
                rating=i % 5 + 1,
                title=f"title {i}" + (" 100% sure" if i == 4 else ""),
                body=None if i % 3 == 0 else f"body {i}",
                published=None if i % 4 == 0 else datetime.date(2024, 1, 1 + i),
                created=base + datetime.timedelta(hours=i),
                details=None if i == 7 else {"score": i, "tags": ["x"] * (i % 2), "ok": i > 3},
                tags=["red", "big"][: i % 3],
            )
            for i in range(12)
        ]
        cls.addClassCleanup(Category.objects.filter(pk=category.pk).delete)
        cls.addClassCleanup(Supplier.objects.filter(pk=supplier.pk).delete)

    def setUp(self):
        super().setUp()
        self.addCleanup(targets.clear_prepare_targets)


class _Datetime(datetime.datetime):
    """A datetime subclass, as freezegun's."""


class SameResultsTests(PreparedTestCase):
    """Every queryset gives the same rows prepared and unprepared, for several values."""

    CASES = {
        "int": (lambda v: Review.objects.filter(rating=v).order_by("pk"), [1, 3, 5, 9]),
        "int range": (
            lambda v: Review.objects.filter(rating__gte=v[0], rating__lt=v[1]).order_by("-created"),
            [(1, 3), (2, 6), (5, 5)],
        ),  # fmt: skip
        "text": (
            lambda v: Review.objects.filter(title=v).values_list("pk", "body"),
            ["title 1", "title 4 100% sure", "nope", ""],
        ),  # fmt: skip
        "text like": (
            lambda v: (
                Review.objects.filter(title__contains=v)
                .order_by("pk")
                .values_list("title", flat=True)
            ),
            ["1", "%", "_", "title"],
        ),  # fmt: skip
        "date": (
            lambda v: Review.objects.filter(published__lte=v).order_by("pk"),
            [datetime.date(2024, 1, 5), datetime.date(2023, 1, 1)],
        ),  # fmt: skip
        "timestamptz": (
            lambda v: Review.objects.filter(created__gt=v).order_by("pk"),
            [
                datetime.datetime(2024, 3, 1, 15, 30, tzinfo=UTC),
                datetime.datetime(
                    2024, 3, 1, 20, tzinfo=datetime.timezone(datetime.timedelta(hours=5))
                ),
            ],
        ),  # fmt: skip
        "json key": (
            lambda v: Review.objects.filter(details__score=v).order_by("pk"),
            [2, 5, 40],
        ),  # fmt: skip
        "json contains": (
            lambda v: Review.objects.filter(details__contains=v).order_by("pk"),
            [{"ok": True}, {"ok": False, "score": 2}],
        ),  # fmt: skip
        "array contains": (
            lambda v: Review.objects.filter(tags__contains=v).order_by("pk"),
            [["red"], ["big"], ["nope"]],
        ),  # fmt: skip
        "array overlap": (
            lambda v: Review.objects.filter(tags__overlap=v).order_by("pk"),
            [["red", "big"], ["big", "zzz"]],
        ),  # fmt: skip
        "is null": (
            lambda v: Review.objects.filter(body__isnull=True, rating__gt=v).order_by("pk"),
            [0, 3],
        ),  # fmt: skip
        "coalesce": (
            lambda v: (
                Review.objects.annotate(text=Coalesce("body", Value(v, output_field=TextField())))
                .order_by("pk")
                .values_list("pk", "text")
            ),
            ["default", ""],
        ),  # fmt: skip
        "decimal join": (
            lambda v: (
                Review.objects.filter(product__price__gt=v)
                .order_by("pk")
                .values_list("pk", "product__name")
            ),
            [decimal.Decimal("0.5"), decimal.Decimal("1.75")],
        ),  # fmt: skip
        "in lists": (
            lambda v: Review.objects.filter(rating__in=v).order_by("pk"),
            [[1], [1, 2], [2, 3, 4, 5, 99], [5, 4]],
        ),  # fmt: skip
        "not in": (
            lambda v: Review.objects.exclude(title__in=v).order_by("pk"),
            [["title 1"], ["title 2", "title 3", "title 11"]],
        ),  # fmt: skip
        "annotate value": (
            lambda v: (
                Review.objects.filter(rating=v)
                .annotate(plus=F("rating") + Value(v), label=Value("x"))
                .values_list("pk", "plus", "label")
            ),
            [1, 2],
        ),  # fmt: skip
        "aggregate": (
            lambda v: (
                Product.objects.filter(review__rating__gte=v)
                .annotate(n=Count("review"))
                .order_by("pk")
                .values_list("pk", "n")
            ),
            [1, 4],
        ),  # fmt: skip
        "or": (
            lambda v: Review.objects.filter(Q(rating=v) | Q(published=None)).order_by("pk"),
            [2, 3],
        ),  # fmt: skip
        # psycopg2 writes Decimal("2") as 2, an integer: rating / 2 is integer division
        "whole decimal": (
            lambda v: (
                Review.objects.annotate(
                    half=ExpressionWrapper(F("rating") / v, output_field=DecimalField())
                )
                .order_by("pk")
                .values_list("pk", "half")
            ),
            [decimal.Decimal("2"), decimal.Decimal("2.0"), decimal.Decimal("4")],
        ),  # fmt: skip
        # IN lists: each element keeps the type its literal has (2**40 is int8, 2.5 numeric)
        "in lists of numbers": (
            lambda v: Review.objects.filter(rating__in=v).order_by("pk").values_list("pk"),
            [[1, 2**40], [2.5, 1], [decimal.Decimal("3"), 4]],
        ),  # fmt: skip
        "in lists of strings": (
            lambda v: Review.objects.filter(title__in=v).order_by("pk"),
            [["title 1", 'title "2"'], ["title 4 100% sure", "back\\slash", "title 5"]],
        ),  # fmt: skip
        # freezegun's timezone.now() returns a datetime subclass
        "datetime subclass": (
            lambda v: Review.objects.filter(created__gt=v).order_by("pk").values_list("pk"),
            [_Datetime(2024, 3, 1, 15, 30, tzinfo=UTC), _Datetime(2024, 3, 1, 18, tzinfo=UTC)],
        ),  # fmt: skip
    }

    def test_results_identical_prepared_and_unprepared(self):
        for label, (make, values) in self.CASES.items():
            with self.subTest(label):
                unprepared = [list(make(v)) for v in values]
                connection.database.add_prepare_target(make(values[0]), name=label)
                prepared = [list(make(v)) for v in values]
                self.assertEqual(prepared, unprepared)
                stats = stats_of(label)
                self.assertEqual(stats["fallbacks"], 0, stats)
                self.assertEqual(stats["hits"], len(values), stats)
                self.assertGreaterEqual(stats["prepares"], 1)

    def test_null_parameters(self):
        sql = (
            "SELECT id, coalesce(%s, title) FROM shop_review "
            "WHERE body IS NOT DISTINCT FROM %s AND rating > %s ORDER BY id"
        )
        values = [(None, None, 0), ("x", "body 1", 0), (None, None, 2), ("y", None, None)]

        def run_all():
            with connection.cursor() as cursor:
                results = []
                for params in values:
                    cursor.execute(sql, params)
                    results.append(cursor.fetchall())
                return results

        unprepared = run_all()
        connection.database.add_prepare_target(sql, name="nulls")
        self.assertEqual(run_all(), unprepared)
        stats = stats_of("nulls")
        self.assertEqual((stats["hits"], stats["fallbacks"]), (4, 0))
        # An int, then None, in the third place: two type signatures, two statements.
        self.assertEqual(stats["type_signatures"], 2)

    def test_in_lists_of_any_length_share_one_statement(self):
        make = self.CASES["in lists"][0]
        connection.database.add_prepare_target(make([1, 2]), name="in")
        for values in ([1], [1, 2], [1, 2, 3], list(range(1, 40))):
            list(make(values))
        stats = stats_of("in")
        self.assertEqual((stats["hits"], stats["prepares"]), (4, 1))
        self.assertEqual(len(server_statements()), 1)

    def test_the_statement_runs_as_execute_on_the_server(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="srv")
        for rating in (1, 2, 3):
            list(Review.objects.filter(rating=rating))
        self.assertEqual(len(server_statements()), 1)
        admin = admin_connection()
        self.addCleanup(admin.close)
        # The backend's last statement, seen from outside: an EXECUTE, not the SELECT.
        pid = connection.connection.get_backend_pid()
        list(Review.objects.filter(rating=4))
        (last,) = query(admin, "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])[0]
        self.assertTrue(last.startswith("EXECUTE djpp_"), last)

    def test_top_queries_show_the_original_sql(self):
        connection.database.reset_query_stats()
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="stats")
        for rating in (1, 2):
            list(Review.objects.filter(rating=rating))
        shown = [q["sql"] for q in connection.database.top_queries(50)]
        self.assertTrue(any('FROM "shop_review"' in q for q in shown), shown)
        self.assertFalse(any("EXECUTE" in q for q in shown), shown)


class ReuseTests(PreparedTestCase):
    def test_reused_across_leases_and_prepared_again_on_a_new_connection(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="reuse")
        pids = []
        for rating in (1, 2, 3):
            request_started.send(sender=None)
            found = list(Review.objects.filter(rating=rating))
            self.assertEqual(len(found), 3 if rating < 3 else 2)
            pids.append(connection.connection.get_backend_pid())
            request_finished.send(sender=None)
            connection.close()
        self.assertEqual(len(set(pids)), 1, "max_size=1: one physical connection")
        stats = stats_of("reuse")
        self.assertEqual((stats["hits"], stats["prepares"]), (3, 1))
        # A new physical connection prepares it again.
        admin = admin_connection()
        self.addCleanup(admin.close)
        query(admin, "SELECT pg_terminate_backend(%s)", [pids[0]])
        # (pg_terminate_backend() only signals: wait for the backend to go, as a request
        # arriving later would find it)
        wait_until(backend_gone(pids[0]), what="the backend to exit")
        connection.database.pool.run_maintenance()
        self.assertEqual(len(list(Review.objects.filter(rating=4))), 2)
        self.assertNotEqual(connection.connection.get_backend_pid(), pids[0])
        self.assertEqual(stats_of("reuse")["prepares"], 2)

    def test_statements_survive_the_session_reset(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="reset")
        list(Review.objects.filter(rating=1))
        with connection.cursor() as cursor:
            cursor.execute("SET search_path TO public")  # a full reset is due on return
        connection.close()
        self.assertEqual(connection.database.get_stats().get("resets_num", 0), 1)
        list(Review.objects.filter(rating=2))
        self.assertEqual(stats_of("reset")["prepares"], 1)
        self.assertEqual(len(server_statements()), 1)

    def test_a_shape_registered_again_finds_its_statement_still_prepared(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="again")
        list(Review.objects.filter(rating=1))
        targets.clear_prepare_targets()
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="again")
        self.assertEqual(len(list(Review.objects.filter(rating=2))), 3)
        self.assertEqual(len(server_statements()), 1)
        stats = stats_of("again")
        self.assertEqual((stats["hits"], stats["prepares"]), (1, 0))

    def test_reset_always_keeps_the_pools_statements(self):
        connection.close()
        from django_pooled_pg.conf import configure_pool

        configure_pool("default", max_size=1, reset="always")
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="always")
        for rating in (1, 2):
            list(Review.objects.filter(rating=rating))
            connection.close()
        self.assertEqual(connection.database.get_stats()["resets_num"], 2)
        self.assertEqual(stats_of("always")["prepares"], 1)

    def test_the_holders_own_prepare_makes_the_reset_deallocate_and_ours_come_back(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="mine")
        list(Review.objects.filter(rating=1))
        with connection.cursor() as cursor:
            cursor.execute("PREPARE users_own AS SELECT 1")
        connection.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT name FROM pg_prepared_statements")
            self.assertEqual(cursor.fetchall(), [], "the reset ran DEALLOCATE ALL")
        self.assertEqual(len(list(Review.objects.filter(rating=2))), 3)
        self.assertEqual(stats_of("mine")["prepares"], 2)

    def test_deallocate_within_a_lease_is_repaired(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="gone")
        list(Review.objects.filter(rating=1))
        with self.assertNoLogs("django_pooled_pg", "WARNING"):
            with connection.cursor() as cursor:
                cursor.execute("DEALLOCATE ALL")
            self.assertEqual(len(list(Review.objects.filter(rating=2))), 3)
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute("DEALLOCATE ALL")
                self.assertEqual(len(list(Review.objects.filter(rating=3))), 2)
        stats = stats_of("gone")
        # (Seen going by: prepared again at once, no failed EXECUTE first.)
        self.assertEqual((stats["hits"], stats["prepares"], stats["fallbacks"]), (3, 3, 0))
        self.assertEqual(stats["reprepares"], 0)

    def test_a_holders_statement_under_our_name_is_never_run_for_the_target(self):
        connection.database.add_prepare_target("SELECT 1 WHERE 1 = %s", name="hijack")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 WHERE 1 = %s", [1])
            (name,) = [row[0] for row in server_statements()]
            cursor.execute(f"DEALLOCATE {name}; PREPARE {name}(int4) AS SELECT 2 WHERE 1 = $1")
            cursor.execute("SELECT 1 WHERE 1 = %s", [1])
            self.assertEqual(cursor.fetchall(), [(1,)])
        self.assertEqual(stats_of("hijack")["hits"], 2)

    def test_a_statement_vanishing_unseen_warns_about_pgbouncer(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="bouncer")
        list(Review.objects.filter(rating=1))
        # As if a transaction-mode PgBouncer had switched server connections: the statement
        # is gone and nothing the holder sent through the pool explains it.
        with connection.connection._conn.cursor() as raw:
            raw.execute("DEALLOCATE ALL")
        with self.assertLogs("django_pooled_pg", "WARNING") as logs:
            self.assertEqual(len(list(Review.objects.filter(rating=2))), 3)
        self.assertIn("PgBouncer", logs.output[0])
        self.assertEqual(stats_of("bouncer")["reprepares"], 1)

    def test_least_recently_used_statement_is_deallocated_at_the_cap(self):
        connection.close()
        from django_pooled_pg.conf import configure_pool

        configure_pool("default", max_size=1, max_prepared=2)
        shapes = {
            "t1": lambda: Review.objects.filter(rating=9),
            "t2": lambda: Review.objects.filter(title="none"),
            "t3": lambda: Review.objects.filter(product_id=-1),
        }
        for name, make in shapes.items():
            connection.database.add_prepare_target(make(), name=name)
        for _ in range(2):
            for make in shapes.values():
                self.assertEqual(list(make()), [])
                self.assertLessEqual(len(server_statements()), 2)
        # Round-robin over three with room for two: every execution evicts the oldest.
        self.assertEqual(sum(stats_of(name)["prepares"] for name in shapes), 6)
        list(shapes["t3"]())  # the most recent: kept
        self.assertEqual(stats_of("t3")["prepares"], 2)


class AlterTableTests(PreparedTestCase):
    def setUp(self):
        super().setUp()
        admin = admin_connection()
        self.addCleanup(admin.close)
        self.admin = admin
        query(admin, "DROP TABLE IF EXISTS prep_alter")
        query(admin, "CREATE TABLE prep_alter (id int PRIMARY KEY, name varchar(20))")
        query(admin, "INSERT INTO prep_alter VALUES (1, 'one'), (2, 'two')")
        self.addCleanup(query, admin, "DROP TABLE IF EXISTS prep_alter")
        self.sql = "SELECT id, name FROM prep_alter WHERE id = %s"
        connection.database.add_prepare_target(self.sql, name="alter")

    def run_target(self, pk):
        with connection.cursor() as cursor:
            cursor.execute(self.sql, [pk])
            return cursor.fetchall()

    def test_result_type_change_is_prepared_again_in_autocommit(self):
        self.assertEqual(self.run_target(1), [(1, "one")])
        query(self.admin, "ALTER TABLE prep_alter ALTER COLUMN id TYPE bigint")
        self.assertEqual(self.run_target(2), [(2, "two")])
        stats = stats_of("alter")
        self.assertEqual((stats["hits"], stats["reprepares"], stats["fallbacks"]), (2, 1, 0))

    def test_result_type_change_inside_a_transaction_keeps_it_usable(self):
        self.assertEqual(self.run_target(1), [(1, "one")])
        query(self.admin, "ALTER TABLE prep_alter ALTER COLUMN name TYPE text")
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("INSERT INTO prep_alter VALUES (3, 'three')")
            self.assertEqual(self.run_target(3), [(3, "three")])  # in the same transaction
            self.assertEqual(self.run_target(2), [(2, "two")])
        self.assertEqual(query(self.admin, "SELECT name FROM prep_alter WHERE id = 3"),
                         [("three",)])  # fmt: skip
        self.assertEqual(stats_of("alter")["reprepares"], 1)

    def test_a_parameter_type_the_server_inferred_is_inferred_again_after_alter(self):
        # '1' is a string: its type was inferred from the column (int) at PREPARE.
        self.assertEqual(self.run_target("1"), [(1, "one")])
        query(self.admin, "ALTER TABLE prep_alter ALTER COLUMN id TYPE text")
        self.assertEqual(self.run_target("2"), [("2", "two")])  # not "text = integer"
        with transaction.atomic():
            self.assertEqual(self.run_target("1"), [("1", "one")])
        stats = stats_of("alter")
        self.assertEqual((stats["hits"], stats["reprepares"], stats["fallbacks"]), (3, 1, 0))

    def test_a_column_added_needs_no_new_statement(self):
        self.assertEqual(self.run_target(1), [(1, "one")])
        query(self.admin, "ALTER TABLE prep_alter ADD COLUMN extra int")
        self.assertEqual(self.run_target(1), [(1, "one")])
        self.assertEqual(stats_of("alter")["reprepares"], 0)


class TransactionSafetyTests(PreparedTestCase):
    def test_failed_prepare_inside_atomic_falls_back_and_the_transaction_commits(self):
        # PREPARE cannot type a lone NULL parameter; the plain statement runs fine.
        sql = "SELECT 1 WHERE %s IS NULL"
        connection.database.add_prepare_target(sql, name="untyped")
        with self.assertLogs("django_pooled_pg", "WARNING") as logs:
            with transaction.atomic():
                category = Category.objects.create(name="survives")
                with connection.cursor() as cursor:
                    cursor.execute(sql, [None])
                    self.assertEqual(cursor.fetchall(), [(1,)])
                    cursor.execute(sql, [None])  # known to fail: not tried again
                    self.assertEqual(cursor.fetchall(), [(1,)])
                Category.objects.filter(pk=category.pk).update(name="still usable")
        self.assertIn("could not determine data type", "\n".join(logs.output))
        self.assertEqual(Category.objects.get(pk=category.pk).name, "still usable")
        category.delete()
        stats = stats_of("untyped")
        self.assertEqual((stats["hits"], stats["fallbacks"]), (0, 2))
        self.assertEqual(len(stats["unpreparable"]), 1)

    def test_a_lock_timeout_on_prepare_does_not_turn_the_target_off(self):
        # A migration holds the table: PREPARE times out on the lock, and so would the
        # plain query. Once the lock is gone the target is prepared as if nothing happened.
        sql = "SELECT count(*) FROM shop_review WHERE rating = %s"
        connection.database.add_prepare_target(sql, name="locked")
        locker = admin_connection()
        self.addCleanup(locker.close)
        query(locker, "BEGIN")
        query(locker, "LOCK TABLE shop_review IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '100ms'")
            with self.assertRaisesMessage(OperationalError, "lock timeout"):
                cursor.execute(sql, [1])
        query(locker, "ROLLBACK")
        with connection.cursor() as cursor:
            cursor.execute(sql, [1])
            cursor.execute(sql, [1])
        stats = stats_of("locked")
        self.assertEqual(stats["unpreparable"], {})
        self.assertEqual((stats["prepares"], stats["hits"]), (1, 2))

    def test_the_guard_savepoint_never_breaks_the_holders_savepoints(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="sp")
        with transaction.atomic():
            list(Review.objects.filter(rating=1))
            try:
                with transaction.atomic():
                    list(Review.objects.filter(rating=2))
                    Category.objects.create(name="rolled back")
                    list(Review.objects.filter(rating=3))
                    raise RuntimeError
            except RuntimeError:
                pass
            list(Review.objects.filter(rating=4))
            kept = Category.objects.create(name="kept")
        self.assertFalse(Category.objects.filter(name="rolled back").exists())
        self.assertTrue(Category.objects.filter(pk=kept.pk).exists())
        kept.delete()
        self.assertEqual(stats_of("sp")["hits"], 4)

    def test_a_real_error_still_aborts_the_transaction_as_unprepared(self):
        sql = "SELECT 1 / %s"
        connection.database.add_prepare_target(sql, name="div")
        from django.db import DatabaseError, DataError

        with self.assertRaises(DatabaseError):
            with transaction.atomic():
                with connection.cursor() as cursor:
                    cursor.execute(sql, [1])
                    try:
                        cursor.execute(sql, [0])
                    except DataError:
                        pass
                    cursor.execute("SELECT 1")  # the transaction is aborted, as without PREPARE
        self.assertEqual(stats_of("div")["reprepares"], 0)


class RegistrationTests(PreparedTestCase):
    def test_sql_prepare_cannot_take_is_refused_at_registration(self):
        for bad, words in [
            ("SELECT 1; SELECT 2", "one statement"),
            ("COPY shop_review TO STDOUT", "PREPARE takes only"),
            ("SET search_path TO x", "PREPARE takes only"),
            ("SELECT %(name)s", "only %s placeholders"),
            ("SELECT $1", "not $n"),
            # psycopg2's ORDER BY 2 sorts by the second column; EXECUTE's $1 by a constant
            ("SELECT id, rating FROM shop_review ORDER BY %s", "ORDER BY or GROUP BY a bare %s"),
            ("SELECT rating FROM shop_review GROUP BY rating, %s DESC", "GROUP BY a bare %s"),
        ]:
            with self.subTest(bad), self.assertRaisesMessage(UnpreparableStatement, words):
                connection.database.add_prepare_target(bad)
        for fine in (
            "SELECT id FROM shop_review ORDER BY (%s)::integer, rating LIMIT %s",  # Django's
            "SELECT row_number() OVER (ORDER BY id) FROM shop_review WHERE rating = %s",
        ):
            with self.subTest(fine):
                check_preparable(fine)  # no error
        with self.assertRaisesMessage(UnpreparableStatement, "never runs a query"):
            connection.database.add_prepare_target(Review.objects.filter(pk__in=[]))
        with self.assertRaisesMessage(TypeError, "QuerySet or SQL text"):
            connection.database.add_prepare_target(42)
        with self.assertRaisesMessage(ValueError, "'force_generic_plan'"):
            connection.database.add_prepare_target("SELECT 1", plan_cache_mode="always")
        self.assertEqual(connection.database.prepared_stats(), [])

    def test_registering_the_same_target_again_replaces_it(self):
        for mode in ("force_custom_plan", "force_generic_plan"):
            connection.database.add_prepare_target(Review.objects.filter(rating=1), name=mode,
                                                   plan_cache_mode=mode)  # fmt: skip
        self.assertEqual(len(targets._registered), 1)
        (stats,) = connection.database.prepared_stats()
        self.assertEqual((stats["name"], stats["plan_cache_mode"]), ("force_generic_plan",) * 2)

    def test_a_target_registered_before_the_pool_exists(self):
        connection.close()
        from django_pooled_pg import add_prepare_target
        from django_pooled_pg.registry import close_pools

        close_pools()  # as at startup: no pool yet
        add_prepare_target(Review.objects.filter(rating=1), name="early")
        self.assertEqual(len(list(Review.objects.filter(rating=2))), 3)
        self.assertEqual(stats_of("early")["hits"], 1)

    def test_prepare_false_turns_it_off(self):
        connection.close()
        from django_pooled_pg.conf import configure_pool

        configure_pool("default", max_size=1, prepare=False)
        connection.database.add_prepare_target(Review.objects.filter(rating=1))
        self.assertEqual(len(list(Review.objects.filter(rating=2))), 3)
        self.assertEqual(server_statements(), [])
        self.assertEqual(connection.database.prepared_stats(), [])


class PlanCacheModeTests(PreparedTestCase):
    def test_each_target_runs_under_its_own_plan_cache_mode(self):
        modes = {"force_generic_plan": (3, 0), "force_custom_plan": (0, 3), None: (0, 3)}
        for mode, (generic, custom) in modes.items():
            with self.subTest(mode):
                targets.clear_prepare_targets()
                connection.database.add_prepare_target(
                    Review.objects.filter(rating=1), plan_cache_mode=mode
                )
                for rating in (1, 2, 3):
                    list(Review.objects.filter(rating=rating))
                ((_, generic_plans, custom_plans),) = server_statements()
                self.assertEqual((generic_plans, custom_plans), (generic, custom))
                with connection.cursor() as cursor:
                    cursor.execute("SHOW plan_cache_mode")
                    self.assertEqual(cursor.fetchone(), ("auto",), "SET LOCAL: not kept")
                with connection.cursor() as cursor:
                    cursor.execute("DEALLOCATE ALL")

    def show_plan_cache_mode(self):
        with connection.cursor() as cursor:
            cursor.execute("SHOW plan_cache_mode")
            return cursor.fetchone()[0]

    def test_a_targets_mode_ends_with_its_execute_inside_the_holders_transaction(self):
        # The mode is SET LOCAL under the guard savepoint, and releasing a savepoint keeps
        # what SET LOCAL did: without the restore, the rest of the holder's transaction
        # (its own queries) would run under the target's plan_cache_mode.
        connection.database.add_prepare_target(
            Review.objects.filter(rating=1), plan_cache_mode="force_generic_plan"
        )
        with transaction.atomic():
            self.assertEqual(len(list(Review.objects.filter(rating=1))), 3)
            self.assertEqual(self.show_plan_cache_mode(), "auto")
            with connection.cursor() as cursor:  # the holder's own choice is kept...
                cursor.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            self.assertEqual(len(list(Review.objects.filter(rating=2))), 3)
            self.assertEqual(self.show_plan_cache_mode(), "force_custom_plan")
            self.assertEqual(len(list(Review.objects.filter(rating=3))), 2)
            with connection.cursor() as cursor:  # a COPY cannot carry it: a round trip of its own
                cursor.copy_expert("COPY (SELECT current_setting('plan_cache_mode')) TO STDOUT",
                                   copied := io.StringIO())  # fmt: skip
            self.assertEqual(copied.getvalue(), "force_custom_plan\n")
        ((_, generic_plans, custom_plans),) = server_statements()
        self.assertEqual((generic_plans, custom_plans), (3, 0))  # ...and the target's mode
        self.assertEqual(self.show_plan_cache_mode(), "auto")

    def test_the_holders_mode_is_read_back_whatever_its_cursor_class(self):
        # After a SET the pool asks the server for the holder's mode: not through the
        # holder's cursor, whose class may return rows as dicts.
        connection.database.add_prepare_target(
            Review.objects.filter(rating=1), name="dicts", plan_cache_mode="force_generic_plan"
        )
        sql, params = connection.ops.compiler("SQLCompiler")(
            Review.objects.filter(rating=1).query, connection, "default"
        ).as_sql()
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            cursor = connection.connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
            cursor.execute(sql, params)
            self.assertEqual(len(cursor.fetchall()), 3)
            cursor.execute("SELECT current_setting('plan_cache_mode') AS mode")
            self.assertEqual(cursor.fetchall(), [{"mode": "force_custom_plan"}])
        self.assertEqual(stats_of("dicts")["hits"], 1)


class ConcurrencyTests(PreparedTestCase):
    pool_options = {"max_size": 4, "timeout": 60}

    def test_16_threads_share_statements_per_connection_with_right_results(self):
        connection.database.add_prepare_target(
            Review.objects.filter(rating__in=[1, 2]).order_by("pk").values_list("pk", flat=True),
            name="threads",
        )
        expected = {
            rating: [r.pk for r in self.reviews if r.rating == rating] for rating in range(1, 6)
        }
        problems, done = [], []

        def worker(seed):
            for i in range(150):
                request_started.send(sender=None)
                ratings = [(seed + i) % 5 + 1, (seed * 7 + i) % 5 + 1]
                got = list(Review.objects.filter(rating__in=ratings).order_by("pk")
                           .values_list("pk", flat=True))  # fmt: skip
                want = sorted(set(expected[ratings[0]] + expected[ratings[1]]))
                if got != want:
                    problems.append((ratings, got, want))
                request_finished.send(sender=None)
                done.append(1)
            connection.close()

        run_in_threads(worker, 16, timeout=120)
        self.assertEqual(problems, [])
        self.assertEqual(len(done), 16 * 150)
        stats = stats_of("threads")
        self.assertEqual((stats["hits"], stats["fallbacks"]), (16 * 150, 0))
        # One PREPARE per physical connection (the pool opened at most four).
        opened = connection.database.get_stats()["connections_num"]
        self.assertEqual(stats["prepares"], opened)


class RewriteTests(PreparedTestCase):
    def test_rewrite_numbers_placeholders_and_packs_in_lists(self):
        shape, body, slices = _rewrite(
            "SELECT * FROM t WHERE a = %s AND b IN (%s, %s, %s) AND NOT (c IN (%s)) "
            "AND d LIKE 'x%%' AND e NOT IN (%s, %s)"
        )
        self.assertEqual(
            body,
            "SELECT * FROM t WHERE a = $1 AND b = ANY($2) AND NOT (c = ANY($3)) "
            "AND d LIKE 'x%' AND e <> ALL($4)",
        )
        self.assertEqual(slices, (0, slice(1, 4), slice(4, 5), slice(5, 7)))
        self.assertEqual(shape, _rewrite(shape)[0], "a shape is its own shape")

    def test_declared_types_follow_psycopg2s_literals(self):
        self.assertEqual(
            parameter_types([1, 2**40, 1.5, float("inf"), decimal.Decimal(1), True, "s", None,
                             datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1),
                             datetime.datetime(2024, 1, 1, tzinfo=UTC), [1], b"x"]),
            ("int4", "int8", "numeric", "float8", "int4", "bool", "unknown", "unknown",
             "date", "timestamp", "timestamptz", "int4[]", "bytea"),
        )  # fmt: skip
        self.assertEqual(
            parameter_types([decimal.Decimal("2.0"), decimal.Decimal("NaN"), [1, 2**40],
                             [1.5, 1], ["a", None], [], _Datetime(2024, 1, 1)]),
            ("numeric", "numeric", "int8[]", "numeric[]", "text[]", "unknown", "timestamp"),
        )  # fmt: skip
        for untyped in ([None], [[1]], [1, "a"]):  # (run unprepared)
            self.assertIsNone(parameter_types([untyped]), untyped)

    def test_raw_sql_gives_what_psycopg2s_literals_give(self):
        cases = [  # (sql, params, hits: 1 prepared, 0 run unprepared)
            ("SELECT 7 / %s, pg_typeof(%s)::text", [decimal.Decimal("2")] * 2, 1),
            ("SELECT id FROM shop_review WHERE id IN (%s, %s) ORDER BY id", [1.5, 2**40], 1),
            ("SELECT count(*) FROM shop_review WHERE id IN (%s, %s)", ["1", "2"], 1),
            ("SELECT count(*) AS n FROM shop_review WHERE id = ANY(%s)", [[2.5]], 1),
            ("SELECT %s", [_Datetime(2024, 1, 1, tzinfo=UTC)], 1),
            # Django's BinaryField sends psycopg2.Binary: '...'::bytea, not text
            ("SELECT length(%s), md5(%s)", [psycopg2.Binary(b"abc")] * 2, 1),
            # Adapter objects that write a literal with a type of their own run
            # unprepared: declared "unknown", EXECUTE would read them as text.
            ("SELECT %s + 1", [psycopg2.Date(2024, 1, 1)], 0),
            ("SELECT upper(%s)", [psycopg2.extras.NumericRange(1, 5)], 0),
        ]
        for sql, params, hits in cases:
            with self.subTest(sql):
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    unprepared = cursor.fetchall()
                connection.database.add_prepare_target(sql, name=sql)
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    self.assertEqual(cursor.fetchall(), unprepared)
                self.assertEqual(stats_of(sql)["hits"], hits)
        with self.assertRaises(TypeError), connection.cursor() as cursor:  # as psycopg2 says
            cursor.execute("SELECT id FROM shop_review WHERE id = %s", [1, 2])


class GuardReleaseTests(PreparedTestCase):
    def test_named_cursors_copy_and_callproc_after_a_prepared_execute_in_a_transaction(self):
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="guard")
        with transaction.atomic():
            list(Review.objects.filter(rating=1))  # leaves the guard savepoint open
            # QuerySet.iterator() in a transaction: a named cursor (DECLARE ... FOR SELECT)
            ids = [r.pk for r in Review.objects.filter(rating=2).order_by("pk").iterator(2)]
            self.assertEqual(len(ids), 3)
            list(Review.objects.filter(rating=3))
            with connection.cursor() as cursor:
                cursor.copy_expert("COPY (SELECT 1) TO STDOUT", __import__("io").StringIO())
            list(Review.objects.filter(rating=4))
            with connection.cursor() as cursor:
                cursor.callproc("pg_backend_pid")
            list(Review.objects.filter(rating=1))
            with connection.cursor() as cursor:
                copied = __import__("io").StringIO()
                cursor.copy_to(copied, "shop_review", columns=["rating"])
                cursor.execute("CREATE TEMP TABLE guard_copy (rating int)")
                list(Review.objects.filter(rating=1))
                copied.seek(0)
                cursor.copy_from(copied, "guard_copy")
                cursor.execute("SELECT count(*) FROM guard_copy")
                self.assertEqual(cursor.fetchone(), (Review.objects.count(),))
            sid = transaction.savepoint()
            list(Review.objects.filter(rating=5))
            transaction.savepoint_rollback(sid)  # the holder's savepoint is still there
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_prepared_statements")
                self.assertEqual(cursor.fetchone(), (1,))
        self.assertEqual(stats_of("guard")["hits"], 6)

    def test_a_transaction_ended_without_the_handles_commit_leaves_no_release_behind(self):
        # The guard savepoint ends with the transaction: a RELEASE of it sent later would
        # fail, and abort the holder's next transaction.
        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="ended")

        def psycopg2s_with_block():
            with connection.connection:  # psycopg2's: commits on exit
                self.assertEqual(len(list(Review.objects.filter(rating=1))), 3)

        def commit_in_sql():
            self.assertEqual(len(list(Review.objects.filter(rating=1))), 3)
            with connection.cursor() as cursor:
                cursor.execute("COMMIT")

        def psycopg2s_reset():
            self.assertEqual(len(list(Review.objects.filter(rating=1))), 3)
            connection.connection.reset()  # rolls back

        for end in (psycopg2s_with_block, commit_in_sql, psycopg2s_reset):
            with self.subTest(end.__name__):
                connection.set_autocommit(False)
                try:
                    end()
                    self.assertEqual(len(list(Review.objects.filter(rating=1))), 3)
                    self.assertEqual(len(list(Category.objects.filter(pk=987654))), 0)
                finally:
                    connection.rollback()
                    connection.set_autocommit(True)
        self.assertEqual(stats_of("ended")["hits"], 6)


class StartupRegistrationTests(PreparedTestCase):
    def test_the_shops_ready_registers_its_join_and_the_orders_view_runs_prepared(self):
        from django.apps import apps
        from django.test import Client
        from django.utils import timezone
        from shop.models import Customer, Order, OrderLine

        customer = Customer.objects.create(name="prep customer", city="Prepville")
        self.addCleanup(customer.delete)
        for days in (1, 3, 40):
            order = Order.objects.create(
                customer=customer, placed=timezone.now() - datetime.timedelta(days=days)
            )
            OrderLine.objects.create(order=order, product=self.products[days % 3], quantity=days)
        targets.clear_prepare_targets()
        apps.get_app_config("shop").ready()  # what startup did
        client = Client()
        seen = [
            [line["quantity"] for line in client.get(
                "/orders/", {"city": "Prepville", "country": "FI", "days": days}).json()["lines"]]
            for days in (2, 10, 100)
        ]  # fmt: skip
        self.assertEqual(seen, [[1], [1, 3], [1, 3, 40]])
        stats = stats_of("recent order lines")
        self.assertEqual((stats["hits"], stats["fallbacks"]), (3, 0))


class QueryLogTests(PreparedTestCase):
    def test_inside_a_transaction_the_log_shows_no_guard_release(self):
        from django.test.utils import CaptureQueriesContext

        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="txlog")
        with transaction.atomic(), CaptureQueriesContext(connection) as captured:
            list(Review.objects.filter(rating=4))  # prepared: leaves the guard open
            list(Category.objects.filter(pk=987654))  # carries the release before it
        self.assertEqual(stats_of("txlog")["hits"], 1)
        second = captured.captured_queries[-1]["sql"]
        self.assertTrue(second.startswith('SELECT "shop_category"."id"'), second)

    def test_djangos_query_log_shows_the_statement_not_the_execute(self):
        from django.test.utils import CaptureQueriesContext

        connection.database.add_prepare_target(Review.objects.filter(rating=1), name="log")
        with CaptureQueriesContext(connection) as captured:
            list(Review.objects.filter(rating=4))
            list(Category.objects.filter(pk=987654))  # unprepared after a prepared one
        first, second = (q["sql"] for q in captured.captured_queries)
        with connection.cursor() as cursor:  # the same cursor: prepared, then plain SQL
            cursor.execute("SELECT rating FROM shop_review WHERE rating = %s", [5])
            cursor.execute(
                *connection.ops.compiler("SQLCompiler")(
                    Review.objects.filter(rating=4).query, connection, "default"
                ).as_sql()
            )
            self.assertIn(b'rating" = 4', cursor.cursor.query)
            cursor.execute("SELECT 42")
            self.assertEqual(cursor.cursor.query, b"SELECT 42")
        self.assertTrue(first.startswith('SELECT "shop_review"."id"'), first)
        self.assertIn('"shop_review"."rating" = 4', first)
        self.assertIn('"shop_category"."id" = 987654', second)
        self.assertEqual(stats_of("log")["hits"], 2)
