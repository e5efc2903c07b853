#!/usr/bin/env python
"""What publishing the pool status costs: time per snapshot, and request throughput with
publishing every second against publishing off.

    python bench/status_publish.py            # about a minute, on its own throwaway cluster

A pool of 10 connections (two leased, one of them idle in a transaction with its stacks) and
50 statement shapes in its statistics: a busy process's snapshot. ``publish()`` is timed as
the cleaner calls it (collect, then one UPSERT over the publisher's own connection), and
``collect()`` alone. Then the Django request cycle (``SELECT 1``) runs in interleaved rounds
with the publisher off and on at ``interval=1`` (ten times the default rate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "testproject")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishes", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and contender")
    args = parser.parse_args()

    from django_pooled_pg.testing import Cluster

    with Cluster() as cluster:
        cluster.wait_ready()
        os.environ["DATABASE_URL"] = cluster.url
        return run(args)


def run(args: argparse.Namespace) -> int:
    import django
    from django.conf import settings
    from testproject.dburl import database_from_url

    settings.configure(
        INSTALLED_APPS=["django_pooled_pg", "django_pooled_pg.status"],
        DATABASES={"default": database_from_url(OPTIONS={"pool": {"max_size": 10}})},
        POOLED_PG_STATUS={"interval": 1.0, "publish": False},
        USE_TZ=True,
    )
    django.setup()
    from django.core.management import call_command
    from django.core.signals import request_finished, request_started
    from django.db import connection
    from django.test.utils import override_settings

    from django_pooled_pg.status.publish import Publisher, publisher
    from django_pooled_pg.status.snapshot import collect

    call_command("migrate", verbosity=0)
    connection.close()
    pool = connection.database.pool
    handles = [pool.checkout() for _ in range(10)]
    for i, handle in enumerate(handles):
        with handle.cursor() as cursor:
            for shape in range(5):
                cursor.execute(f"SELECT {shape} AS shape_{i}_{shape}, %s", [i])
    for handle in handles[2:]:
        handle.close()
    handles[0].autocommit = False  # idle in a transaction, with its stacks
    with handles[0].cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()

    with override_settings(POOLED_PG_STATUS={"interval": 1.0, "publish": True}):
        own = Publisher()
        publisher().stop()  # only the timed one writes
        own.publish()  # connect outside the timing
        totals, collects = [], []
        for _ in range(args.publishes):
            own._retry_at = 0.0
            started = time.perf_counter()
            ok = own.publish()
            totals.append(time.perf_counter() - started)
            assert ok, "publish failed"
            started = time.perf_counter()
            collect()
            collects.append(time.perf_counter() - started)
        size = len(json.dumps(collect()))
        own.withdraw()
    handles[0].rollback()
    for handle in handles[:2]:
        handle.close()

    def p(values: list[float], q: float) -> float:
        return sorted(values)[int(q * (len(values) - 1))] * 1e6

    print(f"snapshot: {size} bytes of JSON for 10 connections and 50 statement shapes")
    print(
        f"publish(): median {p(totals, 0.5):.0f} us, p95 {p(totals, 0.95):.0f} us "
        f"(collect() alone: median {p(collects, 0.5):.0f} us)"
    )
    share = statistics.median(totals) / 10.0
    print(f"at the default interval (10 s): {share * 100:.4f}% of one thread's time")

    def cycles(seconds: float) -> float:
        count, deadline = 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            request_started.send(sender=None)
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            request_finished.send(sender=None)
            count += 1
        return count / seconds

    rates: dict[str, list[float]] = {"off": [], "on, every 1 s": []}
    for _ in range(args.rounds):
        for name in rates:
            on = name != "off"
            with override_settings(POOLED_PG_STATUS={"interval": 1.0, "publish": on}):
                publisher()._stopped = not on
                rates[name].append(cycles(args.seconds))
    publisher().stop()
    connection.close()
    for name, values in rates.items():
        print(
            f"request cycles/s, publishing {name}: median {statistics.median(values):,.0f} "
            f"(rounds {min(values):,.0f}-{max(values):,.0f})"
        )
    ratio = statistics.median(rates["on, every 1 s"]) / statistics.median(rates["off"])
    print(f"on/off: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
