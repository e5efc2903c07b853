"""The status app: serving processes publish their pools to the database; ``pool_status`` and a
staff-only page show every process on every host, joined with ``pg_stat_activity``.

Add ``"django_pooled_pg.status"`` to ``INSTALLED_APPS``, run ``migrate``, and include
``django_pooled_pg.status.urls`` in the URLconf for the page.
"""
