"""The pool options of each alias: read from settings or set in code, checked at startup."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .pool import PoolConfig

__all__ = ["configure_pool", "pool_config"]

#: Options set in code with configure_pool(), merged over OPTIONS["pool"] per alias.
_overrides: dict[str, dict[str, Any]] = {}


def pool_config(alias: str, settings_dict: dict[str, Any]) -> PoolConfig | None:
    """The parsed pool options of an alias; None when pooling is turned off (``pool: False``).

    A missing ``pool`` key means the defaults: choosing this ENGINE is choosing pooling.
    """
    options = settings_dict.get("OPTIONS", {}).get("pool", True)
    override = _overrides.get(alias)
    if options is False and not override:
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


def configure_pool(alias: str, **options: Any) -> PoolConfig:
    """Set pool options for ``alias`` in code (over its settings); new leases use them.

    Returns the resulting config. Raises ImproperlyConfigured for a bad option, at once.
    """
    from django.db import connections

    from .registry import close_pools

    settings_dict = connections.settings[alias]
    merged = {**_overrides.get(alias, {}), **options}
    previous = _overrides.get(alias)
    _overrides[alias] = merged
    try:
        config = pool_config(alias, settings_dict)
    except ImproperlyConfigured:
        if previous is None:
            del _overrides[alias]
        else:
            _overrides[alias] = previous
        raise
    assert config is not None
    # Pools of the old options close as their connections come back.
    close_pools(lambda pool: pool.name.startswith(f"{alias}:") and pool.config != config)
    return config


def clear_overrides() -> None:
    _overrides.clear()
