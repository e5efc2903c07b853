"""The connection pool: checkout, checkin, reset, invalidate, sizing, waiting, lifetime, health."""

from __future__ import annotations

import atexit
import collections
import gc
import itertools
import logging
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from operator import attrgetter
from threading import current_thread
from typing import Any

import psycopg2
import psycopg2.extensions

from . import cleaner, forks, stats
from .config import PoolConfig
from .errors import PoolClosed, PoolTimeout, TooManyRequests
from .forks import MARK as _FORK_MARK
from .handles import ConnectionHandle, _lease_numbers, forwarding_class
from .prepared import PreparedTargets, PrepareTarget
from .record import ConnectionRecord
from .session import DEALLOCATE_SQL, RESET_SQL, reseed_sql
from .stacks import capture, first_user_frame, format_stack
from .tracker import Tracker, format_table

__all__ = ["ConnectionPool", "close_all_pools", "detach_socket"]

logger = logging.getLogger(__name__)

_PSYCOPG2_CURSOR = psycopg2.extensions.cursor
_STATUS_IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
_STATUS_UNKNOWN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN
_STATUS_ACTIVE = psycopg2.extensions.TRANSACTION_STATUS_ACTIVE

#: Every pool alive in this process, for the fork handler and the exit handler.
_all_pools: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


class _OpenNew:
    """Grant to a waiter: a slot is reserved for you, open a connection in it."""


_OPEN_NEW = _OpenNew()

_IDLE_SINCE = attrgetter("idle_since")

#: While requests wait for a connection, a parked one (a Django thread between requests)
#: stays reserved this long for its holder, whose next request takes it back without
#: waking anyone. Handing it over at once costs more than it gives under the GIL: the
#: woken waiter must get the GIL before it can use the connection, which sits unused
#: meanwhile, and the holder queues in turn. (python bench/request_cycle.py --only threads:
#: 32 threads on 8 connections, tracking off, went from 0.79x to 0.98x persistent's
#: throughput with client and server on one CPU, and from 0.56x to 0.71x with --pin none.)
PARK_GRACE = 0.005
# ...unless the oldest waiter has waited the handoff_after option (50 ms by default): then
# every return goes to it at once, so that holders who keep coming back within the grace
# cannot starve the queue. (Go's sync.Mutex makes the same trade, switching to handoffs
# after a 1 ms wait.) It bounds the tail of a saturated pool's waits. Measured with
# bench/request_cycle.py --only threads: 5 and 10 ms gave back most of the throughput
# gained; 20 and 50 ms kept it with client and server on one CPU, 50 ms did better on two
# (0.68-0.83x against 0.60-0.68x) and 20 ms spread the waits more evenly.


class _Waiter:
    """A checkout queued for a connection. The lock doubles as a one-shot event."""

    __slots__ = ("lock", "grant", "since", "check_at", "signalled")

    def __init__(self, now: float) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.grant: ConnectionRecord | _OpenNew | PoolClosed | None = None
        self.since = now
        #: When to look at the pool again unwoken: for the oldest waiter, the end of the
        #: oldest idle connection's grace (PARK_GRACE), or PARK_GRACE from now. inf (the
        #: others): until woken, when their turn comes.
        self.check_at = math.inf
        #: the lock was released (a grant, or "you are the oldest now") and not yet taken
        self.signalled = False

    def signal(self) -> None:
        """Wake the waiter (pool lock held): at most one release per wait."""
        if not self.signalled:
            self.signalled = True
            self.lock.release()


class ConnectionPool:
    """A thread-safe pool of psycopg2 connections to one server, database and role.

    ``conninfo`` holds the keyword arguments of ``psycopg2.connect()``. ``configure`` runs
    once on each new connection (register adapters); ``session_init`` are ``(sql, params)``
    statements that define the session's baseline: they run on each new connection and
    again after every full reset, in the reset's own round trip.
    """

    def __init__(
        self,
        conninfo: Mapping[str, Any],
        *,
        name: str = "pool",
        config: PoolConfig | None = None,
        configure: Callable[[Any], None] | None = None,
        session_init: Sequence[tuple[str, Sequence[Any] | None]] = (),
        **options: Any,
    ) -> None:
        self.name = name
        self.config = config if config is not None else PoolConfig.from_options(options)
        self.conninfo = dict(conninfo)
        if self.config.connect_timeout and "connect_timeout" not in self.conninfo:
            # libpq takes whole seconds.
            self.conninfo["connect_timeout"] = max(1, math.ceil(self.config.connect_timeout))
        self.configure = configure
        self.session_init = tuple(session_init)
        #: set by whoever closes this pool for a successor with new options (the Django
        #: layer's registry): a checkout refused by the close may go on in that one
        self.superseded = False
        self._track_stacks = self.config.tracking == "stacks"
        #: None when tracking is off: the query path then skips timing altogether
        self.tracker = Tracker(name, self.config) if self.config.tracking != "off" else None
        self._inline_cleaner = self.config.cleaner == "inline"
        # Options read on every park and resume, kept as attributes (one lookup, not two).
        self._max_uses = self.config.max_uses
        self._ping_after = self.config.ping_after
        self.resets_always = self.config.reset == "always"
        #: options under which every return needs _return()'s general path
        self._slow_return = (
            self.resets_always or self.config.max_lifetime == 0 or self.config.max_idle == 0
        )
        #: the statements to run prepared (add_prepare_target()); None when turned off
        self.prepared = PreparedTargets(self.config.max_prepared) if self.config.prepare else None
        self._init_state()
        _all_pools.add(self)
        if not self._inline_cleaner:
            cleaner.register(self)

    def _init_state(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: collections.deque[ConnectionRecord] = collections.deque()  # LIFO on the right
        self._leased: set[ConnectionRecord] = set()
        #: connections at rest: parked by park()'s fast path, by handle (see park())
        self._resting: dict[ConnectionHandle, ConnectionRecord] = {}
        #: leases resumed from rest, counted without the lock (see _count_resumed())
        self._resumed = itertools.count()
        self._resumed_reads = 0
        self._resumed_popped = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        #: records whose handle was garbage-collected while leased, waiting to be recovered
        self._leaked: collections.deque[ConnectionRecord] = collections.deque()
        self._size = 0  # idle + leased + being opened
        self._park_grace = PARK_GRACE
        #: how often a waiter wakes to recover connections leaked by dead threads
        self._reclaim_interval = 0.5
        self._starving_after = self.config.handoff_after
        self._closed = False
        #: idle connections last used before this instant are pinged before a checkout
        self._suspect_before = 0.0
        self._next_maintenance = time.monotonic()
        self._last_gc = 0.0
        # A plain dict with every counter: a Counter's += costs ten times as much (its
        # __missing__ keeps the interpreter off the fast path), and the lease path counts.
        self._stats: dict[str, int] = dict.fromkeys(stats.COUNTERS, 0)
        #: what pop_stats() zeroed so far: total_stats() adds it back
        self._popped_stats: dict[str, int] = dict.fromkeys(stats.COUNTERS, 0)

    # -- checkout ---------------------------------------------------------------------

    def checkout(self, timeout: float | None = None) -> ConnectionHandle:
        """Lease a connection: an idle one (newest first), a new one, or wait for a return."""
        return self._lease(self._acquire(timeout))

    def resume(self, handle: ConnectionHandle) -> bool:
        """Give a parked handle a connection again: its own if still idle (True), else
        another one (False: its session is the baseline, not what the holder left)."""
        # Every request's first query comes here. Back from rest (see park()): one atomic
        # pop makes the connection this handle's again; nobody else has seen it since.
        record = self._resting.pop(handle, None)
        if record is not None:
            now = time.monotonic()
            ping_after = self._ping_after
            # _sound(), spelled out. The socket check: a killed backend or a server
            # shutdown has written its FATAL by now (record.poller: one system call,
            # holding the GIL where the C Poller was built).
            if (
                not record.poller.poll(0)
                and now < record.expires_at
                and record.idle_since >= self._suspect_before
                and (ping_after is None or now - record.idle_since < ping_after)
                and not record.conn.closed
            ):
                # record.start_lease(), minus what park() left as it is (the flags: the
                # lease changed nothing; the stacks: cleared) and query_ended (older
                # than leased_at, so ignored).
                record.holder = current_thread()
                record.uses += 1
                record.leased_at = now
                record.release_pending = False
                if self.tracker is not None:
                    record.leak_warned = record.idle_tx_warned = False
                self._leased.add(record)
                next(self._resumed)
                handle._conn = record.conn  # handle._bind(), spelled out
                handle._lease = next(_lease_numbers)
                handle._parked = False
                if self._track_stacks:
                    record.lease_stack = capture(4)  # as below
                return True
            if self._usable(record):  # the full check: may ping, or discard it
                self._lease(record, handle)
                return True
            self._lease(self._acquire(None), handle)
            return False
        # Parked the slow way, or moved from rest to the idle deque since: this is
        # _acquire() and _lease() spelled out for taking back one's own connection, with
        # one lock round, minus what cannot have changed since park() (the record, its
        # handle_ref). The fork check ran in the handle's _live(), the only caller, before
        # it read its state.
        record = handle._record
        now = time.monotonic()
        holder = current_thread()
        # The socket check comes before the lock: select.poll's poll() (record.py's
        # fallback) releases the GIL, and a thread that releases it holding the pool's
        # lock makes the others queue up behind it.
        # If the record is still parked for this handle under the lock, nobody has used
        # the connection since this poll. (Not polled when already taken: its new holder
        # may be polling it, and a select.poll object refuses concurrent use.)
        quiet = False
        if record.parked_for is handle:
            try:
                quiet = not record.poller.poll(0)
            except RuntimeError:  # another thread polls it: it was just taken
                pass
        lock = self._lock
        lock.acquire()  # (cheaper than "with": no bound __enter__/__exit__ to make)
        try:
            mine = record.parked_for is handle and not self._closed
            if mine:
                record.parked_for = None
                idle = self._idle
                if idle and idle[-1] is record:
                    idle.pop()
                else:
                    try:
                        idle.remove(record)
                    except ValueError:
                        mine = False
            sound = mine and quiet and self._sound_unpolled(record, now)
            if sound:
                # Lease fields first: the cleaner reads leased records under this lock,
                # and an old leased_at would look like a leak.
                record.start_lease(now, holder)
                self._leased.add(record)
                self._stats[stats.REQUESTS_NUM] += 1
            if self._waiters and self._idle:
                self._hand_over_parked(now)
        finally:
            lock.release()
        if not sound:
            if mine and self._usable(record):  # the full check: may ping, or discard it
                self._lease(record, handle)
                return True
            self._lease(self._acquire(None), handle)
            return False
        handle._bind(record)
        if self._track_stacks:
            # From the holder's call into the handle (cursor(), commit(), a forwarded
            # method...): resume() <- handle._live() <- that method <- the holder.
            record.lease_stack = capture(4)
        return True

    def _acquire(self, timeout: float | None) -> ConnectionRecord:
        if not _FORK_MARK[0]:
            forks.detected()
        if self._leaked:
            self._recover_leaks()
        deadline = None
        since = None  # when this checkout first queued (kept if it has to queue again)
        while True:
            waiter = None
            now = time.monotonic()
            with self._lock:
                if self._closed:
                    raise PoolClosed(f"pool {self.name!r} is closed")
                waiters = self._waiters
                if self._resting and (waiters or not self._idle):
                    self._wake_resting()  # nothing else idle: those at rest may be taken
                if waiters and self._idle:
                    self._hand_over_parked(now)
                max_waiting = self.config.max_waiting
                # With others waiting, what is idle is parked for its holder: queue up
                # (but rather take it than be refused a place in a full queue).
                if self._idle and (not waiters or (max_waiting and len(waiters) >= max_waiting)):
                    grant: Any = self._idle.pop()
                    grant.parked_for = None
                elif self._size < self.config.max_size:
                    self._size += 1
                    grant = _OPEN_NEW
                else:
                    if max_waiting and len(waiters) >= max_waiting:
                        self._stats[stats.REQUESTS_REFUSED] += 1
                        raise TooManyRequests(
                            f"pool {self.name!r} already has {len(self._waiters)} requests "
                            f"waiting (max_waiting={self.config.max_waiting}); "
                            f"max_size={self.config.max_size}, all leased"
                        )
                    waiter = _Waiter(now if since is None else since)
                    since = waiter.since
                    waiters.append(waiter)
                    self._set_check_at(waiter, now)
                    self._stats[stats.REQUESTS_QUEUED] += 1
            if waiter is not None:
                if deadline is None:
                    deadline = time.monotonic() + (timeout or self.config.timeout)
                try:
                    grant = self._wait(waiter, deadline)
                except BaseException:
                    self._abandon(waiter)
                    raise
            if grant is _OPEN_NEW:
                record = self._open_in_reserved_slot()
            else:
                record = grant
                # A return handed to a waiter is checked too: it may have been parked
                # for a while (the grace) before the handover.
                if not self._usable(record):
                    continue
            if self._closed:
                # Closed while this checkout opened, waited for or checked its connection:
                # a lease now would outlive close() (and keep a session on a database the
                # test runner is about to drop).
                self._discard(record, stats.CONNECTIONS_CLOSED)
                raise PoolClosed(f"pool {self.name!r} was closed during this checkout")
            return record

    def _wait(self, waiter: _Waiter, deadline: float) -> ConnectionRecord | _OpenNew:
        started = waiter.since
        next_reclaim = started + self._reclaim_interval
        while True:
            now = time.monotonic()
            remaining = deadline - now
            # Wake up now and then to recover connections leaked by dead threads, and
            # (the oldest waiter) to take a parked connection whose grace has ended, in
            # case nothing else happens in the pool meanwhile to hand it over.
            timeout = min(remaining, next_reclaim - now, waiter.check_at - now)
            woken = remaining > 0 and waiter.lock.acquire(timeout=max(timeout, 0.0))
            now = time.monotonic()
            with self._lock:
                if waiter.signalled:
                    if not woken:  # released after the timeout: take it, to re-arm
                        waiter.lock.acquire()
                    waiter.signalled = False
                if self._resting:
                    self._wake_resting()  # (parked as this waiter queued: see park())
                if self._idle and self._waiters:
                    self._hand_over_parked(now)  # (to this waiter, if it is the oldest)
                if waiter.grant is not None:
                    break
                timed_out = remaining <= 0
                if timed_out:
                    self._waiters.remove(waiter)
                    self._wake_oldest()
                    if self._idle:  # one in its grace: better than a timeout
                        waiter.grant = record = self._idle.popleft()
                        record.parked_for = None
                        break
                    self._stats[stats.REQUESTS_TIMEOUTS] += 1
                    self._stats[stats.REQUESTS_WAIT_MS] += int(1000 * (now - started))
                else:
                    self._set_check_at(waiter, now)
            if timed_out:
                raise PoolTimeout(self._timeout_message(now - started))
            if now >= next_reclaim:
                next_reclaim = now + self._reclaim_interval
                self._reclaim_from_dead_threads()
        with self._lock:
            self._stats[stats.REQUESTS_WAIT_MS] += int(1000 * (time.monotonic() - started))
        if isinstance(waiter.grant, PoolClosed):
            raise waiter.grant
        assert waiter.grant is not None
        return waiter.grant

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gives up (an exception while it waited, KeyboardInterrupt included):
        leave the queue, or pass on what it was granted meanwhile."""
        with self._lock:
            grant = waiter.grant
            if grant is None:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    self._wake_oldest()
                return
            if isinstance(grant, ConnectionRecord):
                if not self._offer(grant, None, time.monotonic()):
                    self._sort_idle()  # (its idle_since is older than the newest's)
                    return
                # (else the pool closed meanwhile: close the connection below)
        if grant is _OPEN_NEW:
            self._release_slot()
        elif isinstance(grant, ConnectionRecord):
            self._discard(grant, stats.CONNECTIONS_CLOSED)

    def _timeout_message(self, waited: float) -> str:
        now = time.monotonic()
        with self._lock:
            holders = sorted(self._leased, key=lambda record: record.leased_at)
            waiting = len(self._waiters)
        lines = [
            f"couldn't get a connection from pool {self.name!r} after {waited:.2f} sec: "
            f"max_size={self.config.max_size}, {len(holders)} leased, "
            f"{waiting} other requests waiting. Raise max_size or timeout, or find the "
            f"holders below that keep connections too long."
        ]
        for record in holders:
            thread = record.holder.name if record.holder is not None else "?"
            lines.append(
                f"- backend pid {record.backend_pid}, leased {now - record.leased_at:.1f} s ago "
                f"by thread {thread!r}"
            )
            if record.lease_stack:
                lines.append(format_stack(record.lease_stack).rstrip("\n"))
            elif not self._track_stacks:
                lines.append("  (stacks are not tracked: set tracking='stacks')")
        return "\n".join(lines)

    def _sound(self, record: ConnectionRecord, now: float) -> bool:
        """The checks of an idle connection that need no round trip: unexpired, open, no
        word from the server while idle (the poll is cheap: record.poller), not
        suspect, not idle past ping_after. False means: look closer (_usable())."""
        try:
            quiet = not record.poller.poll(0)
        except RuntimeError:  # a parked holder's resume() polls it, outside the lock
            quiet = False  # (so: ping it)
        return quiet and self._sound_unpolled(record, now)

    def _sound_unpolled(self, record: ConnectionRecord, now: float) -> bool:
        """_sound() but for the poll, which the caller made (outside the pool's lock)."""
        ping_after = self.config.ping_after
        return (
            now < record.expires_at
            and not record.conn.closed
            and record.idle_since >= self._suspect_before
            and (ping_after is None or now - record.idle_since < ping_after)
        )

    def _usable(self, record: ConnectionRecord) -> bool:
        """Check an idle connection before handing it out; close it if it is not usable."""
        now = time.monotonic()
        if self._sound(record, now):
            return True
        if now >= record.expires_at:
            self._discard(record, stats.CONNECTIONS_EXPIRED)
            return False
        # Not sound otherwise: closed, or worth a ping. Something to read on an idle
        # socket is most often the FATAL of pg_terminate_backend or a shutdown.
        alive = not record.conn.closed and self._ping(record)
        if not alive:
            with self._lock:
                # Connections idle since before this instant may be dead too: ping them.
                self._suspect_before = now
            self._discard(record, stats.CONNECTIONS_LOST)
            logger.warning(
                "Pool %r: discarded a dead idle connection (backend pid %s: killed, or the "
                "server restarted); the request gets another one",
                self.name,
                record.backend_pid,
            )
        return alive

    def _ping(self, record: ConnectionRecord, for_holder: bool = False) -> bool:
        with self._lock:
            self._stats[stats.PINGS_NUM] += 1
        try:
            # psycopg2's own cursor class: a connection_factory's (LoggingCursor) would
            # log the ping as somebody's statement.
            with record.conn.cursor(cursor_factory=_PSYCOPG2_CURSOR) as cursor:
                cursor.execute("SELECT 1")
            if not for_holder:  # (a holder's notifications stay its own)
                del record.conn.notifies[:]
            return True
        except psycopg2.Error:
            return False

    def lease_sound(self, handle: ConnectionHandle) -> bool:
        """For a holder that keeps its lease between units of work (Django's CONN_MAX_AGE >
        0): whether it may go on, the checks of an idle connection applied to it. False:
        past max_lifetime, or dead (the server wrote meanwhile: a ping tells). A lease that
        has ended (parked, returned, forked) is not the holder's to check: True."""
        if not _FORK_MARK[0]:
            forks.detected()  # a child of fork(2): the hooks end a lease taken before
        if handle._conn is None:
            return True
        record = handle._record
        if record.conn.closed or time.monotonic() >= record.expires_at:
            return False
        return not record.poller.poll(0) or self._ping(record, for_holder=True)

    def _open_in_reserved_slot(self) -> ConnectionRecord:
        try:
            return self._connect()
        except BaseException:
            self._release_slot()
            raise

    def _connect(self) -> ConnectionRecord:
        started = time.monotonic()
        try:
            conn = psycopg2.connect(**self.conninfo)
            conn.autocommit = True
            if self.configure is not None:
                self.configure(conn)
                characteristics = (conn.isolation_level, conn.readonly, conn.deferrable)
                if characteristics != (None, None, None):
                    # Set in autocommit mode, psycopg2 also made them the session's
                    # defaults (default_transaction_isolation...), which a full reset's
                    # RESET ALL ends while psycopg2 still reports them. Out of autocommit
                    # and back, they stay with psycopg2 alone, which puts them on each
                    # transaction it begins: the same on every lease, as in Django's own
                    # connections (which set them before autocommit is on).
                    conn.autocommit = False
                    conn.autocommit = True
            init_sql = ""
            if self.session_init:
                with conn.cursor() as cursor:
                    init_sql = "; ".join(
                        cursor.mogrify(sql, params).decode() for sql, params in self.session_init
                    )
                    cursor.execute(init_sql)
        except Exception:
            with self._lock:
                self._stats[stats.CONNECTIONS_ERRORS] += 1
            raise
        now = time.monotonic()
        lifetime = self.config.max_lifetime
        # Jitter so that connections opened together don't all expire together.
        expires_at = math.inf if lifetime is None else now + lifetime * (1 - 0.1 * random.random())
        record = ConnectionRecord(conn, now, expires_at, init_sql)
        with self._lock:
            self._stats[stats.CONNECTIONS_NUM] += 1
            self._stats[stats.CONNECTIONS_MS] += int(1000 * (now - started))
        logger.debug("Pool %r: opened connection (backend pid %s)", self.name, record.backend_pid)
        return record

    def _lease(
        self, record: ConnectionRecord, handle: ConnectionHandle | None = None
    ) -> ConnectionHandle:
        if handle is None:
            handle = forwarding_class(ConnectionHandle, record.conn)(self, record)
        else:
            handle._bind(record)
        # If the holder loses the handle without returning it (a thread that died), the
        # callback queues the record for recovery; checkin drops the ref so it never fires.
        # A parked handle keeps its ref: resuming the same connection reuses it.
        # The ref is this handle's before the record shows a holder: the callback takes a
        # record with a holder for lost when its ref is the one that died, and the handle
        # that parked this connection last may be collected at any moment (by another
        # thread, or by a collection that the allocations below set off).
        ref = record.handle_ref
        if ref is None or ref() is not handle:
            callback = record.on_handle_lost
            if callback is None:
                callback = record.on_handle_lost = _leak_callback(self, record)
            record.handle_ref = weakref.ref(handle, callback)
        record.start_lease(time.monotonic(), current_thread())
        if self._track_stacks:
            record.lease_stack = capture(3)
        with self._lock:
            self._leased.add(record)
            self._stats[stats.REQUESTS_NUM] += 1
        return handle

    # -- checkin ----------------------------------------------------------------------

    def checkin(self, handle: ConnectionHandle) -> None:
        """Return a leased connection: end its transaction, reset it if needed, keep or close."""
        if not _FORK_MARK[0]:
            forks.detected()  # a child returning the parent's lease: the hooks ended it
        record = handle._record
        if handle._conn is None:
            if handle._parked:  # already checked in: only give up the right to resume
                handle._end(parked=False)
                if self._resting.pop(handle, None) is record:
                    record.handle_ref = None  # (ours since the pop: nobody can lease it)
                    with self._lock:
                        closed = self._offer(record, None, time.monotonic())
                        if not closed:
                            self._sort_idle()
                    if closed:
                        self._discard(record, stats.CONNECTIONS_CLOSED)
                    return
                with self._lock:
                    if record.parked_for is handle:
                        record.parked_for = record.handle_ref = None
                        if self._waiters and record in self._idle:  # no grace left
                            self._idle.remove(record)
                            self._hand_to_waiter(record)
            return
        handle._end(parked=False)  # cursors and the handle die here
        record.handle_ref = None
        self._return(record)

    def park(self, handle: ConnectionHandle) -> bool:
        """Check the connection in like checkin(), but let ``handle`` resume it later.
        False if there was nothing to park (the lease had ended, or a fork ended it).

        Every request of a Django thread ends here and the next one resumes, so the common
        case is kept to a few dictionary operations without the pool's lock: the
        connection is put *at rest*, in a dict by handle, from which either its holder's
        resume() or any other thread (under the lock, when it needs one: see
        _wake_resting()) takes it with one atomic pop. Whoever pops it owns it.
        """
        if not _FORK_MARK[0]:
            forks.detected()  # in a child of fork(2), the hooks end a lease of the parent
        record = handle._record
        conn = handle._conn
        if conn is None:
            return False
        handle._conn = None  # handle._end(parked=True), spelled out
        handle._lease = -1
        handle._parked = True
        # record.handle_ref stays: the handle is alive as long as it may resume (the rest
        # dict or parked_for holds it), and the leak callback ignores a record that is not
        # leased. When the lease provably left the session as it found it, skip
        # _return()'s general checks. (Notifies need a LISTEN: dirty.)
        now = time.monotonic()
        if (
            record.dirty
            or record.characteristics_changed
            or self._slow_return
            or conn.closed
            or conn.get_transaction_status() != _STATUS_IDLE
            or conn.notices
            or now >= record.expires_at
            or (self._max_uses and record.uses >= self._max_uses)
        ):
            self._return(record, park_for=handle)
        elif (
            self._closed
            or (self._waiters and self._a_waiter_starves(now))
            or (self._inline_cleaner and now >= self._next_maintenance)
        ):
            self._put_back(record, now, handle)  # a handover at once, or cleanup
        else:
            record.holder = None
            if self.tracker is not None:
                record.lease_stack = record.cursor_stack = record.execute_stack = ()
            record.idle_since = now
            self._leased.discard(record)
            resting = self._resting
            resting[handle] = record
            # A close(), or a waiter that reached handoff_after, since the check above may
            # have missed it: take it back (if nobody did) and go the general way. Other
            # waiters need nothing from here: they look at the connections at rest before
            # they sleep, and the oldest wakes at least every PARK_GRACE to look again.
            if (self._closed or (self._waiters and self._a_waiter_starves(now))) and resting.pop(
                handle, None
            ) is record:
                self._put_back(record, now, handle)
        return True

    def _a_waiter_starves(self, now: float) -> bool:
        """Whether the oldest waiter has waited handoff_after: then a park hands over at
        once. Read without the lock (a deque's [0] is atomic under the GIL): a stale
        answer only moves the handover to the waiter's own next look."""
        try:
            return now - self._waiters[0].since >= self._starving_after
        except IndexError:  # (emptied since the caller looked)
            return False

    def _wake_resting(self, due: Callable[[ConnectionRecord], bool] | None = None) -> None:
        """Move connections at rest (all, or those ``due``) to the idle deque, parked for
        their holders as the general path leaves them, for the waiters, the cleaner and
        checkouts that find nothing else idle. Lock held."""
        resting = self._resting
        moved = False
        for handle, record in list(resting.items()):
            if due is not None and not due(record):
                continue
            if resting.pop(handle, None) is record:  # (else its holder took it back)
                record.parked_for = handle
                self._idle.append(record)
                moved = True
        if moved:
            self._sort_idle()

    def _sort_idle(self) -> None:
        """Restore the idle deque's idle_since order after records that rested joined it
        (the grace rules read its left end). Lock held."""
        if len(self._idle) > 1:
            self._idle = collections.deque(sorted(self._idle, key=_IDLE_SINCE))

    def _return(self, record: ConnectionRecord, park_for: ConnectionHandle | None = None) -> None:
        if self._pid != os.getpid():
            # The parent's connection: never touch it from a forked child. (A last guard
            # behind the fork checks of checkin() and park(): it costs a system call, but
            # only returns that need a closer look come here, and recovered leaks.)
            return
        now = time.monotonic()
        config = self.config
        # A connection that will be closed needs no reset: closing ends its session.
        if self._closed:
            reason: str | None = stats.CONNECTIONS_CLOSED
        elif now >= record.expires_at or config.max_lifetime == 0:
            reason = stats.CONNECTIONS_EXPIRED
        elif config.max_idle == 0 or (config.max_uses and record.uses >= config.max_uses):
            reason = stats.CONNECTIONS_CLOSED
        else:
            reason = self._reset(record)
        if reason is not None:
            record.holder = None
            record.lease_stack = record.cursor_stack = record.execute_stack = ()
            with self._lock:
                self._leased.discard(record)
            self._discard(record, reason)
            if self._inline_cleaner and now >= self._next_maintenance:
                self.run_maintenance()
        else:
            self._put_back(record, now, park_for)

    def _put_back(self, record: ConnectionRecord, now: float, park_for: Any) -> None:
        """End the lease of a clean connection: to the oldest waiter, or idle (kept for
        ``park_for`` to resume, if given); closed if the pool closed meanwhile."""
        record.holder = None
        record.lease_stack = record.cursor_stack = record.execute_stack = ()
        lock = self._lock
        lock.acquire()  # (every request ends here: cheaper than "with")
        try:
            self._leased.discard(record)
            record.idle_since = now
            closed = self._offer(record, park_for, now)
        finally:
            lock.release()
        if closed:  # closed while this connection was being reset or parked
            self._discard(record, stats.CONNECTIONS_CLOSED)
        if self._inline_cleaner and now >= self._next_maintenance:
            self.run_maintenance()

    def _reset(self, record: ConnectionRecord) -> str | None:
        """Bring the session back to a fresh login's state. Return why to discard, or None."""
        conn = record.conn
        if conn.closed:
            self._suspect_before = time.monotonic()
            return stats.CONNECTIONS_LOST
        try:
            status = conn.get_transaction_status()
            if status != _STATUS_IDLE:
                if status in (_STATUS_UNKNOWN, _STATUS_ACTIVE):
                    return stats.CONNECTIONS_LOST
                if conn.autocommit:
                    # A BEGIN sent as SQL: psycopg2's rollback() would do nothing here.
                    with conn.cursor() as cursor:
                        cursor.execute("ROLLBACK")
                else:
                    conn.rollback()
                if conn.get_transaction_status() != _STATUS_IDLE:
                    return stats.CONNECTIONS_CLOSED
                with self._lock:
                    self._stats[stats.RETURNS_ROLLED_BACK] += 1
                logger.warning(
                    "Pool %r: connection (backend pid %s) returned inside a transaction; "
                    "rolled back. Leased at:\n%s",
                    self.name,
                    record.backend_pid,
                    format_stack(record.lease_stack) if record.lease_stack else "  (not tracked)",
                )
            # psycopg2's own session characteristics. Setting one costs a round trip (it
            # asks the server for the default), reading is free: set only what changed.
            if conn.isolation_level != record.isolation_level:
                # Outside autocommit: there psycopg2 would also make it the session's
                # default_transaction_isolation, which a login does not have.
                if conn.autocommit:
                    conn.autocommit = False
                conn.isolation_level = record.isolation_level
            if not conn.autocommit:
                conn.autocommit = True
            if conn.readonly is not None:
                conn.readonly = None
            if conn.deferrable is not None:
                conn.deferrable = None
            if conn.encoding != record.encoding:
                conn.set_client_encoding(record.encoding)
            cursor_factory, notices, notifies, attributes = record.client_state
            # A RealDictCursor factory (or a deque for notices) left by one holder would
            # change what the next one's cursors return: back to the objects of the login.
            if conn.cursor_factory is not cursor_factory:
                conn.cursor_factory = cursor_factory
            if conn.notices is not notices:
                conn.notices = notices
            if conn.notifies is not notifies:
                conn.notifies = notifies
            if attributes is not None and conn.__dict__ != attributes:
                conn.__dict__.clear()
                conn.__dict__.update(attributes)
            mode = self.config.reset
            if mode == "always" or (record.dirty and mode == "auto"):
                statements = [RESET_SQL, reseed_sql()]
                if record.deallocate:
                    # The holder may have prepared statements of its own. Ours go too;
                    # they are prepared again at their next use.
                    statements.append(DEALLOCATE_SQL)
                    record.statements.clear()
                if record.init_sql:
                    statements.append(record.init_sql)
                with conn.cursor() as cursor:
                    cursor.execute("; ".join(statements))
                with self._lock:
                    self._stats[stats.RESETS_NUM] += 1
            if conn.notices:
                del conn.notices[:]
            if conn.notifies:
                del conn.notifies[:]
        except psycopg2.Error as error:
            logger.warning(
                "Pool %r: could not reset connection (backend pid %s), closing it: %s",
                self.name,
                record.backend_pid,
                error,
            )
            return stats.CONNECTIONS_LOST if conn.closed else stats.CONNECTIONS_CLOSED
        return None

    def _offer(self, record: ConnectionRecord, park_for: Any, now: float) -> bool:
        """Give a free connection to the oldest waiter, or keep it idle (resumable by
        ``park_for``, if given). Lock held. True: the pool is closed, the caller closes it.

        A parked connection goes to a waiter only after PARK_GRACE, unless the oldest has
        waited handoff_after already: its holder will most likely take it back sooner.
        """
        if self._closed:
            return True
        waiters = self._waiters
        if waiters and (park_for is None or now - waiters[0].since >= self._starving_after):
            self._hand_to_waiter(record)
        else:
            record.parked_for = park_for
            self._idle.append(record)
            if waiters:
                self._hand_over_parked(now)
        return False

    def _hand_over_parked(self, now: float) -> None:
        """Give the waiters, oldest first, the idle connections whose grace has ended
        (the oldest idle first). Lock held."""
        idle, waiters = self._idle, self._waiters
        grace = self._park_grace
        while waiters and idle and now - idle[0].idle_since >= grace:
            record = idle.popleft()
            record.parked_for = None
            self._hand_to_waiter(record)

    def _set_check_at(self, waiter: _Waiter, now: float) -> None:
        """When ``waiter`` should look at the pool again by itself (see _Waiter). Lock held."""
        if self._waiters[0] is waiter:
            idle = self._idle
            grace = self._park_grace
            # With nothing idle it still looks every PARK_GRACE (about 200 wake-ups a
            # second while a queue lasts): waking it at each park instead would cost a
            # wake-up for most requests of a busy pool (measured: 12,190 for 18,582).
            waiter.check_at = (idle[0].idle_since if idle else now) + grace
        else:
            waiter.check_at = math.inf

    def _wake_oldest(self) -> None:
        """The oldest waiter changed: wake it if it sleeps as one of the others. Lock held."""
        waiters = self._waiters
        if waiters and waiters[0].check_at == math.inf:
            waiters[0].signal()

    def _hand_to_waiter(self, grant: ConnectionRecord | _OpenNew) -> None:
        """Give a returned connection (or a free slot) to the oldest waiter. Lock held."""
        waiter = self._waiters.popleft()
        if grant is _OPEN_NEW:
            self._size += 1
        waiter.grant = grant
        waiter.signal()
        self._wake_oldest()

    def _discard(self, record: ConnectionRecord, reason: str) -> None:
        """Close a connection that is not in the idle deque and free its slot."""
        try:
            record.conn.close()
        except Exception:  # pragma: no cover - close() of a broken connection
            pass
        with self._lock:
            self._stats[reason] += 1
        self._release_slot()

    def _release_slot(self) -> None:
        with self._lock:
            self._size -= 1
            if self._waiters and self._size < self.config.max_size:
                self._hand_to_waiter(_OPEN_NEW)

    # -- leaks ------------------------------------------------------------------------

    def _recover_leaks(self) -> None:
        while True:
            try:
                record = self._leaked.popleft()
            except IndexError:
                return
            with self._lock:
                self._stats[stats.LEAKS_RECOVERED] += 1
            logger.warning(
                "Pool %r: connection (backend pid %s) was never returned: its holder was "
                "garbage-collected without close(); recovered %.1f s after the lease. "
                "Leased at:\n%s",
                self.name,
                record.backend_pid,
                time.monotonic() - record.leased_at,
                format_stack(record.lease_stack) if record.lease_stack else "  (not tracked)",
            )
            self._return(record)

    def _reclaim_from_dead_threads(self) -> None:
        """If a holder thread has died, collect garbage so its lost handles come back."""
        with self._lock:
            leased = list(self._leased)  # (resume() adds to it without the lock)
        dead = any(record.holder is not None and not record.holder.is_alive() for record in leased)
        now = time.monotonic()
        if dead and now - self._last_gc > 1.0:
            self._last_gc = now
            gc.collect()
        if self._leaked:
            self._recover_leaks()

    # -- maintenance ------------------------------------------------------------------

    def run_maintenance(self) -> None:
        """Close expired and surplus idle connections, recover leaks, refill to min_size.

        Runs in the cleaner thread, or inline on checkin when ``cleaner="inline"``.
        """
        if self._pid != os.getpid() or self._closed:
            return
        now = time.monotonic()
        self._next_maintenance = now + cleaner.INTERVAL
        if self._leaked:
            self._recover_leaks()
        reap: list[tuple[ConnectionRecord, str]] = []
        config = self.config
        with self._lock:
            if self._resting:
                # Those at rest that the rules below may close (their holders come back
                # to the slow path once); the rest stay, to keep the fast path.
                self._wake_resting(lambda record: self._due_for_cleanup(record, now))
            surplus = self._size - config.min_size
            keep: collections.deque[ConnectionRecord] = collections.deque()
            for record in self._idle:  # oldest idle first
                if now >= record.expires_at:
                    reap.append((record, stats.CONNECTIONS_EXPIRED))
                    surplus -= 1
                elif (
                    config.max_idle is not None
                    and surplus > 0
                    and now - record.idle_since >= config.max_idle
                ):
                    reap.append((record, stats.CONNECTIONS_IDLE_CLOSED))
                    surplus -= 1
                else:
                    keep.append(record)
            self._idle = keep
        for record, reason in reap:
            self._discard(record, reason)
        self._refill()
        if self.tracker is not None:
            with self._lock:
                leased = list(self._leased)
            self.tracker.check(leased, time.monotonic())
        if self._inline_cleaner:  # no cleaner thread to run the listeners
            cleaner.run_listeners()

    def _due_for_cleanup(self, record: ConnectionRecord, now: float) -> bool:
        """Whether run_maintenance() may close this idle connection (expired, or idle for
        max_idle). (ping_after needs no move: resume() pings a record at rest itself.)"""
        max_idle = self.config.max_idle
        return now >= record.expires_at or (
            max_idle is not None and now - record.idle_since >= max_idle
        )

    def _refill(self) -> None:
        while True:
            with self._lock:
                if self._closed or self._size >= self.config.min_size:
                    return
                self._size += 1
            try:
                record = self._open_in_reserved_slot()
            except psycopg2.Error as error:
                logger.warning("Pool %r: could not refill to min_size: %s", self.name, error)
                return
            with self._lock:
                closed = self._offer(record, None, time.monotonic())
            if closed:  # closed while this connection was being opened
                self._discard(record, stats.CONNECTIONS_CLOSED)
                return

    # -- life cycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close idle connections now and leased ones when they come back; refuse new leases."""
        forks.check()  # in a child of fork(2), forget the parent's connections, never close them
        with self._lock:
            self._closed = True
            self._wake_resting()
            # Idle connections, and leaked ones whose holder is gone: nobody will return them.
            idle = [*self._idle, *self._leaked]
            self._idle, self._leaked = collections.deque(), collections.deque()
            self._leased.difference_update(idle)
            waiters, self._waiters = list(self._waiters), collections.deque()
            self._size -= len(idle)
            for waiter in waiters:
                waiter.grant = PoolClosed(f"pool {self.name!r} was closed while waiting")
                waiter.signal()
        for record in idle:
            try:
                record.conn.close()
            except Exception:  # pragma: no cover
                pass
        cleaner.unregister(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connections without touching their sockets.

        Handles leased at the fork end: their holder was in the middle of something that
        the child cannot continue. Parked handles stay parked: nothing was under way, so
        their next use leases a connection of the child's own (resume() finds the record
        no longer parked for them), as it would after another thread took theirs.
        """
        records: Iterable[ConnectionRecord] = (
            *self._idle,
            *self._resting.values(),
            *self._leased,
            *self._leaked,
        )
        for record in records:
            handle = record.handle_ref() if record.handle_ref is not None else None
            if handle is not None and not handle._parked:
                handle._end(parked=False)
            record.handle_ref = record.parked_for = None
            detach_socket(record.conn)
        self._init_state()
        if self.tracker is not None:
            self.tracker.queries.after_fork()

    # -- introspection ----------------------------------------------------------------

    def get_stats(self) -> dict[str, int]:
        """Counters since the last pop_stats(), plus the current sizes."""
        with self._lock:
            values = {name: self._stats[name] for name in stats.COUNTERS}
            values[stats.REQUESTS_NUM] += self._count_resumed() - self._resumed_popped
            values.update(self._gauges())
        return values

    def pop_stats(self) -> dict[str, int]:
        """get_stats(), zeroing the counters (as psycopg_pool's pop_stats() does)."""
        with self._lock:
            values = {name: self._stats[name] for name in stats.COUNTERS}
            resumed = self._count_resumed()
            values[stats.REQUESTS_NUM] += resumed - self._resumed_popped
            self._resumed_popped = resumed
            popped = self._popped_stats
            for name in stats.COUNTERS:
                popped[name] += values[name]
            values.update(self._gauges())
            self._stats = dict.fromkeys(stats.COUNTERS, 0)
        return values

    def total_stats(self) -> dict[str, int]:
        """get_stats() with the counters since the pool opened: pop_stats() does not zero
        them. The status page publishes these, so that a metrics exporter that pops the
        counters every few seconds does not make the pool look idle there."""
        values = self.get_stats()
        with self._lock:
            for name, value in self._popped_stats.items():
                values[name] += value
        return values

    def _count_resumed(self) -> int:
        """How many leases resume() took back from rest, ever (lock held). They count
        with next() on an itertools.count, which is atomic, instead of under the lock;
        reading takes a next() too, so the reads are counted off."""
        value = next(self._resumed) - self._resumed_reads
        self._resumed_reads += 1
        return value

    def _gauges(self) -> dict[str, int]:
        queries = self.tracker.queries if self.tracker is not None else None
        return {
            stats.QUERIES_SHAPES: len(queries) if queries is not None else 0,
            stats.QUERIES_EVICTED: queries.evictions if queries is not None else 0,
            stats.POOL_MIN: self.config.min_size,
            stats.POOL_MAX: self.config.max_size,
            stats.POOL_SIZE: self._size,
            stats.POOL_AVAILABLE: len(self._idle) + len(self._resting),
            stats.POOL_LEASED: len(self._leased),
            stats.REQUESTS_WAITING: len(self._waiters),
        }

    def snapshot(self) -> list[dict[str, Any]]:
        """Every connection of this pool in this process: state, holder, stacks (as text)."""
        now = time.monotonic()
        with self._lock:
            leased = sorted(self._leased, key=lambda record: record.leased_at)
            idle = sorted([*self._idle, *self._resting.values()], key=_IDLE_SINCE, reverse=True)
        if self.tracker is None:
            raise RuntimeError(f"pool {self.name!r} has tracking='off': nothing to show")
        return [self.tracker.describe(r, True, now) for r in leased] + [
            self.tracker.describe(r, False, now) for r in idle
        ]

    def as_table(self) -> str:
        """snapshot() as a readable text table."""
        return format_table(self.snapshot())

    def idle_in_transaction(self, threshold: float | None = None) -> list[dict[str, Any]]:
        """Leased connections in a transaction and idle for ``threshold`` seconds or more
        (default: the idle_in_transaction_threshold option), with their three stacks."""
        if self.tracker is None:
            raise RuntimeError(f"pool {self.name!r} has tracking='off': nothing is tracked")
        if threshold is not None and (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not threshold >= 0
        ):
            raise ValueError(
                f"threshold must be None or a number of seconds >= 0, not {threshold!r}"
            )
        with self._lock:
            leased = list(self._leased)
        return self.tracker.idle_in_transaction(leased, threshold, time.monotonic())

    def top_queries(self, n: int = 10, order_by: str = "count") -> list[dict[str, Any]]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, not {n!r}")
        if self.tracker is None:
            return []
        return self.tracker.queries.top(n, order_by)

    def add_prepare_target(
        self, sql: str, name: str | None = None, plan_cache_mode: str | None = None
    ) -> PrepareTarget | None:
        """Run statements of ``sql``'s shape prepared (see prepared.py); None when the pool's
        ``prepare`` option is off. Raises UnpreparableStatement for SQL PREPARE can't take."""
        if self.prepared is None:
            return None
        return self.prepared.add(sql, name, plan_cache_mode)

    def prepared_stats(self) -> list[dict[str, Any]]:
        """Per prepare target: hits, prepares, reprepares, fallbacks."""
        if self.prepared is None:
            return []
        return [target.stats() for target in self.prepared.targets()]

    def reset_query_stats(self) -> None:
        if self.tracker is not None:
            self.tracker.queries.reset()

    def holders(self) -> list[dict[str, Any]]:
        """Who holds each leased connection: pid, thread, seconds held, first user frame."""
        now = time.monotonic()
        with self._lock:
            leased = list(self._leased)
        return [
            {
                "backend_pid": record.backend_pid,
                "thread": record.holder.name if record.holder is not None else None,
                "held_s": now - record.leased_at,
                "leased_at": first_user_frame(record.lease_stack) if record.lease_stack else None,
            }
            for record in sorted(leased, key=lambda record: record.leased_at)
        ]

    def __repr__(self) -> str:
        return (
            f"<ConnectionPool {self.name!r} size={self._size} "
            f"idle={len(self._idle) + len(self._resting)} "
            f"leased={len(self._leased)} max_size={self.config.max_size}>"
        )


def _leak_callback(pool: ConnectionPool, record: ConnectionRecord) -> Callable[[Any], None]:
    pool_ref = weakref.ref(pool)

    def handle_lost(ref: Any) -> None:
        # Runs inside garbage collection, possibly while this thread holds the pool
        # lock: only queue the record; checkout, waiters and the cleaner recover it.
        # A record that is not leased (parked, idle, discarded) was not lost.
        owner = pool_ref()
        if owner is not None and record.handle_ref is ref and record.holder is not None:
            record.handle_ref = None
            if owner._closed and owner._pid == os.getpid():
                try:  # a closed pool recovers nothing: just hang up
                    record.conn.close()
                except Exception:  # pragma: no cover
                    pass
            else:
                owner._leaked.append(record)

    return handle_lost


_devnull = -1


def detach_socket(conn: Any) -> None:
    """Point this process's copy of the socket at /dev/null, so that closing the inherited
    psycopg2 connection (which sends a Terminate message) can't reach the parent's session."""
    global _devnull
    try:
        if conn.closed:
            return
        fd = conn.fileno()
        if _devnull < 0:
            _devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(_devnull, fd)
    except (OSError, psycopg2.Error):  # pragma: no cover - already gone
        pass


def _forget_parent_pools() -> None:
    for pool in list(_all_pools):
        pool._forget_after_fork()
    cleaner.forget_after_fork()


def all_pools() -> list[ConnectionPool]:
    """Every pool of this process, open or closed, not yet collected."""
    return list(_all_pools)


def close_all_pools() -> None:
    """Close every pool of this process (idle connections now, leased ones on return)."""
    for pool in list(_all_pools):
        pool.close()


forks.after_fork_in_child(_forget_parent_pools)


@atexit.register
def _close_pools_at_exit() -> None:
    # Say goodbye to the server (Terminate) instead of dropping sockets; idle ones only.
    for pool in list(_all_pools):
        if pool._pid == os.getpid():
            pool.close()
