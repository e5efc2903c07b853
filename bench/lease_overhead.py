#!/usr/bin/env python
"""Where the pooled request cycle's extra time goes: the engine's pieces, one at a time.

    python bench/lease_overhead.py [--rounds 7] [--loops 20000]

Starts a throwaway cluster (or uses $DATABASE_URL), pins client and server to one CPU (as
request_cycle.py --pin same) and prints, per tracking level, medians over interleaved rounds:

- the Django request cycle (request_started -> cursor SELECT 1 -> request_finished) for
  persistent connections and for this backend, and the difference per request;
- engine pieces on a bare pool: park + resume of a lease (what each request's end and first
  query do), ``handle.cursor()``, and ``execute("SELECT 1") + fetchone()`` through the
  lease-bound cursor against a raw psycopg2 cursor on the same connection.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "testproject"), HERE]

LEVELS = ("off", "counters", "stacks")


def per_call_us(function, loops: int) -> float:
    started = time.perf_counter()
    for _ in range(loops):
        function()
    return (time.perf_counter() - started) / loops * 1e6


def engine_pieces(url: str, level: str, loops: int) -> dict[str, float]:
    from django_pooled_pg.pool import ConnectionPool

    pool = ConnectionPool({"dsn": url}, name=f"overhead {level}", tracking=level)
    try:
        handle = pool.checkout()

        def park_resume() -> None:
            handle.park()
            handle._live()

        figures = {"park+resume": per_call_us(park_resume, loops)}
        figures["cursor()"] = per_call_us(handle.cursor, loops)
        cursor = handle.cursor()  # a cursor of the current lease (parking ends a lease)
        raw = handle._conn.cursor()

        def pooled_query() -> None:
            cursor.execute("SELECT 1")
            cursor.fetchone()

        def raw_query() -> None:
            raw.execute("SELECT 1")
            raw.fetchone()

        figures["query pooled"] = per_call_us(pooled_query, loops)
        figures["query raw"] = per_call_us(raw_query, loops)
        handle.close()
        return figures
    finally:
        pool.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loops", type=int, default=20000)
    args = parser.parse_args()

    from server import start_server  # bench/server.py (this script's folder)

    cluster, url = start_server()
    try:
        import request_cycle as rc

        print(rc.pin_processes("same", cluster.datadir if cluster else None))
        rc.CONTENDERS["persistent"] = rc.database_entry(
            url, "django.db.backends.postgresql", "persistent", CONN_MAX_AGE=None
        )
        for level in LEVELS:
            rc.CONTENDERS[level] = rc.database_entry(
                url, "django_pooled_pg", level, OPTIONS={"pool": {"tracking": level}}
            )
        rc.setup_django({"default": copy.deepcopy(rc.CONTENDERS["persistent"])})
        cycle: dict[str, list[float]] = {name: [] for name in ("persistent", *LEVELS)}
        pieces: dict[str, dict[str, list[float]]] = {level: {} for level in LEVELS}
        for _ in range(args.rounds):
            for name in cycle:
                rc.activate(name)
                request = rc.make_cycle()
                for _ in range(300):
                    request()
                count, elapsed = rc.timed_loop(request, 1.0)
                cycle[name].append(elapsed / count * 1e6)
            for level in LEVELS:
                for piece, us in engine_pieces(url, level, args.loops).items():
                    pieces[level].setdefault(piece, []).append(us)
        base = statistics.median(cycle["persistent"])
        print(f"\nrequest cycle, us per request (median of {args.rounds} rounds)")
        print(f"  persistent        {base:7.1f}")
        for level in LEVELS:
            us = statistics.median(cycle[level])
            print(f"  pooled, {level:<9} {us:7.1f}   +{us - base:5.1f} us   {base / us:.2f}x")
        print("\nengine pieces, us per call (median)")
        names = list(pieces["off"])
        print("  " + " " * 10 + "".join(f"{n:>14}" for n in names))
        for level in LEVELS:
            row = "".join(f"{statistics.median(pieces[level][n]):14.2f}" for n in names)
            print(f"  {level:<10}{row}")
        return 0
    finally:
        from django_pooled_pg.pool.pool import close_all_pools

        close_all_pools()
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
