"""Pool options: their defaults, and validation with messages that name the option."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

__all__ = ["PoolConfig", "RESET_MODES", "CLEANER_MODES", "TRACKING_LEVELS"]

RESET_MODES = ("auto", "always", "rollback")
CLEANER_MODES = ("thread", "inline")
TRACKING_LEVELS = ("off", "counters", "stacks")


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """Everything that shapes one pool. Times are seconds; ``None`` means "no limit"."""

    #: connections kept open even when idle (refilled by the cleaner)
    min_size: int = 0
    #: connections open at most, leased and idle together
    max_size: int = 10
    #: how long a checkout waits for a free connection before PoolTimeout
    timeout: float = 30.0
    #: requests allowed to queue for a connection; 0 means no limit
    max_waiting: int = 0
    #: once the oldest queued request has waited this long, every returned connection goes
    #: to the queue in order; before that, a thread's parked connection stays with it a few
    #: ms (more throughput, less even waits). 0: always hand over at once (first come, first
    #: served)
    handoff_after: float = 0.05
    #: close a connection this long after it was opened (with -10% jitter); 0 closes on return
    max_lifetime: float | None = 60 * 60.0
    #: close a connection idle this long in the pool (above min_size); 0 closes on return
    max_idle: float | None = 10 * 60.0
    #: close a connection after this many leases; 0 means no limit
    max_uses: int = 0
    #: libpq connect_timeout for new connections (bounds how long a request waits on a dead server)
    connect_timeout: float = 5.0
    #: an idle connection unused this long is pinged (SELECT 1) before it is handed out
    ping_after: float | None = 30.0
    #: "auto": full session reset only after statements that may change session state;
    #: "always": full reset on every return; "rollback": only end the open transaction
    reset: str = "auto"
    #: "thread": a background thread closes idle/old connections and refills to min_size;
    #: "inline": the same work runs on checkin (and park), no thread
    cleaner: str = "thread"
    #: "off"; "counters": statistics, query times, states; "stacks": also where each lease,
    #: cursor and query was taken (for timeouts, leak and idle-in-transaction reports)
    tracking: str = "stacks"
    #: a lease held longer than this logs one warning with its stack; None turns it off
    leak_threshold: float | None = 300.0
    #: a connection idle in a transaction longer than this is reported (and logged once)
    idle_in_transaction_threshold: float | None = 30.0
    #: distinct statement shapes kept in the query statistics (the rarest are evicted)
    max_statements: int = 1000
    #: run the targets of add_prepare_target() as PREPARE/EXECUTE; False turns prepared plans
    #: off (behind PgBouncer in transaction mode, where a session's statements don't survive)
    prepare: bool = True
    #: prepared statements kept per connection (the least recently used is deallocated)
    max_prepared: int = 100

    def __post_init__(self) -> None:
        for error in self.errors():
            raise ValueError(error)

    @classmethod
    def from_options(cls, options: dict[str, Any] | bool | None) -> PoolConfig:
        """Build a config from a settings mapping (``True`` or ``{}`` means the defaults)."""
        if options is True or options is None:
            return cls()
        if not isinstance(options, dict):
            raise ValueError(
                f"must be True or a dict of pool options, not {type(options).__name__}"
            )
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known, key=str)
        if unknown:
            name = unknown[0]
            if name in _PSYCOPG_POOL_ONLY:
                hint = f" ({name} is psycopg_pool's: {_PSYCOPG_POOL_ONLY[name]})"
            else:
                close = difflib.get_close_matches(str(name), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown option {name!r}{hint}; allowed options are: {', '.join(sorted(known))}"
            )
        types = {field.name: field.type for field in dataclasses.fields(cls)}
        for name, value in options.items():
            _check_type(name, value, types[name], _CHOICES.get(name))
        return cls(**options)

    def errors(self) -> list[str]:
        problems = []
        if self.max_size < 1:
            problems.append(f"max_size must be at least 1, not {self.max_size}")
        if self.min_size < 0:
            problems.append(f"min_size must be 0 or more, not {self.min_size}")
        if self.min_size > self.max_size:
            problems.append(
                f"min_size ({self.min_size}) must not be greater than max_size ({self.max_size})"
            )
        for name in (
            "max_lifetime", "max_idle", "connect_timeout", "ping_after", "leak_threshold",
            "idle_in_transaction_threshold", "handoff_after",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not value >= 0:  # (NaN too: it compares false)
                problems.append(f"{name} must be a number of seconds >= 0, not {value}")
        if self.connect_timeout > _LIBPQ_INT_MAX:  # (libpq takes whole seconds, an int)
            problems.append(
                f"connect_timeout must be a number of seconds from 0 to {_LIBPQ_INT_MAX}, "
                f"not {self.connect_timeout}"
            )
        if not self.timeout > 0:
            problems.append(f"timeout must be a number of seconds > 0, not {self.timeout}")
        if self.max_prepared < 1:
            problems.append(f"max_prepared must be at least 1, not {self.max_prepared}")
        if self.max_statements < 1:
            problems.append(f"max_statements must be at least 1, not {self.max_statements}")
        for name in ("max_waiting", "max_uses"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be 0 (no limit) or more, not {getattr(self, name)}")
        for name, allowed in (
            ("reset", RESET_MODES),
            ("cleaner", CLEANER_MODES),
            ("tracking", TRACKING_LEVELS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(
                    f"{name} must be one of {', '.join(map(repr, allowed))}, "
                    f"not {getattr(self, name)!r}"
                )
        return problems


_LIBPQ_INT_MAX = 2**31 - 1

#: Options of Django's built-in pool (psycopg_pool's ConnectionPool) without a counterpart
#: here, with what to do instead: someone moving over gets told, not just refused.
_PSYCOPG_POOL_ONLY = {
    "name": "this pool is named after the alias, user, host and database; remove it",
    "num_workers": "this pool opens connections in the thread that needs one; remove it",
    "check": "this pool checks each connection it hands out itself; see ping_after",
    "reconnect_timeout": "a failed connect raises at once here; see connect_timeout",
    "reconnect_failed": "a failed connect raises at once here; remove it",
    "configure": "use Django's connection_created signal or OPTIONS['assume_role']",
    "kwargs": "connection parameters come from the alias's settings; remove it",
    "open": "this pool opens on first use; remove it",
}

#: The options that take one of a few strings (named in a wrong type's message too).
_CHOICES = {"reset": RESET_MODES, "cleaner": CLEANER_MODES, "tracking": TRACKING_LEVELS}


def _check_type(
    name: str, value: Any, annotation: str, choices: tuple[str, ...] | None = None
) -> None:
    allowed: tuple[type, ...]
    if annotation == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, not {value!r}")
        return
    if annotation.startswith("int"):
        allowed, words = (int,), "an integer"
    elif annotation.startswith("float"):
        allowed, words = (int, float), "a number of seconds"
    elif choices:
        allowed, words = (str,), "one of " + ", ".join(map(repr, choices))
    else:
        allowed, words = (str,), "a string"
    if value is None and "None" in annotation:
        return
    if isinstance(value, bool) or not isinstance(value, allowed):
        if "None" in annotation:
            words += " or None"
        raise ValueError(f"{name} must be {words}, not {value!r}")
