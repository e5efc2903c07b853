"""Template filters of the status page."""

from __future__ import annotations

import hashlib
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
    """Stable across refreshes, so that an opened stack stays open; unique, so that one on
    host "web.1" never opens the one on "web1" (a digest of the exact names follows the
    readable part)."""
    key = f"{alias}\0{process['host']}\0{process['pid']}\0{conn['backend_pid']}"
    digest = hashlib.blake2s(key.encode(), digest_size=6).hexdigest()
    return f"stack-{slugify(key.replace(chr(0), '-'))}-{digest}"


@register.filter
def server_states(states: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "-"
