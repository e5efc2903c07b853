#!/usr/bin/env python
"""Django request-cycle benchmark: unpooled vs persistent vs pooled connections; tracking cost.

    python bench/request_cycle.py [--seconds 2] [--rounds 5] [--thread-rounds 15]
                                  [--threads 32]
                                  [--pin same|split|none] [--profile]
                                  [--only cycle|threads|tracking ...]
                                  [--tracking-rounds 20] [--tracking-seconds 0.5]
                                  [--handoff-after SECONDS]

Starts a throwaway PostgreSQL cluster (or uses $DATABASE_URL), configures Django in-process
and times the request cycle ``request_started`` -> ``connections["default"].cursor()``:
``SELECT 1`` + ``fetchone()`` -> ``request_finished``, in interleaved rounds (A B C D A B ...):

1. one thread: unpooled (postgresql, CONN_MAX_AGE=0), persistent (CONN_MAX_AGE=None),
   persistent_checked (the same with CONN_HEALTH_CHECKS=True: Django's way to never run a
   request on a dead connection, with a SELECT 1 round trip at each request's first query;
   the pool checks the socket with one poll() instead), pooled (django_pooled_pg defaults,
   reset='auto'), pooled_off (the same with tracking='off': the pool's own cost, tracking
   having its own budget in workload 3) and pooled_always (reset='always'). Median
   requests/s per contender; pooled/persistent and pooled/unpooled.
2. N threads (32): persistent (a session per thread) vs pooled with max_size=8 (defaults,
   and tracking='off'); requests/s, the most server sessions each used, sampled from
   pg_stat_activity by application_name on a separate psycopg2 connection, and fairness:
   the requests of the slowest and the fastest thread in the least even round. Its medians
   swing +-10% between runs here, so the ratio also comes from the 90th percentile of the
   req/s of 0.1 s slices of every round: the rate while the neighbours steal little. It
   runs 15 rounds (--thread-rounds): with 5, six runs of one version of the code gave that
   estimate 0.87-0.98x; with 15, two runs gave 0.92x and 0.93x.
3. Tracking (one thread, pooled, reset='auto'): tracking='off' vs 'counters' vs 'stacks'
   (the default), 20 rounds x 0.5 s, levels in a rotated order each round, on three requests:
   "cycle" (above); "orm": three Category.objects.get(pk=) and one
   list(Category.objects.filter(pk__in=[10 keys])) (testproject/shop, migrated into the
   throwaway database, 300 rows); "orm_atomic": the same inside transaction.atomic(), where
   'stacks' also takes the cursor and execute stacks of every query. Stack walks end at the
   request function, as a server's end at the handler's _get_response (request_boundary()).
   Targets: counters/off >= 0.98 and stacks/off >= 0.90 (req/s). Throughput drifts by +-25%
   within seconds on a noisy VM, so each ratio comes three ways: of the medians; the median
   (and range) of the per-round ratios, whose runs are seconds apart; and of the 10th
   percentile of 1-3 ms batch times, which estimates the cost without the time neighbours
   steal (it moved < 2% between repeated runs where the medians moved 5-10%).

--only cycle|threads|tracking (repeatable) runs only those workloads; the JSON then goes
to bench/results/request_cycle-<workloads>.json unless --output says otherwise.

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

Results: tables on stdout, JSON in bench/results/request_cycle.json (see --output).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import itertools
import json
import os
import platform
import pstats
import statistics
import sys
import threading
import time

from asgiref.local import Local

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "testproject"))  # the shop app (workload 3's models)

APP_PREFIX = "bench_rc_"
SINGLE = ["unpooled", "persistent", "persistent_checked", "pooled", "pooled_off", "pooled_always"]
THREADED = ["t_persistent", "t_pooled8", "t_pooled8_off"]
POOLED_MAX = 8
TARGETS = {
    "pooled/persistent": 0.9,
    "pooled/unpooled": 15.0,
    "threaded pooled8/persistent": 0.9,
}
SECTIONS = ("cycle", "threads", "tracking")
TRACKING_LEVELS = ["off", "counters", "stacks"]
TRACKING_WORKLOADS = ["cycle", "orm", "orm_atomic"]
#: throughput of a level relative to tracking='off', at least
TRACKING_TARGETS = {"counters/off": 0.98, "stacks/off": 0.90}
ORM_ROWS = 300
ORM_IN_KEYS = 10


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
    from server import postmaster_pids  # bench/server.py (this script's folder)

    for pid in postmaster_pids(datadir):  # backends forked later inherit the affinity
        os.sched_setaffinity(pid, {server})
    return f"client on CPU {client}, server on CPU {server}"


def database_entry(url: str, engine: str, app: str, **extra: object) -> dict:
    from testproject.dburl import database_from_url

    options = {"application_name": APP_PREFIX + app, **extra.pop("OPTIONS", {})}  # type: ignore[dict-item]
    return database_from_url(url, engine=engine, OPTIONS=options, **extra)


CONTENDERS: dict[str, dict] = {}


def configure_django(url: str) -> None:
    pg, pooled = "django.db.backends.postgresql", "django_pooled_pg"
    CONTENDERS.update({
        "unpooled": database_entry(url, pg, "unpooled", CONN_MAX_AGE=0),
        "persistent": database_entry(url, pg, "persistent", CONN_MAX_AGE=None),
        "persistent_checked": database_entry(
            url, pg, "persistent_checked", CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=True
        ),
        "pooled": database_entry(url, pooled, "pooled", OPTIONS={"pool": {}}),
        "pooled_off": database_entry(
            url, pooled, "pooled_off", OPTIONS={"pool": {"tracking": "off"}}
        ),
        "pooled_always": database_entry(
            url, pooled, "pooled_always", OPTIONS={"pool": {"reset": "always"}}
        ),
        "t_persistent": database_entry(url, pg, "t_persistent", CONN_MAX_AGE=None),
        "t_pooled8": database_entry(
            url, pooled, "t_pooled8", OPTIONS={"pool": {"max_size": POOLED_MAX, "timeout": 120}}
        ),
        "t_pooled8_off": database_entry(
            url, pooled, "t_pooled8_off",
            OPTIONS={"pool": {"max_size": POOLED_MAX, "timeout": 120, "tracking": "off"}},
        ),
        **{
            f"track_{level}": database_entry(
                url, pooled, f"track_{level}", OPTIONS={"pool": {"tracking": level}}
            )
            for level in TRACKING_LEVELS
        },
    })  # fmt: skip
    setup_django({"default": copy.deepcopy(CONTENDERS["pooled"])})


def setup_django(databases: dict) -> None:
    """Django for a benchmark: the shop app on these DATABASES, time zone UTC, no DEBUG."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django_pooled_pg", "django.contrib.contenttypes", "shop"],
        DATABASES=databases,
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


def request_boundary(cycle):
    """Stack walks (tracking='stacks') stop at ``cycle``, as in a server they stop at the
    handler's _get_response: without it they would also walk the benchmark's own frames."""
    from django_pooled_pg.pool import stacks

    stacks.STOP_AT.add(cycle.__code__)
    return cycle


def make_cycle(alias: str = "default"):
    from django.core.signals import request_finished, request_started
    from django.db import connections

    def cycle() -> None:
        request_started.send(sender=None)
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        request_finished.send(sender=None)

    return request_boundary(cycle)


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


def timed_batches(cycle, seconds: float, batch: int) -> tuple[int, float, list[float]]:
    """Like timed_loop, also keeping the time of each batch of ``batch`` cycles."""
    perf = time.perf_counter
    times: list[float] = []
    start = last = perf()
    deadline = start + seconds
    count = 0
    while True:
        for _ in range(batch):
            cycle()
        count += batch
        now = perf()
        times.append(now - last)
        last = now
        if now >= deadline:
            return count, now - start, times


def measure(name: str, make, warmup: int, loop):
    """Run ``loop(cycle)`` with contender ``name`` as the only alias; its result."""
    from django.db import connections

    activate(name)
    cycle = make()
    for _ in range(warmup):  # connect, fill the pool
        cycle()
    check_only_connected("default")
    result = loop(cycle)
    check_only_connected("default")
    remember_pool(name)
    connections["default"].close()  # persistent: give up the session so later rounds stay fair
    check_only_connected(None)
    return result


#: requests per timed batch in workload 1 (1-3 ms), for its batch-percentile estimate
CYCLE_BATCH = 16


def run_single(name: str, seconds: float) -> tuple[float, list[float]]:
    """(requests/s, seconds per request of each batch) of one round of contender ``name``."""
    warmup = 3 if name == "unpooled" else 50
    batch = 1 if name == "unpooled" else CYCLE_BATCH
    count, elapsed, times = measure(
        name, make_cycle, warmup, lambda cycle: timed_batches(cycle, seconds, batch)
    )
    return count / elapsed, [t / batch for t in times]


def remember_pool(name: str) -> None:
    from django.db import connections

    conn = connections["default"]
    if hasattr(conn, "get_pool"):
        POOLS[name] = conn.get_pool()


# -- threaded workload ----------------------------------------------------------------


def run_threaded(name: str, threads: int, seconds: float, warmup: float = 0.5) -> dict:
    from django.db import connections

    activate(name)
    remember_pool(name)
    alias = "default"
    cycle = make_cycle()
    counts = [0] * threads  # requests inside the window so far, per thread
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
                    counts[index] = count  # (read by the sampling below)
        except BaseException as error:  # report, don't hang the barrier
            errors.append(error)
        finally:
            connections[alias].close()  # this thread's session (persistent) or lease
            connections.close_all()

    workers = [threading.Thread(target=worker, args=(i,), name=f"w{i}") for i in range(threads)]
    for thread in workers:
        thread.start()
    perf = time.perf_counter
    now = perf()
    window[:] = [now + warmup, now + warmup + seconds]
    barrier.wait()
    # The throughput of each THREAD_SLICE-second slice of the window, for the percentile
    # estimate (see THREAD_SLICE_PERCENTILE): this thread wakes up 20 times a round.
    time.sleep(max(0.0, window[0] - perf()))
    marks = [(perf(), sum(counts))]
    while marks[-1][0] < window[1] - THREAD_SLICE / 2:
        time.sleep(THREAD_SLICE)
        marks.append((perf(), sum(counts)))
    for thread in workers:
        thread.join()
    if errors:
        raise errors[0]
    slices = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in itertools.pairwise(marks) if t1 > t0]
    return {
        "rps": sum(counts) / seconds,
        "min_thread": min(counts),
        "max_thread": max(counts),
        "slice_rps": slices,
    }


# -- tracking workload ----------------------------------------------------------------

ORM_KEYS: list[int] = []


def setup_orm_data() -> None:
    """Migrate contenttypes and shop into the benchmark database; ORM_ROWS categories."""
    from django.core.management import call_command
    from django.db import connections
    from shop.models import Category

    activate("persistent")  # plain postgresql: no pool involved in the set-up
    call_command("migrate", verbosity=0, interactive=False)
    missing = ORM_ROWS - Category.objects.count()  # $DATABASE_URL: add, never delete
    if missing > 0:
        Category.objects.bulk_create(Category(name=f"category {i}") for i in range(missing))
    ORM_KEYS[:] = Category.objects.order_by("pk").values_list("pk", flat=True)[:ORM_ROWS]
    connections["default"].close()


def make_orm_cycle(atomic: bool = False):
    """A request with three lookups by primary key and one pk__in filter (4 queries)."""
    from django.core.signals import request_finished, request_started
    from django.db import transaction
    from shop.models import Category

    keys = list(ORM_KEYS)
    count = len(keys)
    in_lists = [keys[i : i + ORM_IN_KEYS] for i in range(0, count - ORM_IN_KEYS + 1, ORM_IN_KEYS)]
    requests = itertools.count()

    def lookups() -> None:
        i = next(requests)
        objects = Category.objects
        objects.get(pk=keys[i % count])
        objects.get(pk=keys[(i + 101) % count])
        objects.get(pk=keys[(i + 203) % count])
        if len(list(objects.filter(pk__in=in_lists[i % len(in_lists)]))) != ORM_IN_KEYS:
            raise AssertionError("pk__in filter: rows missing")

    if atomic:

        def cycle() -> None:
            request_started.send(sender=None)
            with transaction.atomic():
                lookups()
            request_finished.send(sender=None)

    else:

        def cycle() -> None:
            request_started.send(sender=None)
            lookups()
            request_finished.send(sender=None)

    return request_boundary(cycle)


TRACKING_CYCLES = {
    "cycle": make_cycle,
    "orm": lambda: make_orm_cycle(atomic=False),
    "orm_atomic": lambda: make_orm_cycle(atomic=True),
}
QUERIES_PER_REQUEST = {"cycle": 1, "orm": 4, "orm_atomic": 4}
#: requests per timed batch (a batch takes 1-3 ms here): see BATCH_PERCENTILE
TRACKING_BATCH = {"cycle": 16, "orm": 1, "orm_atomic": 1}
#: Time on a shared VM is the request's own cost plus whatever the neighbours steal, in
#: bursts. A low percentile of the batch times (all rounds of a level pooled) estimates the
#: unstolen cost: it moved < 2% between repeated runs where medians moved 5-10%.
BATCH_PERCENTILE = 10


#: Workload 2's counterpart: the requests/s of each THREAD_SLICE seconds of a round (all
#: rounds of a contender pooled), at this percentile, estimates its throughput while the
#: VM's neighbours steal little. 0.1 s spans two handoff_after rotations of the queue.
THREAD_SLICE = 0.1
THREAD_SLICE_PERCENTILE = 90


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[round(pct / 100 * (len(ordered) - 1))]


def check_tracking(level: str) -> dict[str, bool]:
    """Before measuring, on contender track_<level>'s fresh pool: does it track what the
    level promises (and no more)? One query in autocommit, one inside atomic()."""
    from django.db import connections, transaction
    from shop.models import Category

    activate(f"track_{level}")
    conn = connections["default"]
    Category.objects.get(pk=ORM_KEYS[0])
    record = conn.connection.record
    seen = {
        "tracker": conn.current_pool.tracker is not None,
        "last_query": record.last_query is not None,
        "lease_stack": bool(record.lease_stack),
        "execute_stack_autocommit": bool(record.execute_stack),
    }
    with transaction.atomic():
        Category.objects.get(pk=ORM_KEYS[1])
        record = conn.connection.record
        seen["cursor_stack_atomic"] = bool(record.cursor_stack)
        seen["execute_stack_atomic"] = bool(record.execute_stack)
    conn.close()
    expected = {
        "tracker": level != "off",
        "last_query": level != "off",
        "lease_stack": level == "stacks",
        "execute_stack_autocommit": False,
        "cursor_stack_atomic": level == "stacks",
        "execute_stack_atomic": level == "stacks",
    }
    if seen != expected:
        raise AssertionError(f"tracking={level!r}: tracked {seen}, expected {expected}")
    return seen


def run_tracking(args: argparse.Namespace) -> dict:
    """Workload 3: tracking levels x request workloads, interleaved rounds."""
    setup_orm_data()
    for level in TRACKING_LEVELS:
        check_tracking(level)
    rps = {w: {level: [] for level in TRACKING_LEVELS} for w in TRACKING_WORKLOADS}
    batches: dict[str, dict[str, list[float]]] = {
        w: {level: [] for level in TRACKING_LEVELS} for w in TRACKING_WORKLOADS
    }
    orders = []
    print()
    for round_index in range(args.tracking_rounds):
        # Rotate which level runs first: no level always follows the same one.
        shift = round_index % len(TRACKING_LEVELS)
        order = TRACKING_LEVELS[shift:] + TRACKING_LEVELS[:shift]
        orders.append(order)
        for workload in TRACKING_WORKLOADS:
            for level in order:
                gc.collect()
                batch = TRACKING_BATCH[workload]
                count, elapsed, times = measure(
                    f"track_{level}", TRACKING_CYCLES[workload], 10,
                    lambda cycle, batch=batch: timed_batches(cycle, args.tracking_seconds, batch),
                )  # fmt: skip
                rps[workload][level].append(count / elapsed)
                batches[workload][level].extend(t / batch for t in times)
        print(
            f"  tracking round {round_index + 1} (off/counters/stacks req/s): "
            + "  ".join(
                f"{w} " + "/".join(f"{rps[w][level][-1]:,.0f}" for level in TRACKING_LEVELS)
                for w in TRACKING_WORKLOADS
            ),
            flush=True,
        )
    median = {w: {lv: statistics.median(v) for lv, v in by.items()} for w, by in rps.items()}
    # us per request at the BATCH_PERCENTILE-th percentile of the batch times
    low_us = {
        w: {lv: 1e6 * percentile(v, BATCH_PERCENTILE) for lv, v in by.items()}
        for w, by in batches.items()
    }
    ratios: dict[str, dict[str, float]] = {}
    per_round: dict[str, dict[str, list[float]]] = {}
    paired: dict[str, dict[str, float]] = {}
    low_ratios: dict[str, dict[str, float]] = {}
    verdict: dict[str, dict[str, bool]] = {}
    low_verdict: dict[str, dict[str, bool]] = {}
    for w in TRACKING_WORKLOADS:
        ratios[w], per_round[w], paired[w], verdict[w] = {}, {}, {}, {}
        low_ratios[w], low_verdict[w] = {}, {}
        for name, target in TRACKING_TARGETS.items():
            level = name.split("/")[0]
            ratios[w][name] = median[w][level] / median[w]["off"]
            per_round[w][name] = [a / b for a, b in zip(rps[w][level], rps[w]["off"], strict=True)]
            paired[w][name] = statistics.median(per_round[w][name])
            low_ratios[w][name] = low_us[w]["off"] / low_us[w][level]
            verdict[w][name] = ratios[w][name] >= target
            low_verdict[w][name] = low_ratios[w][name] >= target
    queries = {
        level: len(POOLS[f"track_{level}"].tracker.queries) if level != "off" else 0
        for level in TRACKING_LEVELS
    }

    p = f"p{BATCH_PERCENTILE}"
    print(
        f"\nWorkload 3: tracking levels, pooled, 1 thread ({args.tracking_rounds} rounds x "
        f"{args.tracking_seconds:g} s, levels rotated; {p}: {BATCH_PERCENTILE}th percentile "
        f"of batch times)"
    )
    print(
        f"  {'workload':<12}{'tracking':<10}{'req/s':>8}{'min..max req/s':>17}{'us/req':>9}"
        f"{p + ' us/req':>12}{'+us/req':>9}{'+us/query':>11}"
    )
    for w in TRACKING_WORKLOADS:
        for level in TRACKING_LEVELS:
            values = rps[w][level]
            extra = low_us[w][level] - low_us[w]["off"]
            print(
                f"  {w if level == 'off' else '':<12}{level:<10}{median[w][level]:>8,.0f}"
                f"{f'{min(values):,.0f}..{max(values):,.0f}':>17}{1e6 / median[w][level]:>9.1f}"
                f"{low_us[w][level]:>12.1f}"
                f"{'' if level == 'off' else f'{extra:+.1f}':>9}"
                f"{'' if level == 'off' else f'{extra / QUERIES_PER_REQUEST[w]:+.1f}':>11}"
            )
    print(
        f"  (+us: {p} against off.) Query shapes in the statistics: "
        f"counters {queries['counters']}, stacks {queries['stacks']}"
    )
    print(f"\nTracking ratios (req/s against off): of medians | per-round median (range) | {p}")
    for w in TRACKING_WORKLOADS:
        for name, target in TRACKING_TARGETS.items():
            spread = f"({min(per_round[w][name]):.2f}..{max(per_round[w][name]):.2f})"
            print(
                f"  {w + ' ' + name:<25}{ratios[w][name]:>6.3f} | {paired[w][name]:.3f} "
                f"{spread:<12} | {low_ratios[w][name]:.3f}   >= {target:g}: medians "
                f"{'PASS' if verdict[w][name] else 'MISS'}, {p} "
                f"{'PASS' if low_verdict[w][name] else 'MISS'}"
            )
    return {
        "rounds": args.tracking_rounds,
        "seconds_per_round": args.tracking_seconds,
        "orm_rows": ORM_ROWS,
        "queries_per_request": QUERIES_PER_REQUEST,
        "level_orders": orders,
        "workloads": {
            w: {
                level: {"median_rps": median[w][level], "rounds_rps": rps[w][level]}
                for level in TRACKING_LEVELS
            }
            for w in TRACKING_WORKLOADS
        },
        "ratios": ratios,
        "ratios_per_round": per_round,
        "ratios_per_round_median": paired,
        "batch_percentile": BATCH_PERCENTILE,
        "batch_size": TRACKING_BATCH,
        "batch_percentile_us_per_request": low_us,
        "batch_percentile_ratios": low_ratios,
        "targets": TRACKING_TARGETS,
        "verdict": verdict,
        "batch_percentile_verdict": low_verdict,
        "query_shapes": queries,
    }


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
    parser.add_argument(
        "--thread-rounds", type=int, default=15, help="interleaved rounds of workload 2 (15)"
    )
    parser.add_argument("--threads", type=int, default=32, help="threads of workload 2 (32)")
    parser.add_argument(
        "--pin", choices=("same", "split", "none"), default="same",
        help="CPU placement of client and server (same)",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="also cProfile the pooled cycle")
    parser.add_argument(
        "--handoff-after", type=float, metavar="SECONDS",
        help="the pool option handoff_after for workload 2 (default: the option's default)",
    )  # fmt: skip
    parser.add_argument(
        "--only", action="append", choices=SECTIONS, metavar="{" + ",".join(SECTIONS) + "}",
        help="run only this workload: 1 cycle, 2 threads, 3 tracking (repeatable; default all)",
    )  # fmt: skip
    parser.add_argument(
        "--tracking-rounds", type=int, default=20, help="interleaved rounds of workload 3 (20)"
    )
    parser.add_argument(
        "--tracking-seconds", type=float, default=0.5,
        help="length of one workload 3 run (0.5; a round has 9)",
    )  # fmt: skip
    parser.add_argument(
        "--output",
        help="JSON results (bench/results/request_cycle.json; with --only: "
        "request_cycle-<workloads>.json)",
    )
    args = parser.parse_args()
    args.sections = [name for name in SECTIONS if name in (args.only or SECTIONS)]
    if args.output is None:
        suffix = "" if args.sections == list(SECTIONS) else "-" + "-".join(args.sections)
        args.output = os.path.join(HERE, "results", f"request_cycle{suffix}.json")
    if min(args.rounds, args.thread_rounds, args.tracking_rounds) < 1:
        parser.error("rounds must be at least 1")

    from server import start_server  # bench/server.py (this script's folder)

    cluster, url = start_server()
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
    if args.handoff_after is not None:
        for alias in THREADED:
            if "pool" in CONTENDERS[alias]["OPTIONS"]:
                CONTENDERS[alias]["OPTIONS"]["pool"]["handoff_after"] = args.handoff_after
    import django
    import psycopg2
    from django.db import connections

    from django_pooled_pg.pool import record, stacks, tracker

    activate("persistent")
    connections["default"]  # initialized, not connected: what every contender walks
    baseline_count, baseline_elapsed = timed_loop(signals_only_cycle, 0.5)
    baseline_us = 1e6 * baseline_elapsed / baseline_count

    print(
        f"Django {django.__version__}, psycopg2 {psycopg2.__version__.split()[0]}, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"{args.rounds} rounds (threads: {args.thread_rounds}) x {args.seconds:g} s; "
        f"--pin {args.pin}: {args.placement}; "
        f"workloads: {', '.join(args.sections)}"
    )
    print(f"signals-only cycle (1 unconnected alias): {baseline_us:.1f} us")
    print(
        f"stack walker: {stacks.WALKER}; query timer: {tracker.TIMER}; "
        f"socket check: {record.POLLER}"
    )

    results: dict = {
        "command": "python bench/request_cycle.py " + " ".join(sys.argv[1:]),
        "environment": {
            "django": django.__version__,
            "psycopg2": psycopg2.__version__.split()[0],
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "database": "$DATABASE_URL" if os.environ.get("DATABASE_URL") else "throwaway cluster",
            "stack_walker": stacks.WALKER,
            "query_timer": tracker.TIMER,
            "socket_check": record.POLLER,
        },
        "pin": args.pin,
        "placement": args.placement,
        "workloads": args.sections,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "thread_rounds": args.thread_rounds,
        "signals_only_cycle_us": baseline_us,
    }
    ratios: dict[str, float] = {}
    per_round: dict[str, list[float]] = {}

    if "cycle" in args.sections:
        # Workload 1: one thread, interleaved rounds.
        print()
        single: dict[str, list[float]] = {alias: [] for alias in SINGLE}
        batch_times: dict[str, list[float]] = {alias: [] for alias in SINGLE}
        for round_index in range(args.rounds):
            for alias in SINGLE:
                gc.collect()
                rps, times = run_single(alias, args.seconds)
                single[alias].append(rps)
                batch_times[alias].extend(times)
            print(
                f"  round {round_index + 1}: "
                + "  ".join(f"{alias} {single[alias][-1]:,.0f}/s" for alias in SINGLE),
                flush=True,
            )
        median = {alias: statistics.median(values) for alias, values in single.items()}
        pool_stats = {
            name: POOLS[name].get_stats() for name in ("pooled", "pooled_off", "pooled_always")
        }
        ratios.update({
            "pooled/persistent": median["pooled"] / median["persistent"],
            "pooled tracking=off/persistent": median["pooled_off"] / median["persistent"],
            "pooled/persistent with health checks": (
                median["pooled"] / median["persistent_checked"]
            ),
            "pooled/unpooled": median["pooled"] / median["unpooled"],
            "pooled_always/persistent": median["pooled_always"] / median["persistent"],
            "pooled/pooled_always": median["pooled"] / median["pooled_always"],
        })  # fmt: skip
        # The same ratios round by round (contenders of a round ran seconds apart): their
        # spread shows how much of a difference is noise of the machine.
        pairs = {
            "pooled/persistent": (single["pooled"], single["persistent"]),
            "pooled tracking=off/persistent": (single["pooled_off"], single["persistent"]),
            "pooled/persistent with health checks": (
                single["pooled"],
                single["persistent_checked"],
            ),
            "pooled/unpooled": (single["pooled"], single["unpooled"]),
            "pooled_always/persistent": (single["pooled_always"], single["persistent"]),
            "pooled/pooled_always": (single["pooled"], single["pooled_always"]),
        }
        per_round.update(
            {name: [a / b for a, b in zip(*pair, strict=True)] for name, pair in pairs.items()}
        )
        # As in workload 3: the 10th percentile of the batch times estimates each
        # contender's cost without what the VM's neighbours steal (medians move 5-10%
        # between runs here, this moved 1-3%).
        low_us = {
            alias: 1e6 * percentile(times, BATCH_PERCENTILE) for alias, times in batch_times.items()
        }
        low_ratio = low_us["persistent"] / low_us["pooled"]
        low_ratio_off = low_us["persistent"] / low_us["pooled_off"]
        low_ratio_checked = low_us["persistent_checked"] / low_us["pooled"]
        ratios_low = {
            "pooled/persistent": low_ratio,
            "pooled tracking=off/persistent": low_ratio_off,
            "pooled/persistent with health checks": low_ratio_checked,
        }
        results["single_thread"] = {
            alias: {
                "median_rps": median[alias],
                "rounds_rps": single[alias],
                "batch_percentile_us_per_request": low_us[alias],
            }
            for alias in SINGLE
        }
        results["single_thread_batch_percentile_ratios"] = ratios_low
        results["single_thread_pool_stats"] = pool_stats

    if "threads" in args.sections:
        # Workload 2: threads, interleaved rounds, sessions sampled server-side.
        from server import SessionSampler  # bench/server.py (this script's folder)

        entry = CONTENDERS["t_persistent"]
        conninfo = {
            "dbname": entry["NAME"],
            "user": entry["USER"] or None,
            "password": entry["PASSWORD"] or None,
            "host": entry["HOST"] or None,
            "port": entry["PORT"] or None,
        }
        sampler = SessionSampler(conninfo, "application_name", APP_PREFIX, interval=0.005)
        sampler.start()
        threaded: dict[str, list[dict]] = {alias: [] for alias in THREADED}
        print()
        for round_index in range(args.thread_rounds):
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
        for pooled_alias, name in (
            ("t_pooled8", "threaded pooled8/persistent"),
            ("t_pooled8_off", "threaded pooled8 tracking=off/persistent"),
        ):
            ratios[name] = t_median[pooled_alias] / t_median["t_persistent"]
            per_round[name] = [
                a["rps"] / b["rps"]
                for a, b in zip(threaded[pooled_alias], threaded["t_persistent"], strict=True)
            ]
        slice_rps = {
            alias: percentile(
                [rate for r in runs for rate in r["slice_rps"]], THREAD_SLICE_PERCENTILE
            )
            for alias, runs in threaded.items()
        }
        slice_ratio = slice_rps["t_pooled8"] / slice_rps["t_persistent"]
        slice_ratio_off = slice_rps["t_pooled8_off"] / slice_rps["t_persistent"]
        results["threaded_slice_percentile"] = {
            "slice_s": THREAD_SLICE,
            "percentile": THREAD_SLICE_PERCENTILE,
            "rps": slice_rps,
            "ratios": {
                "threaded pooled8/persistent": slice_ratio,
                "threaded pooled8 tracking=off/persistent": slice_ratio_off,
            },
        }
        results["threaded"] = {
            "threads": args.threads,
            "pooled_max_size": POOLED_MAX,
            "handoff_after": args.handoff_after,  # None: the option's default
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
        }

    verdict = {name: ratios[name] >= target for name, target in TARGETS.items() if name in ratios}
    if "threads" in args.sections:
        verdict["pooled sessions <= 8"] = (
            0 < sessions["t_pooled8"] <= POOLED_MAX and 0 < sessions["t_pooled8_off"] <= POOLED_MAX
        )

    # Tables of workloads 1 and 2.
    if "cycle" in args.sections:
        print("\nWorkload 1: request cycle, 1 thread (median of rounds)")
        print(
            f"  {'contender':<15}{'req/s':>10}{'us/req':>9}{'min..max req/s':>22}"
            f"{'resets/leases':>16}"
        )
        for alias in SINGLE:
            values = single[alias]
            resets = pool_stats[alias].get("resets_num", 0) if alias in pool_stats else None
            requests = pool_stats[alias].get("requests_num") if alias in pool_stats else None
            print(
                f"  {alias:<15}{median[alias]:>10,.0f}{1e6 / median[alias]:>9.1f}"
                f"{f'{min(values):,.0f}..{max(values):,.0f}':>22}"
                f"{'-' if resets is None else f'{resets}/{requests}':>16}"
            )
    if "threads" in args.sections:
        print(f"\nWorkload 2: {args.threads} threads (median of rounds)")
        print(
            f"  {'contender':<15}{'req/s':>10}{'max server sessions':>22}"
            f"{'slowest/fastest thread':>25}"
        )
        for alias in THREADED:
            # Fairness: the requests of the slowest and the fastest thread in one round
            # (the pool lets a thread keep a parked connection for a while: see PARK_GRACE).
            worst = min(threaded[alias], key=lambda r: r["min_thread"] / max(1, r["max_thread"]))
            share = worst["min_thread"] / max(1, worst["max_thread"])
            spread = f"{worst['min_thread']}/{worst['max_thread']} ({share:.2f})"
            print(f"  {alias:<15}{t_median[alias]:>10,.0f}{sessions[alias]:>22}{spread:>25}")
        queued = t_pool_stats.get("requests_queued", 0)
        print(
            f"  pooled8 waits: {queued} queued of "
            f"{t_pool_stats.get('requests_num', 0)} checkouts (avg wait "
            f"{t_pool_stats.get('requests_wait_ms', 0) / max(1, queued):.2f} ms), "
            f"{t_pool_stats.get('connections_num', 0)} connections opened; "
            f"{sampler.samples} session samples"
        )
    if ratios:
        print("\nRatios of medians (per-round range; target)")
        for name, value in ratios.items():
            target = TARGETS.get(name)
            spread = f"({min(per_round[name]):.2f}..{max(per_round[name]):.2f})"
            mark = (
                "" if target is None
                else f"  >= {target:g}: {'PASS' if verdict[name] else 'MISS'}"
            )  # fmt: skip
            print(f"  {name:<42}{value:>7.2f}x {spread:<14}{mark}")
    if "cycle" in args.sections:
        print(
            f"\nRequest cycle at the {BATCH_PERCENTILE}th percentile of {CYCLE_BATCH}-request "
            f"batch times (all rounds): persistent {low_us['persistent']:.1f} us, pooled "
            f"{low_us['pooled']:.1f} us (+{low_us['pooled'] - low_us['persistent']:.1f} us): "
            f"pooled/persistent {low_ratio:.2f}x"
            f"  >= {TARGETS['pooled/persistent']:g}: "
            f"{'PASS' if low_ratio >= TARGETS['pooled/persistent'] else 'MISS'}"
        )
        print(
            f"  the same with tracking='off': pooled {low_us['pooled_off']:.1f} us "
            f"(+{low_us['pooled_off'] - low_us['persistent']:.1f} us): {low_ratio_off:.2f}x"
        )
        print(
            f"  persistent with CONN_HEALTH_CHECKS (a round trip per request, Django's way "
            f"to never use a dead connection): {low_us['persistent_checked']:.1f} us; "
            f"pooled/that {low_ratio_checked:.2f}x"
        )
    if "threads" in args.sections:
        target = TARGETS["threaded pooled8/persistent"]
        print(
            f"\n{args.threads} threads at the {THREAD_SLICE_PERCENTILE}th percentile of "
            f"{THREAD_SLICE:g} s slices' req/s (all rounds): persistent "
            f"{slice_rps['t_persistent']:,.0f}, pooled8 {slice_rps['t_pooled8']:,.0f}: "
            f"{slice_ratio:.2f}x  >= {target:g}: {'PASS' if slice_ratio >= target else 'MISS'}"
        )
        print(
            f"  the same with tracking='off': pooled8 {slice_rps['t_pooled8_off']:,.0f}: "
            f"{slice_ratio_off:.2f}x"
        )
        print(
            f"  {'pooled8 max server sessions':<42}"
            f"{max(sessions['t_pooled8'], sessions['t_pooled8_off']):>7}  {'':<14}"
            f"  <= {POOLED_MAX}: {'PASS' if verdict['pooled sessions <= 8'] else 'FAIL'}"
        )
    results.update({
        "ratios": ratios,
        "ratios_per_round": per_round,
        "targets": TARGETS,
        "verdict": verdict,
    })  # fmt: skip

    if "tracking" in args.sections:
        # Workload 3 prints its own tables (after its rounds).
        results["tracking"] = run_tracking(args)

    elapsed = time.monotonic() - started
    print(f"\nbenchmark time {elapsed:.0f} s")
    results["elapsed_s"] = elapsed
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
