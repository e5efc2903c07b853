"""Views that exercise the pool the way real requests do."""

import datetime
import os
import time

from django.db import connection, transaction
from django.http import Http404, JsonResponse
from django.utils import timezone

from .models import Product
from .queries import recent_order_lines


def index(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend_pid,) = cursor.fetchone()
    return JsonResponse(
        {"worker_pid": os.getpid(), "backend_pid": backend_pid, "products": Product.objects.count()}
    )


def backend(request):
    """Which process served the request, on which server session (no tables needed)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), current_setting('application_name')")
        backend_pid, application_name = cursor.fetchone()
    return JsonResponse(
        {
            "worker_pid": os.getpid(),
            "backend_pid": backend_pid,
            "application_name": application_name,
        }
    )


def select1(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return JsonResponse({"ok": True})


def product(request, pk):
    item = Product.objects.select_related("category", "supplier").filter(pk=pk).first()
    if item is None:
        raise Http404("no such product")
    return JsonResponse(
        {"id": item.pk, "name": item.name, "category": item.category.name, "price": str(item.price)}
    )


def orders(request):
    """Recent order lines for a city and a country: a six-table join, run prepared."""
    since = timezone.now() - datetime.timedelta(days=int(request.GET.get("days", 30)))
    lines = recent_order_lines(request.GET.get("city", "Helsinki"),
                               request.GET.get("country", "FI"), since)  # fmt: skip
    return JsonResponse({
        "lines": [
            {"order": line.order_id, "customer": line.order.customer.name,
             "product": line.product.name, "category": line.product.category.name,
             "supplier": line.product.supplier.name, "quantity": line.quantity}
            for line in lines
        ]
    })  # fmt: skip


def pool_stats(request):
    return JsonResponse({
        "worker_pid": os.getpid(),
        **connection.database.get_stats(),
        "prepared": connection.database.prepared_stats(),
    })  # fmt: skip


def hold_transaction(request, seconds):
    """A view that keeps a transaction open while it sleeps (at most 30 s): what the status
    page shows as idle in transaction, with this line in its stacks."""
    with transaction.atomic():
        first = Product.objects.order_by("pk").first()
        time.sleep(min(seconds, 30))
    return JsonResponse({"worker_pid": os.getpid(), "held_s": min(seconds, 30), "id": first.pk})
