"""The POOLED_PG_STATUS setting: defaults, validation naming the key and the allowed values."""

from __future__ import annotations

import dataclasses
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

__all__ = ["StatusSettings", "status_settings"]

SETTING = "POOLED_PG_STATUS"


@dataclasses.dataclass(frozen=True)
class StatusSettings:
    """Process-wide status options. Times are seconds."""

    #: the alias whose database holds the snapshot table (every process must reach it)
    database: str = "default"
    #: seconds between two snapshots of a process
    interval: float = 10.0
    #: snapshots older than this are ignored by readers and deleted by publishers;
    #: None means 3 x interval
    expire_after: float | None = None
    #: samples of leased/idle/waiting kept per process and alias for the chart
    history: int = 60
    #: statements published per pool (the most frequent and the most time-consuming)
    top_queries: int = 25
    #: False: this process does not publish (it can still read)
    publish: bool = True
    #: the host name shown and put in application_name; None: $DJANGO_POOLED_PG_HOST or
    #: the machine's host name
    host: str | None = None
    #: keep the publisher's connection open between snapshots (one session per process);
    #: False opens and closes one per snapshot
    keep_connection: bool = True

    @property
    def expiry(self) -> float:
        return self.expire_after if self.expire_after is not None else 3 * self.interval


_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "database": ((str,), "an alias of DATABASES"),
    "interval": ((int, float), "a number of seconds > 0"),
    "expire_after": ((int, float, type(None)), "None or a number of seconds > interval"),
    "history": ((int,), "an integer >= 2"),
    "top_queries": ((int,), "an integer >= 0"),
    "publish": ((bool,), "True or False"),
    "host": ((str, type(None)), "None or a non-empty string"),
    "keep_connection": ((bool,), "True or False"),
}

_cached: StatusSettings | None = None


def status_settings() -> StatusSettings:
    """The validated setting (cached; override_settings clears it)."""
    global _cached
    if _cached is None:
        _cached = parse(getattr(settings, SETTING, None), list(settings.DATABASES))
    return _cached


def parse(value: Any, aliases: list[str]) -> StatusSettings:
    """Check a POOLED_PG_STATUS value; raise ImproperlyConfigured naming what is wrong."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _error(f"must be a dict, not {type(value).__name__}")
    for key in value:
        if key not in _TYPES:
            raise _error(f"unknown key {key!r}; allowed keys are: {', '.join(sorted(_TYPES))}")
    for key, item in value.items():
        types, words = _TYPES[key]
        if (isinstance(item, bool) and bool not in types) or not isinstance(item, types):
            raise _error(f"[{key!r}] must be {words}, not {item!r}")
    result = StatusSettings(**value)
    if result.interval <= 0:
        raise _error(f"['interval'] must be a number of seconds > 0, not {result.interval!r}")
    if result.expire_after is not None and result.expire_after <= result.interval:
        raise _error(
            f"['expire_after'] must be None or a number of seconds > interval "
            f"({result.interval}), not {result.expire_after!r}"
        )
    if result.history < 2:
        raise _error(f"['history'] must be an integer >= 2, not {result.history!r}")
    if result.top_queries < 0:
        raise _error(f"['top_queries'] must be an integer >= 0, not {result.top_queries!r}")
    if result.host is not None and not result.host.strip():
        raise _error("['host'] must be None or a non-empty string, not ''")
    if result.database not in aliases:
        raise _error(
            f"['database'] is {result.database!r}, which is not an alias of DATABASES "
            f"(known: {', '.join(aliases)})"
        )
    return result


def _error(problem: str) -> ImproperlyConfigured:
    sep = "" if problem.startswith("[") else " "
    return ImproperlyConfigured(f"{SETTING}{sep}{problem}")


@receiver(setting_changed)
def _forget_on_change(setting: str, **kwargs: Any) -> None:
    global _cached
    if setting in (SETTING, "DATABASES"):
        _cached = None
