"""The demo site's own tests: run by Django's test runner with pools alive (see tests/)."""

import threading

from django.db import connection, connections
from django.test import TestCase, TransactionTestCase

from .models import Category


class CatalogueTests(TestCase):
    def test_create_and_count(self):
        Category.objects.create(name="books")
        self.assertEqual(Category.objects.count(), 1)


class ThreadedTests(TransactionTestCase):
    def test_other_threads_lease_from_the_pool(self):
        Category.objects.create(name="tools")
        counts = []

        def count():
            counts.append(Category.objects.count())
            connections["default"].close()

        threads = [threading.Thread(target=count) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(counts, [1] * 4)
        self.assertEqual(type(connection.connection).__name__, "ConnectionHandle")
