#!/usr/bin/env python
"""Prepared plans for a hot join: the same ORM queryset, prepared vs unprepared, one run.

    python bench/prepared.py [--seconds 2] [--rounds 5] [--pin same|split|none] [--scale 1]

Starts a throwaway PostgreSQL cluster with pg_stat_statements (or uses $DATABASE_URL),
migrates testproject's shop app and fills it with generate_series: 2,000 categories,
2,000 suppliers, 5,000 customers and products, 10,000 orders, 20,000 order lines (times
--scale). The request, as a view would run it: ``request_started`` -> one ORM queryset
joining six tables (OrderLine, Order, Customer, Product, Category, Supplier) with filters on
indexed columns, ordered by an indexed column, LIMIT 20, parameters varying per request ->
touch the joined objects -> ``request_finished``.

Three aliases on the same pooled backend, in interleaved rounds (A B C A B C ...):

- ``unprepared``: OPTIONS["pool"]["prepare"] = False (the target is registered but off);
- ``prepared``: the queryset registered with add_prepare_target(), plan_cache_mode left to
  the server (``auto``: five custom plans, then the generic one if its cost is no worse);
- ``prepared_generic``: the same with plan_cache_mode="force_generic_plan".

Reports requests/s (median of the rounds) and the ratio against unprepared (target >= 1.5x),
and the server's own planning and execution time per statement from pg_stat_statements
(``track_planning``): how much planning the prepared statements saved.
Results: a table on stdout, JSON in bench/results/prepared.json.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(1, os.path.join(ROOT, "testproject"))

CONTENDERS = ["unprepared", "prepared", "prepared_generic"]
TARGET_RATIO = 1.5
CITIES = [f"city {i}" for i in range(50)]
COUNTRIES = [f"A{chr(65 + i)}" for i in range(20)]


def configure_django(url: str) -> None:
    from request_cycle import setup_django  # bench/ is this script's folder
    from testproject.dburl import database_from_url

    def alias(app: str, **pool: object) -> dict:
        options = {"application_name": f"bench_prep_{app}", "pool": pool}
        return database_from_url(url, engine="django_pooled_pg", OPTIONS=options)

    setup_django(
        {
            "default": alias("default"),
            "unprepared": alias("unprepared", prepare=False),
            "prepared": alias("prepared"),
            "prepared_generic": alias("prepared_generic"),
        }
    )


def load_rows(scale: int) -> dict[str, int]:
    """Fill the shop tables with generate_series (seconds, where ORM inserts take minutes)."""
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0, interactive=False)
    n = {
        "category": 2000 * scale, "supplier": 2000 * scale, "customer": 5000 * scale,
        "product": 5000 * scale, "order": 10000 * scale, "orderline": 20000 * scale,
    }  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM shop_orderline")
        if cursor.fetchone()[0]:
            return n
        statements = [
            "INSERT INTO shop_category (name) SELECT 'category ' || i "
            "FROM generate_series(1, %(category)s) i",
            "INSERT INTO shop_supplier (name, country) "
            "SELECT 'supplier ' || i, 'A' || chr(65 + i %% 20) "
            "FROM generate_series(1, %(supplier)s) i",
            "INSERT INTO shop_customer (name, city) SELECT 'customer ' || i, 'city ' || (i %% 50) "
            "FROM generate_series(1, %(customer)s) i",
            "INSERT INTO shop_product (name, category_id, supplier_id, price, created) "
            "SELECT 'product ' || i, 1 + (i * 7) %% %(category)s, 1 + (i * 13) %% %(supplier)s, "
            "(i %% 1000) + 0.99, now() FROM generate_series(1, %(product)s) i",
            "INSERT INTO shop_order (customer_id, placed) SELECT 1 + (i * 17) %% %(customer)s, "
            "now() - (i || ' minutes')::interval * 50 FROM generate_series(1, %(order)s) i",
            "INSERT INTO shop_orderline (order_id, product_id, quantity) "
            "SELECT 1 + i %% %(order)s, 1 + (i * 31) %% %(product)s, 1 + i %% 5 "
            "FROM generate_series(1, %(orderline)s) i",
            "ANALYZE",
        ]
        for sql in statements:
            cursor.execute(sql, n)
    return n


def hot_queryset(alias: str, city: str, country: str, since: datetime.datetime):
    from shop.models import OrderLine

    return (
        OrderLine.objects.using(alias)
        .select_related("order__customer", "product__category", "product__supplier")
        .filter(
            order__customer__city=city,
            product__supplier__country=country,
            order__placed__gte=since,
            quantity__gte=2,
        )
        .order_by("-order__placed", "id")[:20]
    )


def make_request(alias: str):
    from django.core.signals import request_finished, request_started

    now = datetime.datetime.now(datetime.timezone.utc)
    params = [
        (city, country, now - datetime.timedelta(days=7 * (k % 40) + 1))
        for k, (city, country) in enumerate((c, n) for c in CITIES for n in COUNTRIES)
    ]
    counter = [0]

    def request() -> int:
        i = counter[0]
        counter[0] = i + 1
        request_started.send(sender=None)
        lines = list(hot_queryset(alias, *params[i % len(params)]))
        for line in lines:  # what a view would touch
            _ = (line.order.customer.name, line.product.category.name, line.product.supplier.name)
        request_finished.send(sender=None)
        return len(lines)

    return request


def timed(request, seconds: float) -> float:
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(20):
            request()
        count += 20
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def server_times(admin) -> dict[str, float]:
    """The hot join's calls, plans, and mean planning and execution ms per call, from
    pg_stat_statements (reset before each contender's round, so all of it is that one's)."""
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(plans), 0), "
            "coalesce(sum(total_plan_time), 0), coalesce(sum(total_exec_time), 0) "
            "FROM pg_stat_statements WHERE query LIKE %s",
            ['%FROM "shop_orderline"%'],
        )
        calls, plans, plan_ms, exec_ms = cursor.fetchone()
    return {"calls": int(calls), "plans": int(plans), "plan_ms": plan_ms, "exec_ms": exec_ms}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--pin", choices=("same", "split", "none"), default="same")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "prepared.json"))
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds <= 0 or args.scale < 1:
        parser.error("--rounds and --scale must be at least 1, --seconds above 0")

    from server import start_server  # bench/server.py (this script's folder)

    cluster, url = start_server({
        "shared_preload_libraries": "'pg_stat_statements'",
        "pg_stat_statements.track_planning": "on",
    })  # fmt: skip
    try:
        from request_cycle import pin_processes  # bench/ is this script's folder

        placement = pin_processes(args.pin, cluster.datadir if cluster else None)
        return run(args, url, placement)
    finally:
        from django_pooled_pg.pool.pool import close_all_pools

        close_all_pools()
        if cluster is not None:
            cluster.destroy()


def run(args: argparse.Namespace, url: str, placement: str) -> int:
    configure_django(url)
    import django
    import psycopg2
    from django.db import connections

    import django_pooled_pg

    rows = load_rows(args.scale)
    from django_pooled_pg.targets import clear_prepare_targets

    clear_prepare_targets()  # the shop app's own target (its ready()): not this benchmark's
    since = datetime.datetime.now(datetime.timezone.utc)
    django_pooled_pg.add_prepare_target(hot_queryset("unprepared", "x", "y", since),
                                        "unprepared", name="hot join")  # fmt: skip
    django_pooled_pg.add_prepare_target(hot_queryset("prepared", "x", "y", since),
                                        "prepared", name="hot join")  # fmt: skip
    django_pooled_pg.add_prepare_target(
        hot_queryset("prepared_generic", "x", "y", since), "prepared_generic",
        name="hot join", plan_cache_mode="force_generic_plan",
    )  # fmt: skip
    requests = {name: make_request(name) for name in CONTENDERS}
    for name in CONTENDERS:  # warm up: connections, the ORM's caches, the plans
        found = sum(requests[name]() for _ in range(200))
        if not found:
            raise SystemExit("the hot join found no rows: the data or parameters are off")

    admin = psycopg2.connect(url)
    admin.autocommit = True
    has_statements = True
    try:
        with admin.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            cursor.execute("SELECT pg_stat_statements_reset()")
    except psycopg2.Error as error:
        has_statements = False
        print(f"pg_stat_statements unavailable ({error.pgerror or error}): no server-side times")

    print(
        f"Django {django.__version__}, psycopg2 {psycopg2.__version__.split()[0]}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs; {args.rounds} rounds x "
        f"{args.seconds:g} s; --pin {args.pin}: {placement}; rows: "
        + ", ".join(f"{table} {count:,}" for table, count in rows.items())
    )
    rps: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    server: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for round_index in range(args.rounds):
        for name in CONTENDERS:
            gc.collect()
            if has_statements:
                with admin.cursor() as cursor:
                    cursor.execute("SELECT pg_stat_statements_reset()")
            rps[name].append(timed(requests[name], args.seconds))
            if has_statements:
                server[name].append(server_times(admin))
        print(
            f"  round {round_index + 1}: "
            + "  ".join(f"{name} {rps[name][-1]:,.0f}/s" for name in CONTENDERS),
            flush=True,
        )
    median = {name: statistics.median(values) for name, values in rps.items()}
    ratios = {f"{name}/unprepared": median[name] / median["unprepared"] for name in CONTENDERS[1:]}
    per_round = {
        f"{name}/unprepared": [a / b for a, b in zip(rps[name], rps["unprepared"], strict=True)]
        for name in CONTENDERS[1:]
    }
    stats = {name: connections[name].database.prepared_stats() for name in CONTENDERS}

    print()
    print(f"{'contender':<18} {'req/s':>8} {'vs unprepared':>14}   "
          f"{'plan ms/call':>12} {'exec ms/call':>12} {'plans/calls':>12}")  # fmt: skip
    server_summary = {}
    for name in CONTENDERS:
        ratio = median[name] / median["unprepared"]
        figures = server[name]
        calls = sum(f["calls"] for f in figures)
        if calls:
            summary = {
                "calls": calls,
                "plans": sum(f["plans"] for f in figures),
                "plan_ms_per_call": sum(f["plan_ms"] for f in figures) / calls,
                "exec_ms_per_call": sum(f["exec_ms"] for f in figures) / calls,
            }
            server_summary[name] = summary
            extra = (f"{summary['plan_ms_per_call']:>12.3f} {summary['exec_ms_per_call']:>12.3f} "
                     f"{summary['plans']:>6}/{calls:<6}")  # fmt: skip
        else:
            extra = ""
        print(f"{name:<18} {median[name]:>8,.0f} {ratio:>13.2f}x   {extra}")
    for key, values in per_round.items():
        verdict = "met" if ratios[key] >= TARGET_RATIO else "MISSED"
        print(f"{key}: {ratios[key]:.2f}x (per-round {min(values):.2f}-{max(values):.2f}); "
              f"target >= {TARGET_RATIO}x: {verdict}")  # fmt: skip
    if "unprepared" in server_summary:
        base = server_summary["unprepared"]["plan_ms_per_call"]
        for name in CONTENDERS[1:]:
            if name in server_summary:
                saved = base - server_summary[name]["plan_ms_per_call"]
                print(f"server planning time saved per request, {name}: {saved:.3f} ms "
                      f"({100 * saved / base:.0f}% of {base:.3f} ms)")  # fmt: skip
    for name in CONTENDERS[1:]:
        (target,) = stats[name]
        print(f"{name}: hits {target['hits']}, prepares {target['prepares']}, "
              f"reprepares {target['reprepares']}, fallbacks {target['fallbacks']}")  # fmt: skip

    results = {
        "command": "python bench/prepared.py " + " ".join(sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "environment": {
            "django": django.__version__,
            "psycopg2": psycopg2.__version__.split()[0],
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "placement": placement,
        },  # fmt: skip
        "rows": rows,
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "rps": rps,
        "median_rps": median,
        "ratios": ratios,
        "per_round_ratios": per_round,
        "server": server_summary,
        "prepared_stats": stats,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"\nresults: {os.path.relpath(args.output)}")
    return 0 if all(r >= TARGET_RATIO for r in ratios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
