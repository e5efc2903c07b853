"""The status page's URLs, to include in the site's URLconf under a path of its choice
(``path("pool-status/", include("django_pooled_pg.status.urls"))``)."""

from django.urls import path

from . import views

app_name = "pooled_pg_status"

urlpatterns = [
    path("", views.status_page, name="page"),
    path("fragment/", views.status_fragment, name="fragment"),
    path("json/", views.status_json, name="json"),
]
