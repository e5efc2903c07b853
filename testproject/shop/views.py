"""Views that exercise the pool the way real requests do."""

import os
import time

from django.db import connection, transaction
from django.http import Http404, JsonResponse

from .models import Product


def index(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend_pid,) = cursor.fetchone()
    return JsonResponse(
        {"worker_pid": os.getpid(), "backend_pid": backend_pid, "products": Product.objects.count()}
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


def pool_stats(request):
    return JsonResponse({"worker_pid": os.getpid(), **connection.database.get_stats()})


def hold_transaction(request, seconds):
    """A view that keeps a transaction open while it sleeps (at most 30 s): what the status
    page shows as idle in transaction, with this line in its stacks."""
    with transaction.atomic():
        first = Product.objects.order_by("pk").first()
        time.sleep(min(seconds, 30))
    return JsonResponse({"worker_pid": os.getpid(), "held_s": min(seconds, 30), "id": first.pk})
