"""Optional app: checks every pooled alias at django.setup() and adds system checks."""

from django.apps import AppConfig


class DjangoPooledPgConfig(AppConfig):
    name = "django_pooled_pg"
    verbose_name = "Pooled PostgreSQL"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, signals  # noqa: F401 (registers checks and receivers)

        checks.validate_pool_settings()
