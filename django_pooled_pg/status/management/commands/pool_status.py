"""``manage.py pool_status``: the pools of every process on every host, from their snapshots."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import publish
from ...report import StatusUnavailable, UnknownAlias, read_status
from ...text import render


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise CommandError(f"--watch must be a finite number of seconds > 0, not {value!r}")
    return seconds


class Command(BaseCommand):
    help = (
        "Show the connection pools of every process on every host (from the snapshots they "
        "publish), joined with pg_stat_activity."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--alias", action="append", dest="aliases", metavar="ALIAS",
            help="only this database alias (repeatable); default: all pooled aliases",
        )  # fmt: skip
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        parser.add_argument(
            "--watch", type=str, metavar="N", default=None,
            help="print again every N seconds until Ctrl-C",
        )  # fmt: skip
        parser.add_argument(
            "--count", type=int, metavar="K", default=None,
            help="with --watch: stop after K prints",
        )  # fmt: skip
        parser.add_argument(
            "--queries", type=int, nargs="?", const=10, default=0, metavar="N",
            help="also the top N statements (default 10), merged across all processes",
        )  # fmt: skip
        parser.add_argument(
            "--stacks", action="store_true",
            help="show the stacks of connections idle in a transaction",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        if getattr(self, "_called_from_command_line", False):
            # This process's own pools are not the site's: don't publish them from here.
            publish.publisher().stop()
        watch = _positive_seconds(options["watch"]) if options["watch"] is not None else None
        count = options["count"]
        if count is not None and count < 1:
            raise CommandError(f"--count must be 1 or more, not {count}")
        if options["queries"] < 0:
            raise CommandError(f"--queries must be 0 or more, not {options['queries']}")
        printed = 0
        failed: StatusUnavailable | None = None
        try:
            while True:
                try:
                    text = self._once(options, clear=watch is not None and printed > 0)
                except StatusUnavailable as error:
                    if watch is None:
                        raise CommandError(str(error)) from None
                    # Watching goes on through a restart of the status database; the
                    # exit status says whether the last try failed.
                    failed = error
                    self.stderr.write(
                        f"{time.strftime('%H:%M:%S')} {error}; trying again in {watch:g} s"
                    )
                else:
                    failed = None
                    self.stdout.write(text)
                printed += 1
                if watch is None or (count is not None and printed >= count):
                    break
                time.sleep(watch)
        except KeyboardInterrupt:
            pass
        if failed is not None:
            raise CommandError(str(failed))

    def _once(self, options: dict[str, Any], clear: bool) -> str:
        try:
            status = read_status(options["aliases"])
        except UnknownAlias as error:
            raise CommandError(str(error)) from None
        if options["json"]:
            return json.dumps(status, default=str, separators=(",", ":"))
        text = render(
            status, stacks=options["stacks"], queries=options["queries"],
            verbosity=options["verbosity"],
        )  # fmt: skip
        if clear and self.stdout.isatty():
            text = "\x1b[H\x1b[2J" + text  # redraw in place, like watch(1)
        return text.rstrip("\n")
