"""Settings for the test suite: the testproject's apps, one pooled alias on $DATABASE_URL."""

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
    "shop",
]
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
