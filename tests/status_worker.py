"""A serving process for the status tests: its pool in a chosen state, publishing snapshots.

    DATABASE_URL=... DJANGO_POOLED_PG_HOST=web-a python tests/status_worker.py MODE

Modes: ``idle-in-transaction`` (a thread leaves a transaction open; two more connections are
used and returned; max_size from $DPP_WORKER_MAX_SIZE, default 5), ``busy`` (max_size=3, three
threads hold a lease each, a fourth waits), ``requests`` (a request cycle every 50 ms; prints
``served N failed M`` at the end). Prints ``ready <pid>`` once the state is reached, then keeps
it until its standard input closes (or it is killed).
"""

import logging
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "testproject")]
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
os.environ["DPP_STATUS_PUBLISH"] = "1"

import django  # noqa: E402

django.setup()

from django.db import connection, connections, transaction  # noqa: E402

from django_pooled_pg.conf import configure_pool  # noqa: E402
from tests.helpers import request  # noqa: E402

# The suite's settings silence the package's loggers; a worker shows the status app's.
status_logger = logging.getLogger("django_pooled_pg.status")
status_logger.addHandler(logging.StreamHandler(sys.stderr))
status_logger.propagate = False
status_logger.setLevel(logging.INFO)

done = threading.Event()
counts = {"served": 0, "failed": 0}


def view_that_forgets_to_commit(started):
    transaction.set_autocommit(False)
    cursor = connections["default"].cursor()
    cursor.execute("SELECT count(*) FROM shop_category")  # the forgotten transaction
    started.set()
    done.wait()
    transaction.rollback()
    connections["default"].close()


def hold_a_lease(started):
    connection.ensure_connection()
    started.set()
    done.wait()
    connection.close()


def wait_for_a_connection():
    request()


def main(mode):
    max_size = int(os.environ.get("DPP_WORKER_MAX_SIZE", "5"))
    if mode == "idle-in-transaction":
        configure_pool("default", max_size=max_size, idle_in_transaction_threshold=0.2)
        for _ in range(3):
            request("SELECT count(*) FROM shop_product")
        started = threading.Event()
        threading.Thread(
            target=view_that_forgets_to_commit, args=(started,), name="forgetful", daemon=True
        ).start()
        started.wait(30)
        # One more connection in the pool, idle: two backends in all.
        handle = connection.database.pool.checkout()
        connection.database.pool.checkout().close()
        handle.close()
        deadline = time.monotonic() + 30
        while not connection.database.idle_in_tx_stacks() and time.monotonic() < deadline:
            time.sleep(0.05)
    elif mode == "busy":
        configure_pool("default", max_size=3, timeout=600)
        for _ in range(2):  # the statement both workers run: merged counts add up to 5
            request("SELECT count(*) FROM shop_product")
        holders = [threading.Event() for _ in range(3)]
        for index, started in enumerate(holders):
            threading.Thread(
                target=hold_a_lease, args=(started,), name=f"holder-{index}", daemon=True
            ).start()
            started.wait(30)
        threading.Thread(target=wait_for_a_connection, name="waiter", daemon=True).start()
        pool = connection.database.pool
        deadline = time.monotonic() + 30
        while pool.get_stats()["requests_waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    elif mode == "requests":

        def serve():
            while not done.is_set():
                try:
                    request()
                    counts["served"] += 1
                except Exception:
                    counts["failed"] += 1
                done.wait(0.05)

        request()
        counts["served"] += 1
        server = threading.Thread(target=serve, name="server")
        server.start()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("ready", os.getpid(), flush=True)
    sys.stdin.read()  # until the test closes our standard input
    done.set()
    if mode == "requests":
        server.join(30)
        print("served", counts["served"], "failed", counts["failed"], flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
