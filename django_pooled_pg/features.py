"""Feature flags: the postgresql backend's, plus the Django tests that cannot apply here."""

from django.db.backends.postgresql.features import DatabaseFeatures as PostgresFeatures
from django.utils.functional import cached_property


class DatabaseFeatures(PostgresFeatures):
    @cached_property
    def django_test_skips(self):  # type: ignore[override]
        skips = dict(super().django_test_skips)
        # Django skips these for its psycopg 3 pool, which turns CONN_HEALTH_CHECKS off.
        # This backend keeps Django's health checks working, so the tests apply (and pass).
        skips.pop("Pool does implicit health checks", None)
        skips["This backend pools psycopg2 connections by design."] = {
            # Proves that the stock backend refuses OPTIONS['pool'] under psycopg2.
            "backends.postgresql.tests.Tests.test_connect_pool_setting_ignored_for_psycopg2",
        }
        return skips
