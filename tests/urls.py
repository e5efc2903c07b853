from django.contrib.auth.views import LoginView
from django.urls import include, path
from shop import views

urlpatterns = [
    path("select1/", views.select1),
    path("orders/", views.orders),
    path("pool-status/", include("django_pooled_pg.status.urls")),
    path("accounts/login/", LoginView.as_view()),
    path("", views.index),
]
