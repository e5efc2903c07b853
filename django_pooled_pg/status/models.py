"""One row per serving process and alias: its latest snapshot and a short history."""

from django.db import models

TABLE = "pooled_pg_status_snapshot"


class PoolSnapshot(models.Model):
    """Written by each process's publisher (an UPSERT per snapshot), read by pool_status and
    the status page. ``published_at`` comes from the database's clock, so expiry does not
    depend on the hosts' clocks agreeing."""

    host = models.CharField(max_length=255)
    pid = models.IntegerField()
    alias = models.CharField(max_length=255)
    #: the application_name the process's connections carry (joins with pg_stat_activity)
    application_name = models.CharField(max_length=63, blank=True)
    started_at = models.DateTimeField()
    published_at = models.DateTimeField(db_index=True)
    #: sizes, counters, connections, idle-in-transaction stacks and top queries
    data = models.JSONField()
    #: [[unix time, leased, idle, waiting], ...], oldest first, for the chart
    history = models.JSONField(default=list)

    class Meta:
        db_table = TABLE
        constraints = [
            models.UniqueConstraint(
                fields=["host", "pid", "alias"], name="pooled_pg_status_process"
            )
        ]

    def __str__(self) -> str:
        return f"{self.alias} on {self.host} pid {self.pid}"
