"""Names of the pool's counters and gauges (units in the names, as psycopg_pool does)."""

# Gauges: the state now.
POOL_MIN = "pool_min"
POOL_MAX = "pool_max"
POOL_SIZE = "pool_size"  # open connections: idle + leased + being opened
POOL_AVAILABLE = "pool_available"  # idle in the pool
POOL_LEASED = "pool_leased"
REQUESTS_WAITING = "requests_waiting"
QUERIES_SHAPES = "queries_shapes"  # distinct statements in the query statistics
QUERIES_EVICTED = "queries_evicted"  # rare statements dropped to bound memory

# Counters: events since the last pop_stats().
REQUESTS_NUM = "requests_num"  # checkouts that got a connection
REQUESTS_QUEUED = "requests_queued"  # checkouts that had to wait
REQUESTS_WAIT_MS = "requests_wait_ms"
REQUESTS_TIMEOUTS = "requests_timeouts"
REQUESTS_REFUSED = "requests_refused"  # max_waiting reached
CONNECTIONS_NUM = "connections_num"  # opened
CONNECTIONS_MS = "connections_ms"  # time spent opening them
CONNECTIONS_ERRORS = "connections_errors"  # failed to open
CONNECTIONS_LOST = "connections_lost"  # found dead (killed, server restart, broken)
CONNECTIONS_EXPIRED = "connections_expired"  # max_lifetime reached
CONNECTIONS_IDLE_CLOSED = "connections_idle_closed"  # max_idle reached
CONNECTIONS_CLOSED = "connections_closed"  # max_uses, max_idle=0, reset failed, pool closed
RETURNS_ROLLED_BACK = "returns_rolled_back"  # returned inside a transaction
RESETS_NUM = "resets_num"  # full session resets (one round trip each)
PINGS_NUM = "pings_num"
LEAKS_RECOVERED = "leaks_recovered"  # handles garbage-collected without checkin

#: Every counter, reported as 0 until its event happens.
COUNTERS = (
    REQUESTS_NUM, REQUESTS_QUEUED, REQUESTS_WAIT_MS, REQUESTS_TIMEOUTS, REQUESTS_REFUSED,
    CONNECTIONS_NUM, CONNECTIONS_MS, CONNECTIONS_ERRORS, CONNECTIONS_LOST, CONNECTIONS_EXPIRED,
    CONNECTIONS_IDLE_CLOSED, CONNECTIONS_CLOSED, RETURNS_ROLLED_BACK, RESETS_NUM, PINGS_NUM,
    LEAKS_RECOVERED,
)  # fmt: skip
