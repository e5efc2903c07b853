"""A backend built on django_pooled_pg, as a site combining it with another one would write."""

from django_pooled_pg.base import DatabaseWrapper as PooledWrapper


class DatabaseWrapper(PooledWrapper):
    pass
