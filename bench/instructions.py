#!/usr/bin/env python
"""The request cycle's client-side cost in CPU instructions: deterministic, where time is not.

    python bench/instructions.py [--requests 4000] [--contenders persistent off counters stacks]
                                 [--syscalls]

Needs valgrind (``apt-get install valgrind``). Starts a throwaway cluster (or uses
$DATABASE_URL), then runs each contender's Django request cycle (``request_started`` ->
``SELECT 1`` -> ``request_finished``, as in request_cycle.py) in a process of its own under
``valgrind --tool=callgrind``, once with 0 and once with --requests requests after the same
warm-up, and prints the difference per request: the instructions this process (Django, the
backend, psycopg2, libpq) executes for one request. The server is not counted, nor time
spent in system calls, so the figure is the client's own cost, which the wall-clock
benchmarks measure through the noise of a shared VM (their run-to-run spread here is as
large as the differences they look for). Each process imports Django's request handler, as
a server does, so every contender pays for its request_finished receiver.

Contenders: persistent (Django's postgresql backend, CONN_MAX_AGE=None) and this backend
with tracking off / counters / stacks (its default). PYTHONHASHSEED is fixed, so two runs
agree to about 1%.

--syscalls also counts the system calls of one request the same way, under ``strace -f``
(``apt-get install strace``): each costs far more than an instruction (a mode switch, and on
a VM with speculative-execution mitigations, flushed caches and TLB entries), and valgrind
does not count the kernel's side.
"""

from __future__ import annotations

import argparse
import collections
import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONTENDERS = ("persistent", "off", "counters", "stacks")


def run_cycles(contender: str, requests: int) -> None:
    """In the measured process: ``requests`` request cycles of ``contender``."""
    sys.path[:0] = [ROOT, os.path.join(ROOT, "testproject"), HERE]
    import request_cycle as rc

    url = os.environ["DATABASE_URL"]
    if contender == "persistent":
        entry = rc.database_entry(
            url, "django.db.backends.postgresql", contender, CONN_MAX_AGE=None
        )
    else:
        entry = rc.database_entry(
            url, "django_pooled_pg", contender, OPTIONS={"pool": {"tracking": contender}}
        )
    rc.CONTENDERS[contender] = entry
    rc.setup_django({"default": copy.deepcopy(entry)})
    import django.core.handlers.base  # noqa: F401 (a server has it: its request_finished receiver)

    rc.activate(contender)
    cycle = rc.make_cycle()
    for _ in range(300):  # connect, warm caches and the interpreter's specializations
        cycle()
    for _ in range(requests):
        cycle()
    os._exit(0)  # no teardown: the same in both runs, but no need to count it


def instructions(contender: str, requests: int, env: dict[str, str]) -> int:
    command = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, os.path.abspath(__file__), "--run", contender, str(requests),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if match is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def syscalls(contender: str, requests: int, env: dict[str, str]) -> collections.Counter[str]:
    """System calls by name of ``requests`` request cycles (and the fixed start-up)."""
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        command = [
            "strace", "-f", "-c", "-U", "calls,name", "-o", out.name,
            sys.executable, os.path.abspath(__file__), "--run", contender, str(requests),
        ]  # fmt: skip
        subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        counts: collections.Counter[str] = collections.Counter()
        for line in out.read().splitlines():
            fields = line.split()
            if len(fields) == 2 and fields[0].isdigit() and fields[1] != "total":
                counts[fields[1]] = int(fields[0])
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument(
        "--syscalls", action="store_true", help="also count system calls per request (strace)"
    )
    parser.add_argument("--run", nargs=2, help=argparse.SUPPRESS)  # the measured process
    args = parser.parse_args()
    if args.run:
        run_cycles(args.run[0], int(args.run[1]))
        return 0
    for tool, wanted in (("valgrind", True), ("strace", args.syscalls)):
        if wanted and shutil.which(tool) is None:
            print(f"{tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2

    sys.path[:0] = [ROOT, HERE]
    from server import start_server

    from django_pooled_pg.pool import record, stacks, tracker

    print(
        f"stack walker: {stacks.WALKER}; query timer: {tracker.TIMER}; "
        f"socket check: {record.POLLER}"
    )
    cluster, url = start_server()
    try:
        env = {**os.environ, "DATABASE_URL": url, "PYTHONHASHSEED": "0"}
        per_request: dict[str, float] = {}
        for contender in args.contenders:
            base = instructions(contender, 0, env)
            total = instructions(contender, args.requests, env)
            per_request[contender] = (total - base) / args.requests
            print(f"  {contender:<11} {per_request[contender]:>9,.0f} instructions/request")
        if "persistent" in per_request:
            reference = per_request["persistent"]
            print("\nagainst persistent (client instructions per request)")
            for contender, value in per_request.items():
                if contender != "persistent":
                    print(
                        f"  {contender:<11} +{value - reference:>7,.0f}  "
                        f"({value / reference:.3f}x the instructions)"
                    )
        if args.syscalls:
            print("\nsystem calls per request (strace -f)")
            for contender in args.contenders:
                base_calls = syscalls(contender, 0, env)
                calls = syscalls(contender, args.requests, env)
                calls.subtract(base_calls)
                per_call = {
                    name: count / args.requests
                    for name, count in sorted(calls.items())
                    if count / args.requests >= 0.01
                }
                detail = ", ".join(f"{name} {count:.2f}" for name, count in per_call.items())
                print(f"  {contender:<11} {sum(per_call.values()):5.2f}  ({detail})")
        return 0
    finally:
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    sys.exit(main())
