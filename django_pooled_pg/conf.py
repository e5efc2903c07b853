"""The pool options of each alias: read from settings or set in code, checked at startup."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .pool import PoolConfig, forks

__all__ = ["configure_pool", "pool_config"]

#: Options set in code with configure_pool(), merged over OPTIONS["pool"] per alias.
_overrides: dict[str, dict[str, Any]] = {}
#: Parsed configs by (alias, repr of the options).
_parsed: dict[tuple[str, str], PoolConfig | None] = {}
#: Bumped whenever something a lease's target depends on changes (configure_pool(),
#: reset_pool_config(), a new prepare target, a new host name), so that wrappers drop the
#: pool they cached for their leases.
#: (A module attribute, not a function: every request's start reads it.)
generation = 0


def _after_fork_in_child() -> None:
    # A forked child tags its sessions with its own pid (identity.application_name()).
    invalidate_lease_targets()


forks.after_fork_in_child(_after_fork_in_child)


def pool_config(alias: str, settings_dict: dict[str, Any]) -> PoolConfig | None:
    """The parsed pool options of an alias (cached; see _parse_pool_config)."""
    key = (alias, repr(settings_dict.get("OPTIONS", {}).get("pool", True)))
    try:
        return _parsed[key]
    except KeyError:
        config = _parsed[key] = _parse_pool_config(alias, settings_dict)
        return config


def _parse_pool_config(alias: str, settings_dict: dict[str, Any]) -> PoolConfig | None:
    """The parsed pool options of an alias; None when pooling is turned off (``pool: False``).

    A missing ``pool`` key means the defaults: choosing this ENGINE is choosing pooling.
    """
    options = settings_dict.get("OPTIONS", {}).get("pool", True)
    override = _overrides.get(alias)
    if options is False:  # (configure_pool() refuses such an alias; its settings win)
        return None
    if override:
        options = {**(options if isinstance(options, dict) else {}), **override}
    try:
        return PoolConfig.from_options(options)
    except ValueError as error:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool']: {error}. "
            f"Use True for the defaults or a dict of options; see the options table in the "
            f"django_pooled_pg README."
        ) from None


def invalidate_lease_targets() -> None:
    """Make every wrapper work out its lease target (pool, parameters) again at its next
    lease: part of its settings fingerprint changed."""
    global generation
    generation += 1


def _changed() -> None:
    _parsed.clear()
    invalidate_lease_targets()


def configure_pool(alias: str, **options: Any) -> PoolConfig:
    """Set pool options for ``alias`` in code (over its settings); new leases use them.

    Returns the resulting config. Raises ImproperlyConfigured for a bad option, at once.
    """
    from .registry import alias_of, close_pools

    settings_dict = pooled_alias_settings(alias, "configure_pool")
    if settings_dict.get("OPTIONS", {}).get("pool", True) is False:
        raise ImproperlyConfigured(
            f"configure_pool({alias!r}): DATABASES[{alias!r}]['OPTIONS']['pool'] is False "
            f"(pooling turned off); set it to True or a dict of options to pool this alias"
        )
    # The call's own mistakes are named as the call's; bad settings are reported below.
    settings_options = settings_dict.get("OPTIONS", {}).get("pool", True)
    base = {
        **(settings_options if isinstance(settings_options, dict) else {}),
        **_overrides.get(alias, {}),  # (earlier calls' options count too)
    }
    problem = _problem({**base, **options})
    if problem is not None and _problem(base) is None:
        raise ImproperlyConfigured(f"configure_pool({alias!r}): {problem}")
    merged = {**_overrides.get(alias, {}), **options}
    previous = _overrides.get(alias)
    _overrides[alias] = merged
    _changed()
    try:
        config = pool_config(alias, settings_dict)
    except ImproperlyConfigured:
        if previous is None:
            del _overrides[alias]
        else:
            _overrides[alias] = previous
        _changed()
        raise
    assert config is not None
    # Pools of the old options close as their connections come back.
    close_pools(lambda pool: alias_of(pool) == alias and pool.config != config)
    return config


def _problem(options: dict[str, Any]) -> str | None:
    try:
        PoolConfig.from_options(options)
    except ValueError as error:
        return str(error)
    return None


def reset_pool_config(alias: str | None = None) -> None:
    """Forget options set with configure_pool() for ``alias`` (all aliases by default)."""
    from .registry import alias_of, close_pools

    if alias is not None:
        pooled_alias_settings(alias, "reset_pool_config")
    aliases = list(_overrides) if alias is None else [alias]
    _changed()
    for name in aliases:
        if _overrides.pop(name, None) is not None:
            close_pools(lambda pool, name=name: alias_of(pool) == name)


def is_pooled_engine(engine: Any) -> bool:
    """Whether DATABASES' ENGINE names this backend or a backend built on it (PostGIS
    combined with pooling, say: a DatabaseWrapper subclass of ours)."""
    if engine in ("django_pooled_pg", "django_pooled_pg.base"):
        return True
    if not isinstance(engine, str) or not engine:
        return False
    from django.db.utils import load_backend

    try:
        from .base import DatabaseWrapper
    except ImproperlyConfigured:  # psycopg2 missing: no backend here can be built on ours
        return False
    try:
        wrapper = load_backend(engine).DatabaseWrapper
    except Exception:
        # Django reports a backend that does not import at its first use; raising here
        # would break django.setup() for an alias whose driver is not installed.
        return False
    return isinstance(wrapper, type) and issubclass(wrapper, DatabaseWrapper)


def pooled_alias_settings(alias: str, caller: str) -> dict[str, Any]:
    """The settings of ``alias``, which must be a django_pooled_pg alias."""
    from django.db import connections

    if alias not in connections.settings:
        known = ", ".join(connections.settings) or "none"
        raise ImproperlyConfigured(
            f"{caller}(): no database alias {alias!r} in DATABASES (known: {known})"
        )
    settings_dict: dict[str, Any] = connections.settings[alias]
    engine = settings_dict.get("ENGINE")
    if not is_pooled_engine(engine):
        raise ImproperlyConfigured(
            f"{caller}(): DATABASES[{alias!r}]['ENGINE'] is {engine!r}, not django_pooled_pg "
            f"(or a backend built on it)"
        )
    return settings_dict
