"""django_pooled_pg: a pooled psycopg2 PostgreSQL backend for Django.

Set ``ENGINE = "django_pooled_pg"``; Django imports ``django_pooled_pg.base``. Importing this
package imports nothing from Django, so the engine in ``django_pooled_pg.pool`` stays free of it.
"""

__version__ = "0.1.0"
