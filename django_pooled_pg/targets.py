"""Prepare targets registered per alias: querysets compiled to SQL, handed to the pools.

Targets registered before a pool exists (in an ``AppConfig.ready()``, say) are kept here
and installed in each pool of the alias when the wrapper first leases from it; a pool
built later (new settings, the test runner's renamed database) gets them the same way.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from . import conf
from .pool.prepared import UnpreparableStatement, check_plan_cache_mode, check_preparable

if TYPE_CHECKING:
    from .pool import ConnectionPool

__all__ = ["add_prepare_target", "clear_prepare_targets", "install"]

#: (alias or None for every alias, SQL, name, plan_cache_mode), in registration order.
_registered: list[tuple[str | None, str, str | None, str | None]] = []
_lock = threading.Lock()


def compile_target(target: Any, alias: str) -> str:
    """The SQL that executing ``target`` (a QuerySet, or SQL text) sends through ``alias``."""
    if isinstance(target, str):
        return target
    query = getattr(target, "query", None)
    if query is None or not hasattr(query, "get_compiler"):
        raise TypeError(f"a prepare target is a QuerySet or SQL text, not {type(target).__name__}")
    from django.core.exceptions import EmptyResultSet

    try:
        sql, _ = query.get_compiler(using=alias).as_sql()
    except EmptyResultSet:
        raise UnpreparableStatement(
            "this queryset never runs a query (it matches nothing, e.g. filter(pk__in=[]))"
        ) from None
    return sql


def add_prepare_target(
    target: Any,
    using: str | None = None,
    *,
    name: str | None = None,
    plan_cache_mode: str | None = None,
) -> list[str]:
    """Run every later execution of ``target``'s SQL shape (the same queryset with other
    parameter values, ``IN`` lists of any length) as EXECUTE of a prepared statement.

    ``using``: one alias, or None for every django_pooled_pg alias. Safe to call from an
    ``AppConfig.ready()``: compiling a queryset sends no query. Returns the SQL shapes.
    Raises UnpreparableStatement (a ValueError) for SQL that PREPARE cannot take.
    """

    check_plan_cache_mode(plan_cache_mode)
    aliases = [using] if using is not None else _pooled_aliases()
    if using is not None:
        settings_dict = conf.pooled_alias_settings(using, "add_prepare_target")
        if settings_dict.get("OPTIONS", {}).get("pool", True) is False:
            # (a target there would never run: the alias has no pool)
            raise ImproperlyConfigured(
                f"add_prepare_target(using={using!r}): DATABASES[{using!r}]['OPTIONS']"
                f"['pool'] is False"
            )
    compiled = []
    for alias in aliases:
        sql = compile_target(target, alias)
        check_preparable(sql)
        compiled.append((alias, sql, name, plan_cache_mode))
    with _lock:
        # The same SQL for the same alias again replaces its entry (name, plan_cache_mode).
        again = {(alias, sql) for alias, sql, _, _ in compiled}
        _registered[:] = [t for t in _registered if (t[0], t[1]) not in again] + compiled
    conf.invalidate_lease_targets()  # wrappers install the new targets at their next lease
    # Pools already open take the target now; the others at their wrapper's next lease.
    from . import registry

    for pool in registry.pools():
        for alias, sql, _, _ in compiled:
            if registry.alias_of(pool) == alias:
                pool.add_prepare_target(sql, name, plan_cache_mode)
    return [sql for _, sql, _, _ in compiled]


def clear_prepare_targets(using: str | None = None) -> None:
    """Forget registered targets (of one alias, or all); pools of it stop preparing them."""
    from . import registry

    with _lock:
        _registered[:] = [t for t in _registered if using is not None and t[0] != using]
    conf.invalidate_lease_targets()
    for pool in registry.pools():
        if pool.prepared is not None and (using is None or registry.alias_of(pool) == using):
            pool.prepared.clear()


def install(pool: ConnectionPool, alias: str) -> None:
    """Add the targets registered for ``alias`` to ``pool`` (idempotent)."""
    if pool.prepared is None:
        return
    with _lock:
        chosen = [t for t in _registered if t[0] == alias]
    for _, sql, name, mode in chosen:
        pool.add_prepare_target(sql, name, mode)


def _pooled_aliases() -> list[str]:
    from django.db import connections

    return [
        alias
        for alias, settings in connections.settings.items()
        if conf.is_pooled_engine(settings.get("ENGINE"))
        and settings.get("OPTIONS", {}).get("pool", True) is not False
    ]
