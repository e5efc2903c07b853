from django.contrib import admin
from django.urls import path
from shop import views

urlpatterns = [
    path("", views.index),
    path("select1/", views.select1),
    path("products/<int:pk>/", views.product),
    path("orders/", views.orders),
    path("pool/", views.pool_stats),
    path("admin/", admin.site.urls),
]
