"""Startup checks of pool settings: errors raise at django.setup(), warnings via ``check``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from .conf import is_pooled_engine, pool_config


def pooled_aliases() -> list[str]:
    """The aliases of this backend or of a backend built on it."""
    return [
        alias
        for alias, settings_dict in settings.DATABASES.items()
        if is_pooled_engine(settings_dict.get("ENGINE"))
    ]


def validate_pool_settings() -> None:
    """Raise ImproperlyConfigured for the first bad pool option of any pooled alias."""
    for alias in pooled_aliases():
        pool_config(alias, settings.DATABASES[alias])


@checks.register("django_pooled_pg")
def check_pool_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    for alias in pooled_aliases():
        settings_dict = settings.DATABASES[alias]
        try:
            config = pool_config(alias, settings_dict)
        except Exception as error:
            messages.append(checks.Error(str(error), id="django_pooled_pg.E001"))
            continue
        if config is None:
            continue
        max_age = settings_dict.get("CONN_MAX_AGE", 0)
        if max_age != 0:
            messages.append(
                checks.Warning(
                    f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {max_age!r}: each thread keeps "
                    f"its lease across requests, so the pool cannot share connections.",
                    hint="Set CONN_MAX_AGE to 0 (the default): connections go back to the "
                    "pool at the end of each request and stay open there.",
                    id="django_pooled_pg.W001",
                )
            )
    return messages
