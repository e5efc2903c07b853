"""Test databases: Django's test runner renames the alias's database in place."""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import creation as postgresql

from . import registry

__all__ = ["DatabaseCreation"]


class DatabaseCreation(postgresql.DatabaseCreation):
    def create_test_db(self, *args: Any, **kwargs: Any) -> str:
        name: str = super().create_test_db(*args, **kwargs)
        self.close_pools_of_other_databases()
        return name

    def destroy_test_db(self, *args: Any, **kwargs: Any) -> None:
        super().destroy_test_db(*args, **kwargs)
        self.close_pools_of_other_databases()

    def set_as_test_mirror(self, primary_settings_dict: dict[str, Any]) -> None:
        # A TEST MIRROR alias (or one on the same database as another) is renamed too.
        super().set_as_test_mirror(primary_settings_dict)
        self.close_pools_of_other_databases()

    def close_pools_of_other_databases(self) -> None:
        """Close this alias's pools on another database than its NAME now.

        The runner closes its own thread's connection before it renames the database
        (create_test_db(), destroy_test_db(), set_as_test_mirror());
        another thread's parked lease would go on in the old database (the real one,
        after create_test_db). Its pool closed, it resumes from the pool of the new name.
        """
        alias, name = self.connection.alias, self.connection.settings_dict["NAME"]
        registry.close_pools(
            lambda pool: registry.alias_of(pool) == alias and pool.conninfo.get("dbname") != name
        )
