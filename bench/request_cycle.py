#!/usr/bin/env python
"""Django request-cycle benchmark: unpooled vs persistent vs pooled connections.

    python bench/request_cycle.py [--seconds 2] [--rounds 5] [--threads 32]
                                  [--pin same|split|none] [--profile]

Starts a throwaway PostgreSQL cluster (or uses $DATABASE_URL), configures Django in-process
and times the request cycle ``request_started`` -> ``connections["default"].cursor()``:
``SELECT 1`` + ``fetchone()`` -> ``request_finished``, in interleaved rounds (A B C D A B ...):

1. one thread: unpooled (postgresql, CONN_MAX_AGE=0), persistent (CONN_MAX_AGE=None),
   pooled (django_pooled_pg defaults, reset='auto') and pooled_always (reset='always').
   Median requests/s per contender; pooled/persistent and pooled/unpooled.
2. N threads (32): persistent (a session per thread) vs pooled with max_size=8; requests/s
   and the most server sessions each used, sampled from pg_stat_activity by
   application_name on a separate psycopg2 connection.

Fairness. The request signals walk every alias in DATABASES, and each alias costs a few
microseconds even unconnected (asgiref Local lookups): 7 aliases made the signals alone
~57 us/request against ~16 us for one. So each contender runs as the only alias, 'default':
its DATABASES entry is swapped into django.db.connections before its round (this thread's
connections closed, fresh settings and thread-local storage); pools live on in the registry.
CPU placement. On this VM a SELECT 1 round trip costs ~25 us with client and server on the
same CPU, 80-130 us (and noisy) across CPUs, and a backend keeps its placement for life,
which would bias the contender that keeps its session (the pool). --pin same (default) pins
this process and the cluster (postmaster, hence every backend) to one CPU: stable numbers,
and the Python overhead weighs the most. --pin split: server on another CPU; none: unpinned.

Results: a table on stdout, JSON in bench/results/request_cycle.json (see --output).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import statistics
import sys
import threading
import time
from urllib.parse import unquote, urlsplit

from asgiref.local import Local

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

APP_PREFIX = "bench_rc_"
SINGLE = ["unpooled", "persistent", "pooled", "pooled_always"]
THREADED = ["t_persistent", "t_pooled8"]
POOLED_MAX = 8
TARGETS = {
    "pooled/persistent": 0.9,
    "pooled/unpooled": 15.0,
    "threaded pooled8/persistent": 0.9,
}


def pin_processes(mode: str, datadir: str | None) -> str:
    """Pin this process (and the threads it starts later) and the cluster's processes."""
    if mode == "none" or not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    cpus = sorted(os.sched_getaffinity(0))
    client = cpus[0]
    server = cpus[1] if mode == "split" and len(cpus) > 1 else client
    os.sched_setaffinity(0, {client})
    if datadir is None:
        return f"client on CPU {client}, server not pinned ($DATABASE_URL)"
    with open(os.path.join(datadir, "postmaster.pid")) as pidfile:
        postmaster = int(pidfile.readline())
    pids = [postmaster]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent == postmaster:
                pids.append(int(entry))
    for pid in pids:  # backends forked later inherit the postmaster's affinity
        os.sched_setaffinity(pid, {server})
    return f"client on CPU {client}, server on CPU {server}"


def database_entry(url: str, engine: str, app: str, **extra: object) -> dict:
    parts = urlsplit(url)
    options = {"application_name": APP_PREFIX + app, **extra.pop("OPTIONS", {})}  # type: ignore[dict-item]
    return {
        "ENGINE": engine,
        "NAME": unquote(parts.path.lstrip("/")) or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
        "OPTIONS": options,
        **extra,
    }


CONTENDERS: dict[str, dict] = {}


def configure_django(url: str) -> None:
    import django
    from django.conf import settings

    pg, pooled = "django.db.backends.postgresql", "django_pooled_pg"
    CONTENDERS.update({
        "unpooled": database_entry(url, pg, "unpooled", CONN_MAX_AGE=0),
        "persistent": database_entry(url, pg, "persistent", CONN_MAX_AGE=None),
        "pooled": database_entry(url, pooled, "pooled", OPTIONS={"pool": {}}),
        "pooled_always": database_entry(
            url, pooled, "pooled_always", OPTIONS={"pool": {"reset": "always"}}
        ),
        "t_persistent": database_entry(url, pg, "t_persistent", CONN_MAX_AGE=None),
        "t_pooled8": database_entry(
            url, pooled, "t_pooled8", OPTIONS={"pool": {"max_size": POOLED_MAX, "timeout": 120}}
        ),
    })  # fmt: skip
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_pooled_pg"],
        DATABASES={"default": copy.deepcopy(CONTENDERS["pooled"])},
    )
    django.setup()


def activate(name: str | None) -> None:
    """Make contender ``name`` the only alias ('default'); None: no database at all."""
    from django.db import connections

    connections.close_all()  # this thread's; worker threads close their own
    entry = {} if name is None else copy.deepcopy(CONTENDERS[name])
    connections._settings = {"default": entry}
    connections.__dict__.pop("settings", None)  # the cached_property re-reads _settings
    connections._connections = Local(connections.thread_critical)


# -- the request cycle ----------------------------------------------------------------


def make_cycle(alias: str = "default"):
    from django.core.signals import request_finished, request_started
    from django.db import connections

    def cycle() -> None:
        request_started.send(sender=None)
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        request_finished.send(sender=None)

    return cycle


def signals_only_cycle() -> None:
    from django.core.signals import request_finished, request_started

    request_started.send(sender=None)
    request_finished.send(sender=None)


def check_only_connected(alias: str | None) -> None:
    """In this thread, no alias but ``alias`` may hold a connection (fairness check)."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.alias != alias and conn.connection is not None:
            raise AssertionError(f"alias {conn.alias!r} is connected while measuring {alias!r}")


def timed_loop(cycle, seconds: float) -> tuple[int, float]:
    perf = time.perf_counter
    start = perf()
    deadline = start + seconds
    count = 0
    while True:
        for _ in range(50):
            cycle()
        count += 50
        now = perf()
        if now >= deadline:
            return count, now - start


POOLS: dict[str, object] = {}


def run_single(name: str, seconds: float) -> float:
    from django.db import connections

    activate(name)
    cycle = make_cycle()
    for _ in range(3 if name == "unpooled" else 50):  # warm-up: connect, fill the pool
        cycle()
    check_only_connected("default")
    count, elapsed = timed_loop(cycle, seconds)
    check_only_connected("default")
    remember_pool(name)
    connections["default"].close()  # persistent: give up the session so later rounds stay fair
    check_only_connected(None)
    return count / elapsed


def remember_pool(name: str) -> None:
    from django.db import connections

    conn = connections["default"]
    if hasattr(conn, "get_pool"):
        POOLS[name] = conn.get_pool()


# -- threaded workload ----------------------------------------------------------------


class SessionSampler(threading.Thread):
    """Counts server sessions per application_name in pg_stat_activity, keeps the maxima."""

    def __init__(self, conninfo: dict, interval: float = 0.005) -> None:
        super().__init__(name="session sampler", daemon=True)
        import psycopg2

        self.conn = psycopg2.connect(**conninfo, application_name="bench_rc_sampler")
        self.conn.autocommit = True
        self.interval = interval
        self.maxima: dict[str, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE %s "
                "GROUP BY 1",
                [APP_PREFIX.replace("_", r"\_") + "%"],
            )
            rows = cursor.fetchall()
        for app, count in rows:
            name = app[len(APP_PREFIX):]
            if count > self.maxima.get(name, 0):
                self.maxima[name] = count
        self.samples += 1

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()
        self.conn.close()


def run_threaded(name: str, threads: int, seconds: float, warmup: float = 0.5) -> dict:
    from django.db import connections

    activate(name)
    remember_pool(name)
    alias = "default"
    cycle = make_cycle()
    counts = [0] * threads
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    window: list[float] = []

    def worker(index: int) -> None:
        try:
            barrier.wait()
            t_start, t_end = window
            perf = time.perf_counter
            count = 0
            while True:
                cycle()
                now = perf()
                if now >= t_end:
                    break
                if now >= t_start:
                    count += 1
            counts[index] = count
        except BaseException as error:  # report, don't hang the barrier
            errors.append(error)
        finally:
            connections[alias].close()  # this thread's session (persistent) or lease
            connections.close_all()

    workers = [threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(threads)]
    for thread in workers:
        thread.start()
    now = time.perf_counter()
    window[:] = [now + warmup, now + warmup + seconds]
    barrier.wait()
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    return {"rps": sum(counts) / seconds, "min_thread": min(counts), "max_thread": max(counts)}


# -- profile --------------------------------------------------------------------------


def profile_pooled(seconds: float) -> str:
    activate("pooled")
    cycle = make_cycle()
    for _ in range(100):
        cycle()
    profiler = cProfile.Profile()
    profiler.enable()
    count, elapsed = timed_loop(cycle, seconds)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative")
    print(f"profile: {count} pooled request cycles (times inflated by cProfile)", file=out)
    stats.print_stats(r"django_pooled_pg|django/db/backends/base/base.py|postgresql/base.py", 40)
    stats.sort_stats("tottime")
    stats.print_stats(25)
    return out.getvalue()


# -- main -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one round (2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--threads", type=int, default=32, help="threads of workload 2 (32)")
    parser.add_argument(
        "--pin", choices=("same", "split", "none"), default="same",
        help="CPU placement of client and server (same)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="also cProfile the pooled cycle")
    parser.add_argument(
        "--output", default=os.path.join(HERE, "results", "request_cycle.json")
    )
    args = parser.parse_args()

    cluster = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        from django_pooled_pg.testing import Cluster

        cluster = Cluster(settings={"timezone": "'UTC'"}).init()
        cluster.start()
        url = cluster.url
        print(f"PostgreSQL throwaway cluster on port {cluster.port} ({cluster.bindir})")
    else:
        print("PostgreSQL from $DATABASE_URL")
    try:
        args.placement = pin_processes(args.pin, cluster.datadir if cluster else None)
        return run(args, url)
    finally:
        from django.db import connections

        try:
            connections.close_all()
        except Exception:
            pass
        if cluster is not None:
            from django_pooled_pg.pool.pool import close_all_pools

            close_all_pools()
            cluster.destroy()


def run(args: argparse.Namespace, url: str) -> int:
    started = time.monotonic()
    configure_django(url)
    import django
    import psycopg2
    from django.db import connections

    activate("persistent")
    connections["default"]  # initialized, not connected: what every contender walks
    baseline_count, baseline_elapsed = timed_loop(signals_only_cycle, 0.5)
    baseline_us = 1e6 * baseline_elapsed / baseline_count

    print(
        f"Django {django.__version__}, psycopg2 {psycopg2.__version__.split()[0]}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds x {args.seconds:g} s; --pin {args.pin}: {args.placement}"
    )
    print(f"signals-only cycle (1 unconnected alias): {baseline_us:.1f} us\n")

    # Workload 1: one thread, interleaved rounds.
    single: dict[str, list[float]] = {alias: [] for alias in SINGLE}
    for round_index in range(args.rounds):
        for alias in SINGLE:
            gc.collect()
            single[alias].append(run_single(alias, args.seconds))
        print(
            f"  round {round_index + 1}: "
            + "  ".join(f"{alias} {single[alias][-1]:,.0f}/s" for alias in SINGLE),
            flush=True,
        )
    median = {alias: statistics.median(values) for alias, values in single.items()}
    pool_stats = {name: POOLS[name].get_stats() for name in ("pooled", "pooled_always")}

    # Workload 2: threads, interleaved rounds, sessions sampled server-side.
    entry = CONTENDERS["t_persistent"]
    sampler = SessionSampler(
        {
            "dbname": entry["NAME"],
            "user": entry["USER"] or None,
            "password": entry["PASSWORD"] or None,
            "host": entry["HOST"] or None,
            "port": entry["PORT"] or None,
        }
    )
    sampler.start()
    threaded: dict[str, list[dict]] = {alias: [] for alias in THREADED}
    print()
    for round_index in range(args.rounds):
        for alias in THREADED:
            gc.collect()
            threaded[alias].append(run_threaded(alias, args.threads, args.seconds))
        print(
            f"  threads round {round_index + 1}: "
            + "  ".join(f"{alias} {threaded[alias][-1]['rps']:,.0f}/s" for alias in THREADED),
            flush=True,
        )
    sampler.stop()
    t_median = {a: statistics.median(r["rps"] for r in runs) for a, runs in threaded.items()}
    t_pool_stats = POOLS["t_pooled8"].get_stats()
    sessions = {alias: sampler.maxima.get(alias, 0) for alias in THREADED}

    ratios = {
        "pooled/persistent": median["pooled"] / median["persistent"],
        "pooled/unpooled": median["pooled"] / median["unpooled"],
        "pooled_always/persistent": median["pooled_always"] / median["persistent"],
        "pooled/pooled_always": median["pooled"] / median["pooled_always"],
        "threaded pooled8/persistent": t_median["t_pooled8"] / t_median["t_persistent"],
    }
    # The same ratios round by round (contenders of a round ran seconds apart): their
    # spread shows how much of a difference is noise of the machine.
    pairs = {
        "pooled/persistent": (single["pooled"], single["persistent"]),
        "pooled/unpooled": (single["pooled"], single["unpooled"]),
        "pooled_always/persistent": (single["pooled_always"], single["persistent"]),
        "pooled/pooled_always": (single["pooled"], single["pooled_always"]),
        "threaded pooled8/persistent": (
            [r["rps"] for r in threaded["t_pooled8"]], [r["rps"] for r in threaded["t_persistent"]]
        ),
    }
    per_round = {name: [a / b for a, b in zip(*pair)] for name, pair in pairs.items()}
    verdict = {name: ratios[name] >= target for name, target in TARGETS.items()}
    verdict["pooled sessions <= 8"] = 0 < sessions["t_pooled8"] <= POOLED_MAX

    # Table.
    print("\nWorkload 1: request cycle, 1 thread (median of rounds)")
    print(f"  {'contender':<15}{'req/s':>10}{'us/req':>9}{'min..max req/s':>22}{'resets/leases':>16}")
    for alias in SINGLE:
        values = single[alias]
        resets = pool_stats[alias].get("resets_num", 0) if alias in pool_stats else None
        requests = pool_stats[alias].get("requests_num") if alias in pool_stats else None
        print(
            f"  {alias:<15}{median[alias]:>10,.0f}{1e6 / median[alias]:>9.1f}"
            f"{f'{min(values):,.0f}..{max(values):,.0f}':>22}"
            f"{'-' if resets is None else f'{resets}/{requests}':>16}"
        )
    print(f"\nWorkload 2: {args.threads} threads (median of rounds)")
    print(f"  {'contender':<15}{'req/s':>10}{'max server sessions':>22}")
    for alias in THREADED:
        print(f"  {alias:<15}{t_median[alias]:>10,.0f}{sessions[alias]:>22}")
    print(
        f"  pooled8 waits: {t_pool_stats.get('requests_queued', 0)} queued of "
        f"{t_pool_stats.get('requests_num', 0)} checkouts (avg wait "
        f"{t_pool_stats.get('requests_wait_ms', 0) / max(1, t_pool_stats.get('requests_queued', 0)):.2f} ms), "
        f"{t_pool_stats.get('connections_num', 0)} connections opened; "
        f"{sampler.samples} session samples"
    )
    print("\nRatios of medians (per-round range; target)")
    for name, value in ratios.items():
        target = TARGETS.get(name)
        spread = f"({min(per_round[name]):.2f}..{max(per_round[name]):.2f})"
        mark = "" if target is None else f"  >= {target:g}: {'PASS' if verdict[name] else 'MISS'}"
        print(f"  {name:<30}{value:>7.2f}x {spread:<14}{mark}")
    print(
        f"  {'pooled8 max server sessions':<30}{sessions['t_pooled8']:>7}  {'':<14}"
        f"  <= {POOLED_MAX}: {'PASS' if verdict['pooled sessions <= 8'] else 'FAIL'}"
    )
    elapsed = time.monotonic() - started
    print(f"\nbenchmark time {elapsed:.0f} s")

    results = {
        "command": "python bench/request_cycle.py " + " ".join(sys.argv[1:]),
        "environment": {
            "django": django.__version__,
            "psycopg2": psycopg2.__version__.split()[0],
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "database": "$DATABASE_URL" if os.environ.get("DATABASE_URL") else "throwaway cluster",
        },
        "pin": args.pin,
        "placement": args.placement,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "signals_only_cycle_us": baseline_us,
        "single_thread": {
            alias: {"median_rps": median[alias], "rounds_rps": single[alias]} for alias in SINGLE
        },
        "single_thread_pool_stats": pool_stats,
        "threaded": {
            "threads": args.threads,
            "pooled_max_size": POOLED_MAX,
            **{
                alias: {
                    "median_rps": t_median[alias],
                    "rounds": threaded[alias],
                    "max_server_sessions": sessions[alias],
                }
                for alias in THREADED
            },
            "pool_stats": t_pool_stats,
            "session_samples": sampler.samples,
        },
        "ratios": ratios,
        "ratios_per_round": per_round,
        "targets": TARGETS,
        "verdict": verdict,
        "elapsed_s": elapsed,
    }
    if args.profile:
        report = profile_pooled(args.seconds)
        print("\n" + report)
        results["profile"] = report
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as out:
        json.dump(results, out, indent=2)
    print(f"results: {os.path.relpath(args.output, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
