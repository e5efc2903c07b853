from django.urls import path
from shop import views

urlpatterns = [
    path("select1/", views.select1),
    path("orders/", views.orders),
    path("", views.index),
]
