#!/usr/bin/env python
"""Run the test suite against a real PostgreSQL.

Uses $DATABASE_URL when set; otherwise starts a throwaway cluster from the machine's
PostgreSQL binaries (initdb/pg_ctl) and removes it afterwards. Extra arguments are test
labels (``tests.test_session_reset``) or ``-k pattern``.
"""

import argparse
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "testproject")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", nargs="*", default=["tests"])
    parser.add_argument("-k", dest="patterns", action="append")
    parser.add_argument("-v", "--verbosity", type=int, default=1)
    parser.add_argument("--failfast", action="store_true")
    args = parser.parse_args()

    cluster = None
    if not os.environ.get("DATABASE_URL"):
        from django_pooled_pg.testing import Cluster

        cluster = Cluster().init()
        cluster.start()
        os.environ.update(cluster.export_env())
        print(f"PostgreSQL throwaway cluster on port {cluster.port} ({cluster.bindir})")
    try:
        return run(args)
    finally:
        if cluster is not None:
            cluster.destroy()


def run(args: argparse.Namespace) -> int:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django
    from django.test.runner import DiscoverRunner

    django.setup()
    outcome = {}

    class Runner(DiscoverRunner):
        def run_suite(self, suite, **kwargs):
            result = super().run_suite(suite, **kwargs)
            outcome["result"] = result
            return result

    runner = Runner(
        verbosity=args.verbosity,
        failfast=args.failfast,
        test_name_patterns=args.patterns,
        interactive=False,
    )
    failures = runner.run_tests(args.labels)
    result: unittest.TestResult | None = outcome.get("result")
    if result is not None:
        failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
        skipped = len(result.skipped)
        passed = result.testsRun - failed - skipped
        print(f"{passed} passed, {failed} failed, {skipped} skipped")
        if result.testsRun == 0:
            print("no test ran", file=sys.stderr)
            return 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
