"""Feature flags: the postgresql backend's, plus the Django tests that cannot apply here."""

from django.db.backends.postgresql.features import DatabaseFeatures as PostgresFeatures
from django.utils.functional import cached_property


class DatabaseFeatures(PostgresFeatures):
    @cached_property
    def django_test_skips(self):  # type: ignore[override]
        skips = dict(super().django_test_skips)
        return skips
