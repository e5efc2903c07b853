"""Settings for the test suite: the testproject's apps, one pooled alias on $DATABASE_URL."""

import os
import warnings

from testproject.dburl import database_from_url

# Tests override DATABASES on purpose (fresh pools); Django warns that it rebuilds nothing.
warnings.filterwarnings("ignore", "Overriding setting DATABASES", UserWarning)

SECRET_KEY = "tests-only"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_pooled_pg",
    "django_pooled_pg.status",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
LOGIN_URL = "/accounts/login/"
STATIC_URL = "static/"  # LiveServerTestCase serves static files under it
# The suite's own process does not publish; the worker processes of test_status do (they
# set DPP_STATUS_PUBLISH=1). Short times, so that expiry is seen within a test.
POOLED_PG_STATUS = {
    "publish": os.environ.get("DPP_STATUS_PUBLISH") == "1",
    "interval": 1.0,
    "expire_after": 5.0,
}
DATABASES = {
    "default": database_from_url(OPTIONS={"pool": {"max_size": 10, "timeout": 10}}),
}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.urls"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Warnings the tests provoke on purpose are asserted with assertLogs, not printed.
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"django_pooled_pg": {"handlers": ["null"], "propagate": False}},
}
