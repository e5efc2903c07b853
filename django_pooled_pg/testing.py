"""A throwaway PostgreSQL cluster for tests, the demo and the benchmarks (no Django here)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

__all__ = ["Cluster", "find_bindir"]


def find_bindir() -> str:
    """The folder holding initdb/pg_ctl: $PG_BINDIR, pg_config, or the newest Debian install."""
    if os.environ.get("PG_BINDIR"):
        return os.environ["PG_BINDIR"]
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(path.split("/")[-2]) if path.split("/")[-2].isdigit() else 0,
    )
    if candidates:
        return candidates[-1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    if shutil.which("initdb"):
        return os.path.dirname(shutil.which("initdb"))  # type: ignore[arg-type]
    if _install_server_binaries():
        return find_bindir()
    raise RuntimeError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install them "
        "(Debian: apt-get install postgresql), set PG_BINDIR, or set DATABASE_URL"
    )


def _install_server_binaries() -> bool:
    """On a fresh Debian machine, as root: apt-get install postgresql (once).

    The README's two commands promise to do all the set-up; DPP_NO_INSTALL=1 turns it off.
    """
    if os.environ.get("DPP_NO_INSTALL") or os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    if glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return False
    print("PostgreSQL server binaries missing: apt-get install postgresql", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "postgresql"], check=False, env=env,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return result.returncode == 0 and bool(glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """initdb + pg_ctl on a temporary folder, listening on 127.0.0.1 with trust authentication.

    PostgreSQL refuses to run as root, so under root the server runs as an unprivileged
    user (``nobody`` unless ``PG_RUN_AS`` names another).
    """

    def __init__(self, port: int | None = None, settings: dict[str, Any] | None = None):
        self.bindir = find_bindir()
        self.port = port or _free_port()
        self.host = "127.0.0.1"
        self.user = "postgres"
        self.base = tempfile.mkdtemp(prefix="dpp-pg-")
        self.datadir = os.path.join(self.base, "data")
        self.logfile = os.path.join(self.base, "server.log")
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": "''",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "64MB",
            **(settings or {}),
        }
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(os.environ.get("PG_RUN_AS", "nobody"))
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid}
            os.chown(self.base, account.pw_uid, account.pw_gid)

    def _pg(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=check,
            cwd=self.base,
            **self._run_as,
        )

    def init(self) -> Cluster:
        self._pg(
            "initdb", "-D", self.datadir, "-U", self.user, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as conf:
            conf.write(f"port = {self.port}\n")
            for name, value in self.settings.items():
                conf.write(f"{name} = {value}\n")
        return self

    def start(self) -> None:
        result = self._pg(
            "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-w", "start", check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {result.stderr}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.logfile) as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return f"postgres://{self.user}@{self.host}:{self.port}/postgres"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [os.path.join(self.bindir, "pg_isready"), "-h", self.host, "-p", str(self.port)],
                capture_output=True,
            )
            if ok.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not become ready")

    def export_env(self) -> dict[str, str]:
        """Environment variables that let another process (the tests) control this cluster."""
        return {
            "DATABASE_URL": self.url,
            "DPP_PGDATA": self.datadir,
            "DPP_PGBASE": self.base,
            "DPP_PGPORT": str(self.port),
        }

    @classmethod
    def attach(cls) -> Cluster | None:
        """The cluster a parent process started (see export_env), or None."""
        if not os.environ.get("DPP_PGDATA"):
            return None
        cluster = cls.__new__(cls)
        cluster.bindir = find_bindir()
        cluster.port = int(os.environ["DPP_PGPORT"])
        cluster.host = "127.0.0.1"
        cluster.user = "postgres"
        cluster.base = os.environ["DPP_PGBASE"]
        cluster.datadir = os.environ["DPP_PGDATA"]
        cluster.logfile = os.path.join(cluster.base, "server.log")
        cluster.settings = {}
        cluster._run_as = {}
        if os.geteuid() == 0:
            stat = os.stat(cluster.datadir)
            cluster._run_as = {"user": stat.st_uid, "group": stat.st_gid}
        return cluster

    def __enter__(self) -> Cluster:
        self.init()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
