"""The benchmarked server, seen from outside: its processes, and sessions per contender."""

from __future__ import annotations

import os
import threading
from typing import Any


def start_server(settings: dict[str, str] | None = None) -> tuple[Any, str]:
    """(cluster, url): the server of $DATABASE_URL (cluster None), else a throwaway cluster
    started here with the time zone UTC and ``settings`` (the caller destroys it)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        print("PostgreSQL from $DATABASE_URL")
        return None, url
    from django_pooled_pg.testing import Cluster

    cluster = Cluster(settings={"timezone": "'UTC'", **(settings or {})}).init()
    cluster.start()
    print(f"PostgreSQL throwaway cluster on port {cluster.port} ({cluster.bindir})")
    return cluster, cluster.url


def postmaster_pids(datadir: str) -> list[int]:
    """The postmaster of the cluster in ``datadir`` and its children (from /proc)."""
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
    return pids


class SessionSampler(threading.Thread):
    """Counts client sessions whose ``column`` (application_name or usename) starts with
    ``prefix``, grouped by the rest of the name, and keeps the maximum of each group."""

    def __init__(
        self,
        conninfo: dict,
        column: str,
        prefix: str,
        interval: float = 0.01,
        backend_cpu: int | None = None,
    ) -> None:
        super().__init__(name="session sampler", daemon=True)
        import psycopg2

        if column not in ("application_name", "usename"):
            raise ValueError(f"column must be application_name or usename, not {column!r}")
        self.conn = psycopg2.connect(**conninfo, application_name=prefix + "sampler")
        self.conn.autocommit = True
        if backend_cpu is not None:  # keep the sampler's own backend off the benchmark CPU
            with self.conn.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                os.sched_setaffinity(cursor.fetchone()[0], {backend_cpu})
        self.column = column
        self.prefix = prefix
        self.interval = interval
        self.maxima: dict[str, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def sample(self) -> None:
        with self.conn.cursor() as cursor:
            cursor.execute(
                f"SELECT {self.column}, count(*) FROM pg_stat_activity "
                f"WHERE {self.column} LIKE %s AND backend_type = 'client backend' GROUP BY 1",
                [self.prefix.replace("_", r"\_") + "%"],
            )
            rows = cursor.fetchall()
        for key, count in rows:
            name = key[len(self.prefix) :]
            if name != "sampler" and count > self.maxima.get(name, 0):
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
