"""django_pooled_pg: a pooled psycopg2 PostgreSQL backend for Django.

Set ``ENGINE = "django_pooled_pg"``; Django imports ``django_pooled_pg.base``. Importing this
package imports nothing from Django, so the engine in ``django_pooled_pg.pool`` stays free of it.
"""

__version__ = "0.1.0"

__all__ = ["add_prepare_target"]


def add_prepare_target(target, using=None, *, name=None, plan_cache_mode=None):  # type: ignore[no-untyped-def]
    """Register a hot queryset (or SQL) to run as PREPARE/EXECUTE, for one alias or all;
    see ``django_pooled_pg.targets.add_prepare_target``. Call it from ``AppConfig.ready()``."""
    from .targets import add_prepare_target as add

    return add(target, using, name=name, plan_cache_mode=plan_cache_mode)
