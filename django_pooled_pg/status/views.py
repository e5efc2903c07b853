"""The status page (staff only): the same data as pool_status, refreshing itself."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden, JsonResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.cache import never_cache

from .chart import legend, svg_chart
from .conf import status_settings
from .report import StatusUnavailable, read_status

#: The page refreshes itself this often at most (and no more often than snapshots change).
MIN_REFRESH_S = 2.0


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Anonymous users go to the login page; signed-in users who are not staff get 403."""

    @wraps(view)
    def check(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is None:
            return HttpResponseForbidden(
                "The pool status page needs django.contrib.auth's AuthenticationMiddleware."
            )
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path(), _login_url())
        if not (user.is_active and user.is_staff):
            return HttpResponseForbidden("The pool status page is for staff members only.")
        return view(request, *args, **kwargs)

    return check


def _login_url() -> str:
    try:
        return reverse("admin:login")
    except NoReverseMatch:
        return str(settings.LOGIN_URL)


def _context() -> dict[str, Any]:
    try:
        status = read_status()
    except StatusUnavailable as error:
        return {"error": str(error)}
    for section in status["aliases"]:
        section["chart"] = svg_chart(section["history"])
    return {"status": status, "legend": legend()}


@never_cache
@staff_only
def status_page(request: HttpRequest) -> HttpResponse:
    refresh = max(MIN_REFRESH_S, status_settings().interval)
    context = _context()
    # (503 tells a monitor the page is not showing the pools. The refreshing fragment
    # below stays 200: the page's script shows what it gets, the error included.)
    return render(
        request, "pooled_pg_status/page.html", {**context, "refresh_s": refresh},
        status=503 if "error" in context else 200,
    )  # fmt: skip


@never_cache
@staff_only
def status_fragment(request: HttpRequest) -> HttpResponse:
    """The page's content alone: what the page's script fetches to refresh itself."""
    return render(request, "pooled_pg_status/status.html", _context())


@never_cache
@staff_only
def status_json(request: HttpRequest) -> JsonResponse:
    try:
        return JsonResponse(read_status())
    except StatusUnavailable as error:
        return JsonResponse({"error": str(error)}, status=503)
