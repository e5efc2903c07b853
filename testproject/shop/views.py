"""Views that exercise the pool the way real requests do."""

import os

from django.db import connection
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
