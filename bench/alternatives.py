#!/usr/bin/env python
"""django_pooled_pg against the alternatives (issue #6): one command, everything set up.

    python bench/alternatives.py [--rounds 7] [--seconds 1.5] [--pin same|none]
                                 [--only NAME ...] [--workloads cycle,churn,...]
                                 [--auth trust|scram] [--replot]

Contenders, each in its own worker process (its own interpreter / virtualenv):

1. unpooled       psycopg2, django.db.backends.postgresql, CONN_MAX_AGE=0
2. persistent     psycopg2, CONN_MAX_AGE=None
3. pooled         django_pooled_pg, defaults (OPTIONS={"pool": {}})
4. django_pool    Django's own pool on psycopg 3 (OPTIONS={"pool": {"min_size": 2,
                  "max_size": 8}}), venv bench/.venvs/psycopg3 (Django + psycopg[binary,pool])
5. dbcp           django-db-connection-pool (ENGINE dj_db_conn_pool.backends.postgresql,
                  psycopg2, its defaults: SQLAlchemy QueuePool, pool_size 10, max_overflow 10,
                  pre_ping on), venv bench/.venvs/dbcp
6. pgbouncer      PgBouncer (Debian package, pool_mode=transaction, auth_type=any,
                  default_pool_size 8) in front of unpooled psycopg2 (CONN_MAX_AGE=0)
                  (--auth scram: auth_type=scram-sha-256, see below)

Missing venvs are created with pip, PgBouncer with apt-get; a contender that cannot be set up
is skipped with the reason printed.

Workloads (all but threads32: one thread each): "cycle" = request_started -> cursor SELECT 1
-> request_finished (as bench/request_cycle.py); "orm" = request_started -> three
Category.objects.get(pk=...) (testproject/shop, 300 rows) -> request_finished. The coordinator
runs rounds A B C D E F A B C ... (workload by workload inside a round); each worker times its
requests one by one (elapsed, p50, p99). Every contender connects as its own database role
(bench_<name>; bench_<name>_t for threads32), and a sampler thread counts server sessions per
role in pg_stat_activity every 10 ms: the maximum is reported (for PgBouncer: its server
connections).

More workloads:
"threads32" = 32 long-lived threads in the worker run the request cycle concurrently (own
  alias "threads", own role bench_<name>_t): ours OPTIONS={"pool": {"max_size": 8}}, Django pool
  max_size 8, django-db-connection-pool POOL_OPTIONS POOL_SIZE 8 MAX_OVERFLOW 0, PgBouncer
  default_pool_size 8; persistent holds 32 sessions, unpooled up to 32. Max sessions must be
  <= 8 for the pooled ones (printed with OK / OVER).
"churn" = request cycle then connections.close_all() (code that closes connections itself:
  Celery tasks, management commands): pooled contenders give back and lease again each time,
  persistent reconnects each time.
"join" = one ORM queryset per request over 6 tables (testproject/shop, load_demo_data's rows):
  OrderLine select_related order__customer, product__category, product__supplier, filtered on
  customer city, supplier country and order placed >= (varying), ordered by -placed, [:20].
  Run UNPREPARED by every contender, django_pooled_pg included.
"join_prepared" = the same request, with the join's queryset made a prepare target of
  django_pooled_pg (add_prepare_target(queryset, using="default", name="join"), the server's
  plan_cache_mode): it runs as PREPARE once per connection, then EXECUTE. Only "pooled" runs
  it; the others cannot prepare plans (psycopg2/psycopg 3 through Django send plain SQL), so
  the coordinator never sends it to them: "n/a" in the table and charts, null in the JSON.
  Worker protocol: one alias, one pool, the same request function for both workloads. The
  pooled worker starts with no target (it clears any an app's ready() registered), registers
  the join's target when a join_prepared run starts (before its warm-up) and clears it
  (clear_prepare_targets("default")) when the run ends, so "join" in the same worker never
  has a target: each join result reports the alias's targets (must be 0), each join_prepared
  result its target's hits/prepares/reprepares/fallbacks from prepared_stats() (verified:
  hits >= the timed requests, fallbacks 0; else listed under ERRORS). Each registration is a
  new target, prepared again on the connection in that round's warm-up; the statements of
  earlier rounds stay on the server session, unused (a few, far under max_prepared).
  Ratios of join_prepared against unpooled/persistent use their "join" runs of the same round
  (the same request, which is all they can run); "vs join" is pooled's own join, same round.

CPU placement (--pin same, default): the cluster, PgBouncer and every worker share one CPU (as
request_cycle.py --pin same: stable, and the client's Python cost shows); the coordinator and
the sampler's server session sit on the other CPU.

--workloads a,b restricts the workloads (default: all, in the order above).

Authentication (--auth): "trust" (default) = the throwaway cluster trusts every connection, so
connecting costs only the fork and the startup. "scram" = connecting costs what it does in
production with passwords: the cluster runs with password_encryption = 'scram-sha-256' and a
pg_hba.conf requiring scram-sha-256 for every TCP connection from 127.0.0.1 except the
superuser "postgres" (the coordinator's set-up and the sampler; trust); every bench role gets
a password and every contender's DATABASES entry its PASSWORD. PgBouncer runs with auth_type =
scram-sha-256 and an auth_file holding the roles' SCRAM secrets as read from
pg_authid.rolpassword, so it authenticates its clients with SCRAM and logs into the server
with the same secret (SCRAM pass-through; its [databases] entries then name no user=, the
pool is per client role, which is the same one pool per entry). Checked before the rounds (the
"auth_check" in the JSON): pg_hba_file_rules, a wrong password refused by the server and by
PgBouncer, and log_connections turned on while the workers start, so that every bench role's
logged connection must be "connection authenticated: ... method=scram-sha-256".

Results: a table on stdout, bench/results/alternatives.json and
bench/results/alternatives-throughput.png, bench/results/alternatives-latency.png (--auth scram:
alternatives-scram.json, alternatives-scram-throughput.png, alternatives-scram-latency.png; the
charts are named after --output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENVS = os.path.join(HERE, ".venvs")
RESULTS = os.path.join(HERE, "results")
ORM_ROWS = 300
WORKLOADS = ["cycle", "orm", "threads32", "churn", "join", "join_prepared"]
#: workloads only some contenders can run (the others: "n/a"), with the reason
ONLY_FOR = {"join_prepared": ({"pooled"}, "cannot prepare plans")}
#: the workload whose runs are the same request for contenders that cannot run this one
SAME_REQUEST = {"join_prepared": "join"}
PREPARED_KEYS = ("hits", "prepares", "reprepares", "fallbacks")

THREADS = 32  # threads32: threads per worker; the pooled contenders are capped at POOL_CAP
POOL_CAP = 8
JOIN_CITIES = ["Helsinki", "Berlin", "Paris", "Tokyo"]  # load_demo_data's values
JOIN_COUNTRIES = ["FI", "DE", "FR", "US", "JP"]
TITLES = {
    "cycle": "request cycle: request_started -> cursor SELECT 1 -> request_finished",
    "orm": "ORM: request_started -> 3 x Category.objects.get(pk=) -> request_finished",
    "threads32": f"{THREADS} threads x request cycle (SELECT 1), pools capped at max {POOL_CAP}"
    " (persistent: 32 sessions; PgBouncer default_pool_size 8)",
    "churn": "churn: request cycle (SELECT 1) then connections.close_all() (as tasks/commands)",
    "join": "complex join, UNPREPARED: OrderLine select_related order__customer, "
    "product__category, product__supplier;\n  filter city, country, placed >= ; order_by "
    "-placed [:20]; 6 tables, parameters vary per request",
    "join_prepared": "the same complex join, PREPARED: django_pooled_pg with the queryset as "
    "add_prepare_target() (PREPARE once per connection, then EXECUTE);\n  the others cannot "
    "prepare plans: n/a (vs unpooled / vs persistent: against their join runs, same round)",
}
SHORT_TITLES = {
    "cycle": "request cycle (SELECT 1)",
    "orm": "3 ORM lookups by pk per request",
    "threads32": f"{THREADS} threads, SELECT 1, pools max {POOL_CAP}",
    "churn": "SELECT 1 + connections.close_all()",
    "join": "6-table join (unprepared)",
    "join_prepared": "6-table join, prepared (django_pooled_pg only)",
}
ORDER = ["unpooled", "persistent", "pooled", "django_pool", "dbcp", "pgbouncer"]
LABELS_T = {  # threads32
    "unpooled": "unpooled psycopg2 (32 threads)",
    "persistent": "persistent psycopg2 (32 threads, 32 sessions)",
    "pooled": "django_pooled_pg (max_size 8)",
    "django_pool": "Django pool, psycopg 3 (min 2, max 8)",
    "dbcp": "django-db-conn-pool (POOL_SIZE 8, overflow 0)",
    "pgbouncer": "PgBouncer (pool 8) + unpooled psycopg2",
}
LABELS = {
    "unpooled": "unpooled psycopg2 (CONN_MAX_AGE=0)",
    "persistent": "persistent psycopg2 (CONN_MAX_AGE=None)",
    "pooled": "django_pooled_pg (defaults)",
    "django_pool": "Django pool, psycopg 3 (min 2, max 8)",
    "dbcp": "django-db-connection-pool (defaults)",
    "pgbouncer": "PgBouncer (transaction) + unpooled psycopg2",
}
SHORT = {
    "unpooled": "unpooled",
    "persistent": "persistent",
    "pooled": "django_pooled_pg",
    "django_pool": "Django pool (psycopg 3)",
    "dbcp": "django-db-conn-pool",
    "pgbouncer": "PgBouncer + unpooled",
}


def runners(workload: str, active: list[str]) -> list[str]:
    """The contenders that run ``workload`` (all, unless ONLY_FOR limits it)."""
    only = ONLY_FOR.get(workload)
    return [n for n in active if only is None or n in only[0]]


# =========================================================================================
# worker: runs inside the contender's interpreter; speaks JSON lines on stdin/stdout
# =========================================================================================


def worker_main(config: dict) -> int:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    if config.get("cpu") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {config["cpu"]})
    sys.path.insert(0, os.path.join(ROOT, "testproject"))
    if config["name"] == "pooled":
        sys.path.insert(0, ROOT)

    import django
    from django.conf import settings

    apps = ["django.contrib.contenttypes", "shop"]
    if config["name"] == "pooled":
        apps.insert(0, "django_pooled_pg")
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=apps,
        DATABASES={"default": config["database"], "threads": config["threads_database"]},
    )
    django.setup()
    if config["name"] == "pooled":  # targets an app's ready() registered: not the contender's
        from django_pooled_pg.targets import clear_prepare_targets

        clear_prepare_targets()
    from django.core.signals import request_finished, request_started
    from django.db import connections
    from shop.models import Category, Order, OrderLine

    def cycle(alias: str = "default") -> None:
        request_started.send(sender=None)
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        request_finished.send(sender=None)

    def churn() -> None:  # code that closes its connections itself (tasks, commands)
        cycle()
        connections.close_all()

    request_started.send(sender=None)
    keys = list(Category.objects.order_by("pk").values_list("pk", flat=True)[:ORM_ROWS])
    request_finished.send(sender=None)
    if len(keys) < 3:
        raise SystemExit("worker: the shop_category table is empty")
    counter = [0]

    def orm() -> None:
        i = counter[0]
        counter[0] = i + 1
        n = len(keys)
        request_started.send(sender=None)
        objects = Category.objects
        objects.get(pk=keys[i % n])
        objects.get(pk=keys[(i + 101) % n])
        objects.get(pk=keys[(i + 203) % n])
        request_finished.send(sender=None)

    # the complex join: 6 tables, filters on indexed columns, parameters vary per request
    import datetime

    from django.db.models import Max, Min

    request_started.send(sender=None)
    span = Order.objects.aggregate(first=Min("placed"), last=Max("placed"))
    request_finished.send(sender=None)
    if span["first"] is None:
        raise SystemExit("worker: the shop tables are empty (load_demo_data)")
    days = max(1, (span["last"] - span["first"]).days)
    join_params = [
        (city, country, span["first"] + datetime.timedelta(days=(k * 7) % days))
        for k, (city, country) in enumerate((c, n) for c in JOIN_CITIES for n in JOIN_COUNTRIES)
    ]
    join_counter = [0]

    def join_queryset(city: str, country: str, since: datetime.datetime):
        return (
            OrderLine.objects.select_related(
                "order__customer", "product__category", "product__supplier"
            )
            .filter(
                order__customer__city=city,
                product__supplier__country=country,
                order__placed__gte=since,
            )
            .order_by("-order__placed")[:20]
        )

    def join() -> None:  # join_prepared too: the same request, the target makes the difference
        i = join_counter[0]
        join_counter[0] = i + 1
        request_started.send(sender=None)
        lines = list(join_queryset(*join_params[i % len(join_params)]))
        for line in lines:  # touch the joined objects as a view would
            _ = (line.order.customer.name, line.product.category.name, line.product.supplier.name)
        request_finished.send(sender=None)

    cycles = {"cycle": cycle, "orm": orm, "churn": churn, "join": join, "join_prepared": join}

    def prepared_targets() -> list[dict]:  # the alias's prepare targets, with their counters
        return connections["default"].database.prepared_stats()

    def register_join_target() -> None:  # around join_prepared runs only (see the docstring)
        import django_pooled_pg

        django_pooled_pg.add_prepare_target(
            join_queryset(*join_params[0]), using="default", name="join"
        )

    def clear_join_target() -> None:
        from django_pooled_pg.targets import clear_prepare_targets

        clear_prepare_targets("default")

    crew: ThreadCrew | None = None
    versions = {"python": platform.python_version(), "django": django.__version__}
    try:
        import psycopg2

        versions["psycopg2"] = psycopg2.__version__.split()[0]
    except ImportError:
        pass
    try:
        import psycopg

        versions["psycopg"] = psycopg.__version__
        import psycopg_pool

        versions["psycopg_pool"] = psycopg_pool.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        versions["django-db-connection-pool"] = version("django-db-connection-pool")
        versions["sqlalchemy"] = version("sqlalchemy")
    except Exception:
        pass
    proto.write(json.dumps({"ready": True, "versions": versions}) + "\n")

    perf = time.perf_counter_ns
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        if command["workload"] == "threads32":
            if crew is None:
                crew = ThreadCrew(THREADS, lambda: cycle("threads"), connections)
            proto.write(json.dumps(crew.run(command["seconds"], command.get("warmup", 5))) + "\n")
            continue
        workload = command["workload"]
        run = cycles[workload]
        if workload == "join_prepared":
            if config["name"] != "pooled":  # the coordinator never asks; refuse all the same
                proto.write(json.dumps({"error": f"{config['name']} cannot prepare"}) + "\n")
                continue
            register_join_target()
        try:
            for _ in range(command.get("warmup", 20)):
                run()
            start = perf()
            latencies = timed_until(run, start + int(command["seconds"] * 1e9))
            elapsed = (perf() - start) / 1e9
            result = run_result(latencies, elapsed)
            if config["name"] == "pooled" and workload.startswith("join"):
                targets = prepared_targets()
                result["prepare_targets"] = len(targets)  # join: must be 0
                if workload == "join_prepared":  # this run's own target (warm-up included)
                    result["prepared"] = {
                        k: sum(t[k] for t in targets)
                        for k in ("hits", "prepares", "reprepares", "fallbacks")
                    }
        finally:
            if workload == "join_prepared":
                clear_join_target()
        proto.write(json.dumps(result) + "\n")
    if crew is not None:
        crew.stop()
    connections.close_all()
    return 0


def timed_until(run, deadline_ns: int) -> list[int]:
    """Call ``run()`` until ``deadline_ns`` (perf_counter_ns), returning each call's ns."""
    perf = time.perf_counter_ns
    latencies: list[int] = []
    append = latencies.append
    while True:
        t0 = perf()
        run()
        t1 = perf()
        append(t1 - t0)
        if t1 >= deadline_ns:
            return latencies


def run_result(latencies: list[int], elapsed: float) -> dict:
    latencies.sort()
    count = len(latencies)
    return {
        "count": count,
        "elapsed": elapsed,
        "rps": count / elapsed,
        "p50_us": latencies[count // 2] / 1e3,
        "p99_us": latencies[min(count - 1, int(count * 0.99))] / 1e3,
    }


class ThreadCrew:
    """``n`` long-lived threads (as a threaded server's workers: persistent connections stay
    per thread across rounds) running ``run`` concurrently until a shared deadline."""

    def __init__(self, n: int, run, connections) -> None:
        self.n, self._run, self._connections = n, run, connections
        self.go = threading.Barrier(n + 1)
        self.ready = threading.Barrier(n, action=self._start_clock)
        self.done = threading.Barrier(n + 1)
        self.command: dict | None = None
        self.latencies: list[list[int]] = [[] for _ in range(n)]
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)
        ]
        for thread in self.threads:
            thread.start()

    def _start_clock(self) -> None:
        self.start = time.perf_counter_ns()
        self.deadline = self.start + int(self.command["seconds"] * 1e9)

    def _loop(self, index: int) -> None:
        run = self._run
        while True:
            self.go.wait()
            command = self.command
            if command is None:
                self._connections.close_all()
                self.done.wait()
                return
            latencies: list[int] = []
            try:
                for _ in range(command["warmup"]):
                    run()
                self.ready.wait()
                latencies = timed_until(run, self.deadline)
            except Exception as error:  # reported, the round goes on
                self.errors.append(repr(error))
                if not self.ready.broken and self.ready.n_waiting:
                    self.ready.abort()
            self.latencies[index] = latencies
            self.done.wait()

    def run(self, seconds: float, warmup: int) -> dict:
        self.command = {"seconds": seconds, "warmup": warmup}
        self.ready.reset()
        self.go.wait()
        self.done.wait()
        elapsed = (time.perf_counter_ns() - self.start) / 1e9
        merged = [t for per_thread in self.latencies for t in per_thread]
        result = run_result(merged, elapsed)
        result["threads"] = self.n
        if self.errors:
            result["errors"] = self.errors[:3]
            self.errors.clear()
        return result

    def stop(self) -> None:
        self.command = None
        self.go.wait()
        self.done.wait()


# =========================================================================================
# coordinator
# =========================================================================================


def log(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_venv(name: str, packages: list[str], check: str) -> tuple[str | None, str]:
    """bench/.venvs/<name> with ``packages``; (python, '') or (None, reason)."""
    import django

    path = os.path.join(VENVS, name)
    python = os.path.join(path, "bin", "python")
    probe = [python, "-c", check]
    if os.path.exists(python) and subprocess.run(probe, capture_output=True).returncode == 0:
        return python, ""
    log(f"setting up {path} ({', '.join(packages)}) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", path], check=True, capture_output=True)
        pins = [f"django=={django.__version__}", *packages]
        result = subprocess.run(
            [python, "-m", "pip", "install", "-q", *pins], capture_output=True, text=True
        )
        if result.returncode != 0:
            return None, f"pip install failed: {result.stderr.strip().splitlines()[-1:]}"
    except (OSError, subprocess.CalledProcessError) as error:
        return None, f"venv creation failed: {error}"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return None, f"{check!r} fails in {path}"
    return python, ""


def ensure_pgbouncer() -> tuple[str | None, str]:
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    if binary:
        return binary, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "pgbouncer not installed and apt-get not usable (not root or no apt)"
    log("installing pgbouncer with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "pgbouncer"]
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        result = subprocess.run(install, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        return None, "apt-get install pgbouncer failed: " + result.stderr.strip()[-200:]
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    return (binary, "") if os.path.exists(binary) else (None, "pgbouncer binary not found")


class PgBouncer:
    def __init__(
        self, binary: str, cluster, pool_size: int = 8, secrets: dict[str, str] | None = None
    ) -> None:
        """``secrets`` (role: SCRAM secret from pg_authid): auth_type = scram-sha-256 with them
        as the auth_file, and no forced user= (the server login reuses the client's secret)."""
        self.port = free_port()
        self.ini = os.path.join(cluster.base, "pgbouncer.ini")
        self.logfile = os.path.join(cluster.base, "pgbouncer.log")
        owned = [self.ini]
        if secrets is None:
            users = (" user=bench_pgbouncer", " user=bench_pgbouncer_t")
            auth = "auth_type = any\n"
        else:
            users = ("", "")  # the pool per client role: bench_pgbouncer, bench_pgbouncer_t
            auth_file = os.path.join(cluster.base, "userlist.txt")
            with open(auth_file, "w") as userlist:
                for role, secret in secrets.items():
                    userlist.write(f'"{role}" "{secret}"\n')
            os.chmod(auth_file, 0o600)
            owned.append(auth_file)
            auth = f"auth_type = scram-sha-256\nauth_file = {auth_file}\n"
        with open(self.ini, "w") as ini:
            ini.write(
                "[databases]\n"
                f"bench = host=127.0.0.1 port={cluster.port} dbname=postgres{users[0]}\n"
                f"bench_t = host=127.0.0.1 port={cluster.port} dbname=postgres{users[1]}\n"
                "[pgbouncer]\n"
                f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
                f"{auth}pool_mode = transaction\n"
                f"default_pool_size = {pool_size}\nmax_client_conn = 200\n"
                f"logfile = {self.logfile}\npidfile =\n"
                "ignore_startup_parameters = extra_float_digits,options\n"
                "log_connections = 0\nlog_disconnections = 0\n"
            )
        run_as: dict = {}
        if os.geteuid() == 0:  # pgbouncer refuses to run as root, like PostgreSQL
            stat = os.stat(cluster.base)
            run_as = {"user": stat.st_uid, "group": stat.st_gid}
            for path in owned:
                os.chown(path, stat.st_uid, stat.st_gid)
        self.process = subprocess.Popen(
            [binary, self.ini], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **run_as
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"pgbouncer exited: {self.process.stderr.read().decode()[-300:]} "
                    f"{self.log_tail()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pgbouncer did not start listening")

    def log_tail(self) -> str:
        try:
            with open(self.logfile) as f:
                return "".join(f.readlines()[-5:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Worker:
    def __init__(
        self, name: str, python: str, database: dict, threads_database: dict, cpu: int | None
    ) -> None:
        self.name = name
        config = {
            "name": name, "database": database, "threads_database": threads_database, "cpu": cpu
        }  # fmt: skip
        self.stderr = open(os.path.join(RESULTS, f".alternatives-{name}.stderr.tmp"), "w+")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
        self.process = subprocess.Popen(
            [python, os.path.abspath(__file__), "--worker", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
            env=env,
            cwd="/tmp",  # not the repository: the venvs must not see the source tree
        )
        self.hello = self._read()
        self.versions = self.hello["versions"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.stderr.seek(0)
            raise RuntimeError(f"worker {self.name} died: {self.stderr.read()[-1500:]}")
        return json.loads(line)

    def run(self, workload: str, seconds: float, warmup: int) -> dict:
        self.process.stdin.write(
            json.dumps({"workload": workload, "seconds": seconds, "warmup": warmup}) + "\n"
        )
        return self._read()

    def close(self) -> None:
        try:
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.close()
            self.process.wait(10)
        except Exception:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


def setup_database(url: str, names: list[str], passwords: bool = False) -> None:
    """Roles bench_<name> (``passwords``: each with its role_password(), SCRAM-hashed);
    contenttypes and shop migrated; ORM_ROWS categories."""
    sys.path.insert(0, os.path.join(ROOT, "testproject"))
    import django
    import psycopg2
    from django.conf import settings
    from testproject.dburl import database_from_url

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        for name in [*names, *(f"{n}_t" for n in names)]:
            cursor.execute(
                f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_{name}')"
                f" THEN CREATE ROLE bench_{name} LOGIN SUPERUSER; END IF; END $$"
            )
            if passwords:  # hashed as password_encryption says (scram-sha-256)
                role = f"bench_{name}"
                cursor.execute(f"ALTER ROLE {role} PASSWORD %s", [role_password(role)])
    conn.close()
    settings.configure(
        SECRET_KEY="bench",
        USE_TZ=True,
        TIME_ZONE="UTC",
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "shop"],
        DATABASES={"default": database_from_url(url, engine="django.db.backends.postgresql")},
    )
    django.setup()
    from django.core.management import call_command
    from django.db import connections
    from shop.models import Category

    call_command("migrate", verbosity=0, interactive=False)
    import io

    call_command("load_demo_data", stdout=io.StringIO())  # the join's rows (and 20 categories)
    with connections["default"].cursor() as cursor:
        cursor.execute("ANALYZE")
    missing = ORM_ROWS - Category.objects.count()
    if missing > 0:
        Category.objects.bulk_create(Category(name=f"category {i}") for i in range(missing))
    connections.close_all()


# =========================================================================================
# --auth scram: password authentication, as production does
# =========================================================================================

SCRAM_HBA = """\
# alternatives.py --auth scram: the superuser (set-up, sampler) trusted, every other role SCRAM
host    all    postgres    127.0.0.1/32    trust
host    all    all         127.0.0.1/32    scram-sha-256
"""


def role_password(role: str) -> str:
    return f"{role}-secret"  # a throwaway cluster: the cost of SCRAM is the point, not secrecy


def scram_cluster(cluster) -> None:
    """After init(), before start(): pg_hba.conf requiring SCRAM from 127.0.0.1 (see above)."""
    with open(os.path.join(cluster.datadir, "pg_hba.conf"), "w") as hba:
        hba.write(SCRAM_HBA)


def scram_secrets(url: str, roles: list[str]) -> dict[str, str]:
    """role: its SCRAM secret, read from pg_authid.rolpassword (a superuser query)."""
    import psycopg2

    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY(%s)", [roles]
            )
            secrets = dict(cursor.fetchall())
    finally:
        conn.close()
    for role in roles:
        if not (secrets.get(role) or "").startswith("SCRAM-SHA-256$"):
            raise RuntimeError(f"{role}: no SCRAM secret in pg_authid ({secrets.get(role)!r})")
    return secrets


def set_log_connections(url: str, on: bool) -> None:
    """ALTER SYSTEM log_connections, reloaded; returns once a new session sees it."""
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f"ALTER SYSTEM SET log_connections = {'on' if on else 'off'}")
        cursor.execute("SELECT pg_reload_conf()")
    conn.close()
    want = "on" if on else "off"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the postmaster reloads asynchronously
        probe = psycopg2.connect(url)
        with probe.cursor() as cursor:
            cursor.execute("SHOW log_connections")
            seen = cursor.fetchone()[0]
        probe.close()
        if seen == want:
            return
        time.sleep(0.05)
    raise RuntimeError(f"log_connections did not become {want}")


def refused(**conninfo) -> str | None:
    """The error of a connection that must fail (a wrong password), None if it succeeded."""
    import psycopg2

    try:
        psycopg2.connect(**conninfo, connect_timeout=5).close()
    except psycopg2.OperationalError as error:
        return str(error).strip().splitlines()[-1]
    return None


def scram_check(cluster, bouncer, roles: list[str], worker_roles: list[str], log_text: str) -> dict:
    """Evidence that the bench roles authenticate with SCRAM (the JSON's auth_check).

    ``log_text``: the server log written while log_connections was on and the workers started
    (their first connections: ``worker_roles``, PgBouncer's server login included); ``roles``:
    every bench role, each tried here with a wrong, no and the right password."""
    import re

    import psycopg2

    check: dict = {"ok": True, "problems": []}
    conn = psycopg2.connect(cluster.url)
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT type, database, user_name, address, auth_method, error "
            "FROM pg_hba_file_rules ORDER BY line_number"
        )
        check["pg_hba_file_rules"] = [
            {k: v for k, v in zip(("type", "database", "user_name", "address", "auth_method",
                                   "error"), row, strict=True)}
            for row in cursor.fetchall()
        ]  # fmt: skip
        cursor.execute("SHOW password_encryption")
        check["password_encryption"] = cursor.fetchone()[0]
    conn.close()
    server = {"host": "127.0.0.1", "port": cluster.port, "dbname": "postgres"}
    wrong = {}
    for role in roles:
        wrong[f"server {role}"] = refused(**server, user=role, password="wrong")
        wrong[f"server {role} (no password)"] = refused(**server, user=role, password="")
    if bouncer is not None:
        via = {"host": "127.0.0.1", "port": bouncer.port, "dbname": "bench"}
        wrong["pgbouncer bench_pgbouncer"] = refused(**via, user="bench_pgbouncer", password="x")
    check["wrong_password"] = wrong
    right = {}
    for role in roles:  # the threads32 roles included, which the workers use later
        right[f"server {role}"] = refused(**server, user=role, password=role_password(role))
    if bouncer is not None:
        for db, role in (("bench", "bench_pgbouncer"), ("bench_t", "bench_pgbouncer_t")):
            right[f"pgbouncer {role}"] = refused(
                host="127.0.0.1", port=bouncer.port, dbname=db, user=role,
                password=role_password(role),
            )  # fmt: skip
    check["right_password_errors"] = right
    for where, error in right.items():
        if error is not None:
            check["problems"].append(f"{where}: the right password was refused ({error})")
    for where, error in wrong.items():
        # "password authentication failed", or libpq's "fe_sendauth: no password supplied"
        if error is None or not ("authentication failed" in error or "no password" in error):
            check["problems"].append(f"{where}: a wrong password was not refused ({error!r})")
    authorized: dict[str, int] = {}
    scram: dict[str, int] = {}
    for line in log_text.splitlines():
        if m := re.search(r"connection authorized: user=(bench_\w+)", line):
            authorized[m[1]] = authorized.get(m[1], 0) + 1
        elif m := re.search(r'connection authenticated: identity="(bench_\w+)" method=(\S+)', line):
            if m[2] == "scram-sha-256":
                scram[m[1]] = scram.get(m[1], 0) + 1
    check["logged_connections"] = {
        r: {"authorized": authorized.get(r, 0), "scram_sha_256": scram.get(r, 0)}
        for r in sorted(set(authorized) | set(scram))
    }
    for role, counts in check["logged_connections"].items():
        if counts["authorized"] != counts["scram_sha_256"] or not counts["authorized"]:
            check["problems"].append(f"{role}: not every logged connection used SCRAM {counts}")
    for role in worker_roles:
        if role not in authorized:
            check["problems"].append(f"{role}: no logged connection")
    check["ok"] = not check["problems"]
    return check


def database_entry(cluster, name: str, engine: str, **extra) -> dict:
    return {
        "ENGINE": engine,
        "NAME": "postgres",
        "USER": f"bench_{name}",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": str(cluster.port),
        **extra,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (7)")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per run (1.5)")
    parser.add_argument("--pin", choices=("same", "none"), default="same")
    parser.add_argument("--only", action="append", choices=ORDER, help="contenders (repeatable)")
    parser.add_argument(
        "--workloads", help=f"comma-separated, of {','.join(WORKLOADS)} (default: all)"
    )
    parser.add_argument(
        "--auth", choices=("trust", "scram"), default="trust",
        help="trust (default) or scram: passwords, SCRAM-SHA-256 (see the docstring)",
    )  # fmt: skip
    parser.add_argument("--replot", action="store_true", help="only redraw the charts")
    parser.add_argument(
        "--output", help="default: bench/results/alternatives.json (--auth scram: -scram.json)"
    )
    args = parser.parse_args()
    if args.worker:
        return worker_main(json.loads(args.worker))
    if args.output is None:
        suffix = "" if args.auth == "trust" else f"-{args.auth}"
        args.output = os.path.join(RESULTS, f"alternatives{suffix}.json")
    workloads = WORKLOADS
    if args.workloads:
        wanted = [w.strip() for w in args.workloads.split(",") if w.strip()]
        unknown = sorted(set(wanted) - set(WORKLOADS))
        if unknown or not wanted:
            parser.error(f"--workloads: unknown {unknown}, choose from {','.join(WORKLOADS)}")
        workloads = [w for w in WORKLOADS if w in wanted]
    scram = args.auth == "scram"
    if args.replot:  # charts again from the JSON, no measurement
        with open(args.output) as f:
            saved = json.load(f)
        for path in plot(saved, list(saved["contenders"]), args.output):
            log(f"chart: {os.path.relpath(path, ROOT)}")
        return 0
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    started = time.monotonic()
    os.makedirs(RESULTS, exist_ok=True)
    names = [n for n in ORDER if n in (args.only or ORDER)]

    skipped: dict[str, str] = {}
    pythons = {n: sys.executable for n in ("unpooled", "persistent", "pooled", "pgbouncer")}
    if "django_pool" in names:
        python, why = ensure_venv(
            "psycopg3", ["psycopg[binary,pool]"], "import django, psycopg, psycopg_pool"
        )
        pythons["django_pool"] = python
        if python is None:
            skipped["django_pool"] = why
    if "dbcp" in names:
        python, why = ensure_venv(
            "dbcp", ["psycopg2-binary", "django-db-connection-pool"],
            "import django, psycopg2, dj_db_conn_pool",
        )  # fmt: skip
        pythons["dbcp"] = python
        if python is None:
            skipped["dbcp"] = why
    bouncer_binary = None
    if "pgbouncer" in names:
        bouncer_binary, why = ensure_pgbouncer()
        if bouncer_binary is None:
            skipped["pgbouncer"] = why

    from django_pooled_pg.testing import Cluster

    server_settings = {"timezone": "'UTC'"}
    if scram:
        server_settings["password_encryption"] = "'scram-sha-256'"
    cluster = Cluster(settings=server_settings).init()
    if scram:
        scram_cluster(cluster)
    cluster.start()
    log(f"PostgreSQL throwaway cluster on port {cluster.port} ({cluster.bindir}), auth {args.auth}")
    bouncer = None
    workers: dict[str, Worker] = {}
    sampler = None
    auth_check = None
    try:
        setup_database(cluster.url, names, passwords=scram)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        bench_cpu = other_cpu = None
        if args.pin == "same" and cpus:
            bench_cpu = cpus[0]
            other_cpu = cpus[1] if len(cpus) > 1 else None
            from server import postmaster_pids  # bench/server.py (this script's folder)

            for pid in postmaster_pids(cluster.datadir):
                os.sched_setaffinity(pid, {bench_cpu})
            if other_cpu is not None:
                os.sched_setaffinity(0, {other_cpu})
        if "pgbouncer" in names and "pgbouncer" not in skipped:
            try:
                secrets = None
                if scram:
                    secrets = scram_secrets(cluster.url, ["bench_pgbouncer", "bench_pgbouncer_t"])
                bouncer = PgBouncer(bouncer_binary, cluster, secrets=secrets)
                if bench_cpu is not None:
                    os.sched_setaffinity(bouncer.process.pid, {bench_cpu})
            except Exception as error:
                skipped["pgbouncer"] = f"pgbouncer failed to start: {error}"
        placement = (
            f"server, PgBouncer and workers on CPU {bench_cpu}; coordinator/sampler on CPU "
            f"{other_cpu}" if bench_cpu is not None else "not pinned"
        )  # fmt: skip

        pg, pooled = "django.db.backends.postgresql", "django_pooled_pg"
        databases = {
            "unpooled": database_entry(cluster, "unpooled", pg, CONN_MAX_AGE=0),
            "persistent": database_entry(cluster, "persistent", pg, CONN_MAX_AGE=None),
            "pooled": database_entry(cluster, "pooled", pooled, OPTIONS={"pool": {}}),
            "django_pool": database_entry(
                cluster, "django_pool", pg, CONN_MAX_AGE=0,
                OPTIONS={"pool": {"min_size": 2, "max_size": 8}},
            ),
            "dbcp": database_entry(
                cluster, "dbcp", "dj_db_conn_pool.backends.postgresql", CONN_MAX_AGE=0
            ),
        }  # fmt: skip
        cap = POOL_CAP
        threads_databases = {  # threads32: the pooled contenders capped at POOL_CAP
            "unpooled": database_entry(cluster, "unpooled_t", pg, CONN_MAX_AGE=0),
            "persistent": database_entry(cluster, "persistent_t", pg, CONN_MAX_AGE=None),
            "pooled": database_entry(
                cluster, "pooled_t", pooled, OPTIONS={"pool": {"max_size": cap}}
            ),
            "django_pool": database_entry(
                cluster, "django_pool_t", pg, CONN_MAX_AGE=0,
                OPTIONS={"pool": {"min_size": 2, "max_size": cap}},
            ),
            "dbcp": database_entry(
                cluster, "dbcp_t", "dj_db_conn_pool.backends.postgresql", CONN_MAX_AGE=0,
                POOL_OPTIONS={"POOL_SIZE": cap, "MAX_OVERFLOW": 0},
            ),
        }  # fmt: skip
        if bouncer is not None:
            databases["pgbouncer"] = {
                **database_entry(cluster, "pgbouncer", pg, CONN_MAX_AGE=0),
                "NAME": "bench",
                "PORT": str(bouncer.port),
            }
            threads_databases["pgbouncer"] = {
                **database_entry(cluster, "pgbouncer_t", pg, CONN_MAX_AGE=0),
                "NAME": "bench_t",
                "PORT": str(bouncer.port),
            }
        if scram:
            for entry in [*databases.values(), *threads_databases.values()]:
                entry["PASSWORD"] = role_password(entry["USER"])
            log_offset = os.path.getsize(cluster.logfile)
            set_log_connections(cluster.url, True)  # while the workers connect, see scram_check
        for name in names:
            if name in skipped:
                continue
            try:
                workers[name] = Worker(
                    name, pythons[name], databases[name], threads_databases[name], bench_cpu
                )
            except Exception as error:
                skipped[name] = str(error)
        for name, why in skipped.items():
            log(f"SKIPPED {name}: {why}")
        active = [n for n in names if n in workers]
        if not active:
            return 1
        if scram:
            set_log_connections(cluster.url, False)
            with open(cluster.logfile, errors="replace") as server_log:
                server_log.seek(log_offset)
                log_text = server_log.read()
            roles = [f"bench_{n}{t}" for n in active for t in ("", "_t")]
            auth_check = scram_check(
                cluster, bouncer, roles, [f"bench_{n}" for n in active], log_text
            )
            hba = "; ".join(
                f"{','.join(r['user_name'])} {r['auth_method']}"
                for r in auth_check["pg_hba_file_rules"]
            )
            wrong = auth_check["wrong_password"]
            logged = ", ".join(
                f"{role} {c['scram_sha_256']}/{c['authorized']}"
                for role, c in auth_check["logged_connections"].items()
            )
            log(
                f"SCRAM check: pg_hba {hba}; wrong passwords refused "
                f"{sum(map(bool, wrong.values()))}/{len(wrong)}; "
                f"workers' logged connections by SCRAM: {logged}"
            )
            if not auth_check["ok"]:
                raise RuntimeError(f"SCRAM check failed: {auth_check['problems']}")
        from server import SessionSampler  # bench/server.py (this script's folder)

        sampler = SessionSampler(
            {"dbname": "postgres", "user": "postgres", "host": "127.0.0.1", "port": cluster.port},
            "usename",
            "bench_",
            backend_cpu=other_cpu if bench_cpu is not None else None,
        )
        sampler.start()
        log(
            f"{args.rounds} rounds x {len(workloads)} workloads x {len(active)} contenders x "
            f"{args.seconds:g} s; {placement}"
        )
        runs: dict[str, dict[str, list[dict]]] = {  # not run (--workloads): empty
            w: {n: [] for n in runners(w, active)} if w in workloads else {} for w in WORKLOADS
        }
        for round_index in range(args.rounds):
            for workload in workloads:
                for name in runs[workload]:  # the others: n/a (ONLY_FOR)
                    if workload == "threads32":  # per thread
                        warmup = 1 if name == "unpooled" else 5
                    else:
                        warmup = 3 if name == "unpooled" else 50
                    runs[workload][name].append(workers[name].run(workload, args.seconds, warmup))
                log(
                    f"  round {round_index + 1} {workload:<5} "
                    + "  ".join(f"{n} {r[-1]['rps']:,.0f}/s" for n, r in runs[workload].items())
                )
        sampler.stop()
        sessions = {n: sampler.maxima.get(n, 0) for n in active}
        sessions_threads = {n: sampler.maxima.get(f"{n}_t", 0) for n in active}
        versions = {n: workers[n].versions for n in active}
    finally:  # every step on its own: a failure must not leave servers behind
        for step in [*(w.close for w in workers.values()),
                     (lambda: sampler is not None and sampler.is_alive() and sampler.stop()),
                     (lambda: bouncer is not None and bouncer.stop()),
                     cluster.destroy]:  # fmt: skip
            try:
                step()
            except Exception as error:
                log(f"cleanup: {error!r}")
        for name in ORDER:
            try:
                os.unlink(os.path.join(RESULTS, f".alternatives-{name}.stderr.tmp"))
            except OSError:
                pass

    summary: dict[str, dict[str, dict | None]] = {}
    not_applicable: dict[str, dict[str, str]] = {}
    for workload in WORKLOADS:
        if not runs[workload]:  # nobody could run it (--only)
            continue
        summary[workload] = {}
        for name in active:
            if name not in runs[workload]:
                summary[workload][name] = None  # n/a
                not_applicable.setdefault(workload, {})[name] = ONLY_FOR[workload][1]
                continue
            rounds = runs[workload][name]
            summary[workload][name] = {
                "median_rps": statistics.median(r["rps"] for r in rounds),
                "min_rps": min(r["rps"] for r in rounds),
                "max_rps": max(r["rps"] for r in rounds),
                "p50_us": statistics.median(r["p50_us"] for r in rounds),
                "p99_us": statistics.median(r["p99_us"] for r in rounds),
                "rounds": rounds,
            }
        same = SAME_REQUEST.get(workload)
        for name in runs[workload]:
            references = {}  # ratio key: (workload, contender) whose runs divide this one's
            for base in ("unpooled", "persistent"):
                if base in runs[workload]:
                    references[f"vs_{base}"] = (workload, base)
                elif same is not None and base in runs[same]:  # n/a: the same request
                    references[f"vs_{base}"] = (same, base)
            if same is not None and name in runs[same]:  # e.g. vs_join: its own unprepared join
                references[f"vs_{same}"] = (same, name)
            entry = summary[workload][name]
            for key, (of, base) in references.items():
                entry[key] = entry["median_rps"] / statistics.median(
                    r["rps"] for r in runs[of][base]
                )
                entry[f"{key}_per_round"] = [
                    a["rps"] / b["rps"]
                    for a, b in zip(runs[workload][name], runs[of][base], strict=True)
                ]

    if "threads32" in summary:
        for name in active:
            summary["threads32"][name]["max_server_sessions"] = sessions_threads[name]
    errors = {
        f"{w}/{n}": r["errors"] for w in WORKLOADS for n, rounds in runs[w].items()
        for r in rounds if r.get("errors")
    }  # fmt: skip
    # django_pooled_pg's join must have run unprepared, its join_prepared prepared
    if "pooled" in runs["join"]:
        targets = max(r["prepare_targets"] for r in runs["join"]["pooled"])
        summary["join"]["pooled"]["prepare_targets"] = targets
        if targets:
            errors["join/pooled"] = [f"{targets} prepare target(s) during the unprepared join"]
    prepared = None
    if "pooled" in runs["join_prepared"]:
        per_round = [r["prepared"] for r in runs["join_prepared"]["pooled"]]
        prepared = {k: sum(p[k] for p in per_round) for k in PREPARED_KEYS}
        prepared["verified"] = all(
            p["hits"] >= r["count"] and p["fallbacks"] == 0  # every timed request an EXECUTE
            for p, r in zip(per_round, runs["join_prepared"]["pooled"], strict=True)
        ) and prepared["hits"] > 0  # fmt: skip
        prepared["per_round"] = per_round
        summary["join_prepared"]["pooled"]["prepared"] = prepared
        if not prepared["verified"]:
            errors["join_prepared/pooled"] = [f"did not run prepared: {per_round}"]

    pooled_names = ("pooled", "django_pool", "dbcp", "pgbouncer")
    for workload in summary:
        title = TITLES[workload]
        log(f"\n{title}\n  (median of {args.rounds} rounds; ratios: per-round range)")
        log(
            f"  {'contender':<44}{'req/s':>8}{'vs unpooled':>13}{'vs persistent':>22}"
            f"{'p50 us':>8}{'p99 us':>8}{'sessions':>9}"
        )
        for name in active:
            e = summary[workload][name]
            if e is None:
                why = f"n/a ({not_applicable[workload][name]})"
                log(f"  {LABELS[name]:<44}{why:>43}")
                continue
            vs_u = f"{e['vs_unpooled']:.1f}x" if "vs_unpooled" in e else "-"
            if "vs_persistent" in e:
                rng = e["vs_persistent_per_round"]
                vs_p = f"{e['vs_persistent']:.2f}x ({min(rng):.2f}-{max(rng):.2f})"
            else:
                vs_p = "-"
            if workload == "threads32":
                count = sessions_threads[name]
                mark = (" OK" if count <= POOL_CAP else " OVER") if name in pooled_names else ""
                label = LABELS_T[name]
            else:
                count, mark, label = sessions[name], "", LABELS[name]
            log(
                f"  {label:<44}{e['median_rps']:>8,.0f}{vs_u:>13}{vs_p:>22}"
                f"{e['p50_us']:>8.0f}{e['p99_us']:>8.0f}{count:>9}{mark}"
            )
        same = SAME_REQUEST.get(workload)
        for name in runs[workload]:
            e = summary[workload][name]
            if same is not None and f"vs_{same}" in e:
                rng = e[f"vs_{same}_per_round"]
                log(
                    f"  {SHORT[name]} {workload} vs {same}: {e['median_rps']:,.0f} / "
                    f"{summary[same][name]['median_rps']:,.0f} req/s = {e[f'vs_{same}']:.2f}x "
                    f"({min(rng):.2f}-{max(rng):.2f}); p50 {e['p50_us']:.0f} vs "
                    f"{summary[same][name]['p50_us']:.0f} us"
                )
        if workload == "join_prepared" and prepared is not None:
            log(
                "  prepared_stats() over the runs (warm-ups included): "
                + ", ".join(f"{k} {prepared[k]:,}" for k in PREPARED_KEYS)
                + (
                    "; verified: every timed request an EXECUTE, no fallback"
                    if prepared["verified"]
                    else "; NOT VERIFIED"
                )
            )
    log(
        "  (sessions: most server sessions of the contender's role seen in pg_stat_activity "
        f"over the whole run, {sampler.samples} samples; threads32 has its own roles "
        f"bench_<name>_t, so its column is that workload's alone: OK = <= {POOL_CAP}; "
        "p50/p99 in threads32 include waiting for a free connection)"
    )
    for key, errs in errors.items():
        log(f"  ERRORS {key}: {errs}")
    for name, why in skipped.items():
        log(f"  skipped {name}: {why}")

    elapsed = time.monotonic() - started
    results = {
        "command": "python bench/alternatives.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "placement": placement,
        "rounds": args.rounds,
        "seconds_per_run": args.seconds,
        "orm_rows": ORM_ROWS,
        "contenders": {n: LABELS[n] for n in active},
        "versions": versions,
        "databases": {n: databases[n] for n in active},
        "max_server_sessions": sessions,
        "max_server_sessions_threads32": sessions_threads if "threads32" in summary else None,
        "threads32": {
            "threads": THREADS,
            "pool_cap": POOL_CAP,
            "databases": {n: threads_databases[n] for n in active},
        },
        "join_prepared": {
            "how": "pooled: the join's queryset registered with add_prepare_target(using="
            "'default', name='join', plan_cache_mode=None) around each join_prepared run "
            "(cleared after it, so join stays unprepared); the others cannot prepare: null",
            "contenders": runners("join_prepared", active),
            "not_applicable": not_applicable.get("join_prepared", {}),
            "prepared_stats": prepared,
            "vs_join": (summary.get("join_prepared") or {}).get("pooled", {}).get("vs_join"),
        },
        "errors": errors,
        "auth": args.auth,
        "auth_check": auth_check,  # --auth scram: see scram_check()
        "session_samples": sampler.samples,
        "workloads": summary,
        "not_applicable": not_applicable,  # workload: {contender: why}; null cells there
        "skipped": skipped,
        "elapsed_s": elapsed,
    }
    with open(args.output, "w") as out:
        json.dump(results, out, indent=2)
    log(f"\nresults: {os.path.relpath(args.output, ROOT)}")
    try:
        for path in plot(results, active, args.output):
            log(f"chart: {os.path.relpath(path, ROOT)}")
    except ImportError:
        log("charts skipped: matplotlib is not installed (pip install matplotlib)")
    log(f"total time {elapsed:.0f} s")
    return 0


def plot(results: dict, active: list[str], output: str) -> list[str]:
    """<output minus .json>-throughput.png and -latency.png (the default: alternatives-*.png,
    --auth scram: alternatives-scram-*.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {
        "unpooled": "#999999", "persistent": "#4c72b0", "pooled": "#dd8452",
        "django_pool": "#55a868", "dbcp": "#8172b3", "pgbouncer": "#c44e52",
    }  # fmt: skip
    labels = [SHORT[n] for n in active]
    auth = results.get("auth", "trust")
    stem = output[: -len(".json")] if output.endswith(".json") else output
    sub = (
        f"{results['date']}, {results['cpus']} CPUs, median of {results['rounds']} interleaved "
        f"rounds x {results['seconds_per_run']:g} s; bars: min..max of rounds"
    )
    if auth == "scram":
        sub = "password (SCRAM-SHA-256) authentication; " + sub
    workloads = [w for w in WORKLOADS if w in results["workloads"]]
    threads_sessions = results.get("max_server_sessions_threads32")
    paths = []

    def grid():
        cols = 3 if len(workloads) > 2 else 2
        rows = -(-(len(workloads) + (1 if threads_sessions else 0)) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.6 * rows), squeeze=False)
        axes = list(axes.flat)
        for ax in axes[len(workloads) + (1 if threads_sessions else 0) :]:
            ax.set_visible(False)
        return fig, axes

    def sessions_panel(ax) -> None:
        y = list(range(len(active)))
        counts = [threads_sessions.get(n, 0) for n in active]
        ax.barh(y, counts, color=[colors[n] for n in active])
        ax.axvline(POOL_CAP, color="black", linestyle="--", linewidth=1)
        ax.text(POOL_CAP, len(active) - 0.45, f" cap {POOL_CAP}", fontsize=8.5, va="bottom")
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        ax.set_xlabel("most server sessions")
        ax.set_title(f"server sessions during {SHORT_TITLES['threads32']}", fontsize=10)
        for i, c in enumerate(counts):
            ax.text(c + 0.3, i, str(c), va="center", fontsize=8.5)
        ax.set_xlim(0, max(counts + [POOL_CAP]) * 1.2)

    fig, axes = grid()
    for ax, workload in zip(axes, workloads, strict=False):
        data = results["workloads"][workload]
        ran = [i for i, n in enumerate(active) if data.get(n)]  # the others: n/a
        med = [data[active[i]]["median_rps"] for i in ran]
        err = [
            [m - data[active[i]]["min_rps"] for i, m in zip(ran, med, strict=True)],
            [data[active[i]]["max_rps"] - m for i, m in zip(ran, med, strict=True)],
        ]
        ax.barh(ran, med, xerr=err, color=[colors[active[i]] for i in ran], capsize=3)
        ax.set_yticks(list(range(len(active))), labels)
        ax.set_ylim(len(active) - 0.5, -0.5)  # top to bottom, n/a rows included
        threads = f"{THREADS} threads" if workload == "threads32" else "one thread"
        ax.set_xlabel(f"requests/s ({threads})")
        ax.set_title(SHORT_TITLES[workload], fontsize=10)
        top = max(data[active[i]]["max_rps"] for i in ran)
        ax.set_xlim(0, top * 1.6)
        same = SAME_REQUEST.get(workload)
        for i, n in enumerate(active):
            if not data.get(n):
                why = results.get("not_applicable", {}).get(workload, {}).get(n, "")
                ax.text(top * 0.02, i, f"n/a ({why})" if why else "n/a", va="center",
                        fontsize=8.5, color="#666666")  # fmt: skip
                continue
            note = f"{data[n]['median_rps']:,.0f}"
            if "vs_persistent" in data[n] and n != "persistent":
                note += f"  ({data[n]['vs_persistent']:.2f}x pers.)"
            if same is not None and f"vs_{same}" in data[n]:
                note += f"\n{data[n][f'vs_{same}']:.2f}x its {same}"
            ax.text(data[n]["max_rps"] + top * 0.02, i, note, va="center", fontsize=8.5)
    if threads_sessions:
        sessions_panel(axes[len(workloads)])
    fig.suptitle("Django request throughput: django_pooled_pg vs alternatives\n" + sub, fontsize=11)
    fig.tight_layout()
    path = f"{stem}-throughput.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)

    fig, axes = grid()
    for ax, workload in zip(axes, workloads, strict=False):
        data = results["workloads"][workload]
        y = [i for i, n in enumerate(active) if data.get(n)]  # the others: n/a
        p50 = [data[active[i]]["p50_us"] for i in y]
        p99 = [data[active[i]]["p99_us"] for i in y]
        h = 0.38
        ax.barh([i - h / 2 for i in y], p50, h, label="p50", color="#4c72b0")
        ax.barh([i + h / 2 for i in y], p99, h, label="p99", color="#dd8452")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
        ax.set_yticks(list(range(len(active))), labels)
        ax.set_ylim(len(active) - 0.5, -0.5)  # top to bottom, n/a rows included
        ax.set_xlabel("latency per request, us (log scale)")
        ax.set_title(SHORT_TITLES[workload], fontsize=10)
        for k, i in enumerate(y):
            ax.text(p50[k] * 1.05, i - h / 2, f"{p50[k]:,.0f}", va="center", fontsize=8)
            ax.text(p99[k] * 1.05, i + h / 2, f"{p99[k]:,.0f}", va="center", fontsize=8)
        ax.set_xlim(min(p50) * 0.5, max(p99) * 3)
        for i, n in enumerate(active):
            if not data.get(n):
                ax.text(min(p50) * 0.55, i, "n/a", va="center", fontsize=8, color="#666666")
        ax.legend(loc="lower right", fontsize=8)
    if threads_sessions:
        sessions_panel(axes[len(workloads)])
    sessions = results["max_server_sessions"]
    fig.suptitle(
        "Latency per request (median of the per-round p50 and p99)\n"
        + sub.split("; bars")[0] + "\nmost server sessions (single-thread workloads): "
        + ", ".join(f"{SHORT[n]} {sessions[n]}" for n in active),
        fontsize=9.5,
    )  # fmt: skip
    fig.tight_layout()
    path = f"{stem}-latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths


if __name__ == "__main__":
    sys.exit(main())
