"""Template filters of the status page."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.text import slugify

from ...pool import tracker

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """42.0s, 12ms, 5m: as in the text tables."""
    return "-" if seconds is None else tracker.format_duration(float(seconds))


@register.filter
def short_path(where: str | None) -> str:
    return tracker.short_path(where) if where else ""


@register.simple_tag
def stack_id(alias: str, process: dict[str, Any], conn: dict[str, Any]) -> str:
    """Stable across refreshes, so that an opened stack stays open."""
    return "stack-" + slugify(f"{alias}-{process['host']}-{process['pid']}-{conn['backend_pid']}")


@register.filter
def server_states(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "-"
