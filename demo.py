#!/usr/bin/env python
"""The demo: the testproject served by gunicorn through the pooled backend, on a throwaway
PostgreSQL started here (never $DATABASE_URL: the demo loads data and makes a staff user
admin/admin; ``--database-url`` picks a server on purpose).

It migrates, loads a small catalogue, starts gunicorn (2 worker processes x 4 threads) on
http://127.0.0.1:8000/, sends a burst of real HTTP requests, prints what each worker's pool
did, leaves one transaction open in a slow view, prints ``manage.py pool_status`` (every
worker, from the snapshots they publish), and keeps serving until Ctrl-C (``--seconds N``
stops after N seconds instead). The status page is http://127.0.0.1:8000/pool-status/ (staff
user admin/admin, made by the demo data).
"""

import argparse
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.path.join(HERE, "testproject")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=None, help="stop after N seconds")
    parser.add_argument(
        "--database-url", default=None, metavar="URL",
        help="use this database instead of a throwaway cluster: the demo migrates it, loads "
        "its data into it and makes a staff user admin/admin there",
    )  # fmt: skip
    args = parser.parse_args()

    sys.path[:0] = [HERE, PROJECT]
    cluster = None
    # Workers publish their pools every 2 s, so that pool_status shows them all quickly.
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="testproject.settings", STATUS_INTERVAL="2")
    env["PYTHONPATH"] = os.pathsep.join([HERE, PROJECT, env.get("PYTHONPATH", "")])
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
        print(f"Using {args.database_url.split('@')[-1]}: demo data and user admin/admin go there")
    else:
        # (an exported $DATABASE_URL, for the tests say, is not the demo's to fill)
        from django_pooled_pg.testing import Cluster

        cluster = Cluster().init()
        cluster.start()
        env.update(cluster.export_env())
        env["DATABASE_URL"] = cluster.url.rsplit("/", 1)[0] + "/demo"
        subprocess.run(
            [os.path.join(cluster.bindir, "createdb"), "-h", cluster.host, "-p",
             str(cluster.port), "-U", "postgres", "demo"],
            check=True,
        )  # fmt: skip
        print(f"PostgreSQL throwaway cluster on port {cluster.port}")
    server = None
    try:
        manage = [sys.executable, os.path.join(PROJECT, "manage.py")]
        subprocess.run([*manage, "migrate", "--verbosity", "0"], env=env, check=True)
        subprocess.run([*manage, "load_demo_data"], env=env, check=True)
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "testproject.wsgi",
             "--bind", f"127.0.0.1:{args.port}", "--workers", str(args.workers),
             "--threads", str(args.threads), "--chdir", PROJECT, "--log-level", "warning"],
            env=env,
        )  # fmt: skip
        base = f"http://127.0.0.1:{args.port}"
        wait_for(base + "/select1/")
        burst(base, args.requests, args.workers * args.threads * 2)
        workers = report(base, args.workers, args.workers * args.threads * 2)
        # A request that keeps its transaction open for a while: idle in transaction.
        hold = threading.Thread(target=get_json, args=(base + "/hold/8/",), daemon=True)
        hold.start()
        show_pool_status(manage, env, workers)
        print(
            f"\nServing {base}/ (try /products/1/ and /pool/). The status page of all "
            f"workers: {base}/pool-status/ (log in as admin, password admin). Ctrl-C to stop."
        )
        deadline = None if args.seconds is None else time.monotonic() + args.seconds
        while deadline is None or time.monotonic() < deadline:
            if server.poll() is not None:
                print("gunicorn exited", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        if cluster is not None:
            cluster.destroy()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get_json(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def burst(base: str, count: int, concurrency: int) -> None:
    orders = [  # the six-table join the shop runs prepared (shop/apps.py)
        f"/orders/?city={city}&country={country}&days=365"
        for city in ("Helsinki", "Berlin", "Paris", "Tokyo")
        for country in ("FI", "DE", "US")
    ]
    paths = ["/", "/select1/", *[f"/products/{pk}/" for pk in range(1, 21)], *orders]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as executor:
        results = list(executor.map(lambda i: get_json(base + paths[i % len(paths)]), range(count)))
    elapsed = time.monotonic() - started
    backends = {r["backend_pid"] for r in results if "backend_pid" in r}
    print(
        f"{count} requests from {concurrency} concurrent clients in {elapsed:.2f} s "
        f"({count / elapsed:.0f} requests/s); index pages were served by "
        f"{len(backends)} distinct server sessions"
    )


def report(base: str, workers: int, concurrency: int) -> list[int]:
    # Concurrent asks: one at a time, the kernel may hand every connection to the same idle
    # worker, and a worker that was still starting during the burst is never asked.
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + 30
    with concurrent.futures.ThreadPoolExecutor(concurrency) as executor:
        while len(seen) < workers and time.monotonic() < deadline:
            for stats in executor.map(lambda _: get_json(base + "/pool/"), range(concurrency)):
                seen[stats["worker_pid"]] = stats
    print("\nPool of each gunicorn worker, as each reports itself on /pool/:")
    print(
        f"{'worker':>8} {'leases':>7} {'opened':>7} {'size':>5} {'idle':>5} {'resets':>7} "
        f"{'prepared runs':>13}"
    )
    for pid, stats in sorted(seen.items()):
        prepared = sum(target["hits"] for target in stats["prepared"])
        print(
            f"{pid:>8} {stats['requests_num']:>7} {stats['connections_num']:>7} "
            f"{stats['pool_size']:>5} {stats['pool_available']:>5} {stats['resets_num']:>7} "
            f"{prepared:>13}"
        )
    return sorted(seen)


def show_pool_status(manage: list[str], env: dict, workers: list[int]) -> None:
    """Wait until every worker has published (and the slow view is idle in transaction),
    then print what an operator sees from a process of its own."""
    deadline = time.monotonic() + 60
    while True:
        result = subprocess.run(
            [*manage, "pool_status", "--json"], env=env, capture_output=True, text=True
        )
        status = json.loads(result.stdout) if result.returncode == 0 else {"aliases": []}
        published = {p["pid"] for s in status["aliases"] for p in s["processes"]}
        stuck = sum(s["totals"]["idle_in_transaction"] for s in status["aliases"])
        if set(workers) <= published and stuck:
            break
        if time.monotonic() > deadline:
            print(f"not every worker published within 60 s: {result.stderr}", file=sys.stderr)
            break
        time.sleep(0.5)
    print("\n$ python testproject/manage.py pool_status --queries 5")
    result = subprocess.run(
        [*manage, "pool_status", "--queries", "5"], env=env, capture_output=True, text=True
    )
    print(result.stdout.rstrip() or result.stderr.rstrip())


if __name__ == "__main__":
    sys.exit(main())
