"""Fill the catalogue with a few thousand rows (idempotent) and create a staff user."""

import datetime
import random

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from shop.models import Category, Customer, Order, OrderLine, Product, Supplier

CITIES = ["Helsinki", "Berlin", "Paris", "Tokyo"]


class Command(BaseCommand):
    help = "Load demo data: categories, suppliers, products, customers, orders; user admin/admin."

    def add_arguments(self, parser):
        parser.add_argument("--products", type=int, default=2000)

    @transaction.atomic
    def handle(self, *args, products, **options):
        if Product.objects.exists():
            return
        rng = random.Random(42)
        categories = Category.objects.bulk_create(Category(name=f"category {i}") for i in range(20))
        suppliers = Supplier.objects.bulk_create(
            Supplier(name=f"supplier {i}", country=rng.choice(["FI", "DE", "FR", "US", "JP"]))
            for i in range(50)
        )
        items = Product.objects.bulk_create(
            Product(
                name=f"product {i}",
                category=rng.choice(categories),
                supplier=rng.choice(suppliers),
                price=rng.randint(100, 100000) / 100,
            )
            for i in range(products)
        )
        customers = Customer.objects.bulk_create(
            Customer(name=f"customer {i}", city=rng.choice(CITIES))
            for i in range(500)
        )
        start = timezone.now() - datetime.timedelta(days=365)
        orders = Order.objects.bulk_create(
            Order(customer=rng.choice(customers), placed=start + datetime.timedelta(hours=i))
            for i in range(3000)
        )
        OrderLine.objects.bulk_create(
            OrderLine(order=order, product=rng.choice(items), quantity=rng.randint(1, 5))
            for order in orders
            for _ in range(2)
        )
        user_model = get_user_model()
        if not user_model.objects.filter(username="admin").exists():
            user_model.objects.create_superuser("admin", "admin@example.invalid", "admin")
        self.stdout.write(
            f"loaded {products} products, {len(orders)} orders; staff user admin/admin"
        )
