from django.contrib import admin
from django.urls import include, path
from shop import views

urlpatterns = [
    path("", views.index),
    path("select1/", views.select1),
    path("backend/", views.backend),
    path("products/<int:pk>/", views.product),
    path("orders/", views.orders),
    path("pool/", views.pool_stats),
    path("hold/<int:seconds>/", views.hold_transaction),
    path("pool-status/", include("django_pooled_pg.status.urls")),
    path("admin/", admin.site.urls),
]
