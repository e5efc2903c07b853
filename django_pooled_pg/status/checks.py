"""System checks of the status app: the setting, and where the snapshots go."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import SETTING, parse


@checks.register("django_pooled_pg")
def check_status_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    try:
        conf = parse(getattr(settings, SETTING, None), list(settings.DATABASES))
    except ImproperlyConfigured as error:
        return [checks.Error(str(error), id="django_pooled_pg.status.E001")]
    engine = settings.DATABASES[conf.database].get("ENGINE", "")
    if engine not in ("django_pooled_pg", "django_pooled_pg.base", "django.db.backends.postgresql"):
        return [
            checks.Error(
                f"{SETTING}['database'] is {conf.database!r}, whose ENGINE is {engine!r}: the "
                f"status table must live in a PostgreSQL database reached with psycopg2.",
                hint="Point POOLED_PG_STATUS['database'] at a django_pooled_pg (or "
                "django.db.backends.postgresql) alias.",
                id="django_pooled_pg.status.E002",
            )
        ]
    return []
