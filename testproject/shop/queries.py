"""The shop's hot querysets: built in one place so that views run exactly what is prepared."""

import datetime

from .models import OrderLine


def recent_order_lines(city: str, country: str, since: datetime.datetime):
    """Order lines of customers in ``city`` for products from ``country``: six tables."""
    related = ("order__customer", "product__category", "product__supplier")
    return (
        OrderLine.objects.select_related(*related)
        .filter(order__customer__city=city, product__supplier__country=country,
                order__placed__gte=since)
        .order_by("-order__placed", "id")[:20]
    )  # fmt: skip
