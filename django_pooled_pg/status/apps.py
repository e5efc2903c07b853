"""The status app's AppConfig: validates POOLED_PG_STATUS and starts publishing."""

from django.apps import AppConfig


class StatusConfig(AppConfig):
    name = "django_pooled_pg.status"
    label = "pooled_pg_status"
    verbose_name = "Pooled PostgreSQL status"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, conf, publish  # noqa: F401 (registers checks and receivers)

        conf.status_settings()  # a bad setting fails here, at django.setup()
        publish.install()
