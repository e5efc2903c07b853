"""Who this process is to the server: host, pid and alias in each connection's application_name.

pg_stat_activity shows the tag next to each session, and the status app uses it to tell which
sessions belong to which process. The host is ``POOLED_PG_STATUS["host"]``, else
``$DJANGO_POOLED_PG_HOST``, else the machine's host name.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from .pool import forks

__all__ = ["application_name", "host", "parse_application_name", "pid"]

#: Every tag starts with this, so that the status app can tell our sessions from others.
PREFIX = "django_pooled_pg"
#: PostgreSQL keeps the first 63 bytes of application_name (NAMEDATALEN - 1).
MAX_BYTES = 63
HOST_ENV = "DJANGO_POOLED_PG_HOST"

_pid = os.getpid()
_host: str | None = None


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()


forks.after_fork_in_child(_after_fork_in_child)


def pid() -> int:
    """This process's pid, kept up to date across forks without a system call per lease."""
    return _pid


def host() -> str:
    """The host name this process reports (setting, environment, or the machine's)."""
    global _host
    if _host is None:
        from django.conf import settings

        configured = getattr(settings, "POOLED_PG_STATUS", None) or {}
        name = configured.get("host") if isinstance(configured, dict) else None
        _host = str(name or os.environ.get(HOST_ENV) or socket.gethostname() or "localhost")
    return _host


def forget_host() -> None:
    """Read the host name again at the next use (the setting changed)."""
    global _host
    _host = None


def application_name(alias: str, role: str | None = None) -> str:
    """``django_pooled_pg host=<host> pid=<pid> alias=<alias>``, at most 63 bytes.

    PostgreSQL cuts longer names and shows only printable ASCII, so the host is made ASCII
    and shortened first: the pid and the alias are what tie a session to its process.
    """
    tail = f" pid={pid()} alias={_ascii(alias)}" + (f" {role}" if role else "")
    room = MAX_BYTES - len(f"{PREFIX} host=") - len(tail)
    name = _ascii(host())
    if room < 1:  # an absurdly long alias: keep what fits, the pid first
        return f"{PREFIX} host={name[:1]}{tail}"[:MAX_BYTES]
    return f"{PREFIX} host={name[:room]}{tail}"


_TAG = re.compile(
    r"^" + PREFIX + r" host=(?P<host>\S*) pid=(?P<pid>\d+) alias=(?P<alias>\S*)(?: (?P<role>\w+))?$"
)


def parse_application_name(text: str | None) -> dict[str, Any] | None:
    """The host, pid, alias and role of one of our tags, or None for anyone else's."""
    match = _TAG.match(text or "")
    if match is None:
        return None
    return {**match.groupdict(), "pid": int(match["pid"])}


def is_this_process(tag: dict[str, Any]) -> bool:
    """Whether a parsed tag is one of this process's sessions (its host as the tag holds
    it: made ASCII, maybe shortened)."""
    if tag["pid"] != pid():
        return False
    mine = parse_application_name(application_name(tag["alias"], tag.get("role")))
    return mine is not None and mine["host"] == tag["host"]


def _ascii(text: str) -> str:
    # Spaces would break parsing; non-ASCII bytes are escaped by the server.
    return "".join(c if 32 < ord(c) < 127 else "?" for c in text)
