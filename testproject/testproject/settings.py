"""Settings of the demo site: a small real Django project served through the pooled backend."""

import os

from .dburl import database_from_url

SECRET_KEY = "demo-only-not-secret"
DEBUG = os.environ.get("DEMO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_pooled_pg",
    "django_pooled_pg.status",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "testproject.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": database_from_url(
        OPTIONS={
            "pool": {
                "min_size": 2,
                "max_size": int(os.environ.get("POOL_MAX_SIZE", 8)),
                # The demo's /hold/ view shows up as idle in transaction within seconds.
                "idle_in_transaction_threshold": 2.0,
            }
        }
    )
}
# Every worker publishes its pools for pool_status and /pool-status/ (the demo: every 2 s).
POOLED_PG_STATUS = {"interval": float(os.environ.get("STATUS_INTERVAL", 10))}
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_pooled_pg": {"handlers": ["console"], "level": "WARNING"},
        # A 500's traceback on stderr (Django mails it to ADMINS otherwise, which the demo
        # and the tests that serve through gunicorn do not have).
        "django.request": {"handlers": ["console"], "level": "ERROR"},
    },
}
