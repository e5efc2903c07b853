"""A small catalogue: enough tables for realistic ORM requests and multi-table joins."""

from django.contrib.postgres.fields import ArrayField
from django.db import models


class Category(models.Model):
    name = models.CharField(max_length=100)


class Supplier(models.Model):
    name = models.CharField(max_length=100)
    country = models.CharField(max_length=2, db_index=True)


class Product(models.Model):
    name = models.CharField(max_length=200)
    category = models.ForeignKey(Category, on_delete=models.CASCADE)
    supplier = models.ForeignKey(Supplier, on_delete=models.CASCADE)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    created = models.DateTimeField(auto_now_add=True)


class Customer(models.Model):
    name = models.CharField(max_length=100)
    city = models.CharField(max_length=100, db_index=True)


class Order(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    placed = models.DateTimeField(db_index=True)


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE)
    product = models.ForeignKey(Product, on_delete=models.CASCADE)
    quantity = models.IntegerField()


class Review(models.Model):
    """A row of every column type the prepared-statement tests compare, prepared and not."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE)
    rating = models.IntegerField(db_index=True)
    title = models.CharField(max_length=200)
    body = models.TextField(null=True)
    published = models.DateField(null=True)
    created = models.DateTimeField()
    details = models.JSONField(null=True)
    tags = ArrayField(models.CharField(max_length=20), default=list)
