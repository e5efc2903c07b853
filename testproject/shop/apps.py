import datetime

from django.apps import AppConfig
from django.conf import settings


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # The orders page's join runs on every request: plan it once per connection. (The
        # benchmarks also run this app on other backends, where there is nothing to prepare.)
        if not any(db.get("ENGINE") == "django_pooled_pg" for db in settings.DATABASES.values()):
            return
        import django_pooled_pg

        from .queries import recent_order_lines

        epoch = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
        django_pooled_pg.add_prepare_target(
            recent_order_lines("city", "XX", epoch), name="recent order lines"
        )
